"""The candidates table and score cache on DynamoDB (the production deployment's store).

Same items, keys and semantics as `SqliteCandidateStore` (the contract tests in
`eventreach_assets_tests/test_candidate_store.py` run against both); this module only does I/O.

The tables' shapes are code (`tables.py`): `setup_for_execution` checks them, so a run against a
table of the wrong shape fails at start with the table named and every difference listed; the
command-line tool `python -m eventreach_assets.resources.candidate_store.cli` creates or checks
them. The shared semantics (input checks, replace plan, summary, cursors) are `base.py`'s.

Writes are `BatchWriteItem`s of `batch_write_size` (<= 25) items sent by `max_parallel_writers`
threads. Throttling (`ProvisionedThroughputExceededException`, `ThrottlingException`, ...) and
`UnprocessedItems` are retried with exponential backoff and full jitter, at most `max_retries`
times per batch; then the call raises `DynamoDBWriteError` saying how many items were not
written. botocore's own retries are off (the client comes from `aws_client` with one attempt)
so every retry is counted (`retry_counts`). Reads are `Query`s by key (never `Scan`), expired
items filtered out because TTL deletes lazily.

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
exactly those of `domain/candidate_items.py` (the SQLite store derives the same keys from its rows).

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

import heapq
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import dagster as dg
import polars as pl
from botocore.exceptions import ClientError, HTTPClientError
from pydantic import Field, PrivateAttr

from eventreach_assets.domain import candidate_items as ci
from eventreach_assets.domain.served_items import item_json_from_values
from eventreach_assets.resources.aws import aws_client
from eventreach_assets.resources.candidate_store.base import (
    REGISTERED_ITEM_FIELDS,
    TS_FORMAT,
    CandidateStoreResource,
    RegisteredCustomer,
    ReplacePlanner,
    TopQuery,
    merged_in_order,
    registered_customers,
)
from eventreach_assets.resources.candidate_store.dynamodb_items import (
    attribute_names,
    items_frame,
    number_value,
    plain_value,
    plain_values,
    to_dynamo_items,
)
from eventreach_assets.resources.candidate_store.tables import GSI1, GSI2, check_candidate_tables
from eventreach_assets.resources.dynamodb import is_conditional_failure, run_parallel

T = TypeVar("T")
R = TypeVar("R")

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
_STATS_LOCK = threading.Lock()  # module level: a Lock in a pydantic field would not survive copies
# What `_event_state` reads of the event's items to plan a replace.
_STATE_ATTRIBUTES = ("pk", "sk", "customer_id", "status", "status_at", "registered_channel", "expires_at")


class DynamoDBThrottledError(RuntimeError):
    """Calls still throttled (or items still unprocessed) after the last retry."""


class DynamoDBWriteError(DynamoDBThrottledError):
    """Writes still throttled or unprocessed after the last retry; `unwritten` items are missing."""

    def __init__(self, message: str, unwritten: int) -> None:
        super().__init__(message)
        self.unwritten = unwritten


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

    _stats: dict[str, int] = PrivateAttr(default_factory=dict)
    _max_batch_write: ClassVar[int | None] = MAX_BATCH_WRITE

    # -- plumbing --

    def dynamodb_client(self) -> Any:
        """The low-level client, shared per process by stores of the same settings (thread-safe,
        not fork-safe). botocore's retries are off: this store retries itself so each retry is counted.
        """
        return aws_client(
            "dynamodb",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            max_attempts=1,
            # A connection per parallel writer or shard read: none waits for a free one.
            max_pool_connections=max(10, 2 * self.max_parallel_writers, self.gsi_shards),
            profile_name=self.profile_name,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
        )

    def check_tables(self) -> None:
        """Raise `TableShapeError` unless both tables have the keys, GSIs and TTL this store needs."""
        check_candidate_tables(self.dynamodb_client(), self.table_name, self.score_cache_table_name)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.validate_tables_on_setup:
            self.check_tables()

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

    def _read_parallel(self, function: Callable[[T], R], work: Sequence[T]) -> list[R]:
        """One thread per shard query (at least `max_parallel_writers`): a page waits for the slowest shard once."""
        return run_parallel(function, work, max(self.max_parallel_writers, self.gsi_shards))

    def _query_shards(self, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every item of one Query per shard, the shards read in parallel."""
        pages = self._read_parallel(lambda query: list(self._query(**query)), queries)
        return [item for items in pages for item in items]

    def _shard_streams(self, queries: list[dict[str, Any]]) -> list[Iterator[dict[str, Any]]]:
        """Each shard's items as a lazy stream: every first page fetched at once, later pages on demand."""
        firsts = self._read_parallel(lambda query: self._call("query", **query), queries)
        return [self._query(first, **query) for first, query in zip(firsts, queries, strict=True)]

    # -- writes --

    def _replace_event_items(
        self, program_id: str, event_id: str, planner: ReplacePlanner, batch_write_size: int
    ) -> tuple[ci.ReplacePlan, int]:
        existing_keys, registered = self._event_state(program_id, event_id)
        plan = planner(existing_keys, registered)
        puts = [
            {"PutRequest": {"Item": item}}
            for item in to_dynamo_items(ci.with_index_shards(plan.items, self.gsi_shards))
        ]
        deletes = [{"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for pk, sk in plan.stale.iter_rows()]
        # New items before deletes: a failure in between leaves extra items, never missing ones.
        batches = self._write(self.table_name, puts, batch_write_size)
        batches += self._write(self.table_name, deletes, batch_write_size)
        self._extend_retained(program_id, event_id, plan, registered)
        return plan, batches

    def _event_state(self, program_id: str, event_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The event's keys (expired ones too) and its registered items, from one GSI2 query per shard."""
        rows = self._query_shards(
            [
                {
                    "TableName": self.table_name,
                    "IndexName": GSI2,
                    "KeyConditionExpression": "#gsi2pk = :pk",
                    "ProjectionExpression": ", ".join(f"#{name}" for name in _STATE_ATTRIBUTES),
                    "ExpressionAttributeNames": attribute_names("gsi2pk", *_STATE_ATTRIBUTES),
                    "ExpressionAttributeValues": {":pk": {"S": pk}},
                }
                for pk in ci.shard_keys(ci.gsi2_pk(program_id, event_id), self.gsi_shards)
            ]
        )
        frame = pl.DataFrame(
            {name: [plain_value(row.get(name), name) for row in rows] for name in _STATE_ATTRIBUTES},
            schema={**{name: pl.String() for name in _STATE_ATTRIBUTES}, "expires_at": pl.Int64()},
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
                    ExpressionAttributeNames=attribute_names("expires_at", "gsi1pk", "gsi2pk", "pk"),
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
                if not is_conditional_failure(error):
                    raise

        self._parallel(update, list(rows.iter_rows(named=True)))

    def _mark_registered(self, program_id: str, event_id: str, registrations: pl.DataFrame) -> int:
        """One customer per request (DynamoDB has no batch update), rows spread over the writers."""
        rows = list(registrations.iter_rows(named=True))
        return sum(
            self._parallel(
                lambda row: self._mark_customer(
                    program_id, event_id, row["customer_id"], row["registered_at"], row["channel"]
                ),
                rows,
            )
        )

    def _mark_customer(
        self, program_id: str, event_id: str, customer_id: str, registered_at: datetime, channel: str | None
    ) -> int:
        """Mark the customer's items of the event registered unless registered earlier; returns how many."""
        prefix = ci.event_sk_prefix(event_id)
        at = ci.as_utc(registered_at)
        at_text = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # == TS_FORMAT: fixed width, compares in time order
        pk = ci.customer_pk(customer_id, program_id)
        sks = [
            row["sk"]["S"]
            for row in self._query(
                TableName=self.table_name,
                KeyConditionExpression="#pk = :pk AND begins_with(#sk, :prefix)",
                ProjectionExpression="#sk",
                ExpressionAttributeNames=attribute_names("pk", "sk"),
                ExpressionAttributeValues={":pk": {"S": pk}, ":prefix": {"S": prefix}},
                ConsistentRead=True,
            )
        ]
        for sk in sks:
            self._mark_item(pk, sk, at, at_text, customer_id, ci.channel_of_sk(sk, event_id), channel)
        return len(sks)

    def _mark_item(
        self, pk: str, sk: str, at: datetime, at_text: str, customer_id: str, item_channel: str, channel: str | None
    ) -> None:
        """One conditional update: only an unregistered item or a later registration is replaced."""
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
            self._call(
                "update_item",
                TableName=self.table_name,
                Key={"pk": {"S": pk}, "sk": {"S": sk}},
                UpdateExpression=update,
                ConditionExpression="attribute_exists(#pk) AND (#status <> :registered OR #status_at > :at)",
                ExpressionAttributeNames=attribute_names("pk", "status", "status_at", "gsi2sk", "registered_channel"),
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if not is_conditional_failure(error):
                raise

    def _purge_expired(self, now_epoch: int) -> int:
        """No-op, returns 0: DynamoDB TTL deletes expired items itself (module docstring)."""
        return 0

    # -- reads --

    def _gsi1_shard_query(self, shard_pk: str, query: TopQuery, page: int) -> dict[str, Any]:
        """The Query of one GSI1 shard's live items with score >= min, score descending (ties in any order)."""
        min_score, after, now = query.min_score, query.after, query.now_epoch
        names = ["gsi1pk", ci.GSI1_SORT_KEY, "expires_at"]
        values: dict[str, Any] = {
            ":pk": {"S": shard_pk},
            ":min": {"N": number_value(float(min_score))},
            ":now": {"N": str(now)},
        }
        key = "#gsi1pk = :pk AND #score >= :min"
        filters = ["#expires_at > :now"]
        if query.exclude_registered:
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
            "ExpressionAttributeNames": attribute_names(*names),
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": page,
        }

    def _top_items(self, query: TopQuery) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` items of the (score desc, customer_id) order after `after`, and whether more follow."""
        limit = query.limit
        shard_pks = ci.shard_keys(query.gsi1pk, self.gsi_shards)
        # Each shard's expected share of the page plus a little; `_query` doubles it if more is needed.
        per_shard = min(1000, -(-(limit + 1) // len(shard_pks)) + 2)
        queries = [self._gsi1_shard_query(pk, query, per_shard) for pk in shard_pks]
        # Every shard's first page at once (one round trip of latency), later pages only on demand.
        streams = self._shard_streams(queries)
        # Merged by score desc; keep reading to the end of the (limit+1)-th item's equal-score run.
        collected: list[dict[str, Any]] = []
        for item in heapq.merge(*streams, key=lambda it: -float(it[ci.GSI1_SORT_KEY]["N"])):
            score = float(item[ci.GSI1_SORT_KEY]["N"])
            if len(collected) > limit and score < float(collected[-1][ci.GSI1_SORT_KEY]["N"]):
                break
            collected.append(item)
        collected.sort(key=lambda it: (-float(it[ci.GSI1_SORT_KEY]["N"]), it["customer_id"]["S"]))
        return collected[:limit], len(collected) > limit

    def _top_page(self, query: TopQuery) -> tuple[pl.DataFrame, bool]:
        items, more = self._top_items(query)
        return items_frame(items), more

    def _served_top_page(self, query: TopQuery) -> tuple[list[str], tuple[float, str] | None]:
        items, more = self._top_items(query)
        texts = [item_json_from_values(plain_values(item)) for item in items]
        if not more:
            return texts, None
        return texts, (float(items[-1][ci.GSI1_SORT_KEY]["N"]), items[-1]["customer_id"]["S"])

    def _served_customer_items(
        self, pk: str, event_id: str | None, after: tuple[str, str] | None, limit: int, now_epoch: int
    ) -> tuple[list[str], tuple[str, str] | None]:
        key = "#pk = :pk"
        values: dict[str, Any] = {":pk": {"S": pk}, ":now": {"N": str(now_epoch)}}
        if event_id is not None:
            key += " AND begins_with(#sk, :prefix)"
            values[":prefix"] = {"S": ci.event_sk_prefix(event_id)}
        rows = self._query(
            TableName=self.table_name,
            KeyConditionExpression=key,
            FilterExpression="#expires_at > :now",
            ExpressionAttributeNames=attribute_names("pk", "expires_at", *(("sk",) if event_id is not None else ())),
            ExpressionAttributeValues=values,
            ConsistentRead=True,  # support reads right after a status update
        )
        # A customer has a few items per event: sorted and paged here, in (event_id, channel) order.
        items = sorted((plain_values(item) for item in rows), key=lambda it: (it["event_id"], it["channel"]))
        if after is not None:
            items = [it for it in items if (it["event_id"], it["channel"]) > after]
        texts = [item_json_from_values(item) for item in items[:limit]]
        if len(items) <= limit:
            return texts, None
        return texts, (items[limit - 1]["event_id"], items[limit - 1]["channel"])

    def _registered_customers(
        self, gsi2pk: str, after: str | None, limit: int, now_epoch: int
    ) -> tuple[list[RegisteredCustomer], bool]:
        prefix = ci.gsi2_sk_prefix(ci.STATUS_REGISTERED)
        # A customer has one item per channel, all in one shard: each shard's share of the page plus a little.
        per_shard = min(1000, -(-2 * (limit + 1) // self.gsi_shards) + 2)
        queries = self._event_queries(gsi2pk, now_epoch, Limit=per_shard)
        for query in queries:
            if after is None:
                query["KeyConditionExpression"] = "#gsi2pk = :pk AND begins_with(#gsi2sk, :lo)"
            else:  # BETWEEN includes `after` itself: skipped below (a key may not appear in a filter)
                query["KeyConditionExpression"] = "#gsi2pk = :pk AND #gsi2sk BETWEEN :lo AND :hi"
                query["ExpressionAttributeValues"][":hi"] = {"S": ci.prefix_upper_bound(prefix)}
            query["ExpressionAttributeNames"] |= attribute_names("gsi2sk")
            query["ExpressionAttributeValues"][":lo"] = {"S": after or prefix}

        def fields(stream: Iterator[dict[str, Any]]) -> Iterator[tuple]:
            for item in stream:
                row = tuple(plain_value(item.get(name), name) for name in REGISTERED_ITEM_FIELDS)
                if row[0] != after:
                    yield row

        streams = [fields(stream) for stream in self._shard_streams(queries)]
        return registered_customers(merged_in_order(streams), limit)

    def _event_queries(self, gsi2pk: str, now_epoch: int, **extra: Any) -> list[dict[str, Any]]:
        """One GSI2 Query per shard for the event's live items; `extra` is added to each."""
        return [
            {
                "TableName": self.table_name,
                "IndexName": GSI2,
                "KeyConditionExpression": "#gsi2pk = :pk",
                "FilterExpression": "#expires_at > :now",
                "ExpressionAttributeNames": attribute_names("gsi2pk", "expires_at"),
                "ExpressionAttributeValues": {":pk": {"S": pk}, ":now": {"N": str(now_epoch)}},
                **extra,
            }
            for pk in ci.shard_keys(gsi2pk, self.gsi_shards)
        ]

    def _registered_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        queries = self._event_queries(gsi2pk, now_epoch)
        for query in queries:
            query["KeyConditionExpression"] = "#gsi2pk = :pk AND begins_with(#gsi2sk, :prefix)"
            query["ExpressionAttributeNames"] |= attribute_names("gsi2sk")
            query["ExpressionAttributeValues"][":prefix"] = {"S": ci.gsi2_sk_prefix(ci.STATUS_REGISTERED)}
        return items_frame(self._query_shards(queries))

    def _customer_items(self, pk: str, now_epoch: int) -> pl.DataFrame:
        rows = self._query(
            TableName=self.table_name,
            KeyConditionExpression="#pk = :pk",
            FilterExpression="#expires_at > :now",
            ExpressionAttributeNames=attribute_names("pk", "expires_at"),
            ExpressionAttributeValues={":pk": {"S": pk}, ":now": {"N": str(now_epoch)}},
            ConsistentRead=True,  # support reads right after a status update
        )
        return items_frame(list(rows))

    def _event_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        return items_frame(self._query_shards(self._event_queries(gsi2pk, now_epoch)))

    def _event_item_sort_keys(self, gsi2pk: str, now_epoch: int) -> pl.Series:
        queries = self._event_queries(gsi2pk, now_epoch, ProjectionExpression="#gsi2sk")
        for query in queries:  # the projected name beside the filter's
            query["ExpressionAttributeNames"] |= attribute_names("gsi2sk")
        return pl.Series("gsi2sk", [item["gsi2sk"]["S"] for item in self._query_shards(queries)], pl.String)

    def _count_event_items(self, gsi2pk: str, now_epoch: int) -> int:
        def count(query: dict[str, Any]) -> int:
            total = 0
            while True:
                response = self._call("query", **query)
                total += response["Count"]
                if "LastEvaluatedKey" not in response:
                    return total
                query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

        return sum(self._read_parallel(count, self._event_queries(gsi2pk, now_epoch, Select="COUNT")))

    # -- score cache --

    def _cached_scores(self, sk: str, customer_ids: list[str], now_epoch: int) -> list[tuple[str, float]]:
        chunks = [customer_ids[start : start + MAX_BATCH_GET] for start in range(0, len(customer_ids), MAX_BATCH_GET)]
        return [
            row
            for rows in self._parallel(lambda chunk: self._get_cache_chunk(sk, chunk, now_epoch), chunks)
            for row in rows
        ]

    def _get_cache_chunk(self, sk: str, customer_ids: list[str], now_epoch: int) -> list[tuple[str, float]]:
        """One BatchGetItem of up to 100 keys, resending UnprocessedKeys; live entries only."""
        table = self.score_cache_table_name
        request = {
            table: {
                "Keys": [{"pk": {"S": ci.score_cache_pk(c)}, "sk": {"S": sk}} for c in customer_ids],
                "ProjectionExpression": "#customer_id, #probability, #expires_at",
                "ExpressionAttributeNames": attribute_names("customer_id", "probability", "expires_at"),
            }
        }
        found: list[tuple[str, float]] = []
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._backoff(attempt)
            response = self._call("batch_get_item", RequestItems=request)
            for item in response.get("Responses", {}).get(table, []):
                if int(item["expires_at"]["N"]) > now_epoch:
                    found.append((item["customer_id"]["S"], float(item["probability"]["N"])))
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return found
            self._count(unprocessed=len(request[table]["Keys"]))
        raise DynamoDBThrottledError(
            f"{len(request[table]['Keys'])} score cache keys were not read from "
            f"{table!r} after {self.max_retries} retries"
        )

    def _put_cache_entries(self, entries: pl.DataFrame) -> None:
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        name: {"N": number_value(value)} if name in ("probability", "expires_at") else {"S": value}
                        for name, value in row.items()
                    }
                }
            }
            for row in entries.iter_rows(named=True)
        ]
        self._write(self.score_cache_table_name, requests, MAX_BATCH_WRITE)
