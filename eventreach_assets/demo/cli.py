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
from datetime import datetime
from pathlib import Path

DEFAULT_HOME = ".eventreach"
WAREHOUSE_FILE = "warehouse.duckdb"

Handler = Callable[[argparse.Namespace], int]


def default_home() -> Path:
    """The data dir: `EVENTREACH_HOME`, else `./.eventreach` (same rule as the definitions)."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventreach-demo", description="EventReach local demo commands.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_seed(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
