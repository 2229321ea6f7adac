"""`make bench`: the weekly batch for one event through Dagster at several warehouse sizes.

For each size a child process seeds a synthetic warehouse and trains the models; then each
measured run is its own child process (so peak RSS is the batch's alone) that executes the
real `weekly_batch` and `export_candidates` jobs for the first upcoming event against a fresh
candidate store (a cold score cache, as on a Monday with newly trained models). Beside each
Dagster run, in the same invocation, the same work runs as bare domain code (the assets' own
functions on the same resources, no Dagster: `measure_bare`), also in its own child process.
Prints both and their ratio (medians of `--runs`), per-asset medians, throughput and each run's
peak RSS, and ends with one JSON line of every figure.
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
from datetime import datetime
from pathlib import Path
from typing import Any

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


def _fresh_candidate_store(home: Path) -> None:
    """A cold start: no stored candidates and no score cache (a Monday with newly trained models)."""
    for suffix in ("", "-wal", "-shm"):
        (home / f"candidates.sqlite{suffix}").unlink(missing_ok=True)


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


def measure(home: Path, event_id: str) -> dict:
    """One cold run of the weekly batch + export for one event through Dagster; timings and peak RSS."""
    from eventreach_assets.definitions import build_definitions

    _fresh_candidate_store(home)
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
    for event in (event for result in results for event in result.get_asset_materialization_events()):
        metadata = event.materialization.metadata
        name = event.materialization.asset_key.to_user_string()
        if "duration_s" in metadata:  # assets that time themselves (batch_metrics does not)
            stages[name] = float(metadata["duration_s"].value)
        if "dagster/row_count" in metadata:
            counts[name] = int(metadata["dagster/row_count"].value)
        if name == "raw_candidates":
            counts["extracted_rows"] = int(metadata["extracted_rows"].value)
    return {"wall_s": wall, "stages": stages, "counts": counts, "peak_rss_mb": _peak_rss_mb()}


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
        split.misses, event.topics, models, config.scoring.batch_size, predict=r["scoring_service"].predict
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


def measure_bare(home: Path, event_id: str) -> dict:
    """The same batch + export as bare domain code: the assets' functions on the same resources, no Dagster.

    The reference the Dagster figure is compared with (asset checks, IO manager and events are
    what the difference pays for)."""
    import polars as pl

    from eventreach_assets.assets.extraction import current_event
    from eventreach_assets.assets.filtering import filter_inputs
    from eventreach_assets.deployments import resources_for
    from eventreach_assets.domain.extract import validate_and_dedupe
    from eventreach_assets.domain.filters import build_filter_chain, run_filter_chain

    _fresh_candidate_store(home)
    r = resources_for(home=home, fixed_now=BENCH_NOW.isoformat())
    config, now, stages, lap = r["program"].load(), r["clock"].now(), {}, _Laps()
    event = current_event(r["warehouse"], event_id)
    extracted = validate_and_dedupe(r["warehouse"].extract_candidates(event.topics), config.marketplaces)
    r["decision_log"].write("quarantine", event_id, extracted.quarantine)
    stages["raw_candidates"] = lap()
    inputs = filter_inputs(r["warehouse"], r["ledger"], r["program"], r["clock"], event_id)
    outcome = run_filter_chain(extracted.candidates, build_filter_chain(config), inputs)
    r["decision_log"].write("rejections", event_id, outcome.rejected.with_columns(decided_at=pl.lit(inputs.as_of)))
    stages["filtered_candidates"] = lap()
    scored = _bare_score(r, event, outcome.survivors)
    stages["scored_candidates"] = lap()
    store, channels = r["candidate_store"], [channel.channel_id for channel in config.invitation_channels]
    store.purge_expired(now)
    store.replace_event_candidates(
        config.program_id, event_id, scored, channels, now=now, ttl_days=config.candidate_ttl_days,
        batch_write_size=config.storage.batch_write_size,
    )  # fmt: skip
    stages["candidates_table"] = lap()
    items = store.event_items(config.program_id, event_id, now=now)
    r["exporter"].export_event(config.program_id, event_id, now.date(), items)
    stages["candidates_export"] = lap()
    counts = {"extracted_rows": extracted.extracted_rows, "scored_candidates": scored.height}
    return {"wall_s": lap.total(), "stages": stages, "counts": counts, "peak_rss_mb": _peak_rss_mb()}


def _child(args: list[str]) -> dict:
    output = subprocess.run(
        [sys.executable, "-m", "eventreach_assets.bench", *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


RUNNERS = {"dagster": "--measure", "bare": "--measure-bare"}
COLUMNS = (("profiles", 10), ("run", 7), ("extracted", 10), ("eligible", 9), ("wall s", 7), ("cand/min", 11),
           ("peak MB", 8))  # fmt: skip


def summarize(samples: list[dict]) -> dict:
    """Medians of the runs of one runner at one size; peak RSS is the largest run's."""
    return {
        "wall_s": statistics.median(s["wall_s"] for s in samples),
        "walls_s": [round(s["wall_s"], 3) for s in samples],
        "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
        "stages_s": {STAGES[name]: statistics.median(s["stages"].get(name, 0.0) for s in samples) for name in STAGES},
        "extracted": samples[0]["counts"].get("extracted_rows", 0),
        "eligible": samples[0]["counts"].get("scored_candidates", 0),
    }


def row(profiles: int, runner: str, figures: dict) -> str:
    extracted, wall = figures["extracted"], figures["wall_s"]
    stages = " ".join(f"{stage}={seconds:.2f}" for stage, seconds in figures["stages_s"].items())
    return (
        f"{profiles:>10,} {runner:<7} {extracted:>10,} {figures['eligible']:>9,} {wall:>7.2f} "
        f"{extracted * 60 / wall:>11,.0f} {figures['peak_rss_mb']:>8,.0f}  {stages}"
    )


def measure_size(profiles: int, runs: int) -> dict:
    """Seed and train once, then alternate Dagster and bare runs (each its own child process)."""
    home = Path(tempfile.mkdtemp(prefix=f"eventreach-bench-{profiles}-"))
    try:
        prepared = _child(["--prepare", str(home), "--profiles", str(profiles)])
        samples: dict[str, list[dict]] = {runner: [] for runner in RUNNERS}
        for _ in range(runs):  # interleaved, so both see the same load on a shared machine
            for runner, flag in RUNNERS.items():
                samples[runner].append(_child([flag, str(home), "--event", prepared["event"]]))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    figures: dict[str, Any] = {runner: summarize(runs_of) for runner, runs_of in samples.items()}
    dagster, bare = figures["dagster"], figures["bare"]
    if (dagster["extracted"], dagster["eligible"]) != (bare["extracted"], bare["eligible"]):
        raise RuntimeError(f"bare and Dagster runs disagree: {dagster} vs {bare}")
    ratio = dagster["wall_s"] / bare["wall_s"]
    setup = {"seed_s": round(prepared["seed_s"], 2), "train_s": round(prepared["train_s"], 2)}
    return {"profiles": profiles, **figures, "dagster_over_bare": round(ratio, 3), "setup": setup}


def run(sizes: list[int], runs: int) -> None:
    print(f"weekly batch + export for one event: Dagster and bare domain code; {runs} cold runs each; medians")
    print(" ".join(f"{name:>{width}}" if name != "run" else f"{name:<{width}}" for name, width in COLUMNS), end="")
    print("  per asset (s)")
    results = []
    for profiles in sizes:
        result = measure_size(profiles, runs)
        results.append(result)
        print(row(profiles, "dagster", result["dagster"]))
        print(row(profiles, "bare", result["bare"]))
        setup = result["setup"]
        print(
            f"{'':>10} ratio dagster/bare {result['dagster_over_bare']:.2f} (setup, not timed: seed "
            f"{setup['seed_s']:.1f} s, train {setup['train_s']:.1f} s; load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    print(json.dumps({"bench": "weekly_batch", "runs": runs, "load_average": os.getloadavg(), "sizes": results}))


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300000,1000000,3000000", help="comma-separated profile counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profiles", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--event", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(args.prepare, args.profiles)))
    elif args.measure:
        print(json.dumps(measure(args.measure, args.event)))
    elif args.measure_bare:
        print(json.dumps(measure_bare(args.measure_bare, args.event)))
    else:
        run([int(size) for size in args.sizes.split(",")], args.runs)


if __name__ == "__main__":
    main()
