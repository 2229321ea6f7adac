"""What only the DynamoDB store has: table shape, retries under throttling, index shards, key-only reads.

Everything runs against moto in server mode over real HTTP (`aws_endpoint`, emptied after each
test); failures are injected with botocore event hooks on the store's client, so the calls that
are not failed still reach the server. Stores of the same settings share one client per process
(`aws_client`), so every hook is removed after its test (the `inject` fixture). The shared
semantics are the contract tests in test_candidate_store.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import dagster as dg
import polars as pl
import pytest
from botocore.awsrequest import AWSResponse
from polars.testing import assert_frame_equal

from eventreach_assets.domain import candidate_items as ci
from eventreach_assets.resources.candidate_store import (
    GSI1,
    GSI2,
    DynamoDBCandidateStore,
    DynamoDBWriteError,
    TableShapeError,
    candidate_table_definition,
    check_candidate_tables,
    create_candidate_tables,
    score_cache_table_definition,
)
from eventreach_assets.resources.candidate_store.cli import main
from eventreach_assets.resources.candidate_store.dynamodb_items import items_frame, number_value, to_dynamo_items
from eventreach_assets_tests.test_candidate_store import (
    CACHE_TABLE,
    CANDIDATES_TABLE,
    CHANNELS,
    EVENT,
    NOW,
    PROGRAM,
    SCORES,
    TTL,
    dynamodb_store,
    replace,
    scored_frame,
    stored_items,
)

MANY = {f"m{i:03d}": round(0.2 + (i % 25) / 50, 4) for i in range(100)}  # 200 items, ties of 4


# ---- failure injection ----------------------------------------------------------------------


class Injector:
    """botocore hooks on one store's client: fail some calls, hold back some BatchWriteItem requests.

    Every call is decided once, before its parameters are built: an injected error is answered
    without reaching the server; a BatchWriteItem with held-back requests sends the rest for real
    and reports the held ones as UnprocessedItems, as DynamoDB does when a partition is throttled.
    """

    def __init__(self, store: DynamoDBCandidateStore) -> None:
        self.events = store.dynamodb_client().meta.events
        self.hooks: list[tuple[str, Callable[..., Any]]] = []
        self.lock = threading.Lock()
        self.calls: list[str] = []  # every API call attempted, in order
        self.errors: dict[str, list[str]] = {}
        self.table, self.per_call, self.hold_left = "", 0, 0
        self.held: list[int] = []
        self.register("before-parameter-build.dynamodb", self._decide)
        self.register("before-call.dynamodb", self._answer)
        self.register("after-call.dynamodb.BatchWriteItem", self._report)

    def register(self, event: str, handler: Callable[..., Any]) -> None:
        """A hook on the client, removed by `remove`."""
        self.events.register(event, handler)
        self.hooks.append((event, handler))

    def remove(self) -> None:
        for event, handler in self.hooks:
            self.events.unregister(event, handler)
        self.hooks.clear()

    def fail(self, operation: str, code: str, times: int) -> None:
        self.errors.setdefault(operation, []).extend([code] * times)

    def hold_back(self, table: str, per_call: int, times: int | None) -> None:
        """The next `times` BatchWriteItems (None: all) leave their last `per_call` requests unprocessed."""
        self.table, self.per_call, self.hold_left = table, per_call, times

    def _decide(self, params: dict, model: Any, context: dict, **_: Any) -> None:
        with self.lock:
            self.calls.append(model.name)
            queue = self.errors.get(model.name)
            if queue:
                context["injected_error"] = queue.pop(0)
                return
            if model.name != "BatchWriteItem" or not self.per_call or self.hold_left == 0:
                return
            if self.hold_left is not None:
                self.hold_left -= 1
            requests = params["RequestItems"][self.table]
            cut = max(0, len(requests) - self.per_call)
            context["held"] = requests[cut:]
            self.held.append(len(requests) - cut)
        if cut:
            params["RequestItems"] = {self.table: requests[:cut]}
        else:
            context["send_nothing"] = True  # DynamoDB rejects an empty batch: answer for it

    def _answer(self, context: dict, **_: Any) -> tuple[AWSResponse, dict] | None:
        if "injected_error" in context:
            error = {"Code": context["injected_error"], "Message": "injected"}
            return AWSResponse("http://127.0.0.1/", 400, {}, None), {"Error": error, "ResponseMetadata": {}}
        if context.get("send_nothing"):
            return AWSResponse("http://127.0.0.1/", 200, {}, None), {"ResponseMetadata": {}}
        return None

    def _report(self, parsed: dict, context: dict, **_: Any) -> None:
        if context.get("held"):
            parsed.setdefault("UnprocessedItems", {})[self.table] = context["held"]


@pytest.fixture
def store(aws_endpoint: str) -> DynamoDBCandidateStore:
    return dynamodb_store(aws_endpoint, gsi_shards=4)


@pytest.fixture
def inject() -> Iterator[Callable[[DynamoDBCandidateStore], Injector]]:
    """`inject(store)` hooks an `Injector` on the store's client; its hooks go when the test ends."""
    injectors: list[Injector] = []

    def on(store: DynamoDBCandidateStore) -> Injector:
        injectors.append(Injector(store))
        return injectors[-1]

    yield on
    for injector in injectors:
        injector.remove()


def stored_keys(store: DynamoDBCandidateStore) -> list[tuple[str, str]]:
    """(pk, sk) of every stored item (a test-only Scan of the keys: moto is slow to serialize items)."""
    pages = (
        store.dynamodb_client()
        .get_paginator("scan")
        .paginate(TableName=store.table_name, ProjectionExpression="pk, sk")
    )
    return [(item["pk"]["S"], item["sk"]["S"]) for page in pages for item in page["Items"]]


# ---- tables as code -------------------------------------------------------------------------


def test_create_tables_builds_the_designed_shape(aws_endpoint):
    store = dynamodb_store(aws_endpoint, create=False)
    client = store.dynamodb_client()
    done = create_candidate_tables(client, CANDIDATES_TABLE, CACHE_TABLE, 0.1)
    assert done == [
        f"created table {CANDIDATES_TABLE}",
        f"enabled TTL on {CANDIDATES_TABLE}.expires_at",
        f"created table {CACHE_TABLE}",
        f"enabled TTL on {CACHE_TABLE}.expires_at",
    ]
    table = client.describe_table(TableName=CANDIDATES_TABLE)["Table"]
    assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == [("pk", "HASH"), ("sk", "RANGE")]
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert [(k["AttributeName"], k["KeyType"]) for k in indexes[GSI1]["KeySchema"]] == [
        ("gsi1pk", "HASH"),
        ("score", "RANGE"),
    ]
    assert [(k["AttributeName"], k["KeyType"]) for k in indexes[GSI2]["KeySchema"]] == [
        ("gsi2pk", "HASH"),
        ("gsi2sk", "RANGE"),
    ]
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}["score"] == "N"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    for name in (CANDIDATES_TABLE, CACHE_TABLE):
        ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    # idempotent: a second run only confirms
    assert create_candidate_tables(client, CANDIDATES_TABLE, CACHE_TABLE, 0.1) == [
        f"table {CANDIDATES_TABLE} exists",
        f"table {CACHE_TABLE} exists",
    ]
    store.check_tables()


def _without_gsi2(name: str) -> dict:
    definition = candidate_table_definition(name)
    definition["GlobalSecondaryIndexes"] = definition["GlobalSecondaryIndexes"][:1]
    definition["AttributeDefinitions"] = [
        a for a in definition["AttributeDefinitions"] if "gsi2" not in a["AttributeName"]
    ]
    return definition


def _gsi1_keys_only_string_score(name: str) -> dict:
    definition = candidate_table_definition(name)
    definition["AttributeDefinitions"] = [
        {**a, "AttributeType": "S"} if a["AttributeName"] == "score" else a for a in definition["AttributeDefinitions"]
    ]
    definition["GlobalSecondaryIndexes"][0]["Projection"] = {"ProjectionType": "KEYS_ONLY"}
    return definition


@pytest.mark.parametrize(
    ("make", "ttl", "expected"),
    [
        (_without_gsi2, True, "global secondary index GSI2 is missing (want gsi2pk HASH (S), gsi2sk RANGE (S)"),
        (candidate_table_definition, False, "TTL is DISABLED, want ENABLED on 'expires_at'"),
        (
            _gsi1_keys_only_string_score,
            True,
            "global secondary index GSI1 is [gsi1pk HASH (S), score RANGE (S), projection KEYS_ONLY], "
            "want [gsi1pk HASH (S), score RANGE (N), projection ALL]",
        ),
        (None, True, "the table does not exist"),
    ],
    ids=["no-gsi2", "no-ttl", "gsi1-wrong", "missing"],
)
def test_a_table_of_the_wrong_shape_fails_at_startup_naming_it(aws_endpoint, make, ttl, expected):
    store = dynamodb_store(aws_endpoint, create=False)
    client = store.dynamodb_client()
    client.create_table(**score_cache_table_definition(CACHE_TABLE))
    client.update_time_to_live(
        TableName=CACHE_TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    if make is not None:
        client.create_table(**make(CANDIDATES_TABLE))
        if ttl:
            client.update_time_to_live(
                TableName=CANDIDATES_TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
            )
    with pytest.raises(TableShapeError) as raised:
        check_candidate_tables(client, CANDIDATES_TABLE, CACHE_TABLE)
    message = str(raised.value)
    assert f"DynamoDB table '{CANDIDATES_TABLE}' does not fit the candidate store" in message
    assert CACHE_TABLE not in message.split("Create or fix")[0]  # the good table is not blamed
    assert expected in message and "create-tables" in message

    # at startup: the run fails before any asset body touches the table
    @dg.asset
    def uses_store(candidate_store: DynamoDBCandidateStore) -> None:
        raise AssertionError("never reached")

    with pytest.raises(Exception) as failed:
        dg.materialize([uses_store], resources={"candidate_store": store})
    chain = [failed.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert any(isinstance(error, TableShapeError) and expected in str(error) for error in chain), chain


def test_cli_creates_and_checks_the_tables(aws_endpoint, capsys):
    args = ["--table", CANDIDATES_TABLE, "--cache-table", CACHE_TABLE, "--endpoint-url", aws_endpoint]
    assert main(["check", *args, "--region", "us-east-1"]) == 1
    assert "the table does not exist" in capsys.readouterr().err
    assert main(["create-tables", *args, "--region", "us-east-1"]) == 0
    out = capsys.readouterr().out
    assert f"created table {CANDIDATES_TABLE}" in out and "fit the candidate store" in out
    assert main(["check", *args, "--region", "us-east-1"]) == 0


# ---- writes under throttling ----------------------------------------------------------------


def test_throttled_and_unprocessed_writes_are_retried_and_nothing_is_lost(store, inject):
    injector = inject(store)
    injector.fail("BatchWriteItem", "ProvisionedThroughputExceededException", times=3)
    injector.fail("BatchWriteItem", "ThrottlingException", times=2)
    injector.fail("Query", "ThrottlingException", times=1)  # the replace's GSI2 read
    injector.hold_back(CANDIDATES_TABLE, per_call=7, times=6)
    summary = replace(store, MANY, batch=25)
    assert (summary.items_written, summary.batches) == (200, 8)
    expected = ci.build_candidate_items(PROGRAM, EVENT, scored_frame(MANY), CHANNELS, NOW, TTL).select("pk", "sk")
    assert sorted(stored_keys(store)) == sorted(expected.iter_rows())
    assert store.count_event_items(PROGRAM, EVENT, now=NOW) == 200
    assert injector.held == [7] * 6
    counts = store.retry_counts
    assert counts["throttled"] == 3 + 2 + 1
    assert counts["unprocessed"] == 6 * 7
    assert counts["retries"] == 3 + 2 + 1 + 6  # each unprocessed remainder is one more call
    assert injector.calls.count("BatchWriteItem") == 8 + 3 + 2 + 6


def test_writes_give_up_after_max_retries_and_say_how_many_items_are_missing(aws_endpoint, inject):
    store = dynamodb_store(aws_endpoint, max_retries=2)
    inject(store).hold_back(CANDIDATES_TABLE, per_call=5, times=None)  # the last 5 of every batch never land
    with pytest.raises(DynamoDBWriteError, match=r"40 of 200 items were not written to DynamoDB table 'candidates'"):
        replace(store, MANY, batch=25)
    assert store.retry_counts["retries"] == 8 * 2
    assert store.count_event_items(PROGRAM, EVENT, now=NOW) == 200 - 40


def test_a_non_retryable_error_is_raised_at_once(store, inject):
    injector = inject(store)
    injector.fail("BatchWriteItem", "ValidationException", times=1)
    with pytest.raises(Exception, match="ValidationException"):
        replace(store, {"c01": 0.5}, batch=25)
    assert store.retry_counts["retries"] == 0


# ---- re-runs --------------------------------------------------------------------------------


def test_rerun_is_idempotent_removes_stale_items_and_keeps_registrations(aws_endpoint):
    store = dynamodb_store(aws_endpoint, gsi_shards=2)
    first = replace(store, MANY, batch=25)
    assert (first.items_written, first.items_deleted) == (200, 0)
    keys = stored_keys(store)
    again = replace(store, MANY, batch=25)
    assert (again.items_written, again.items_deleted) == (200, 0)
    assert sorted(stored_keys(store)) == sorted(keys) and len(set(keys)) == 200

    store.mark_registered(PROGRAM, EVENT, "m001", NOW, "email")  # will drop out of the next set
    store.mark_registered(PROGRAM, EVENT, "m002", NOW, None)  # stays in it
    later = NOW + timedelta(days=7)
    kept = {k: v for i, (k, v) in enumerate(MANY.items()) if i % 3 != 1}  # m001 among the dropped
    new = {f"n{i:02d}": 0.5 for i in range(10)}
    # the next batch runs with the shard count raised from 2 to 5
    raised = dynamodb_store(aws_endpoint, create=False, gsi_shards=5)
    summary = replace(raised, kept | new, now=later, batch=25)
    dropped = len(MANY) - len(kept)
    assert summary.items_deleted == 2 * (dropped - 1)  # m001's two items are retained
    assert (summary.registered_preserved, summary.registered_retained) == (1, 2)
    expected = {
        (ci.customer_pk(c, PROGRAM), ci.event_channel_sk(EVENT, ch)) for c in [*kept, *new, "m001"] for ch in CHANNELS
    }
    assert set(stored_keys(store)) == expected and len(stored_keys(store)) == len(expected)
    registered = raised.registered_candidates(PROGRAM, EVENT, now=later)
    assert registered["customer_id"].to_list() == ["m001", "m001", "m002", "m002"]
    assert set(registered["expires_at"]) == {ci.expires_at(later, TTL)}
    assert registered["registered_channel"].to_list() == ["email", "email", None, None]
    # every item, the retained ones too, is keyed under the new shards
    scan = raised.dynamodb_client().scan(TableName=CANDIDATES_TABLE, ProjectionExpression="customer_id, gsi2pk")
    assert all(
        item["gsi2pk"]["S"] == ci.sharded_key(ci.gsi2_pk(PROGRAM, EVENT), item["customer_id"]["S"], 5)
        for item in scan["Items"]
    )
    top = raised.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.0, 500, exclude_registered=False, now=later)
    assert top.items.height == len(kept) + len(new) + 1 and "m001" in top.items["customer_id"].to_list()
    assert raised.count_event_items(PROGRAM, EVENT, now=later) == len(expected)


# ---- index sharding, ties, reads ------------------------------------------------------------


def test_shard_helpers_are_stable():
    assert ci.index_shard("C000123456", 4) == 2  # crc32: the same in every process and release
    gsi1 = ci.gsi1_pk(PROGRAM, "email", EVENT)
    assert ci.shard_keys(gsi1, 1) == [gsi1]
    assert ci.shard_keys(gsi1, 2) == [f"{gsi1}#SHARD#0", f"{gsi1}#SHARD#1"]
    assert ci.sharded_key(gsi1, "C000123456", 4) == f"{gsi1}#SHARD#2"
    items = ci.build_candidate_items(PROGRAM, EVENT, scored_frame(SCORES), CHANNELS, NOW, TTL)
    assert_frame_equal(ci.with_index_shards(items, 1), items)
    sharded = ci.with_index_shards(items, 3).row(0, named=True)
    shard = ci.index_shard(sharded["customer_id"], 3)
    assert sharded["gsi1pk"] == f"{items['gsi1pk'][0]}#SHARD#{shard}"
    assert sharded["gsi2pk"] == f"{items['gsi2pk'][0]}#SHARD#{shard}"
    assert_frame_equal(ci.with_index_shards(items, 3).drop("gsi1pk", "gsi2pk"), items.drop("gsi1pk", "gsi2pk"))
    with pytest.raises(ValueError, match="shards"):
        ci.index_shard("c", 0)


def test_one_shard_stores_exactly_the_sqlite_keys_and_more_shards_spread_them(aws_endpoint):
    unsharded = dynamodb_store(aws_endpoint, gsi_shards=1)
    replace(unsharded, SCORES)
    expected = ci.build_candidate_items(PROGRAM, EVENT, scored_frame(SCORES), CHANNELS, NOW, TTL)
    stored = stored_items(unsharded).select(*ci.KEY_COLUMNS).sort("pk", "sk")
    assert_frame_equal(stored, expected.select(*ci.KEY_COLUMNS).sort("pk", "sk"))
    top_unsharded = unsharded.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.0, 100, now=NOW).items
    items_unsharded = unsharded.event_items(PROGRAM, EVENT, now=NOW)

    sharded = dynamodb_store(aws_endpoint, create=False, gsi_shards=4)
    replace(sharded, MANY, event="evt-many")
    scan = sharded.dynamodb_client().scan(TableName=CANDIDATES_TABLE, ProjectionExpression="gsi1pk, gsi2pk")
    gsi1 = {item["gsi1pk"]["S"] for item in scan["Items"]} - set(stored["gsi1pk"])
    gsi2 = {item["gsi2pk"]["S"] for item in scan["Items"]} - set(stored["gsi2pk"])
    many_gsi1 = [ci.gsi1_pk(PROGRAM, channel, "evt-many") for channel in CHANNELS]
    assert gsi1 == {key for base in many_gsi1 for key in ci.shard_keys(base, 4)}
    assert gsi2 == set(ci.shard_keys(ci.gsi2_pk(PROGRAM, "evt-many"), 4))
    # the same items read back in the same order however they are sharded
    replace(sharded, SCORES)
    assert_frame_equal(
        sharded.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.0, 100, now=NOW).items, top_unsharded
    )
    assert_frame_equal(sharded.event_items(PROGRAM, EVENT, now=NOW), items_unsharded)


def test_one_long_equal_score_run_pages_in_customer_order(store):
    scores = {f"t{i:02d}": 0.5 for i in range(30)} | {"a": 0.9, "z": 0.1}
    replace(store, scores, batch=25)
    seen, cursor = [], None
    while True:
        page = store.top_candidates_for_channel(PROGRAM, EVENT, "in-app", 0.2, 7, cursor=cursor, now=NOW)
        seen.extend(page.items["customer_id"].to_list())
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["a", *sorted(k for k in scores if k.startswith("t"))]


def test_reads_are_key_queries_never_scans(store, inject):
    replace(store, SCORES)
    store.mark_registered(PROGRAM, EVENT, "c01", NOW, "email")
    store.put_cached_scores(EVENT, "m", "v", pl.DataFrame({"customer_id": ["c01"], "probability": [0.5]}), NOW, TTL)
    injector = inject(store)
    indexes: list[str | None] = []
    injector.register(
        "provide-client-params.dynamodb.Query", lambda params, **_: indexes.append(params.get("IndexName"))
    )
    store.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.5, 2, now=NOW)
    assert set(indexes) == {GSI1} and len(indexes) >= 4 and set(injector.calls) == {"Query"}  # >= one per shard
    indexes.clear()
    store.registered_candidates(PROGRAM, EVENT, now=NOW)
    store.event_items(PROGRAM, EVENT, now=NOW)
    store.count_event_items(PROGRAM, EVENT, now=NOW)
    store.candidates_for_customer(PROGRAM, "c01", now=NOW)
    store.get_cached_scores(EVENT, "m", "v", pl.Series(["c01", "c02"]), NOW)
    assert indexes == [GSI2] * 4 * 3 + [None]  # registered, event items, count: one query per shard
    replace(store, SCORES)
    store.mark_registered(PROGRAM, EVENT, "c02", NOW, "email")
    assert "Scan" not in injector.calls
    assert set(injector.calls) == {"Query", "BatchGetItem", "BatchWriteItem", "UpdateItem"}


# ---- values ---------------------------------------------------------------------------------


def test_numbers_round_trip_exactly():
    for value in (0.85, 0.1 + 0.2, 1 / 3, 0.7000000000000001, 1e-20, 1.0, 0.0):
        assert float(number_value(value)) == value
    assert number_value(1e-200) == "0"  # below DynamoDB's smallest number
    assert number_value(1_767_000_000) == "1767000000"
    with pytest.raises(ValueError, match="nan"):
        number_value(float("nan"))


def test_items_convert_to_dynamodb_and_back_unchanged(store):
    scored = scored_frame({"c01": 0.1 + 0.2, "c02": 1 / 3}).with_columns(
        p_event_attendance_v3=pl.Series([float("nan"), 2 / 3]), timezone=pl.Series(["Europe/Berlin", None])
    )
    items = ci.build_candidate_items(PROGRAM, EVENT, scored, CHANNELS, NOW, TTL)
    dynamo = to_dynamo_items(items)
    assert dynamo[0]["score"] == {"N": "0.30000000000000004"} and "p_event_attendance_v3" not in dynamo[0]
    assert "timezone" not in dynamo[2] and dynamo[0]["status_at"] == {"S": "2025-01-06T03:45:00.000000Z"}
    back = items_frame(dynamo)
    expected = items.select(back.columns).with_columns(pl.col("p_event_attendance_v3").fill_nan(None))
    assert_frame_equal(back, expected)
    store.replace_event_candidates(PROGRAM, EVENT, scored, CHANNELS, NOW, TTL, 25)
    assert_frame_equal(store.event_items(PROGRAM, EVENT, now=NOW), expected)


def test_a_top_n_page_queries_every_shard_at_once_over_pooled_connections(aws_endpoint: str, monkeypatch):
    """One Query per GSI1 shard, all in flight together (a barrier every shard's query must reach
    before any returns), on the client's connection pool: a page costs the slowest shard, once."""
    import threading

    store = dynamodb_store(aws_endpoint, gsi_shards=6, max_parallel_writers=2)
    store.replace_event_candidates(PROGRAM, EVENT, scored_frame(SCORES), CHANNELS, NOW, TTL, 25)
    client = store.dynamodb_client()
    assert client.meta.config.max_pool_connections >= store.gsi_shards
    barrier = threading.Barrier(store.gsi_shards, timeout=20)
    shards: list[str] = []
    real_query = client.query

    def query(**kwargs):
        if kwargs.get("IndexName") == "GSI1" and "ExclusiveStartKey" not in kwargs:
            shards.append(kwargs["ExpressionAttributeValues"][":pk"]["S"])
            barrier.wait()  # raises BrokenBarrierError if the shards were queried one after another
        return real_query(**kwargs)

    monkeypatch.setattr(client, "query", query)
    page = store.served_top_candidates(PROGRAM, EVENT, "email", 0.0, 5, True, None, NOW)
    assert sorted(shards) == sorted(ci.shard_keys(ci.gsi1_pk(PROGRAM, "email", EVENT), 6))
    assert [item.split('"customer_id":"')[1][:3] for item in page.items] == ["c01", "c02", "c03", "c04", "c05"]
