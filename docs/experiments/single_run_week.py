"""Dagster's floor for the week's runs, one run per event partition against one run over the week's
event partitions (`BackfillPolicy.single_run()`), and what a partitioned check records in the latter.

The shape of the weekly batch with trivial bodies: a snapshot, five partitioned batch assets and the
export, six partitioned blocking checks (two on `scored`), values in memory; a fresh SQLite
instance in a temporary `DAGSTER_HOME`, as the local deployment's. docs/speed.md ("Where issue 15's
goals stand") has its figures; the suite runs it once a mode (test_benchmarks.py), so that what
it shows of Dagster is checked on every upgrade. Run from the repository root:

    .venv/bin/python docs/experiments/single_run_week.py per_event
    .venv/bin/python docs/experiments/single_run_week.py single
"""

import atexit
import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODE = sys.argv[1] if len(sys.argv) > 1 else "per_event"  # per_event | single
WEEKS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
HOME = Path(tempfile.mkdtemp(prefix="single-run-week-"))
atexit.register(shutil.rmtree, HOME, ignore_errors=True)
os.environ["DAGSTER_HOME"] = str(HOME)
(HOME / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

import dagster as dg  # noqa: E402  (after DAGSTER_HOME is set)

EVENTS = ["evt-a", "evt-b", "evt-c"]
events = dg.DynamicPartitionsDefinition(name="events")
policy = dg.BackfillPolicy.single_run() if MODE == "single" else None


class InMemory(dg.IOManager):
    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        pass

    def load_input(self, context: dg.InputContext) -> int:
        return 1


@dg.asset(io_manager_key="values")
def snapshot() -> int:
    return 1


def batch_asset(name: str, upstream: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, partitions_def=events, backfill_policy=policy, io_manager_key="values",
              ins={"upstream": dg.AssetIn(upstream)})  # fmt: skip
    def body(context: dg.AssetExecutionContext, upstream: int) -> dg.MaterializeResult:
        keys = context.partition_keys if MODE == "single" else [context.partition_key]
        return dg.MaterializeResult(metadata={key: len(key) for key in keys})

    return body


def blocking_check(asset: str, index: int) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset, name=f"check_{index}", partitions_def=events, blocking=True)
    def check() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    return check


names = ["raw", "filtered", "scored", "table", "metrics", "export"]
assets = [batch_asset(name, upstream) for name, upstream in zip(names, ["snapshot", *names], strict=False)]
checked = ["raw", "filtered", "scored", "scored", "table", "export"]
checks = [blocking_check(asset, index) for index, asset in enumerate(checked)]
jobs = {
    name: dg.define_asset_job(name, selection=dg.AssetSelection.assets(*selected), executor_def=dg.in_process_executor)
    for name, selected in {"snap": ["snapshot"], "batch": names[:5], "export": ["export"]}.items()
}
defs = dg.Definitions(assets=[snapshot, *assets], asset_checks=checks, jobs=list(jobs.values()),
                      resources={"values": InMemory()})  # fmt: skip
instance = dg.DagsterInstance.get()
instance.add_dynamic_partitions("events", EVENTS)


def week() -> float:
    """The week's runs: the snapshot, then the batch and the export per event, or each once over all."""
    start = time.perf_counter()
    assert defs.get_job_def("snap").execute_in_process(instance=instance).success
    for job in ("batch", "export"):
        if MODE == "single":
            tags = {"dagster/asset_partition_range_start": EVENTS[0], "dagster/asset_partition_range_end": EVENTS[-1]}
            assert defs.get_job_def(job).execute_in_process(instance=instance, tags=tags).success
        else:
            for event in EVENTS:
                assert defs.get_job_def(job).execute_in_process(instance=instance, partition_key=event).success
    return time.perf_counter() - start


walls = [week() for _ in range(WEEKS)]
print(f"{MODE}: the week's floor {statistics.median(walls):.2f} s (median of {WEEKS}: {[round(w, 2) for w in walls]})")
raw = instance.fetch_materializations(dg.AssetKey("raw"), limit=len(EVENTS)).records
metadata_keys = {record.partition_key: sorted(record.asset_materialization.metadata) for record in raw}
print("raw's latest materializations (partition: metadata keys):", metadata_keys)
history = instance.event_log_storage.get_asset_check_execution_history(
    dg.AssetCheckKey(dg.AssetKey("raw"), "check_0"), limit=100
)
evaluations = collections.Counter((entry.status.value, entry.partition) for entry in history)
print("check_0's evaluations (status, partition):", dict(evaluations))
print(json.dumps({"mode": MODE, "walls_s": walls, "metadata_keys": metadata_keys,
                  "check_evaluations": sorted([*key, count] for key, count in evaluations.items())}))  # fmt: skip
