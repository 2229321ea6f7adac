"""`make bench`: the weekly batch for one event through Dagster at several warehouse sizes.

For each size a child process seeds a synthetic warehouse and trains the models; then each
measured run is its own child process (so peak RSS is the batch's alone) that executes the
real `weekly_batch` and `export_candidates` jobs for the first upcoming event against a fresh
candidate store (a cold score cache, as on a Monday with newly trained models). Prints
per-asset medians, throughput and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

BENCH_NOW = datetime(2026, 11, 23, 2, 0)
STAGES = {"raw_candidates": "extract", "filtered_candidates": "filter", "scored_candidates": "score",
          "candidates_table": "store", "candidates_export": "export"}  # fmt: skip


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
    return {"seed_s": seeded, "train_s": time.perf_counter() - started, "event": summary.upcoming_event_ids[0]}


def measure(home: Path, event_id: str) -> dict:
    """One cold run of the weekly batch + export for one event; returns timings and peak RSS."""
    from eventreach_assets.definitions import build_definitions

    (home / "candidates.sqlite").unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        (home / f"candidates.sqlite{suffix}").unlink(missing_ok=True)
    instance = _instance(home)
    defs = build_definitions(home=home, fixed_now=BENCH_NOW.isoformat())
    started = time.perf_counter()
    results = [
        defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=event_id)
        for job in ("weekly_batch", "export_candidates")
    ]
    wall = time.perf_counter() - started
    stages: dict[str, float] = {}
    counts: dict[str, int] = {}
    for result in results:
        for event in result.get_asset_materialization_events():
            metadata = event.materialization.metadata
            name = event.materialization.asset_key.to_user_string()
            if "duration_s" in metadata:  # assets that time themselves (batch_metrics does not)
                stages[name] = float(metadata["duration_s"].value)
            if "dagster/row_count" in metadata:
                counts[name] = int(metadata["dagster/row_count"].value)
        for name, key in (("raw_candidates", "extracted_rows"),):
            for event in result.get_asset_materialization_events():
                if event.materialization.asset_key.to_user_string() == name:
                    counts["extracted_rows"] = int(event.materialization.metadata[key].value)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"wall_s": wall, "stages": stages, "counts": counts, "peak_rss_mb": peak_kb / 1024}


def _child(args: list[str]) -> dict:
    output = subprocess.run(
        [sys.executable, "-m", "eventreach_assets.bench", *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def run(sizes: list[int], runs: int) -> None:
    print(f"weekly batch for one event through Dagster; {runs} cold runs per size; medians")
    columns = ("profiles", 10), ("extracted", 10), ("eligible", 9), ("wall s", 7), ("cand/min", 11), ("peak MB", 8)
    print(" ".join(f"{name:>{width}}" for name, width in columns) + "  per asset (s)")
    for profiles in sizes:
        home = Path(tempfile.mkdtemp(prefix=f"eventreach-bench-{profiles}-"))
        try:
            prepared = _child(["--prepare", str(home), "--profiles", str(profiles)])
            samples = [_child(["--measure", str(home), "--event", prepared["event"]]) for _ in range(runs)]
            wall = statistics.median(s["wall_s"] for s in samples)
            peak = max(s["peak_rss_mb"] for s in samples)
            extracted = samples[0]["counts"].get("extracted_rows", 0)
            eligible = samples[0]["counts"].get("scored_candidates", 0)
            per_stage = {stage: statistics.median(s["stages"].get(stage, 0.0) for s in samples) for stage in STAGES}
            stages = " ".join(f"{STAGES[stage]}={seconds:.2f}" for stage, seconds in per_stage.items())
            print(
                f"{profiles:>10,} {extracted:>10,} {eligible:>9,} {wall:>7.2f} {extracted * 60 / wall:>11,.0f} "
                f"{peak:>8,.0f}  {stages}"
            )
            print(
                f"{'':>10} (setup, not timed above: seed {prepared['seed_s']:.1f} s, train {prepared['train_s']:.1f} s)"
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300000,1000000,3000000", help="comma-separated profile counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profiles", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--event", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(args.prepare, args.profiles)))
    elif args.measure:
        print(json.dumps(measure(args.measure, args.event)))
    else:
        run([int(size) for size in args.sizes.split(",")], args.runs)


if __name__ == "__main__":
    main()
