"""Create or check the candidate store's DynamoDB tables from a shell (first deployment, operators):

    python -m eventreach_assets.resources.candidate_store.cli create-tables \\
        --table eventreach-candidates --cache-table eventreach-score-cache [--endpoint-url URL]
    python -m eventreach_assets.resources.candidate_store.cli check --table ... --cache-table ...
"""

from __future__ import annotations

import argparse
import sys

from eventreach_assets.resources.aws import aws_client
from eventreach_assets.resources.candidate_store.tables import (
    TableShapeError,
    check_candidate_tables,
    create_candidate_tables,
)

# botocore's default for DynamoDB (its legacy retry mode): 10 attempts in all.
_MAX_ATTEMPTS = 10


def main(argv: list[str] | None = None) -> int:
    """`create-tables` or `check` the two tables; credentials and region from the environment."""
    parser = argparse.ArgumentParser(
        prog="python -m eventreach_assets.resources.candidate_store.cli",
        description="Create or check the DynamoDB tables of the EventReach candidate store.",
    )
    parser.add_argument("command", choices=["create-tables", "check"])
    parser.add_argument("--table", required=True, help="candidates table name")
    parser.add_argument("--cache-table", required=True, help="score cache table name")
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION / profile)")
    parser.add_argument("--endpoint-url", default=None, help="custom endpoint, e.g. DynamoDB Local")
    args = parser.parse_args(argv)
    client = aws_client("dynamodb", region_name=args.region, endpoint_url=args.endpoint_url, max_attempts=_MAX_ATTEMPTS)
    try:
        if args.command == "create-tables":
            for line in create_candidate_tables(client, args.table, args.cache_table):
                print(line)
        else:
            check_candidate_tables(client, args.table, args.cache_table)
        print(f"ok: {args.table} and {args.cache_table} fit the candidate store")
    except TableShapeError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
