"""`make bench`: the weekly batch for one event through Dagster at several warehouse sizes.

For each size a child process seeds a synthetic warehouse and trains the models; then each
measured run is its own child process (so peak RSS is the batch's alone) that executes the
real `weekly_batch` and `export_candidates` jobs for the first upcoming event against a fresh
candidate store (a cold score cache, as on a Monday with newly trained models). Beside each
Dagster run, in the same invocation, the same work runs as bare domain code (the assets' own
functions on the same resources, no Dagster: `measure_bare`), also in its own child process;
it does the batch checks' work too (their verdict functions, each after its asset, as the job
runs them), timed as a stage of its own. Prints both and their ratio (medians of `--runs`),
the ratio over bare without the checks' work (the reference before the twenty-second
session), per-asset medians, throughput and each run's peak RSS. Then the week: the profile
snapshot once and weekly batch + export for three events read from it (program
`extraction: weekly_snapshot`; the one-event rows use `per_event`), through Dagster in one
process and as bare code likewise, and as the local deployment runs it: each run a fresh
run-worker process, as many at once as `dagster.yaml` allows (`measure_week_deployed`).
Under each size, where the Dagster runs' time beyond their asset bodies went (`dagster_share`: the
asset steps beyond the bodies, the check steps, the runs outside their steps), read back from their
event logs. First, once, the code location's start-up: what every run worker of a deployment pays
before its first step (importing the definitions in a fresh process), beside the framework's own
(dagster and polars alone). Ends with one JSON line of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

BENCH_NOW = datetime(2026, 11, 23, 2, 0)
STAGES = {"raw_candidates": "extract", "filtered_candidates": "filter", "scored_candidates": "score",
          "candidates_table": "store", "candidates_export": "export"}  # fmt: skip
WEEK_STAGES = {"profile_snapshot": "snapshot", **STAGES}  # the week's: summed over its events
CHECKS = "checks"  # the bare runs' stage for the checks' work (through Dagster it is in the check steps)
WEEK_EVENTS = 3
MODULE = "eventreach_assets.bench"  # by name: run as `-m`, this module is `__main__`
DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"  # the local deployment's instance settings
# A fresh process importing the code location, as a run worker, the code server and the daemon's
# sensor evaluations do; and the framework alone, its floor.
STARTUP = {"code_location": "import eventreach_assets.definitions", "framework": "import dagster, polars"}


def _instance(home: Path):  # noqa: ANN202 - dagster imported lazily so the parent stays light
    import dagster as dg

    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(dagster_home))


def prepare(home: Path, profiles: int) -> dict:
    """Seed the warehouse, register partitions and train the models (not part of the timing)."""
    from eventreach_assets.definitions import build_definitions
    from eventreach_assets.demo.generator import seed_warehouse
    from eventreach_assets.demo.run import register_event_partitions

    started = time.perf_counter()
    summary = seed_warehouse(home / "warehouse.duckdb", profiles, seed=7, as_of=BENCH_NOW)
    seeded = time.perf_counter() - started
    instance = _instance(home)
    defs = build_definitions(home=home, fixed_now=BENCH_NOW.isoformat())
    register_event_partitions(defs, instance)
    started = time.perf_counter()
    defs.resolve_job_def("train_models").execute_in_process(instance=instance)
    write_per_event_program(home)
    return {
        "seed_s": seeded, "train_s": time.perf_counter() - started, "event": summary.upcoming_event_ids[0],
        "events": list(summary.upcoming_event_ids[:WEEK_EVENTS]),
    }  # fmt: skip


def per_event_program(home: Path) -> Path:
    return home / "per-event-program.yaml"


def write_per_event_program(home: Path) -> None:
    """The packaged program with `extraction: per_event`: the one-event rows extract on their own."""
    import yaml

    from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH

    program = yaml.safe_load(DEFAULT_PROGRAM_PATH.read_text())
    per_event_program(home).write_text(yaml.safe_dump({**program, "extraction": "per_event"}))


def _fresh_candidate_store(home: Path) -> None:
    """A cold start: no stored candidates and no score cache (a Monday with newly trained models)."""
    from eventreach_assets.deployments import CANDIDATES_SQLITE

    for suffix in ("", "-wal", "-shm"):
        (home / f"{CANDIDATES_SQLITE}{suffix}").unlink(missing_ok=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Laps:
    """Seconds since the previous lap; `total` since construction."""

    def __init__(self) -> None:
        self.started = self.previous = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        lap, self.previous = now - self.previous, now
        return lap

    def total(self) -> float:
        return self.previous - self.started


def _add_figures(result: Any, stages: Counter[str], counts: Counter[str]) -> None:
    """Add one run's per-asset seconds and row counts (from its materializations) to the totals."""
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        name = event.materialization.asset_key.to_user_string()
        if "duration_s" in metadata:  # assets that time themselves (batch_metrics does not)
            stages[name] += float(metadata["duration_s"].value)
        if "dagster/row_count" in metadata:
            counts[name] += int(metadata["dagster/row_count"].value)
        if name == "raw_candidates":
            counts["extracted_rows"] += int(metadata["extracted_rows"].value)


def dagster_share(instance: Any, run_ids: list[str], bodies_s: float) -> dict[str, float]:
    """Where the runs' time beyond their asset bodies goes, read back from their event logs (after
    the timing): the asset steps beyond the bodies (inputs loaded, values written, step events),
    the check steps, and each run outside its steps (its start, planned events, end). `runs_s`: the
    runs' spans, first event to last; `check_step_count`: how many check steps. What the Dagster/bare
    ratio pays for, in every bench (docs/speed.md)."""
    from dagster import DagsterEventType

    edges = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    spans = asset_steps = check_steps = 0.0
    checks = 0
    for run_id in run_ids:
        records = instance.all_logs(run_id)
        spans += records[-1].timestamp - records[0].timestamp
        stamps: dict[str, list[float]] = {}
        checked: set[str] = set()
        for record in records:
            event_type = record.dagster_event.event_type if record.dagster_event else None
            if record.step_key and event_type in edges:
                stamps.setdefault(record.step_key, []).append(record.timestamp)
            if record.step_key and event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                checked.add(record.step_key)
        for step, times in stamps.items():
            if step in checked:
                check_steps += max(times) - min(times)
            else:
                asset_steps += max(times) - min(times)
        checks += len(checked)
    return {
        "asset_steps_beyond_bodies": asset_steps - bodies_s, "check_steps": check_steps,
        "runs_outside_steps": spans - asset_steps - check_steps, "runs_s": spans, "check_step_count": checks,
    }  # fmt: skip


def _execute(defs: Any, instance: Any, runs: list[tuple[str, str | None]]) -> dict:
    """Execute the jobs (job name, partition) in order through Dagster; wall, per-asset seconds
    (summed over partitions), counts and peak RSS.

    Each run's result is read and dropped before the next run starts: `execute_in_process` keeps
    every output value in its result (the week held all seven runs' frames, 3.96 GB at 3M), which
    a deployed run worker, one process per run, never does. The wall ends when the candidate
    store's background checkpoint has (`SqliteConnections.bulk_transaction`): the data on disk."""
    from eventreach_assets.resources.sqlite import wait_for_checkpoints

    stages: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    run_ids: list[str] = []
    started = time.perf_counter()
    for job, partition in runs:
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition)
        _add_figures(result, stages, counts)
        run_ids.append(result.run_id)
        del result
    wait_for_checkpoints()  # the store's data on disk, as an inline checkpoint would have left it
    wall = time.perf_counter() - started
    share = dagster_share(instance, run_ids, sum(stages.values()))
    share["between_runs"] = wall - share.pop("runs_s")  # plans made, results read, the store's checkpoint
    return {"wall_s": wall, "stages": stages, "counts": counts, "peak_rss_mb": _peak_rss_mb(), "share": share}


def measure(home: Path, event_id: str) -> dict:
    """One cold run of the weekly batch + export for one event through Dagster (the event's own
    extraction: program `extraction: per_event`); timings and peak RSS."""
    from eventreach_assets.definitions import build_definitions

    _fresh_candidate_store(home)
    instance = _instance(home)
    defs = build_definitions(home=home, program_path=per_event_program(home), fixed_now=BENCH_NOW.isoformat())
    return _execute(defs, instance, [("weekly_batch", event_id), ("export_candidates", event_id)])


def measure_week(home: Path, event_ids: list[str]) -> dict:
    """The week through Dagster (program `extraction: weekly_snapshot`): the profile snapshot once,
    then weekly batch + export for each event, cold; timings and peak RSS."""
    from eventreach_assets.definitions import build_definitions
    from eventreach_assets.jobs import profile_snapshot_job

    _fresh_candidate_store(home)
    instance = _instance(home)
    defs = build_definitions(home=home, fixed_now=BENCH_NOW.isoformat())
    per_event = [(job, event_id) for event_id in event_ids for job in ("weekly_batch", "export_candidates")]
    return _execute(defs, instance, [(profile_snapshot_job.name, None), *per_event])


def deployment_env(home: Path) -> dict[str, str]:
    """The environment a run worker of the local deployment on `home` reads (the module-level
    `defs` of `eventreach_assets.definitions` is built from it), clock pinned to the bench's."""
    _instance(home)  # the instance's dagster.yaml
    return {"EVENTREACH_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"),
            "EVENTREACH_NOW": BENCH_NOW.isoformat()}  # fmt: skip


def run_slots() -> int:
    """How many runs the local deployment executes at once (`dagster.yaml`'s `max_concurrent_runs`)."""
    import yaml

    return int(yaml.safe_load(DAGSTER_YAML.read_text())["concurrency"]["runs"]["max_concurrent_runs"])


def deployed_job(name: str) -> Any:
    """The job `name` of the code location a run worker loads (`eventreach_assets.definitions`),
    for `dg.build_reconstructable_job`."""
    from eventreach_assets.definitions import defs

    return defs.resolve_job_def(name)


def run_worker(job: str, partition: str | None) -> dict:
    """One run executed as a run worker of the deployment executes it: in this fresh process, from
    the code location the environment configures, through `dg.execute_job` (no output kept
    beyond its step), the partition given as the run's tag as schedules and sensors give it."""
    import dagster as dg

    recon = dg.build_reconstructable_job(MODULE, deployed_job.__name__, reconstructable_kwargs={"name": job})
    tags = {"dagster/partition": partition} if partition else {}
    stages: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(recon, instance, tags=tags)
        if not result.success:
            raise RuntimeError(f"{job} {partition or ''}: run {result.run_id} failed")
        _add_figures(result, stages, counts)
        share = dagster_share(instance, [result.run_id], sum(stages.values()))
    return {"stages": stages, "counts": counts, "peak_rss_mb": _peak_rss_mb(), "pid": os.getpid(), "share": share}


def measure_week_deployed(home: Path, event_ids: list[str]) -> dict:
    """The week as the local deployment runs it: every run a fresh process of its own (paying the
    code location's import, the instance and the interpreter's exit, as each run worker does), at
    most `run_slots()` at once, in the order its schedules launch them: the batch schedule's profile
    snapshot, then the events' weekly batches (`profile_snapshot_sensor`), then their exports (the
    export schedule, two and a half hours after the batch's: no export runs beside a batch). Wall
    from the first launch to the last exit, `windows` the batch's (snapshot and batches) and the
    export's; stages and counts summed; peak RSS the largest single run's (two run at once);
    `workers`: each run's process, start and end."""
    from concurrent.futures import ThreadPoolExecutor

    from eventreach_assets.jobs import export_job, profile_snapshot_job, weekly_batch_job

    _fresh_candidate_store(home)
    env = {**os.environ, **deployment_env(home)}
    env.pop("EVENTREACH_PROGRAM", None)  # the packaged program (`extraction: weekly_snapshot`)
    workers: list[dict] = []  # appended from the slots' threads; summed once they are done
    lap = _Laps()

    def run(job: str, partition: str | None = None) -> None:
        started = time.perf_counter() - lap.started
        figures = _child(["--run-worker", job, *(["--event", partition] if partition else [])], env=env)
        ended = time.perf_counter() - lap.started
        workers.append({"job": job, "partition": partition, "started_s": round(started, 3),
                        "ended_s": round(ended, 3), **figures})  # fmt: skip

    run(profile_snapshot_job.name)
    for job in (weekly_batch_job.name, export_job.name):  # the batch window, then the export's
        with ThreadPoolExecutor(max_workers=run_slots()) as slots:
            list(slots.map(partial(run, job), event_ids))  # list(): a failed run raises here
    wall = lap()
    batch_window = max(worker["ended_s"] for worker in workers if worker["job"] != export_job.name)
    windows = {"batch": batch_window, "export": wall - batch_window}
    stages: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    share: Counter[str] = Counter()
    for worker in workers:
        stages.update(worker["stages"])
        counts.update(worker["counts"])
        share.update(worker["share"])
        share["worker_processes"] += worker["ended_s"] - worker["started_s"]
    share["worker_processes"] -= share.pop("runs_s")  # each worker's start-up and exit, around its run
    peak = max(worker["peak_rss_mb"] for worker in workers)
    return {"wall_s": wall, "stages": stages, "counts": counts, "peak_rss_mb": peak, "workers": workers,
            "share": dict(share), "windows": windows}  # fmt: skip


def _bare_score(r: dict, event: Any, filtered: Any) -> Any:
    """The `scored_candidates` body on the same resources: cache look-up, fresh scores, merge."""
    import polars as pl

    from eventreach_assets.assets.scoring import CARRIED_COLUMNS, cached_probabilities
    from eventreach_assets.domain import scoring

    config = r["program"].load()
    model_ids = [spec.model_id for spec in config.scoring_models]
    models = r["scoring_service"].load_models(model_ids)
    versions = scoring.model_versions(models)
    cache = cached_probabilities(r["candidate_store"], event.event_id, versions, filtered, r["clock"])
    split = scoring.split_cached(filtered, event.event_id, versions, cache)
    fresh = scoring.score_in_batches(
        split.misses, event.topics, models, config.scoring.batch_size, predict=r["scoring_service"].predict_batches
    )
    for model_id, version in versions.items():
        probabilities = fresh.select(
            "customer_id", pl.col(scoring.probability_column(model_id)).alias(scoring.CACHE_PROBABILITY)
        )
        r["candidate_store"].put_cached_scores(
            event.event_id, model_id, version, probabilities, r["clock"].now(), config.candidate_ttl_days
        )
    bands = config.scoring.score_bands
    return (
        scoring.merge_scored(filtered, split.hits, fresh, model_ids)
        .with_columns(score_band=scoring.score_band_expr(pl.col(scoring.SCORE), bands.high, bands.medium))
        .join(filtered.select("customer_id", *CARRIED_COLUMNS), on="customer_id", maintain_order="left")
    )


def _bare_event(r: dict, event: Any, extracted: Any, stages: dict[str, float], lap: _Laps) -> int:
    """Filter, score, store and export one event's extracted candidates as the assets do, each
    asset's checks after it as the job runs them (the same functions, `batch_checks`'s verdicts:
    the checks' work is the batch's work too); the scored count. Each stage's seconds are added to
    `stages`, the checks' to `checks`. A blocking check that fails stops the event, as in the job."""
    import polars as pl

    from eventreach_assets.assets.filtering import filter_inputs
    from eventreach_assets.checks import batch_checks as checks
    from eventreach_assets.domain.filters import build_filter_chain, run_filter_chain

    config, now, event_id = r["program"].load(), r["clock"].now(), event.event_id
    sources = (r["program"], r["clock"], event_id)

    def done(stage: str) -> None:
        stages[stage] = stages.get(stage, 0.0) + lap()

    def checked(check: dg.AssetChecksDefinition, result: dg.AssetCheckResult) -> None:
        if not result.passed:
            found = {name: value.value for name, value in result.metadata.items()}
            raise RuntimeError(f"bare run: {check.check_key.name} failed for {event_id}: {found}")
        done(CHECKS)

    r["decision_log"].write("quarantine", event_id, extracted.quarantine)
    done("raw_candidates")
    checked(checks.raw_candidates_unique_customer, checks.unique_customer_verdict(extracted.candidates))
    inputs = filter_inputs(r["warehouse"], r["ledger"], r["program"], r["clock"], event_id)
    outcome = run_filter_chain(extracted.candidates, build_filter_chain(config), inputs)
    r["decision_log"].write("rejections", event_id, outcome.rejected.with_columns(decided_at=pl.lit(inputs.as_of)))
    survivors = outcome.survivors
    del outcome  # the rejections are written, not kept: the asset drops them when it returns
    done("filtered_candidates")
    checked(checks.filtered_candidates_policy, checks.policy_verdict(survivors, r["warehouse"], r["ledger"], *sources))
    scored = _bare_score(r, event, survivors)
    done("scored_candidates")
    checked(checks.scored_candidates_valid_scores, checks.valid_scores_verdict(scored))
    checks.band_shares(scored, config.scoring)  # the drift check's own work (its baseline is the instance's)
    done(CHECKS)
    store, channels = r["candidate_store"], [channel.channel_id for channel in config.invitation_channels]
    store.purge_expired(now)
    store.replace_event_candidates(
        config.program_id, event_id, scored, channels, now=now, ttl_days=config.candidate_ttl_days,
        batch_write_size=config.storage.batch_write_size,
    )  # fmt: skip
    done("candidates_table")
    checked(checks.candidates_table_matches_scored, checks.store_verdict(scored, store, *sources))
    items = store.exported_items(config.program_id, event_id, now=now)
    r["exporter"].export_event(config.program_id, event_id, now.date(), items)
    done("candidates_export")
    checked(checks.candidates_export_matches_store, checks.export_verdict(store, r["exporter"], *sources))
    return scored.height


def measure_bare(home: Path, event_id: str) -> dict:
    """The same batch + export as bare domain code: the assets' and the checks' functions on the
    same resources, no Dagster.

    The reference the Dagster figure is compared with (runs, steps, the IO manager and the event
    log are what the difference pays for); its wall without the checks' work is printed too."""
    from eventreach_assets.assets.extraction import extract_event
    from eventreach_assets.deployments import resources_for
    from eventreach_assets.resources.sqlite import wait_for_checkpoints

    _fresh_candidate_store(home)
    r = resources_for(home=home, program=per_event_program(home), fixed_now=BENCH_NOW.isoformat())
    stages: dict[str, float] = {}
    lap = _Laps()
    event, extracted = extract_event(r["warehouse"], r["program"], event_id)
    scored = _bare_event(r, event, extracted, stages, lap)
    counts = {"extracted_rows": extracted.extracted_rows, "scored_candidates": scored}
    wait_for_checkpoints()
    return {"wall_s": lap.total(), "stages": stages, "counts": counts, "peak_rss_mb": _peak_rss_mb()}


def measure_week_bare(home: Path, event_ids: list[str]) -> dict:
    """The week as bare domain code: the snapshot (extract the events' union, validate, sort,
    write Parquet), then each event read back from the file and batched as `measure_bare` does."""
    import polars as pl

    from eventreach_assets.assets.extraction import current_event
    from eventreach_assets.deployments import resources_for
    from eventreach_assets.domain.events import upcoming_topics
    from eventreach_assets.domain.extract import event_extract, profile_snapshot_rows
    from eventreach_assets.resources.parquet_io.local import write_value
    from eventreach_assets.resources.sqlite import wait_for_checkpoints

    _fresh_candidate_store(home)
    r = resources_for(home=home, fixed_now=BENCH_NOW.isoformat())
    stages: dict[str, float] = {}
    lap, path = _Laps(), home / "bare-snapshot.parquet"
    topics = upcoming_topics(r["warehouse"].events(), r["clock"].now())
    snapshot = profile_snapshot_rows(r["warehouse"].extract_candidates(topics), r["program"].load().marketplaces)
    write_value(snapshot, path)  # as the IO manager stores it
    del snapshot
    stages["profile_snapshot"] = lap()
    counts = {"extracted_rows": 0, "scored_candidates": 0}
    for event_id in event_ids:
        event = current_event(r["warehouse"], event_id)
        extracted = event_extract(pl.read_parquet(path), event.topics)
        counts["extracted_rows"] += extracted.extracted_rows
        counts["scored_candidates"] += _bare_event(r, event, extracted, stages, lap)
    wait_for_checkpoints()
    return {"wall_s": lap.total(), "stages": stages, "counts": counts, "peak_rss_mb": _peak_rss_mb()}


def _startup_once(statement: str) -> dict:
    """Wall seconds and peak RSS of a fresh interpreter running `statement`."""
    report = "import json, resource; print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))"
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", f"{statement}\n{report}"], check=True, capture_output=True, text=True
    ).stdout
    return {"wall_s": time.perf_counter() - started, "peak_rss_mb": float(output.strip().splitlines()[-1])}


def measure_startup(runs: int) -> dict:
    """Medians of `runs` fresh processes per `STARTUP` statement, interleaved; peak RSS the largest."""
    samples: dict[str, list[dict]] = {name: [] for name in STARTUP}
    for _ in range(runs):
        for name, statement in STARTUP.items():
            samples[name].append(_startup_once(statement))
    return {
        name: {
            "wall_s": round(statistics.median(s["wall_s"] for s in runs_of), 3),
            "walls_s": [round(s["wall_s"], 3) for s in runs_of],
            "peak_rss_mb": round(max(s["peak_rss_mb"] for s in runs_of), 1),
        }
        for name, runs_of in samples.items()
    }


def _child(args: list[str], env: dict[str, str] | None = None) -> dict:
    output = subprocess.run(
        [sys.executable, "-m", MODULE, *args], check=True, capture_output=True, text=True, env=env
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


RUNNERS = {"dagster": "--measure", "bare": "--measure-bare"}  # one event, its own extraction
WEEK_RUNNERS = {"week_dagster": "--measure-week", "week_bare": "--measure-week-bare",  # snapshot + events
                "week_deployed": "--measure-week-deployed"}  # fmt: skip
COLUMNS = (("profiles", 10), ("run", 12), ("extracted", 10), ("eligible", 9), ("wall s", 7), ("cand/min", 11),
           ("peak MB", 8))  # fmt: skip


def summarize(samples: list[dict], stages: dict[str, str]) -> dict:
    """Medians of the runs of one runner at one size; peak RSS is the largest run's. A bare
    runner's checks are a stage of their own, and its wall without them is given too."""
    stages = {**stages, CHECKS: CHECKS} if CHECKS in samples[0]["stages"] else stages
    return {
        "wall_s": statistics.median(s["wall_s"] for s in samples),
        "walls_s": [round(s["wall_s"], 3) for s in samples],
        "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
        "stages_s": {stages[name]: statistics.median(s["stages"].get(name, 0.0) for s in samples) for name in stages},
        **({"wall_without_checks_s": statistics.median(s["wall_s"] - s["stages"][CHECKS] for s in samples)}
           if CHECKS in stages else {}),
        "extracted": samples[0]["counts"].get("extracted_rows", 0),
        "eligible": samples[0]["counts"].get("scored_candidates", 0),
        **({"workers": [s["workers"] for s in samples]} if "workers" in samples[0] else {}),
        **({"windows_s": _medians(samples, "windows")} if "windows" in samples[0] else {}),
        **({"share_s": _medians(samples, "share")} if "share" in samples[0] else {}),
    }  # fmt: skip


def _medians(samples: list[dict], figures: str) -> dict[str, float]:
    """Each part's median over the runs of a runner's `figures` (a dict of seconds per part)."""
    return {part: statistics.median(s[figures][part] for s in samples) for part in samples[0][figures]}


def row(profiles: int, runner: str, figures: dict) -> str:
    extracted, wall = figures["extracted"], figures["wall_s"]
    stages = " ".join(f"{stage}={seconds:.2f}" for stage, seconds in figures["stages_s"].items())
    return (
        f"{profiles:>10,} {runner.replace('_', '-'):<12} {extracted:>10,} {figures['eligible']:>9,} {wall:>7.2f} "
        f"{extracted * 60 / wall:>11,.0f} {figures['peak_rss_mb']:>8,.0f}  {stages}"
    )


SHARE_PARTS = {"asset_steps_beyond_bodies": "asset steps", "check_steps": "check steps",
               "runs_outside_steps": "runs outside steps", "between_runs": "between runs",
               "worker_processes": "run-worker processes"}  # fmt: skip


def share_row(runner: str, figures: dict) -> str:
    """Where a Dagster runner's time beyond its asset bodies went (medians of `dagster_share`);
    as deployed, summed over the run workers, which overlap."""
    share = figures["share_s"]
    parts = ", ".join(f"{label} {share[part]:.2f}" for part, label in SHARE_PARTS.items() if part in share)
    name, checks = runner.replace("_", "-"), f" ({share['check_step_count']:.0f} check steps)"
    if "worker_processes" in share:
        windows = ", ".join(f"{window} window {seconds:.2f} s" for window, seconds in figures["windows_s"].items())
        return f"{'':>10} {name}, beyond the asset bodies summed over its run workers (s): {parts}{checks}; {windows}"
    beyond = figures["wall_s"] - sum(figures["stages_s"].values())
    return f"{'':>10} {name}: {beyond:.2f} s of the wall beyond the asset bodies: {parts}{checks}"


def agreeing(figures: dict, dagster: str, bare: str, wall: str = "wall_s") -> float:
    """Dagster's wall over bare's `wall` (`wall_without_checks_s`: bare without the checks' work),
    once both are shown to have done the same work."""
    if (figures[dagster]["extracted"], figures[dagster]["eligible"]) != (
        figures[bare]["extracted"], figures[bare]["eligible"]
    ):  # fmt: skip
        raise RuntimeError(f"bare and Dagster runs disagree: {figures[dagster]} vs {figures[bare]}")
    return round(figures[dagster]["wall_s"] / figures[bare][wall], 3)


RATIOS = {"dagster_over_bare": ("dagster", "bare"), "week_dagster_over_bare": ("week_dagster", "week_bare"),
          "week_deployed_over_bare": ("week_deployed", "week_bare")}  # fmt: skip


def measure_size(profiles: int, runs: int) -> dict:
    """Seed and train once, then alternate Dagster and bare runs, one event and the week (each
    its own child process)."""
    home = Path(tempfile.mkdtemp(prefix=f"eventreach-bench-{profiles}-"))
    try:
        prepared = _child(["--prepare", str(home), "--profiles", str(profiles)])
        samples: dict[str, list[dict]] = {runner: [] for runner in {**RUNNERS, **WEEK_RUNNERS}}
        for _ in range(runs):  # interleaved, so all see the same load on a shared machine
            for runner, flag in RUNNERS.items():
                samples[runner].append(_child([flag, str(home), "--event", prepared["event"]]))
            for runner, flag in WEEK_RUNNERS.items():
                samples[runner].append(_child([flag, str(home), "--events", ",".join(prepared["events"])]))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    figures: dict[str, Any] = {runner: summarize(samples[runner], STAGES) for runner in RUNNERS}
    figures |= {runner: summarize(samples[runner], WEEK_STAGES) for runner in WEEK_RUNNERS}
    setup = {"seed_s": round(prepared["seed_s"], 2), "train_s": round(prepared["train_s"], 2)}
    ratios = {name: agreeing(figures, *runners) for name, runners in RATIOS.items()}
    without_checks = {name: agreeing(figures, *runners, "wall_without_checks_s") for name, runners in RATIOS.items()}
    return {"profiles": profiles, **figures, **ratios, "without_checks": without_checks,
            "week_events": prepared["events"], "setup": setup}  # fmt: skip


def run(sizes: list[int], runs: int) -> None:
    startup = measure_startup(runs)
    code, framework = startup["code_location"], startup["framework"]
    print(
        f"start-up of a run worker (import the code location, fresh process; medians of {runs}): "
        f"{code['wall_s']:.2f} s, {code['peak_rss_mb']:,.0f} MB; dagster + polars alone {framework['wall_s']:.2f} s, "
        f"{framework['peak_rss_mb']:,.0f} MB"
    )
    print(f"weekly batch + export: one event (its own extraction), and a week of {WEEK_EVENTS} events (one profile")
    print("snapshot, then each event read from it); Dagster in one process and bare domain code; the week as deployed")
    print(f"(a fresh run worker per run, {run_slots()} at a time); {runs} cold runs each; medians")
    print(" ".join(f"{name:>{width}}" if name != "run" else f"{name:<{width}}" for name, width in COLUMNS), end="")
    print("  per asset (s; the week's summed over its events)")
    results = []
    for profiles in sizes:
        result = measure_size(profiles, runs)
        results.append(result)
        for runner in (*RUNNERS, *WEEK_RUNNERS):
            print(row(profiles, runner, result[runner]))
        setup, without = result["setup"], result["without_checks"]
        ratios = (
            f"ratio dagster/bare {result['dagster_over_bare']:.2f}, week {result['week_dagster_over_bare']:.2f}, "
            f"week deployed {result['week_deployed_over_bare']:.2f}; over bare without the checks' work "
            f"{without['dagster_over_bare']:.2f}, {without['week_dagster_over_bare']:.2f}, "
            f"{without['week_deployed_over_bare']:.2f}"
        )
        print(
            f"{'':>10} {ratios} (setup, not timed: seed {setup['seed_s']:.1f} s, train {setup['train_s']:.1f} s; "
            f"load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )
        for runner in ("dagster", "week_dagster", "week_deployed"):
            print(share_row(runner, result[runner]), flush=True)
    figures = {"bench": "weekly_batch", "runs": runs, "load_average": os.getloadavg(), "startup": startup}
    print(json.dumps({**figures, "sizes": results}))


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300000,1000000,3000000", help="comma-separated profile counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure-week", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure-week-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure-week-deployed", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-worker", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    parser.add_argument("--profiles", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--event", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(args.prepare, args.profiles)))
    elif args.measure:
        print(json.dumps(measure(args.measure, args.event)))
    elif args.measure_bare:
        print(json.dumps(measure_bare(args.measure_bare, args.event)))
    elif args.measure_week:
        print(json.dumps(measure_week(args.measure_week, args.events.split(","))))
    elif args.measure_week_bare:
        print(json.dumps(measure_week_bare(args.measure_week_bare, args.events.split(","))))
    elif args.measure_week_deployed:
        print(json.dumps(measure_week_deployed(args.measure_week_deployed, args.events.split(","))))
    elif args.run_worker:
        print(json.dumps(run_worker(args.run_worker, args.event)))
    else:
        run([int(size) for size in args.sizes.split(",")], args.runs)


if __name__ == "__main__":
    main()
