"""`eventreach-demo`: local demo commands (seed a synthetic warehouse, ...).

One argparse subcommand per action. To add one, write an `_add_<name>(subparsers)` that
registers its parser with `handler=<function(args) -> int>` and call it in `build_parser`.
The handlers import heavy modules lazily, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the handlers import the heavy modules lazily
    from eventreach_assets.demo.lifecycle import LaunchedRun, LifecycleReport

DEFAULT_HOME = ".eventreach"
WAREHOUSE_FILE = "warehouse.duckdb"

Handler = Callable[[argparse.Namespace], int]


def default_home() -> Path:
    """The data dir: `EVENTREACH_HOME`, else `./.eventreach` (same rule as deployments.py)."""
    return Path(os.environ.get("EVENTREACH_HOME") or DEFAULT_HOME)


def warehouse_path(home: Path) -> Path:
    """Where the local deployment's DuckDB warehouse lives inside a data dir."""
    return Path(home) / WAREHOUSE_FILE


def _positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _utc_datetime(text: str) -> datetime:
    """ISO 8601; a naive value is taken as UTC (the warehouse stores naive UTC)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date/time: {text!r}") from None


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help=f"data dir (default: $EVENTREACH_HOME or ./{DEFAULT_HOME})",
    )


def _seed(args: argparse.Namespace) -> int:
    from eventreach_assets.demo.generator import seed_warehouse

    path = warehouse_path(args.home or default_home())
    summary = seed_warehouse(path, args.profiles, seed=args.seed, as_of=args.as_of)
    as_of = f"{summary.as_of:%Y-%m-%d %H:%M} UTC"
    print(f"seeded {summary.path} in {summary.seconds:.1f}s (seed {summary.seed}, as of {as_of})")
    for table, rows in summary.table_rows.items():
        print(f"  {table:<20} {rows:>12,} rows")
    print(f"  {'unique customers':<20} {summary.unique_customers:>12,}")
    print(f"  {'invalid rows':<20} {summary.bad_rows:>12,} (quarantined by the extraction)")
    print(f"  upcoming events: {', '.join(summary.upcoming_event_ids)}")
    return 0


def _add_seed(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "seed",
        help="write a synthetic warehouse (DuckDB) to <home>/warehouse.duckdb",
        description="Generate customer profiles, events, registrations and invitation history; "
        "replaces the warehouse file atomically.",
    )
    parser.add_argument("--profiles", type=_positive_int, required=True, help="profile rows (e.g. 300000, 3000000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    parser.add_argument(
        "--as-of", type=_utc_datetime, default=None, help="the generator's 'now', ISO 8601 UTC (default: now)"
    )
    _add_home(parser)
    parser.set_defaults(handler=_seed)


def _prepare_homes(args: argparse.Namespace) -> tuple[Path, Path]:
    """The data dir and the Dagster instance dir (`DAGSTER_HOME`, default inside the data dir)."""
    home = (args.home or default_home()).resolve()
    os.environ["EVENTREACH_HOME"] = str(home)
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home / "dagster_home")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home, dagster_home


class _RunPrinter:
    """Prints the lifecycle's timeline: a line per run, routine runs (hourly ingests, nightly
    metrics) folded into one "meanwhile" line before the next notable run."""

    ROUTINE = ("_feed_sensor", "daily_metrics_schedule", "campaign_report_schedule", "freshness_schedule")

    def __init__(self) -> None:
        self.ingested: dict[str, list[int]] = {}  # routine job -> [runs, accepted] since the last printed line

    def flush(self) -> None:
        if self.ingested:
            jobs = ", ".join(f"{job} x{runs}" + (f" ({accepted:,} accepted)" if accepted else "")
                             for job, (runs, accepted) in self.ingested.items())  # fmt: skip
            print(f"{'':<21}meanwhile: {jobs}")
            self.ingested.clear()

    def show(self, run: LaunchedRun) -> None:
        if run.origin.endswith(self.ROUTINE) and run.success:
            counts = self.ingested.setdefault(run.job_name, [0, 0])
            counts[0] += 1
            counts[1] += int(run.summary.get("accepted", 0))
            return
        self.flush()
        numbers = ", ".join(
            f"{key} {value:,}" if isinstance(value, int) else f"{key} {value}" for key, value in run.summary.items()
        )
        status = "ok    " if run.success else "FAILED"
        print(f"    {run.at:%a %m-%d %H:%M}  {status} {run.job_name:<20} ({run.origin}) {numbers}")


def _lifecycle(args: argparse.Namespace) -> int:
    import warnings
    from datetime import timedelta

    import dagster as dg

    from eventreach_assets.demo.generator import seed_warehouse
    from eventreach_assets.demo.lifecycle import monday_before, play

    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    home, dagster_home = _prepare_homes(args)
    clock_start = monday_before(args.start or datetime.now(UTC))
    print("SIMULATED lifecycle: a synthetic warehouse, simulated customers, a simulated clock.")
    print(f"1/3 seeding {args.profiles:,} profiles as of {clock_start:%a %Y-%m-%d %H:%M} UTC ...")
    summary = seed_warehouse(warehouse_path(home), args.profiles, seed=args.seed, as_of=clock_start)
    event_id = args.event or summary.upcoming_event_ids[0]
    print(f"2/3 playing {event_id} from Monday 00:00, {args.step_minutes} simulated minutes per tick; every run")
    print("    below was launched by a schedule or sensor (the daemon's logic, evaluated on the simulated clock):")
    printer = _RunPrinter()
    report = play(
        home, dg.DagsterInstance.get(), event_id, clock_start, timedelta(minutes=args.step_minutes),
        seed=args.seed, progress=printer.show,
    )  # fmt: skip
    printer.flush()
    return _print_lifecycle_outcome(report, home, dagster_home)


def _print_lifecycle_outcome(report: LifecycleReport, home: Path, dagster_home: Path) -> int:
    """The event's funnel, deliverability and run count; 1 when a run failed."""
    import polars as pl

    event_id = report.event_id
    print(f"3/3 the funnel of {event_id} (from the ledger and engagement records), all channels:")
    with pl.Config(tbl_rows=40, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        funnel = report.funnel.filter(pl.col("channel") == "all").drop("channel")
        print(funnel.with_columns(pl.col("rate_of_previous").round(3)))
    print("\nDeliverability per channel (SIMULATED SES reports through the provider feed; rates as SES counts them):")
    with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_cols=-1, tbl_width_chars=120):
        print(report.deliverability)
    failed = sum(not run.success for run in report.timeline)
    print(f"\n{len(report.timeline)} runs ({failed} failed) in {report.seconds:.0f} s wall time.")
    html = home / "decisions" / "reports" / f"event={event_id}" / "campaign_report.html"
    if html.exists():
        print(f"Campaign report (tables, funnel and attribution charts): {html}")
    print(f"Dagster instance: {dagster_home}  (browse: make dev EVENTREACH_HOME={home})")
    return 1 if failed else 0


def _add_lifecycle(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lifecycle",
        help="SIMULATED: play one event from invitation to survey on a fast clock, through the real sensors",
    )
    parser.add_argument("--profiles", type=_positive_int, default=30_000, help="profile rows (default: 30000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    parser.add_argument("--event", help="event id (default: the first upcoming sample event)")
    parser.add_argument("--step-minutes", type=_positive_int, default=60, help="simulated minutes per tick")
    parser.add_argument("--start", type=_utc_datetime, help="simulated start (default: this week's Monday)")
    _add_home(parser)
    parser.set_defaults(handler=_lifecycle)


def _demo(args: argparse.Namespace) -> int:
    import warnings

    import dagster as dg
    import polars as pl

    from eventreach_assets.assets.campaigns import batch_ready_at
    from eventreach_assets.demo.generator import seed_warehouse
    from eventreach_assets.demo.run import funnel_frame, run_campaigns, run_weekly_batch

    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    home, dagster_home = _prepare_homes(args)
    print(f"1/4 seeding a synthetic warehouse with {args.profiles:,} profiles ...")
    summary = seed_warehouse(warehouse_path(home), args.profiles, seed=args.seed)
    print(f"    {summary.unique_customers:,} customers, upcoming events: {', '.join(summary.upcoming_event_ids)}")
    print("2/4 registering event partitions (catalog sensor) and training the models ...")
    instance = dg.DagsterInstance.get()
    reports, models = run_weekly_batch(home, instance)
    for name, metadata in models.items():
        if "holdout_auc" in metadata:
            print(f"    {name}: version {metadata['version']}, holdout AUC {metadata['holdout_auc']:.3f}")
    print("3/4 weekly batch + export per event:")
    with pl.Config(tbl_rows=20, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, fmt_str_lengths=60):
        for report in reports:
            failed = [name for name, passed in report.checks.items() if not passed]
            print(f"\n== {report.event_id}  (checks: {len(report.checks) - len(failed)} passed, {len(failed)} failed)")
            print(funnel_frame(report))
            bands = report.metadata.get("scored_candidates", {})
            print(
                "   score bands: "
                + ", ".join(f"{b} {bands.get(f'band_share_{b}', 0) * 100:.1f}%" for b in ("high", "medium", "low"))
            )
            for name in failed:
                print(f"   check failed: {name}")
    if reports and not args.skip_campaign:
        event_id = reports[0].event_id
        print(f"\n4/4 Monday's invitations for {event_id}: each segment at its local 10:00 (email) / 14:00 (in-app),")
        print("    run wave by wave on a simulated clock as the event-date sensor launches them; local outboxes:")
        start = batch_ready_at(instance, event_id) or datetime.now(UTC).replace(tzinfo=None)
        for job, waves in run_campaigns(home, instance, event_id, start).items():
            print(f"    {job}:")
            for wave in waves:
                metadata = wave.metadata
                failed = [e.check_name for e in wave.result.get_asset_check_evaluations() if not e.passed]
                print(
                    f"      {wave.at:%a %H:%M} UTC  sent {metadata.get('sent', 0):>7,}  waiting "
                    f"{metadata.get('waiting_for_local_send_time', 0):>7,}  {metadata.get('reason', '')}"
                    + (f"  checks failed: {failed}" if failed else "")
                )
        print(f"    outboxes: {home / 'outbox'} (open any .eml in a mail client)")
    print(f"\nDagster instance: {dagster_home}")
    print("Browse runs, materializations, checks and partitions: `make dev`, then http://127.0.0.1:3000")
    print("Why was a customer (not) invited: .venv/bin/eventreach-demo why --event <event_id> --customer <customer_id>")
    return 0


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="seed a warehouse and run the weekly batch for every upcoming event through Dagster",
    )
    parser.add_argument("--profiles", type=_positive_int, default=300_000, help="profile rows (default: 300000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    parser.add_argument("--skip-campaign", action="store_true", help="run the weekly batch only")
    _add_home(parser)
    parser.set_defaults(handler=_demo)


def _why(args: argparse.Namespace) -> int:
    from eventreach_assets.deployments import resources_for
    from eventreach_assets.why import explain

    resources = resources_for(home=(args.home or default_home()).resolve())
    program_id = resources["program"].load().program_id
    print(explain(resources["decision_log"], resources["candidate_store"], program_id, args.event, args.customer))
    return 0


def _add_why(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("why", help="why was a customer (not) invited to an event")
    parser.add_argument("--event", required=True, help="event id, e.g. evt-cloud-summit")
    parser.add_argument("--customer", required=True, help="customer id")
    _add_home(parser)
    parser.set_defaults(handler=_why)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventreach-demo", description="EventReach local demo commands.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_seed(subparsers)
    _add_demo(subparsers)
    _add_lifecycle(subparsers)
    _add_why(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
