"""A sending run in its own process, for the kill test: what `email_invitations` does (`stream_campaign`)
over a ledger that outlives it, through SMTP or SES stand-ins. Prints the delivery report as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from eventreach_assets import bench_sends
from eventreach_assets.assets.campaigns import stream_campaign
from eventreach_assets.resources.ledger import DynamoDBDeliveryLedger, SqliteDeliveryLedger


def ledger_for(scenario: str, work: Path, endpoint: str | None, table: str):
    """The run's ledger: a SQLite file in `work`, or the DynamoDB table `table` on moto (created once)."""
    if scenario.endswith("+dynamodb"):
        ledger = DynamoDBDeliveryLedger(table_name=table, region_name=bench_sends.REGION, endpoint_url=endpoint)
        ledger.create_table()
        return ledger
    return SqliteDeliveryLedger(path=str(work / "ledger.sqlite"))


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    for name in ("--scenario", "--owner", "--table", "--endpoint"):
        parser.add_argument(name)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--smtp-port", type=int)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args(argv)
    wiring = bench_sends.Wiring(args.endpoint, args.smtp_port, None, args.concurrency, args.rate)
    plan = bench_sends.planned_rows(args.messages, bench_sends.PLANNED_AT)
    ledger = ledger_for(args.scenario, args.work, args.endpoint, args.table)
    channel = bench_sends.make_channel(args.scenario, args.work, wiring)
    try:
        run = stream_campaign(plan, bench_sends.renderer("email"), ledger=ledger, channel=channel,
                              now=bench_sends.utc_now, owner=args.owner, validate_email=True)  # fmt: skip
    finally:
        channel.close()
    print(json.dumps(run.report.as_metadata()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
