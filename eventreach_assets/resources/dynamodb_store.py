"""The candidates table and score cache on DynamoDB (the production deployment's store).

Same items, keys and semantics as `SqliteCandidateStore` (the contract tests in
`eventreach_assets_tests/test_candidate_store.py` run against both); this module only does I/O.

Tables are code: `candidate_table_definition` / `score_cache_table_definition` are the
`CreateTable` requests, `create_candidate_tables` creates them and turns TTL on, and
`check_candidate_tables` is what `setup_for_execution` runs so a run against a table of the
wrong shape fails at start with the table named and every difference listed:

    python -m eventreach_assets.resources.dynamodb_store create-tables \\
        --table eventreach-candidates --cache-table eventreach-score-cache [--endpoint-url URL]
    python -m eventreach_assets.resources.dynamodb_store check --table ... --cache-table ...

Writes are `BatchWriteItem`s of `batch_write_size` (<= 25) items sent by `max_parallel_writers`
threads. Throttling (`ProvisionedThroughputExceededException`, `ThrottlingException`, ...) and
`UnprocessedItems` are retried with exponential backoff and full jitter, at most `max_retries`
times per batch; then the call raises `DynamoDBWriteError` saying how many items were not
written. botocore's own retries are off so every retry is counted (`retry_counts`). Reads are
`Query`s by key (never `Scan`), expired items filtered out because TTL deletes lazily.

**Index write sharding.** Every item a batch writes for an event carries the same GSI2
partition key (program x event) and, per channel, the same GSI1 partition key (program x channel
x event). A DynamoDB partition takes at most 1,000 write units/s and a GSI that falls behind
throttles the table's own writes, so unsharded, a 100K-customer event (200K items) takes at
least ~200 s to write however many writers run (split-for-heat may eventually divide a hot key
by sort-key range, but only after minutes of throttling). The DynamoDB store therefore spreads
both keys over `gsi_shards` values (default 8): `gsi1pk` and `gsi2pk` get a `#SHARD#<n>`
suffix, n = crc32(customer_id) mod shards, the same for all of a customer's items and stable
across processes and re-runs. Reads query every shard in parallel: a top-N page merges the
shards' score-descending streams (each paged lazily) and the GSI2 reads concatenate, so a read
costs `gsi_shards` small queries instead of one; the top-N cursor is a position in the global
(score desc, customer_id) order and needs no per-shard state. Eight shards lift each key's
ceiling to ~8,000 writes/s, about twice what the default 4 writer threads push (25-item
batches, one round trip each); raise both together. Choose the count with the tables: raising
it later from 2 or more is safe (reads also query every old shard key; items move on their
event's next run, kept registrations are re-keyed), but lowering it, or raising it from 1,
leaves items under keys no read queries until their TTL ends. With `gsi_shards=1` the keys are
exactly those of `domain/candidate_items.py`, column for column with the SQLite store.

**Equal scores.** DynamoDB returns items with equal GSI1 sort keys in no defined order, while the
contract is score desc, then customer_id. A page therefore reads past its limit to the end of
the last equal-score run and sorts; the cursor is the (score, customer_id) of the page's last
item and the next page queries score BETWEEN min AND that score, filtering out what came before
(the same cursor as the SQLite store). Cost: at most one equal-score run beyond the limit per
page; scores are model probabilities, so long runs are rare.

**purge_expired is a no-op returning 0.** DynamoDB's TTL deletes expired items and cache entries
in the background without consuming write capacity (typically within a few days); reads filter
`expires_at` meanwhile, and a replace deletes its own event's expired items anyway. A key-based
cleanup would first have to find the events with expired items, which only a Scan can do.

**Not transactional.** A replace puts the new items first, then deletes stale ones, then extends
retained registrations: a failure in between leaves extra items, never missing ones, and a
re-run converges (every write is idempotent). The event's current keys come from GSI2, which is
eventually consistent (usually well under a second), and a registration marked while its event
is being replaced can be overwritten by the new put; replaying registrations is harmless
(earliest wins), so a registrations sync should run after the batch.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import boto3
import dagster as dg
import polars as pl
from boto3.dynamodb.types import DYNAMODB_CONTEXT
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from pydantic import Field, PrivateAttr

from eventreach_assets.domain import candidate_items as ci
from eventreach_assets.resources.candidate_store import (
    CACHE_SCHEMA,
    TS_FORMAT,
    CandidatePage,
    CandidateStoreResource,
    WriteSummary,
    decode_cursor,
    encode_cursor,
    registration_frame,
    resolve_now,
)
from eventreach_assets.resources.dynamodb import run_parallel

T = TypeVar("T")
R = TypeVar("R")

GSI1 = "GSI1"
GSI2 = "GSI2"
TTL_ATTRIBUTE = "expires_at"
MAX_BATCH_WRITE = 25  # DynamoDB's BatchWriteItem limit
MAX_BATCH_GET = 100  # DynamoDB's BatchGetItem limit
RETRYABLE_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
_CLIENT_LOCK = threading.Lock()  # module level: a Lock in a pydantic field would not survive copies
_SESSIONS: dict[tuple[int, str | None], boto3.session.Session] = {}  # (pid, profile): models load once
_STATS_LOCK = threading.Lock()
_TINY = Decimal("1E-129")  # DynamoDB numbers go down to 1E-130; anything smaller is stored as 0


class DynamoDBThrottledError(RuntimeError):
    """Calls still throttled (or items still unprocessed) after the last retry."""


class DynamoDBWriteError(DynamoDBThrottledError):
    """Writes still throttled or unprocessed after the last retry; `unwritten` items are missing."""

    def __init__(self, message: str, unwritten: int) -> None:
        super().__init__(message)
        self.unwritten = unwritten


class TableShapeError(RuntimeError):
    """A table the store uses is missing or lacks a key, an index or TTL the store relies on."""


# ---- table definitions --------------------------------------------------------------------


def _key(name: str, key_type: str) -> dict[str, str]:
    return {"AttributeName": name, "KeyType": key_type}


def candidate_table_definition(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the candidates table (TTL is set separately, on expires_at).

    Both GSIs project ALL attributes: every read returns whole items, and an item is well under
    1 KB, so a projected write costs the same one write unit as a keys-only one.
    """
    return {
        "TableName": name,
        "KeySchema": [_key("pk", "HASH"), _key("sk", "RANGE")],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "gsi1pk", "AttributeType": "S"},
            {"AttributeName": ci.GSI1_SORT_KEY, "AttributeType": "N"},
            {"AttributeName": "gsi2pk", "AttributeType": "S"},
            {"AttributeName": "gsi2sk", "AttributeType": "S"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": GSI1,
                "KeySchema": [_key("gsi1pk", "HASH"), _key(ci.GSI1_SORT_KEY, "RANGE")],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": GSI2,
                "KeySchema": [_key("gsi2pk", "HASH"), _key("gsi2sk", "RANGE")],
                "Projection": {"ProjectionType": "ALL"},
            },
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def score_cache_table_definition(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the score cache (PK customer, SK event x model x version)."""
    return {
        "TableName": name,
        "KeySchema": [_key("pk", "HASH"), _key("sk", "RANGE")],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def _table_exists(client: Any, name: str) -> bool:
    try:
        client.describe_table(TableName=name)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return False
        raise
    return True


def _ttl_status(client: Any, name: str) -> tuple[str, str | None]:
    description = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    return description.get("TimeToLiveStatus", "DISABLED"), description.get("AttributeName")


def create_candidate_tables(
    client: Any, table_name: str, cache_table_name: str, wait_seconds: float = 2.0
) -> list[str]:
    """Create whichever of the two tables is missing, wait until active, enable TTL; then check.

    Returns what was done, one line per step. An existing table is left as it is apart from
    enabling TTL when it is off; a shape that differs otherwise raises `TableShapeError`.
    """
    done: list[str] = []
    for definition in (candidate_table_definition(table_name), score_cache_table_definition(cache_table_name)):
        name = definition["TableName"]
        if _table_exists(client, name):
            done.append(f"table {name} exists")
        else:
            client.create_table(**definition)
            done.append(f"created table {name}")
        client.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": wait_seconds, "MaxAttempts": max(1, int(600 / wait_seconds))}
        )
        status, attribute = _ttl_status(client, name)
        if status in ("DISABLED", "DISABLING") or attribute is None:
            client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
            )
            done.append(f"enabled TTL on {name}.{TTL_ATTRIBUTE}")
    check_candidate_tables(client, table_name, cache_table_name)
    return done


def _describe_keys(keys: Sequence[dict[str, str]], types: dict[str, str]) -> str:
    return ", ".join(f"{k['AttributeName']} {k['KeyType']} ({types.get(k['AttributeName'], '?')})" for k in keys)


def table_shape_problems(client: Any, definition: dict[str, Any]) -> list[str]:
    """How the live table named in `definition` differs from it (empty when it fits).

    Checks the key schema and key attribute types, every GSI of the definition (keys,
    projection, ACTIVE) and TTL enabled on expires_at. Extra GSIs and the billing mode are the
    owner's business and not checked.
    """
    name = definition["TableName"]
    try:
        table = client.describe_table(TableName=name)["Table"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return ["the table does not exist"]
        raise
    want_types = {a["AttributeName"]: a["AttributeType"] for a in definition["AttributeDefinitions"]}
    have_types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    problems = []
    have_keys = table.get("KeySchema", [])
    if _describe_keys(have_keys, have_types) != _describe_keys(definition["KeySchema"], want_types):
        problems.append(
            f"key schema is [{_describe_keys(have_keys, have_types)}], "
            f"want [{_describe_keys(definition['KeySchema'], want_types)}]"
        )
    have_indexes = {index["IndexName"]: index for index in table.get("GlobalSecondaryIndexes", [])}
    for wanted in definition.get("GlobalSecondaryIndexes", []):
        index_name = wanted["IndexName"]
        want = f"{_describe_keys(wanted['KeySchema'], want_types)}, projection {wanted['Projection']['ProjectionType']}"
        have_index = have_indexes.get(index_name)
        if have_index is None:
            problems.append(f"global secondary index {index_name} is missing (want {want})")
            continue
        have = (
            f"{_describe_keys(have_index['KeySchema'], have_types)}, "
            f"projection {have_index.get('Projection', {}).get('ProjectionType')}"
        )
        if have != want:
            problems.append(f"global secondary index {index_name} is [{have}], want [{want}]")
        elif have_index.get("IndexStatus", "ACTIVE") != "ACTIVE":
            problems.append(f"global secondary index {index_name} is {have_index['IndexStatus']}, not yet ACTIVE")
    status, attribute = _ttl_status(client, name)
    if status not in ("ENABLED", "ENABLING") or attribute != TTL_ATTRIBUTE:
        on = f" on {attribute!r}" if attribute else ""
        problems.append(f"TTL is {status}{on}, want ENABLED on {TTL_ATTRIBUTE!r}")
    return problems


def check_candidate_tables(client: Any, table_name: str, cache_table_name: str) -> None:
    """Raise `TableShapeError` naming each table whose shape differs and how."""
    messages = []
    for definition in (candidate_table_definition(table_name), score_cache_table_definition(cache_table_name)):
        problems = table_shape_problems(client, definition)
        if problems:
            listed = "".join(f"\n  - {problem}" for problem in problems)
            messages.append(f"DynamoDB table {definition['TableName']!r} does not fit the candidate store:{listed}")
    if messages:
        raise TableShapeError(
            "\n".join(messages)
            + "\nCreate or fix the tables with `python -m eventreach_assets.resources.dynamodb_store"
            f" create-tables --table {table_name} --cache-table {cache_table_name}` (see its --help)."
        )


# ---- attribute values ---------------------------------------------------------------------


def number_value(value: float | int) -> str:
    """The DynamoDB wire form of a number: exact for floats (shortest repr), as boto3 would send."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"DynamoDB cannot store {value!r}")
    number = Decimal(repr(value))
    if number != 0 and abs(number) < _TINY:
        return "0"
    return str(DYNAMODB_CONTEXT.create_decimal(number))


def _string_attrs(names: Sequence[str]) -> set[str]:
    return {n for n in names if n not in (ci.GSI1_SORT_KEY, TTL_ATTRIBUTE) and not n.startswith(ci.PROBABILITY_PREFIX)}


def to_dynamo_items(frame: pl.DataFrame) -> list[dict[str, dict[str, str]]]:
    """Item frames (keys + attributes, as `build_candidate_items` makes them) as DynamoDB items.

    Timestamps use the SQLite store's fixed-width format (strings compare in time order);
    null and NaN attributes are left out, as a `PutItem` would drop them.
    """
    stored = frame.with_columns(
        pl.col(name).dt.to_string(TS_FORMAT) for name in ("status_at", "written_at") if name in frame.columns
    )
    if "batch_date" in stored.columns:
        stored = stored.with_columns(pl.col("batch_date").dt.to_string("%Y-%m-%d"))
    strings = _string_attrs(stored.columns)
    items = []
    for row in stored.iter_rows(named=True):
        item: dict[str, dict[str, str]] = {}
        for name, value in row.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            item[name] = {"S": value} if name in strings else {"N": number_value(value)}
        items.append(item)
    return items


def _plain(value: dict[str, Any] | None, name: str) -> Any:
    if value is None or "NULL" in value:
        return None
    if "S" in value:
        return value["S"]
    if "N" in value:
        return int(value["N"]) if name == TTL_ATTRIBUTE else float(value["N"])
    raise ValueError(f"unexpected attribute value for {name}: {value}")


def items_frame(items: Sequence[dict[str, dict[str, Any]]]) -> pl.DataFrame:
    """DynamoDB items as the frame every read returns (`ci.item_columns`, no keys, typed)."""
    probabilities = sorted({name for item in items for name in item if name.startswith(ci.PROBABILITY_PREFIX)})
    columns = ci.item_columns(probabilities)
    schema: dict[str, pl.DataType] = {name: pl.String() for name in columns}
    schema.update({ci.GSI1_SORT_KEY: pl.Float64(), TTL_ATTRIBUTE: pl.Int64()})
    schema.update({name: pl.Float64() for name in probabilities})
    frame = pl.DataFrame({name: [_plain(item.get(name), name) for item in items] for name in columns}, schema=schema)
    frame = frame.with_columns(
        pl.col("status_at", "written_at").str.to_datetime(TS_FORMAT, time_zone="UTC", time_unit="us"),
        pl.col("batch_date").str.to_date("%Y-%m-%d"),
    )
    return ci.drop_empty_probabilities(frame)


def _names(*names: str) -> dict[str, str]:
    """ExpressionAttributeNames for every attribute used: many names (status, ...) are reserved."""
    return {f"#{name}": name for name in names}


# ---- the store ----------------------------------------------------------------------------


class DynamoDBCandidateStore(CandidateStoreResource):
    """Candidates table and score cache on DynamoDB; see the module docstring for the choices.

    Credentials come from boto3's default chain (AWS_* environment variables, a profile, the
    task or instance role); the key fields exist for `dg.EnvVar` only, never literals.
    """

    table_name: str = Field(description="The candidates table (see candidate_table_definition).")
    score_cache_table_name: str = Field(description="The score cache table (see score_cache_table_definition).")
    region_name: str | None = Field(default=None, description="AWS region; None uses AWS_REGION / the profile.")
    endpoint_url: str | None = Field(default=None, description="Custom endpoint (DynamoDB Local, moto); None is AWS.")
    profile_name: str | None = Field(default=None, description="Named AWS profile; None uses the default chain.")
    aws_access_key_id: str | None = Field(default=None, description="Only via dg.EnvVar; None uses the chain.")
    aws_secret_access_key: str | None = Field(default=None, description="Only via dg.EnvVar; None uses the chain.")
    aws_session_token: str | None = Field(default=None, description="Only via dg.EnvVar; None uses the chain.")
    max_parallel_writers: int = Field(default=4, ge=1, le=64, description="Threads writing batches or reading shards.")
    gsi_shards: int = Field(
        default=8, ge=1, le=100, description="Index partition keys per event (GSI2) and channel x event (GSI1)."
    )
    max_retries: int = Field(default=8, ge=0, description="Retries of a throttled call or unprocessed batch.")
    retry_base_seconds: float = Field(default=0.05, ge=0, description="First backoff ceiling; doubles per retry.")
    retry_max_seconds: float = Field(default=5.0, ge=0, description="Largest backoff ceiling.")
    validate_tables_on_setup: bool = Field(default=True, description="Check both tables' shape at run start.")

    _client: Any = PrivateAttr(default=None)
    _client_pid: int = PrivateAttr(default=-1)
    _stats: dict[str, int] = PrivateAttr(default_factory=dict)

    # -- plumbing --

    def dynamodb_client(self) -> Any:
        """The low-level client, one per process (boto3 clients are thread-safe, not fork-safe).

        botocore's retries are off: this store retries itself so each retry is counted.
        """
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            with _CLIENT_LOCK:
                if self._client is None or self._client_pid != pid:
                    session = _SESSIONS.get((pid, self.profile_name))
                    if session is None:
                        session = _SESSIONS[(pid, self.profile_name)] = boto3.session.Session(
                            profile_name=self.profile_name
                        )
                    config = Config(
                        retries={"mode": "standard", "total_max_attempts": 1},
                        max_pool_connections=max(10, 2 * self.max_parallel_writers),
                    )
                    self._client = session.client(
                        "dynamodb",
                        region_name=self.region_name,
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=self.aws_access_key_id,
                        aws_secret_access_key=self.aws_secret_access_key,
                        aws_session_token=self.aws_session_token,
                        config=config,
                    )
                    self._client_pid = pid
        return self._client

    def check_tables(self) -> None:
        """Raise `TableShapeError` unless both tables have the keys, GSIs and TTL this store needs."""
        check_candidate_tables(self.dynamodb_client(), self.table_name, self.score_cache_table_name)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.validate_tables_on_setup:
            self.check_tables()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Dropped, not closed: Dagster's copy of the resource may share the client with the original.
        self._client = None

    @property
    def retry_counts(self) -> dict[str, int]:
        """Retries since this store was made: `throttled` calls, `unprocessed` items resent, `retries`."""
        with _STATS_LOCK:
            return {"throttled": 0, "unprocessed": 0, "retries": 0, **self._stats}

    def _count(self, **increments: int) -> None:
        with _STATS_LOCK:
            for name, value in increments.items():
                self._stats[name] = self._stats.get(name, 0) + value

    def _backoff(self, attempt: int) -> None:
        """Exponential backoff with full jitter (AWS's advice): sleep U(0, min(max, base * 2^(attempt-1)))."""
        self._count(retries=1)
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (attempt - 1))
        time.sleep(random.uniform(0, ceiling))

    @staticmethod
    def _retryable(error: Exception) -> bool:
        if isinstance(error, HTTPClientError):
            return True
        return isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in RETRYABLE_ERRORS

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call, retried on throttling, 5xx and connection errors (all our calls are idempotent)."""
        method = getattr(self.dynamodb_client(), operation)
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._backoff(attempt)
            try:
                return method(**kwargs)
            except (ClientError, HTTPClientError) as error:
                if not self._retryable(error) or attempt == self.max_retries:
                    raise
                self._count(throttled=1)
        raise AssertionError("unreachable")

    def _parallel(self, function: Callable[[T], R], work: Sequence[T]) -> list[R]:
        return run_parallel(function, work, self.max_parallel_writers)

    def _batch_write(self, table: str, requests: list[dict[str, Any]]) -> int:
        """One BatchWriteItem, resending UnprocessedItems; returns how many items stayed unwritten."""
        pending = requests
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._backoff(attempt)
            try:
                response = self.dynamodb_client().batch_write_item(RequestItems={table: pending})
            except (ClientError, HTTPClientError) as error:
                if not self._retryable(error):
                    raise
                self._count(throttled=1)
                continue
            pending = response.get("UnprocessedItems", {}).get(table, [])
            if not pending:
                return 0
            self._count(unprocessed=len(pending))
        return len(pending)

    def _write(self, table: str, requests: list[dict[str, Any]], batch_size: int) -> int:
        """Write `requests` in batches by parallel writers; returns the batch count or raises."""
        if not 0 < batch_size <= MAX_BATCH_WRITE:
            raise ValueError(f"batch_write_size must be 1..{MAX_BATCH_WRITE}, got {batch_size}")
        batches = [requests[start : start + batch_size] for start in range(0, len(requests), batch_size)]
        unwritten = sum(self._parallel(lambda batch: self._batch_write(table, batch), batches))
        if unwritten:
            raise DynamoDBWriteError(
                f"{unwritten} of {len(requests)} items were not written to DynamoDB table {table!r}: still "
                f"throttled or unprocessed after {self.max_retries} retries per batch. The table is partly "
                "updated; re-run (writes are idempotent) or raise max_retries / the table's capacity.",
                unwritten,
            )
        return len(batches)

    def _query(self, first: dict[str, Any] | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every item of a Query, following LastEvaluatedKey; `first` is its first response if fetched."""
        response = first if first is not None else self._call("query", **kwargs)
        while True:
            yield from response.get("Items", [])
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
            if "Limit" in kwargs:  # a caller that guessed too small a page: grow, up to 1,000
                kwargs["Limit"] = min(1000, 2 * kwargs["Limit"])
            response = self._call("query", **kwargs)

    # -- writes --

    def _query_shards(self, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every item of one Query per shard, the shards read in parallel."""
        return [item for items in self._parallel(lambda query: list(self._query(**query)), queries) for item in items]

    def _event_state(self, program_id: str, event_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The event's keys (expired ones too) and its registered items, from one GSI2 query per shard."""
        rows = self._query_shards(
            [
                {
                    "TableName": self.table_name,
                    "IndexName": GSI2,
                    "KeyConditionExpression": "#gsi2pk = :pk",
                    "ProjectionExpression": (
                        "#pk, #sk, #customer_id, #status, #status_at, #registered_channel, #expires_at"
                    ),
                    "ExpressionAttributeNames": _names(
                        "gsi2pk", "pk", "sk", "customer_id", "status", "status_at", "registered_channel", "expires_at"
                    ),
                    "ExpressionAttributeValues": {":pk": {"S": pk}},
                }
                for pk in ci.shard_keys(ci.gsi2_pk(program_id, event_id), self.gsi_shards)
            ]
        )
        names = ["pk", "sk", "customer_id", "status", "status_at", "registered_channel", "expires_at"]
        frame = pl.DataFrame(
            {name: [_plain(row.get(name), name) for row in rows] for name in names},
            schema={**{name: pl.String() for name in names}, "expires_at": pl.Int64()},
        )
        registered = frame.filter(pl.col("status") == ci.STATUS_REGISTERED).select(
            "pk",
            "sk",
            "customer_id",
            pl.col("status_at").str.to_datetime(TS_FORMAT, time_zone="UTC", time_unit="us"),
            "registered_channel",
            "expires_at",
        )
        return frame.select("pk", "sk"), registered

    def replace_event_candidates(
        self,
        program_id: str,
        event_id: str,
        scored: pl.DataFrame,
        channels: list[str],
        now: datetime,
        ttl_days: int,
        batch_write_size: int,
    ) -> WriteSummary:
        started = time.perf_counter()
        if not 0 < batch_write_size <= MAX_BATCH_WRITE:
            raise ValueError(f"batch_write_size must be 1..{MAX_BATCH_WRITE}, got {batch_write_size}")
        items = ci.build_candidate_items(program_id, event_id, scored, channels, now, ttl_days)
        existing_keys, registered = self._event_state(program_id, event_id)
        plan = ci.plan_replace(items, existing_keys, registered, now)
        puts = [
            {"PutRequest": {"Item": item}}
            for item in to_dynamo_items(ci.with_index_shards(plan.items, self.gsi_shards))
        ]
        deletes = [{"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for pk, sk in plan.stale.iter_rows()]
        # New items before deletes: a failure in between leaves extra items, never missing ones.
        batches = self._write(self.table_name, puts, batch_write_size)
        batches += self._write(self.table_name, deletes, batch_write_size)
        self._extend_retained(program_id, event_id, plan, registered)
        return WriteSummary(
            program_id=program_id,
            event_id=event_id,
            customers=scored.height,
            items_written=plan.items.height,
            items_deleted=plan.stale.height,
            registered_preserved=plan.registered_preserved,
            registered_retained=plan.retained.height,
            batches=batches,
            expires_at=datetime.fromtimestamp(ci.expires_at(now, ttl_days), UTC),
            seconds=round(time.perf_counter() - started, 3),
        )

    def _extend_retained(self, program_id: str, event_id: str, plan: ci.ReplacePlan, registered: pl.DataFrame) -> None:
        """Raise the TTL of kept registered items to the batch's, and key them under the current shards."""
        if plan.retained.height == 0:
            return
        rows = plan.retained.join(registered.select("pk", "sk", "customer_id", "expires_at"), on=["pk", "sk"])

        def update(row: dict[str, Any]) -> None:
            channel = ci.channel_of_sk(row["sk"], event_id)
            customer_id = row["customer_id"]
            try:
                self._call(
                    "update_item",
                    TableName=self.table_name,
                    Key={"pk": {"S": row["pk"]}, "sk": {"S": row["sk"]}},
                    UpdateExpression="SET #expires_at = :expires, #gsi1pk = :gsi1pk, #gsi2pk = :gsi2pk",
                    ConditionExpression="attribute_exists(#pk)",
                    ExpressionAttributeNames=_names("expires_at", "gsi1pk", "gsi2pk", "pk"),
                    ExpressionAttributeValues={
                        ":expires": {"N": str(max(int(row["expires_at"]), plan.expires_at))},
                        ":gsi1pk": {
                            "S": ci.sharded_key(ci.gsi1_pk(program_id, channel, event_id), customer_id, self.gsi_shards)
                        },
                        ":gsi2pk": {
                            "S": ci.sharded_key(ci.gsi2_pk(program_id, event_id), customer_id, self.gsi_shards)
                        },
                    },
                )
            except ClientError as error:  # deleted meanwhile: nothing to keep
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise

        self._parallel(update, list(rows.iter_rows(named=True)))

    def mark_registered(
        self, program_id: str, event_id: str, customer_id: str, registered_at: datetime, channel: str | None
    ) -> int:
        prefix = ci.event_sk_prefix(ci.check_id("event_id", event_id))
        at = ci.as_utc(registered_at)
        at_text = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # == TS_FORMAT: fixed width, compares in time order
        pk = ci.customer_pk(customer_id, program_id)
        sks = [
            row["sk"]["S"]
            for row in self._query(
                TableName=self.table_name,
                KeyConditionExpression="#pk = :pk AND begins_with(#sk, :prefix)",
                ProjectionExpression="#sk",
                ExpressionAttributeNames=_names("pk", "sk"),
                ExpressionAttributeValues={":pk": {"S": pk}, ":prefix": {"S": prefix}},
                ConsistentRead=True,
            )
        ]
        for sk in sks:
            item_channel = ci.channel_of_sk(sk, event_id)
            values = {
                ":registered": {"S": ci.STATUS_REGISTERED},
                ":at": {"S": at_text},
                ":gsi2sk": {"S": ci.gsi2_sk(ci.STATUS_REGISTERED, at, customer_id, item_channel)},
            }
            update = "SET #status = :registered, #status_at = :at, #gsi2sk = :gsi2sk"
            if channel is None:
                update += " REMOVE #registered_channel"
            else:
                update += ", #registered_channel = :channel"
                values[":channel"] = {"S": channel}
            try:
                # Earliest registration wins: only an unregistered item or a later time is replaced.
                self._call(
                    "update_item",
                    TableName=self.table_name,
                    Key={"pk": {"S": pk}, "sk": {"S": sk}},
                    UpdateExpression=update,
                    ConditionExpression="attribute_exists(#pk) AND (#status <> :registered OR #status_at > :at)",
                    ExpressionAttributeNames=_names("pk", "status", "status_at", "gsi2sk", "registered_channel"),
                    ExpressionAttributeValues=values,
                )
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        return len(sks)

    def mark_registered_many(self, program_id: str, event_id: str, registrations: pl.DataFrame) -> int:
        """`mark_registered` per row (DynamoDB has no batch update), rows spread over the writers."""
        frame = registration_frame(registrations)
        bad = frame.filter(pl.col("customer_id").is_null() | pl.col("registered_at").is_null())
        if bad.height:
            raise ValueError(f"{bad.height} registrations lack customer_id or registered_at")
        ci.check_id("event_id", event_id)
        rows = list(frame.iter_rows(named=True))
        return sum(
            self._parallel(
                lambda row: self.mark_registered(
                    program_id, event_id, row["customer_id"], row["registered_at"], row["channel"]
                ),
                rows,
            )
        )

    def purge_expired(self, now: datetime) -> int:
        """No-op, returns 0: DynamoDB TTL deletes expired items itself (module docstring)."""
        return 0

    # -- reads --

    def _gsi1_shard_query(
        self,
        gsi1pk: str,
        min_score: float,
        after: tuple[float, str] | None,
        exclude_registered: bool,
        now: int,
        page: int,
    ) -> dict[str, Any]:
        """The Query of one GSI1 shard's live items with score >= min, score descending (ties in any order)."""
        names = ["gsi1pk", ci.GSI1_SORT_KEY, "expires_at"]
        values: dict[str, Any] = {
            ":pk": {"S": gsi1pk},
            ":min": {"N": number_value(float(min_score))},
            ":now": {"N": str(now)},
        }
        key = "#gsi1pk = :pk AND #score >= :min"
        filters = ["#expires_at > :now"]
        if exclude_registered:
            names.append("status")
            filters.append("#status <> :registered")
            values[":registered"] = {"S": ci.STATUS_REGISTERED}
        if after is not None:  # strictly after (last score, last customer) in (score desc, customer_id)
            names.append("customer_id")
            key = "#gsi1pk = :pk AND #score BETWEEN :min AND :last"
            filters.append("(#score < :last OR #customer_id > :last_customer)")
            values.update({":last": {"N": number_value(after[0])}, ":last_customer": {"S": after[1]}})
        return {
            "TableName": self.table_name,
            "IndexName": GSI1,
            "KeyConditionExpression": key,
            "FilterExpression": " AND ".join(filters),
            "ExpressionAttributeNames": _names(*names),
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": page,
        }

    def top_candidates_for_channel(
        self,
        program_id: str,
        event_id: str,
        channel: str,
        min_score: float,
        limit: int,
        exclude_registered: bool = True,
        cursor: str | None = None,
        now: datetime | None = None,
    ) -> CandidatePage:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        query_key = f"{ci.gsi1_pk(program_id, channel, event_id)}|{float(min_score)!r}|{exclude_registered}"
        after = decode_cursor(cursor, query_key) if cursor is not None else None
        shard_pks = ci.shard_keys(ci.gsi1_pk(program_id, channel, event_id), self.gsi_shards)
        # Each shard's expected share of the page plus a little; `_query` doubles it if more is needed.
        per_shard = min(1000, -(-(limit + 1) // len(shard_pks)) + 2)
        now_epoch = ci.epoch_seconds(resolve_now(now))
        queries = [
            self._gsi1_shard_query(pk, min_score, after, exclude_registered, now_epoch, per_shard) for pk in shard_pks
        ]
        # Every shard's first page at once (one round trip of latency), later pages only on demand.
        firsts = self._parallel(lambda query: self._call("query", **query), queries)
        streams = [self._query(first, **query) for first, query in zip(firsts, queries, strict=True)]
        # Merged by score desc; keep reading to the end of the (limit+1)-th item's equal-score run.
        collected: list[dict[str, Any]] = []
        for item in heapq.merge(*streams, key=lambda it: -float(it[ci.GSI1_SORT_KEY]["N"])):
            score = float(item[ci.GSI1_SORT_KEY]["N"])
            if len(collected) > limit and score < float(collected[-1][ci.GSI1_SORT_KEY]["N"]):
                break
            collected.append(item)
        collected.sort(key=lambda it: (-float(it[ci.GSI1_SORT_KEY]["N"]), it["customer_id"]["S"]))
        page = items_frame(collected[:limit])
        if len(collected) <= limit:
            return CandidatePage(items=page, next_cursor=None)
        last = page.row(limit - 1, named=True)
        return CandidatePage(items=page, next_cursor=encode_cursor(query_key, last["score"], last["customer_id"]))

    def _event_queries(
        self, program_id: str, event_id: str, now: datetime | None, **extra: Any
    ) -> list[dict[str, Any]]:
        """One GSI2 Query per shard for the event's live items; `extra` is added to each."""
        return [
            {
                "TableName": self.table_name,
                "IndexName": GSI2,
                "KeyConditionExpression": "#gsi2pk = :pk",
                "FilterExpression": "#expires_at > :now",
                "ExpressionAttributeNames": _names("gsi2pk", "expires_at"),
                "ExpressionAttributeValues": {":pk": {"S": pk}, ":now": {"N": str(ci.epoch_seconds(resolve_now(now)))}},
                **extra,
            }
            for pk in ci.shard_keys(ci.gsi2_pk(program_id, event_id), self.gsi_shards)
        ]

    def registered_candidates(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        queries = self._event_queries(program_id, event_id, now)
        for query in queries:
            query["KeyConditionExpression"] = "#gsi2pk = :pk AND begins_with(#gsi2sk, :prefix)"
            query["ExpressionAttributeNames"] |= _names("gsi2sk")
            query["ExpressionAttributeValues"][":prefix"] = {"S": ci.gsi2_sk_prefix(ci.STATUS_REGISTERED)}
        return items_frame(self._query_shards(queries)).sort("customer_id", "channel")

    def candidates_for_customer(self, program_id: str, customer_id: str, now: datetime | None = None) -> pl.DataFrame:
        rows = self._query(
            TableName=self.table_name,
            KeyConditionExpression="#pk = :pk",
            FilterExpression="#expires_at > :now",
            ExpressionAttributeNames=_names("pk", "expires_at"),
            ExpressionAttributeValues={
                ":pk": {"S": ci.customer_pk(customer_id, program_id)},
                ":now": {"N": str(ci.epoch_seconds(resolve_now(now)))},
            },
            ConsistentRead=True,  # support reads right after a status update
        )
        return items_frame(list(rows)).sort("event_id", "channel")

    def event_items(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        rows = self._query_shards(self._event_queries(program_id, event_id, now))
        return items_frame(rows).sort("customer_id", "channel")

    def count_event_items(self, program_id: str, event_id: str, now: datetime | None = None) -> int:
        def count(query: dict[str, Any]) -> int:
            total = 0
            while True:
                response = self._call("query", **query)
                total += response["Count"]
                if "LastEvaluatedKey" not in response:
                    return total
                query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

        return sum(self._parallel(count, self._event_queries(program_id, event_id, now, Select="COUNT")))

    # -- score cache --

    def get_cached_scores(
        self, event_id: str, model_id: str, model_version: str, customer_ids: pl.Series, now: datetime
    ) -> pl.DataFrame:
        keys = customer_ids.cast(pl.String).drop_nulls().unique().to_list()
        if not keys:
            return pl.DataFrame(schema=CACHE_SCHEMA)
        sk = ci.score_cache_sk(event_id, model_id, model_version)
        now_epoch = ci.epoch_seconds(now)
        chunks = [keys[start : start + MAX_BATCH_GET] for start in range(0, len(keys), MAX_BATCH_GET)]

        def fetch(chunk: list[str]) -> list[tuple[str, float]]:
            request = {
                self.score_cache_table_name: {
                    "Keys": [{"pk": {"S": ci.score_cache_pk(c)}, "sk": {"S": sk}} for c in chunk],
                    "ProjectionExpression": "#customer_id, #probability, #expires_at",
                    "ExpressionAttributeNames": _names("customer_id", "probability", "expires_at"),
                }
            }
            found: list[tuple[str, float]] = []
            for attempt in range(self.max_retries + 1):
                if attempt:
                    self._backoff(attempt)
                response = self._call("batch_get_item", RequestItems=request)
                for item in response.get("Responses", {}).get(self.score_cache_table_name, []):
                    if int(item["expires_at"]["N"]) > now_epoch:
                        found.append((item["customer_id"]["S"], float(item["probability"]["N"])))
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    return found
                self._count(unprocessed=len(request[self.score_cache_table_name]["Keys"]))
            raise DynamoDBThrottledError(
                f"{len(request[self.score_cache_table_name]['Keys'])} score cache keys were not read from "
                f"{self.score_cache_table_name!r} after {self.max_retries} retries"
            )

        rows = [row for rows in self._parallel(fetch, chunks) for row in rows]
        return pl.DataFrame(rows, schema=CACHE_SCHEMA, orient="row")

    def put_cached_scores(
        self, event_id: str, model_id: str, model_version: str, scores: pl.DataFrame, now: datetime, ttl_days: int
    ) -> int:
        missing = {"customer_id", "probability"} - set(scores.columns)
        if missing:
            raise ValueError(f"scores lacks columns {sorted(missing)}")
        rows = (
            scores.select(pl.col("customer_id").cast(pl.String), pl.col("probability").cast(pl.Float64))
            .filter(pl.col("customer_id").is_not_null() & pl.col("probability").is_not_null())
            .unique("customer_id", keep="last", maintain_order=True)
        )
        sk = ci.score_cache_sk(event_id, model_id, model_version)
        fixed = {
            "sk": {"S": sk},
            "event_id": {"S": event_id},
            "model_id": {"S": model_id},
            "model_version": {"S": model_version},
            "cached_at": {"S": ci.as_utc(now).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
            "expires_at": {"N": str(ci.expires_at(now, ttl_days))},
        }
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": {"S": ci.score_cache_pk(customer_id)},
                        "customer_id": {"S": customer_id},
                        "probability": {"N": number_value(probability)},
                        **fixed,
                    }
                }
            }
            for customer_id, probability in rows.iter_rows()
        ]
        self._write(self.score_cache_table_name, requests, MAX_BATCH_WRITE)
        return rows.height


# ---- CLI ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`create-tables` or `check` the two tables; credentials and region from the environment."""
    parser = argparse.ArgumentParser(
        prog="python -m eventreach_assets.resources.dynamodb_store",
        description="Create or check the DynamoDB tables of the EventReach candidate store.",
    )
    parser.add_argument("command", choices=["create-tables", "check"])
    parser.add_argument("--table", required=True, help="candidates table name")
    parser.add_argument("--cache-table", required=True, help="score cache table name")
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION / profile)")
    parser.add_argument("--endpoint-url", default=None, help="custom endpoint, e.g. DynamoDB Local")
    args = parser.parse_args(argv)
    client = boto3.session.Session(region_name=args.region).client("dynamodb", endpoint_url=args.endpoint_url)
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
