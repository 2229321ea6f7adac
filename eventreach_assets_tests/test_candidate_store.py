"""The candidates table and score cache: one contract, run against every store.

Tests taking `store` run against the SQLite store (a real file) and the DynamoDB store (moto in
server mode over real HTTP, see stand_ins.py); `@sqlite_only` tests check what only the SQLite
store has (transactions, connections, query plans, an eager purge). DynamoDB-only behaviour
(table shape, throttling, sharding) is in test_candidate_store_dynamodb.py.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from eventreach_assets.domain import candidate_items as ci
from eventreach_assets.resources.candidate_store import (
    CandidatePage,
    CandidateStoreResource,
    DynamoDBCandidateStore,
    SqliteCandidateStore,
    WriteSummary,
    create_candidate_tables,
)
from eventreach_assets.resources.candidate_store.base import cache_entries
from eventreach_assets.resources.sqlite import wait_for_checkpoints

PROGRAM = "event-invitations"
EVENT = "evt-2025-01"
OTHER_EVENT = "evt-2025-02"
CHANNELS = ["email", "in-app"]
NOW = datetime(2025, 1, 6, 3, 45, tzinfo=UTC)
TTL = 14


def scored_frame(scores: dict[str, float], **extra: list) -> pl.DataFrame:
    ids = list(scores)
    values = list(scores.values())
    frame = pl.DataFrame(
        {
            "customer_id": ids,
            "score": values,
            "score_band": ["high" if v >= 0.7 else "medium" if v >= 0.4 else "low" for v in values],
            "p_event_attendance_v3": [round(v * 0.9, 6) for v in values],
            "p_interest_affinity_v2": [round(v * 0.8, 6) for v in values],
            "marketplace": ["US"] * len(ids),
            "email": [f"{i}@example.test" for i in ids],
            "interest_tags": [["devops"]] * len(ids),  # not a declared attribute: never stored
        }
    )
    return frame.with_columns(**{name: pl.Series(values) for name, values in extra.items()})


SCORES = {"c01": 0.91, "c02": 0.85, "c03": 0.85, "c04": 0.72, "c05": 0.66, "c06": 0.51, "c07": 0.5, "c08": 0.3}


CANDIDATES_TABLE = "candidates"
CACHE_TABLE = "score-cache"


def dynamodb_store(endpoint: str, *, create: bool = True, **fields) -> DynamoDBCandidateStore:
    """A DynamoDB store on the moto endpoint; indexes sharded so every read merges shards."""
    fields = {
        "table_name": CANDIDATES_TABLE,
        "score_cache_table_name": CACHE_TABLE,
        "region_name": "us-east-1",
        "endpoint_url": endpoint,
        "gsi_shards": 3,
        "retry_base_seconds": 0.001,
        **fields,
    }
    store = DynamoDBCandidateStore(**fields)
    if create:
        create_candidate_tables(store.dynamodb_client(), store.table_name, store.score_cache_table_name, 0.1)
    return store


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path) -> CandidateStoreResource:
    if request.param == "sqlite":
        return SqliteCandidateStore(path=str(tmp_path / "nested" / "dir" / "candidates.sqlite"))
    return dynamodb_store(request.getfixturevalue("aws_endpoint"))


sqlite_only = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


def twin(store: CandidateStoreResource) -> CandidateStoreResource:
    """A second, independent instance on the same file or tables."""
    if isinstance(store, SqliteCandidateStore):
        return SqliteCandidateStore(path=store.path)
    assert isinstance(store, DynamoDBCandidateStore)
    return dynamodb_store(store.endpoint_url, create=False)


def replace(store: CandidateStoreResource, scores: dict[str, float], *, event: str = EVENT, now: datetime = NOW, **kw):
    return store.replace_event_candidates(
        PROGRAM, event, scored_frame(scores), kw.pop("channels", CHANNELS), now, TTL, kw.pop("batch", 3)
    )


def raw(store: SqliteCandidateStore, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(store.path) as conn:
        return conn.execute(sql, params).fetchall()


# The SQLite store's rows as items with DynamoDB's keys: a row's item per channel.
SQLITE_ITEMS_SQL = """
    SELECT r.*, c.value AS channel, 'EVENT#' || r.event_id || '#CHANNEL#' || c.value AS sk,
        'PROGRAM#' || r.program_id || '#CHANNEL#' || c.value || '#EVENT#' || r.event_id AS gsi1pk,
        r.gsi2sk || '#' || c.value AS item_gsi2sk
    FROM candidate_rows AS r, json_each(r.channels) AS c
"""


def stored_items(store: CandidateStoreResource) -> pl.DataFrame:
    """Every stored item with its keys, expired ones included (tests only: the DynamoDB side scans)."""
    if isinstance(store, SqliteCandidateStore):
        with sqlite3.connect(store.path) as conn:
            cursor = conn.execute(SQLITE_ITEMS_SQL)
            names = [column[0] for column in cursor.description]
            rows = pl.DataFrame(cursor.fetchall(), schema=names, orient="row", infer_schema_length=None)
        return rows.drop("channels", "gsi2sk").rename({"item_gsi2sk": "gsi2sk"})
    assert isinstance(store, DynamoDBCandidateStore)
    pages = store.dynamodb_client().get_paginator("scan").paginate(TableName=store.table_name)
    rows = [
        {name: value["S"] if "S" in value else float(value["N"]) for name, value in item.items()}
        for page in pages
        for item in page["Items"]
    ]
    return pl.DataFrame(rows, infer_schema_length=None)


# ---- keys and items -----------------------------------------------------------------------


def test_item_keys_and_ttl_follow_the_table_design():
    items = ci.build_candidate_items(PROGRAM, EVENT, scored_frame({"c01": 0.91}), CHANNELS, NOW, TTL)
    assert items.height == 2
    email = items.filter(pl.col("channel") == "email").row(0, named=True)
    assert email["pk"] == "CUSTOMER#c01#PROGRAM#event-invitations"
    assert email["sk"] == "EVENT#evt-2025-01#CHANNEL#email"
    assert email["gsi1pk"] == "PROGRAM#event-invitations#CHANNEL#email#EVENT#evt-2025-01"
    assert email["gsi2pk"] == "PROGRAM#event-invitations#EVENT#evt-2025-01"
    assert email["gsi2sk"] == "candidate#2025-01-06#c01#email"
    assert email["score"] == 0.91 and email["status"] == "candidate"
    assert email["expires_at"] == int(NOW.timestamp()) + 14 * 86400
    assert ci.GSI1_SORT_KEY == "score"
    assert "interest_tags" not in items.columns
    # naive datetimes are UTC, the project's convention
    assert ci.expires_at(NOW.replace(tzinfo=None), TTL) == email["expires_at"]


@sqlite_only
def test_a_stored_row_holds_a_customers_channels_and_each_item_has_the_tables_keys(store):
    replace(store, {"c01": 0.91})
    expires = int(NOW.timestamp()) + 14 * 86400
    assert raw(store, "SELECT pk, event_id, channels, gsi2pk, gsi2sk, expires_at FROM candidate_rows") == [
        (
            "CUSTOMER#c01#PROGRAM#event-invitations",
            "evt-2025-01",
            '["email","in-app"]',
            "PROGRAM#event-invitations#EVENT#evt-2025-01",
            "candidate#2025-01-06#c01",
            expires,
        )
    ]
    items = stored_items(store).sort("sk").select("pk", "sk", "gsi1pk", "gsi2pk", "gsi2sk", "expires_at")
    assert items.rows() == [
        (
            "CUSTOMER#c01#PROGRAM#event-invitations",
            "EVENT#evt-2025-01#CHANNEL#email",
            "PROGRAM#event-invitations#CHANNEL#email#EVENT#evt-2025-01",
            "PROGRAM#event-invitations#EVENT#evt-2025-01",
            "candidate#2025-01-06#c01#email",
            int(NOW.timestamp()) + 14 * 86400,
        ),
        (
            "CUSTOMER#c01#PROGRAM#event-invitations",
            "EVENT#evt-2025-01#CHANNEL#in-app",
            "PROGRAM#event-invitations#CHANNEL#in-app#EVENT#evt-2025-01",
            "PROGRAM#event-invitations#EVENT#evt-2025-01",
            "candidate#2025-01-06#c01#in-app",
            int(NOW.timestamp()) + 14 * 86400,
        ),
    ]
    assert raw(store, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize(
    ("scored", "message"),
    [
        (scored_frame({"c01": 0.5}).vstack(scored_frame({"c01": 0.6})), "duplicate_ids"),
        (scored_frame({"c01": 1.5}), "bad_scores"),
        (scored_frame({"c#1": 0.5}), "bad_ids"),
        (scored_frame({"c01": 0.5}).drop("score_band"), "score_band"),
    ],
)
def test_invalid_scored_sets_are_rejected_before_any_write(store, scored, message):
    replace(store, {"c09": 0.5})
    with pytest.raises(ValueError, match=message):
        store.replace_event_candidates(PROGRAM, EVENT, scored, CHANNELS, NOW, TTL, 25)
    assert store.event_items(PROGRAM, EVENT, now=NOW)["customer_id"].to_list() == ["c09", "c09"]


def test_items_read_back_with_attributes_and_without_keys(store):
    summary = replace(store, SCORES)
    assert isinstance(summary, WriteSummary)
    assert (summary.customers, summary.items_written, summary.items_deleted) == (8, 16, 0)
    assert summary.batches == 6  # 16 items in batches of 3
    assert summary.expires_at == NOW + timedelta(days=TTL)
    items = store.event_items(PROGRAM, EVENT, now=NOW)
    assert items.columns == ci.item_columns(["p_event_attendance_v3", "p_interest_affinity_v2"])
    row = items.filter((pl.col("customer_id") == "c02") & (pl.col("channel") == "in-app")).row(0, named=True)
    assert row["score"] == 0.85 and row["score_band"] == "high" and row["marketplace"] == "US"
    assert row["p_event_attendance_v3"] == pytest.approx(0.765) and row["timezone"] is None
    assert row["email"] == "c02@example.test"
    assert row["status_at"] == NOW and row["written_at"] == NOW and row["batch_date"] == NOW.date()
    assert items.schema["status_at"] == pl.Datetime("us", "UTC")
    assert store.count_event_items(PROGRAM, EVENT, now=NOW) == 16


def test_event_item_keys_are_the_items_keys_and_status_live_ones_only(store):
    replace(store, SCORES)
    store.mark_registered(PROGRAM, EVENT, "c03", NOW, "email")
    items = store.event_items(PROGRAM, EVENT, now=NOW)
    keys = store.event_item_keys(PROGRAM, EVENT, now=NOW)
    assert_frame_equal(keys, items.select("customer_id", "channel", "status"))
    assert keys.filter(pl.col("status") == "registered")["customer_id"].to_list() == ["c03", "c03"]
    after_ttl = NOW + timedelta(days=TTL + 1)
    assert store.event_item_keys(PROGRAM, EVENT, now=after_ttl).height == 0  # expired items are not live


def test_event_item_keys_drop_the_items_of_a_write_whose_ttl_passed_keeping_a_later_writes(store):
    """The SQLite store reads GSI2 alone while no TTL has passed; once one has, it filters by TTL."""
    replace(store, SCORES)  # expires NOW + TTL days
    later = NOW + timedelta(days=TTL - 1)
    replace(store, {"c01": 0.9, "c02": 0.8}, event=OTHER_EVENT, now=later)  # expires later + TTL days
    for at, event, live in [(NOW, EVENT, 8), (NOW + timedelta(days=TTL, seconds=1), EVENT, 0),
                            (NOW + timedelta(days=TTL, seconds=1), OTHER_EVENT, 2)]:  # fmt: skip
        keys = store.event_item_keys(PROGRAM, event, now=at)
        assert keys["customer_id"].n_unique() == live and keys.height == live * len(CHANNELS), (at, event)
        assert store.count_event_items(PROGRAM, event, now=at) == keys.height


def test_gsi2_sort_keys_split_back_into_their_parts():
    at = datetime(2025, 1, 6, 23, 59, tzinfo=UTC)
    sort_keys = pl.Series(
        [ci.gsi2_sk("registered", at, "c-01_x.y", "in-app"), ci.gsi2_sk("candidate", NOW, "c2", "email")]
    )
    assert ci.gsi2_sk_parts(sort_keys).rows() == [
        ("registered", "2025-01-06", "c-01_x.y", "in-app"),
        ("candidate", "2025-01-06", "c2", "email"),
    ]


def test_the_store_compared_with_the_scored_set_names_each_kind_of_difference(store):
    """What the batch's `candidates_table_matches_scored` check computes, on the store's own read."""
    replace(store, SCORES)
    store.mark_registered(PROGRAM, EVENT, "c03", NOW, "email")
    keys = store.event_item_keys(PROGRAM, EVENT, now=NOW)
    scored = pl.Series(list(SCORES))
    none = {"scored_missing_from_store": 0, "customers_with_wrong_channel_count": 0, "unexpected_customers": 0}
    assert ci.store_vs_scored(keys, scored, len(CHANNELS)) == none
    assert ci.store_vs_scored(keys, pl.concat([scored, pl.Series(["c99"])]), len(CHANNELS)) == {
        **none, "scored_missing_from_store": 1}  # fmt: skip
    assert ci.store_vs_scored(keys, scored.filter(scored != "c01"), len(CHANNELS)) == {
        **none, "unexpected_customers": 1}  # fmt: skip
    # A registered customer the new set dropped stays in the store on purpose.
    assert ci.store_vs_scored(keys, scored.filter(scored != "c03"), len(CHANNELS)) == none
    assert ci.store_vs_scored(keys, scored, len(CHANNELS) + 1) == {
        **none, "customers_with_wrong_channel_count": len(SCORES)}  # fmt: skip
    # Items whose TTL has passed are not read: every scored customer is missing.
    expired = store.event_item_keys(PROGRAM, EVENT, now=NOW + timedelta(days=TTL + 1))
    assert ci.store_vs_scored(expired, scored, len(CHANNELS))["scored_missing_from_store"] == len(SCORES)


def test_values_shared_by_every_item_are_stored_exactly_whatever_they_hold(store):
    """The SQLite store writes a column holding one value in every row as an SQL literal: quotes,
    non-ASCII text, NUL, NULL and floats that need 17 digits must come back exactly (the items of
    both writes, and a one-item write, where nothing is shared)."""
    event = "evt-o'clock');DROP-TABLE-candidate_items;--"
    awkward = "Côte d'Ivoire \\ 'quoted' 日本"
    shared = {
        "marketplace": [awkward] * 3,
        "timezone": [None] * 3,
        "job_role": ["with\x00nul"] * 3,
        "p_interest_affinity_v2": [0.1 + 0.2] * 3,
        "score": [1 / 3] * 3,
    }
    scored = scored_frame({"c1": 0.5, "c2": 0.5, "c3": 0.5}, **shared)
    store.replace_event_candidates(PROGRAM, event, scored, CHANNELS, NOW, TTL, 2)
    store.replace_event_candidates(PROGRAM, OTHER_EVENT, scored.head(1), CHANNELS, NOW, TTL, 2)
    for event_id, customers in ((event, 3), (OTHER_EVENT, 1)):
        items = store.event_items(PROGRAM, event_id, now=NOW)
        assert items.height == customers * len(CHANNELS) and set(items["event_id"]) == {event_id}
        assert set(items["marketplace"]) == {awkward} and set(items["job_role"]) == {"with\x00nul"}
        assert items["timezone"].null_count() == items.height
        assert set(items["p_interest_affinity_v2"]) == {0.1 + 0.2} and set(items["score"]) == {1 / 3}
        assert set(items["email"]) == {f"{c}@example.test" for c in ["c1", "c2", "c3"][:customers]}
    cached = pl.DataFrame({"customer_id": ["c1", "c2", "c3"], "probability": [0.1 + 0.2] * 3})
    assert store.put_cached_scores(event, "m'1", "v'1", cached, NOW, TTL) == 3
    hits = store.get_cached_scores(event, "m'1", "v'1", cached["customer_id"], NOW)
    assert_frame_equal(hits.sort("customer_id"), cached)


@pytest.mark.parametrize("page_rows", [3, 100_000])
def test_exported_items_are_the_event_items_without_pii_whatever_changed_since_the_write(store, monkeypatch, page_rows):
    """The SQLite store reads the export from each item's stored served JSON (patched when an item
    is registered or its TTL extended), in pages: it must equal the items read as values."""
    monkeypatch.setattr("eventreach_assets.resources.candidate_store.sqlite._EXPORT_READ_ROWS", page_rows)
    awkward = ['a "quoted"\nline', None, "Zürich's", "US", "日本", "US", "US", "US"]
    replace(store, SCORES, job_role=awkward, p_interest_affinity_v2=[None, 0.1 + 0.2, *[1 / 3] * 6])
    store.mark_registered(PROGRAM, EVENT, "c03", NOW + timedelta(hours=1), "in-app")
    later = NOW + timedelta(days=1)
    store.replace_event_candidates(PROGRAM, EVENT, scored_frame({"c01": 0.4, "c02": 0.2}), CHANNELS, later, TTL, 3)
    expected = ci.export_frame(store.event_items(PROGRAM, EVENT, now=later))
    assert expected.height == 6 and "c03" in set(expected["customer_id"])  # c03 retained: registered
    assert_frame_equal(store.exported_items(PROGRAM, EVENT, now=later), expected, check_exact=True)
    assert "email" not in expected.columns and expected.columns == [
        c for c in ci.item_columns(["p_event_attendance_v3", "p_interest_affinity_v2"]) if c != "email"
    ]
    assert store.exported_items(PROGRAM, OTHER_EVENT, now=later).height == 0
    assert store.exported_items(PROGRAM, EVENT, now=later + timedelta(days=TTL + 1)).height == 0


@sqlite_only
def test_an_item_without_stored_served_json_fails_the_export_read_rather_than_vanishing(store):
    replace(store, SCORES)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE candidate_rows SET item_json = NULL WHERE customer_id = 'c02'")
    with pytest.raises(RuntimeError, match="16 live items but 14 stored served JSON texts"):
        store.exported_items(PROGRAM, EVENT, now=NOW)


# ---- replace semantics --------------------------------------------------------------------


def test_replace_is_idempotent(store):
    replace(store, SCORES)
    first = store.event_items(PROGRAM, EVENT, now=NOW)
    second_summary = replace(store, SCORES)
    assert second_summary.items_deleted == 0
    assert_frame_equal(store.event_items(PROGRAM, EVENT, now=NOW), first)
    keys = stored_items(store).select("pk", "sk")
    assert (keys.height, keys.n_unique()) == (16, 16)


def test_replace_removes_stale_items_and_leaves_other_events_alone(store):
    replace(store, SCORES)
    replace(store, {"c01": 0.4}, event=OTHER_EVENT)
    summary = replace(store, {"c02": 0.2, "c03": 0.95, "c99": 0.6}, channels=["email"])
    assert summary.items_deleted == 16 - 2  # everything but c02/c03 email
    items = store.event_items(PROGRAM, EVENT, now=NOW)
    assert items.select("customer_id", "channel", "score").rows() == [
        ("c02", "email", 0.2),
        ("c03", "email", 0.95),
        ("c99", "email", 0.6),
    ]
    assert store.candidates_for_customer(PROGRAM, "c01", now=NOW)["event_id"].to_list() == [OTHER_EVENT] * 2
    assert store.count_event_items(PROGRAM, OTHER_EVENT, now=NOW) == 2


@sqlite_only
def test_replace_rolls_back_when_a_write_fails(store, monkeypatch):
    replace(store, SCORES)
    before = store.event_items(PROGRAM, EVENT, now=NOW)

    rows_of_items = SqliteCandidateStore._rows_of_items

    def broken(items: pl.DataFrame) -> pl.DataFrame:
        return rows_of_items(items).with_columns(score=pl.lit(None, dtype=pl.Float64))  # NOT NULL violation mid-write

    monkeypatch.setattr(SqliteCandidateStore, "_rows_of_items", staticmethod(broken))
    with pytest.raises(sqlite3.IntegrityError):
        replace(store, {"c50": 0.5})
    assert_frame_equal(store.event_items(PROGRAM, EVENT, now=NOW), before)


def test_registration_survives_a_replace(store):
    replace(store, SCORES)
    registered_at = NOW + timedelta(hours=7)
    assert store.mark_registered(PROGRAM, EVENT, "c02", registered_at, "email") == 2
    assert store.mark_registered(PROGRAM, EVENT, "c05", registered_at, None) == 2
    later = NOW + timedelta(days=7)
    # c05 was removed by the eligibility filter in the next batch (already registered)
    summary = replace(store, {k: v for k, v in SCORES.items() if k != "c05"} | {"c02": 0.42}, now=later)
    assert summary.registered_preserved == 1
    assert summary.registered_retained == 2  # c05's two items, kept for the reminder
    c02 = store.candidates_for_customer(PROGRAM, "c02", now=later)
    assert c02["status"].to_list() == ["registered", "registered"]
    assert c02["status_at"].to_list() == [registered_at, registered_at]
    assert c02["registered_channel"].to_list() == ["email", "email"]
    assert c02["score"].to_list() == [0.42, 0.42]
    registered = store.registered_candidates(PROGRAM, EVENT, now=later)
    assert registered.select("customer_id", "channel").rows() == [
        ("c02", "email"),
        ("c02", "in-app"),
        ("c05", "email"),
        ("c05", "in-app"),
    ]
    # the retained items live as long as the new batch's items
    assert registered["expires_at"].unique().to_list() == [ci.expires_at(later, TTL)]
    assert stored_items(store).filter(pl.col("customer_id") == "c02")["gsi2sk"].sort().to_list() == [
        "registered#2025-01-06#c02#email",
        "registered#2025-01-06#c02#in-app",
    ]


def test_mark_registered_keeps_the_earliest_registration(store):
    replace(store, SCORES)
    first, replay = NOW + timedelta(hours=1), NOW + timedelta(days=2)
    assert store.mark_registered(PROGRAM, EVENT, "c01", replay, "in-app") == 2
    assert store.mark_registered(PROGRAM, EVENT, "c01", first, "email") == 2
    assert store.mark_registered(PROGRAM, EVENT, "c01", replay, "in-app") == 2
    rows = store.candidates_for_customer(PROGRAM, "c01", now=NOW)
    assert set(rows.select("status", "status_at", "registered_channel").rows()) == {("registered", first, "email")}
    assert store.mark_registered(PROGRAM, EVENT, "nobody", first, "email") == 0
    assert store.mark_registered(PROGRAM, OTHER_EVENT, "c01", first, "email") == 0
    assert store.registered_candidates(PROGRAM, EVENT, now=NOW)["customer_id"].to_list() == ["c01", "c01"]


def test_mark_registered_many_in_one_call(store):
    replace(store, SCORES)
    registrations = pl.DataFrame(
        {
            "customer_id": ["c01", "c03", "nobody"],
            "registered_at": [datetime(2025, 1, 6, 12, 0), datetime(2025, 1, 7, 9, 30), datetime(2025, 1, 7)],
            "channel": ["email", "in-app", "email"],
        }
    )  # naive timestamps are UTC
    assert store.mark_registered_many(PROGRAM, EVENT, registrations) == 4
    registered = store.registered_candidates(PROGRAM, EVENT, now=NOW)
    assert registered.select("customer_id", "channel", "status_at", "registered_channel").rows() == [
        ("c01", "email", datetime(2025, 1, 6, 12, 0, tzinfo=UTC), "email"),
        ("c01", "in-app", datetime(2025, 1, 6, 12, 0, tzinfo=UTC), "email"),
        ("c03", "email", datetime(2025, 1, 7, 9, 30, tzinfo=UTC), "in-app"),
        ("c03", "in-app", datetime(2025, 1, 7, 9, 30, tzinfo=UTC), "in-app"),
    ]
    # the interface's generic fallback gives the same answer through mark_registered
    assert CandidateStoreResource.mark_registered_many(store, PROGRAM, EVENT, registrations.drop("channel")) == 4
    assert store.registered_candidates(PROGRAM, EVENT, now=NOW)["registered_channel"].to_list()[0] == "email"


def test_a_model_dropped_from_the_program_leaves_no_stale_probabilities(store):
    replace(store, SCORES)
    scored = scored_frame(SCORES).drop("p_interest_affinity_v2").with_columns(p_new_model=pl.lit(0.5))
    store.replace_event_candidates(PROGRAM, EVENT, scored, CHANNELS, NOW, TTL, 25)
    items = store.event_items(PROGRAM, EVENT, now=NOW)
    assert [c for c in items.columns if c.startswith("p_")] == ["p_event_attendance_v3", "p_new_model"]
    stored = stored_items(store)  # DynamoDB: attribute absent; SQLite: column nulled
    assert stored.get_column("p_interest_affinity_v2", default=pl.Series([None])).drop_nulls().len() == 0


@sqlite_only
def test_connections_are_reused_and_closed(store):
    replace(store, SCORES)
    store.count_event_items(PROGRAM, EVENT, now=NOW)
    assert len(store._db()._connections) == 1
    store.close()
    store.close()
    assert store._db()._connections == {}
    assert store.count_event_items(PROGRAM, EVENT, now=NOW) == 16  # reopens on demand


@sqlite_only
def test_an_events_items_and_its_score_cache_are_committed_without_waiting_for_the_checkpoint(store, held_checkpoints):
    """Both bulk writes leave the copy into the database file (and its disk syncs) to a
    background thread: right after them the file holds none of their pages, every read sees them."""
    scores = {f"c{i:05d}": (i % 97) / 97 for i in range(8_000)}  # 8,000 rows of two items: ~10 MB of pages
    file_bytes = Path(store.path)
    replace(store, scores, batch=500)
    probabilities = pl.DataFrame({"customer_id": list(scores), "probability": 0.5})
    store.put_cached_scores(EVENT, "m1", "v1", probabilities, NOW, TTL)  # after 2,500 pages of WAL: past 1,000
    assert file_bytes.stat().st_size < 1_000_000
    assert store.count_event_items(PROGRAM, EVENT, now=NOW) == 16_000
    assert store.get_cached_scores(EVENT, "m1", "v1", pl.Series(list(scores)), NOW).height == 8_000

    held_checkpoints.set()
    wait_for_checkpoints()
    assert file_bytes.stat().st_size > 8_000_000


@sqlite_only
def test_a_deleted_database_file_is_recreated_not_written_into_the_void(store):
    replace(store, SCORES)
    for suffix in ("", "-wal", "-shm"):
        Path(store.path + suffix).unlink(missing_ok=True)
    replace(store, {"c01": 0.5})
    assert raw(store, "SELECT count(*) FROM candidate_rows") == [(1,)]


def test_two_store_instances_write_the_same_store(store):
    other = twin(store)
    replace(store, {"c01": 0.5})
    replace(other, {"c02": 0.5}, event=OTHER_EVENT)
    other.mark_registered(PROGRAM, EVENT, "c01", NOW, "email")
    assert store.registered_candidates(PROGRAM, EVENT, now=NOW).height == 2
    assert store.count_event_items(PROGRAM, OTHER_EVENT, now=NOW) == 2


# ---- GSI1: top-N ----------------------------------------------------------------------------


def test_top_candidates_order_min_score_and_limit(store):
    replace(store, SCORES)
    replace(store, {"x01": 0.99}, event=OTHER_EVENT)
    page = store.top_candidates_for_channel(PROGRAM, EVENT, "email", min_score=0.5, limit=100, now=NOW)
    assert isinstance(page, CandidatePage) and page.next_cursor is None
    # score desc, ties (c02, c03 at 0.85) by customer_id; 0.5 is included, 0.3 is not
    assert page.items["customer_id"].to_list() == ["c01", "c02", "c03", "c04", "c05", "c06", "c07"]
    assert set(page.items["channel"]) == {"email"} and set(page.items["event_id"]) == {EVENT}
    top3 = store.top_candidates_for_channel(PROGRAM, EVENT, "in-app", min_score=0.6, limit=3, now=NOW)
    assert top3.items["customer_id"].to_list() == ["c01", "c02", "c03"]
    assert top3.next_cursor is not None
    none = store.top_candidates_for_channel(PROGRAM, EVENT, "push", min_score=0.0, limit=10, now=NOW)
    assert none.items.height == 0 and none.next_cursor is None


def test_top_candidates_excludes_registered_unless_asked(store):
    replace(store, SCORES)
    store.mark_registered(PROGRAM, EVENT, "c01", NOW, "email")
    page = store.top_candidates_for_channel(PROGRAM, EVENT, "in-app", min_score=0.8, limit=10, now=NOW)
    assert page.items["customer_id"].to_list() == ["c02", "c03"]
    everyone = store.top_candidates_for_channel(
        PROGRAM, EVENT, "in-app", min_score=0.8, limit=10, exclude_registered=False, now=NOW
    )
    assert everyone.items.select("customer_id", "status").rows() == [
        ("c01", "registered"),
        ("c02", "candidate"),
        ("c03", "candidate"),
    ]


@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 50])
def test_cursor_pagination_walks_every_item_exactly_once(store, page_size):
    # many ties; moto answers each GSI query in ~30 ms, so DynamoDB gets the same ties on fewer customers
    customers = 120 if isinstance(store, SqliteCandidateStore) else 51
    scores = {f"k{i:03d}": round((i % 17) / 17, 3) for i in range(customers)}
    replace(store, scores, batch=25)
    store.mark_registered(PROGRAM, EVENT, "k016", NOW, "email")
    expected = (
        pl.DataFrame({"customer_id": list(scores), "score": list(scores.values())})
        .filter((pl.col("score") >= 0.2) & (pl.col("customer_id") != "k016"))
        .sort(["score", "customer_id"], descending=[True, False])
    )
    seen, cursor, pages = [], None, 0
    while True:
        page = store.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.2, page_size, cursor=cursor, now=NOW)
        assert page.items.height <= page_size
        seen.append(page.items.select("customer_id", "score"))
        pages += 1
        if page.next_cursor is None:
            break
        assert pages <= expected.height, "the cursor does not advance"
        cursor = page.next_cursor
    assert_frame_equal(pl.concat(seen), expected)
    assert pages == max(1, -(-expected.height // page_size))


def test_cursor_is_tied_to_its_query(store):
    replace(store, SCORES)
    page = store.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.5, 2, now=NOW)
    with pytest.raises(ValueError, match="different query"):
        store.top_candidates_for_channel(PROGRAM, EVENT, "in-app", 0.5, 2, cursor=page.next_cursor, now=NOW)
    with pytest.raises(ValueError, match="different query"):
        store.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.6, 2, cursor=page.next_cursor, now=NOW)
    with pytest.raises(ValueError, match="not a candidate page cursor"):
        store.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.5, 2, cursor="garbage", now=NOW)


# ---- TTL ------------------------------------------------------------------------------------


def test_expired_items_are_hidden_then_purged(store):
    replace(store, SCORES)
    replace(store, {"c01": 0.4}, event=OTHER_EVENT, now=NOW + timedelta(days=10))
    store.mark_registered(PROGRAM, EVENT, "c02", NOW, "email")
    just_before = NOW + timedelta(days=TTL) - timedelta(seconds=1)
    at_expiry = NOW + timedelta(days=TTL)  # expires_at <= now: gone
    assert store.count_event_items(PROGRAM, EVENT, now=just_before) == 16
    assert store.count_event_items(PROGRAM, EVENT, now=at_expiry) == 0
    assert store.event_items(PROGRAM, EVENT, now=at_expiry).height == 0
    assert store.registered_candidates(PROGRAM, EVENT, now=at_expiry).height == 0
    assert store.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.0, 10, now=at_expiry).items.height == 0
    assert store.candidates_for_customer(PROGRAM, "c01", now=at_expiry)["event_id"].to_list() == [OTHER_EVENT] * 2
    assert stored_items(store).height == 18  # hidden, not yet deleted
    if isinstance(store, SqliteCandidateStore):
        assert store.purge_expired(at_expiry) == 16
        assert raw(store, "SELECT count(*) FROM candidate_rows") == [(1,)]
    # DynamoDB: TTL deletes by itself; the call is a no-op (see candidate_store/dynamodb.py's docstring)
    assert store.purge_expired(at_expiry) == 0


@sqlite_only
def test_a_purge_reads_a_table_only_once_a_ttl_written_to_it_has_passed(store):
    """The batch purges before every replace; with no TTL passed it must not scan the items or
    the score cache (a week of 3M-profile events: ~0.2 s a purge, growing with the store)."""
    replace(store, SCORES)
    store.put_cached_scores(EVENT, "m1", "v1", pl.DataFrame({"customer_id": ["c01"], "probability": [0.5]}), NOW, 3)
    statements: list[str] = []
    with store._connect() as conn:
        conn.set_trace_callback(statements.append)
    try:

        def purged_tables(now: datetime) -> tuple[int, list[str]]:
            statements.clear()
            removed = store.purge_expired(now)
            tables = sorted({table for sql in statements if sql.startswith("DELETE") for table in sql.split()[2:3]})
            return removed, tables

        assert purged_tables(NOW + timedelta(days=2)) == (0, [])
        assert purged_tables(NOW + timedelta(days=3)) == (1, ["score_cache_entries", "score_cache_expiries"])
        assert purged_tables(NOW + timedelta(days=3)) == (0, [])
        at_expiry = NOW + timedelta(days=TTL)
        assert purged_tables(at_expiry) == (16, ["candidate_item_expiries", "candidate_rows"])
    finally:
        with store._connect() as conn:
            conn.set_trace_callback(None)
    assert raw(store, "SELECT count(*) FROM candidate_rows") == [(0,)]


def test_replace_drops_expired_items_and_their_registrations(store):
    replace(store, SCORES)
    store.mark_registered(PROGRAM, EVENT, "c02", NOW, "email")
    later = NOW + timedelta(days=TTL + 1)
    summary = replace(store, {"c02": 0.5}, now=later)
    assert (summary.items_deleted, summary.registered_preserved, summary.registered_retained) == (14, 0, 0)
    assert store.event_items(PROGRAM, EVENT, now=later)["status"].to_list() == ["candidate", "candidate"]


# ---- PK: one customer -----------------------------------------------------------------------


def test_candidates_for_customer_spans_events(store):
    replace(store, SCORES)
    replace(store, {"c03": 0.1, "c04": 0.2}, event=OTHER_EVENT, channels=["in-app"])
    rows = store.candidates_for_customer(PROGRAM, "c03", now=NOW)
    assert rows.select("event_id", "channel", "score").rows() == [
        (EVENT, "email", 0.85),
        (EVENT, "in-app", 0.85),
        (OTHER_EVENT, "in-app", 0.1),
    ]
    assert store.candidates_for_customer("other-program", "c03", now=NOW).height == 0
    assert store.candidates_for_customer(PROGRAM, "zz", now=NOW).height == 0


# ---- query plans ----------------------------------------------------------------------------


@sqlite_only
def test_every_read_access_pattern_is_served_by_an_index(store):
    replace(store, SCORES)
    plans = store.query_plans()
    expected_index = {
        # a channel's top-N: the event's rows by score (each row's channels looked at, not a table)
        "top_candidates_for_channel": "candidate_rows_by_score (gsi2pk=? AND score>?)",
        "top_candidates_for_channel/next_page": "candidate_rows_by_score (gsi2pk=?",
        "registered_candidates": "candidate_rows_registered (gsi2pk=? AND gsi2sk>? AND gsi2sk<?)",
        # the Serving API's page: the partial covering index, no row lookups
        "registered_customers_page": "COVERING INDEX candidate_rows_registered (gsi2pk=? AND gsi2sk>? AND gsi2sk<?)",
        "served_customer_items": "sqlite_autoindex_candidate_rows_1 (pk=? AND event_id>?)",
        "candidates_for_customer": "sqlite_autoindex_candidate_rows_1 (pk=?)",
        "event_items": "(gsi2pk=?)",
        # the batch checks' reads: GSI2 alone while no written TTL has passed
        "event_item_keys": "COVERING INDEX candidate_rows_gsi2 (gsi2pk=?)",
        "event_item_keys/some_ttl_passed": "(gsi2pk=?)",
        "count_event_items": "COVERING INDEX candidate_rows_gsi2 (gsi2pk=?)",
        # the export's pages: each starts after the last one's key, its end found on the index alone
        "exported_items_page_end": "COVERING INDEX candidate_rows_gsi2 (gsi2pk=? AND gsi2sk>?)",
        "exported_items_page": "candidate_rows_gsi2 (gsi2pk=? AND gsi2sk>? AND gsi2sk<?)",
        "get_cached_scores": "PRIMARY KEY (sk=? AND customer_id=?)",
    }
    assert set(plans) == set(expected_index)
    for name, index in expected_index.items():
        assert index in plans[name], (name, plans[name])
        assert "SCAN candidate_rows" not in plans[name] and "SCAN r " not in plans[name], (name, plans[name])
        # the only scans: a row's own channels (json_each), and the cache read's list of ids
        scans = [step for step in plans[name].split(" | ") if step.startswith("SCAN")]
        assert all("VIRTUAL TABLE" in step for step in scans), (name, plans[name])
    # the index order is the result order: no sort step for top-N or the export
    assert "TEMP B-TREE" not in plans["top_candidates_for_channel"]
    assert "TEMP B-TREE" not in plans["top_candidates_for_channel/next_page"]
    assert "TEMP B-TREE" not in plans["exported_items_page"]


# ---- score cache ----------------------------------------------------------------------------


def test_score_cache_hits_misses_expiry_and_version_isolation(store):
    ids = pl.Series("customer_id", ["c01", "c02", "c03"])
    assert store.get_cached_scores(EVENT, "m1", "v1", ids, NOW).height == 0
    written = store.put_cached_scores(
        EVENT, "m1", "v1", pl.DataFrame({"customer_id": ["c01", "c02"], "probability": [0.25, 0.75]}), NOW, TTL
    )
    assert written == 2
    hits = store.get_cached_scores(EVENT, "m1", "v1", ids, NOW + timedelta(days=1)).sort("customer_id")
    assert hits.rows() == [("c01", 0.25), ("c02", 0.75)]
    assert hits.schema == pl.Schema({"customer_id": pl.String(), "probability": pl.Float64()})
    assert store.get_cached_scores(EVENT, "m1", "v2", ids, NOW).height == 0
    assert store.get_cached_scores(EVENT, "m2", "v1", ids, NOW).height == 0
    assert store.get_cached_scores(OTHER_EVENT, "m1", "v1", ids, NOW).height == 0
    assert store.get_cached_scores(EVENT, "m1", "v1", pl.Series([], dtype=pl.String), NOW).height == 0
    # upsert refreshes value and TTL
    store.put_cached_scores(
        EVENT, "m1", "v1", pl.DataFrame({"customer_id": ["c02"], "probability": [0.5]}), NOW + timedelta(days=10), TTL
    )
    expired = NOW + timedelta(days=TTL)
    assert store.get_cached_scores(EVENT, "m1", "v1", ids, expired).rows() == [("c02", 0.5)]
    if isinstance(store, SqliteCandidateStore):
        assert store.purge_expired(expired) == 1
        assert raw(store, "SELECT customer_id FROM score_cache_entries") == [("c02",)]


@sqlite_only
def test_score_cache_round_trip_for_100k_customers(store):
    n = 100_000
    scores = pl.DataFrame({"customer_id": [f"C{i:07d}" for i in range(n)]}).with_columns(
        probability=(pl.int_range(n) % 1000) / 1000
    )
    assert store.put_cached_scores(EVENT, "m1", "v1", scores, NOW, TTL) == n
    asked = pl.concat([scores["customer_id"].head(n // 2), pl.Series([f"miss{i}" for i in range(1000)])])
    hits = store.get_cached_scores(EVENT, "m1", "v1", asked, NOW)
    assert_frame_equal(hits.sort("customer_id"), scores.head(n // 2), check_dtypes=False)


# ---- interface and Dagster ------------------------------------------------------------------


def test_base_resource_is_an_interface():
    with pytest.raises(TypeError, match="abstract"):
        CandidateStoreResource()
    # the public methods hold the shared logic; a store provides only private I/O methods
    abstract = CandidateStoreResource.__abstractmethods__
    assert {"_replace_event_items", "_top_page", "_cached_scores"} <= abstract
    assert all(name.startswith("_") for name in abstract)


def test_store_works_as_a_dagster_resource(store):
    @dg.asset
    def stored(candidate_store: CandidateStoreResource) -> dg.MaterializeResult:
        summary = candidate_store.replace_event_candidates(
            PROGRAM, EVENT, scored_frame(SCORES), CHANNELS, NOW.replace(tzinfo=None), TTL, 25
        )
        return dg.MaterializeResult(metadata={"items": summary.items_written})

    result = dg.materialize([stored], resources={"candidate_store": store})
    assert result.success
    assert store.count_event_items(PROGRAM, EVENT, now=NOW) == 16


# ---- the Serving API's reads: pages as JSON text ---------------------------------------------


def served_frame(texts: list[str]) -> list[dict]:
    import json

    return [json.loads(text) for text in texts]


def expected_served(frame: pl.DataFrame) -> list[dict]:
    """What the API served before: the read frame as JSON, PII left out, times ISO 8601 UTC."""
    import json

    from eventreach_assets.serving.api.views import PII_COLUMNS

    columns = [
        pl.col(name).dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ") if isinstance(dtype, pl.Datetime) else pl.col(name)
        for name, dtype in frame.schema.items()
        if name not in PII_COLUMNS
    ]
    return json.loads(frame.select(columns).write_json())


def test_served_top_candidates_are_the_frame_pages_as_json_in_order_and_field_order(store):
    replace(store, SCORES, marketplace=["US", None, "DE", "US", "US", "US", "US", "US"])
    store.mark_registered(PROGRAM, EVENT, "c02", NOW, "email")
    for exclude in (True, False):
        frame_cursor, served_cursor = None, None
        while True:
            frame = store.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.4, 2, exclude, frame_cursor, NOW)
            page = store.served_top_candidates(PROGRAM, EVENT, "email", 0.4, 2, exclude, served_cursor, NOW)
            served = served_frame(page.items)
            assert served == expected_served(frame.items)
            assert [list(item) for item in served] == [list(row) for row in expected_served(frame.items)]
            assert all("email" not in item for item in served)
            assert (page.next_position is None) == (frame.next_cursor is None)
            if page.next_position is None:
                break
            frame_cursor, [served_cursor] = frame.next_cursor, page.next_position
    registered = served_frame(store.served_top_candidates(PROGRAM, EVENT, "email", 0.8, 5, False, None, NOW).items)
    assert [(item["customer_id"], item["status"], item["registered_channel"]) for item in registered] == [
        ("c01", "candidate", None), ("c02", "registered", "email"), ("c03", "candidate", None),
    ]  # fmt: skip


def test_served_customer_items_page_by_event_then_channel(store):
    replace(store, SCORES)
    replace(store, {"c01": 0.2}, event=OTHER_EVENT)
    whole = store.candidates_for_customer(PROGRAM, "c01", now=NOW)
    pages, after = [], None
    while True:
        page = store.served_customer_items(PROGRAM, "c01", None, 3, after, NOW)
        pages.append(served_frame(page.items))
        if page.next_position is None:
            break
        after = tuple(page.next_position)
    assert [len(page) for page in pages] == [3, 1]
    assert [item for page in pages for item in page] == expected_served(whole)
    one_event = store.served_customer_items(PROGRAM, "c01", OTHER_EVENT, 100, None, NOW)
    assert [(i["event_id"], i["channel"]) for i in served_frame(one_event.items)] == [
        (OTHER_EVENT, c) for c in CHANNELS
    ]


def test_registered_customers_are_paged_by_the_index_one_row_per_customer(store):
    replace(store, SCORES)
    day_one, day_two = NOW - timedelta(days=1), NOW
    for customer, at in (("c05", day_one), ("c02", day_one), ("c07", day_two), ("c01", day_two), ("c03", day_two)):
        store.mark_registered(PROGRAM, EVENT, customer, at, "in-app")
    walked, after = [], None
    while True:
        customers, more = store.registered_customers_page(PROGRAM, EVENT, 2, after, NOW)
        walked.append([customer.customer_id for customer in customers])
        if not more:
            break
        after = customers[-1].position
    # The index's order: registration date, then customer_id; every customer once.
    assert walked == [["c02", "c05"], ["c01", "c03"], ["c07"]]
    [first], _ = store.registered_customers_page(PROGRAM, EVENT, 1, None, NOW)
    assert (first.customer_id, first.channel, first.score, first.score_band) == ("c02", "in-app", 0.85, "high")
    assert first.registered_at == day_one.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with pytest.raises(ValueError, match="position"):
        store.registered_customers_page(PROGRAM, EVENT, 2, "candidate#2025-01-06#c01#email", NOW)


def drop_a_channel_with_registered_customers(store: CandidateStoreResource) -> tuple[datetime, WriteSummary]:
    """Email and in-app, c02 and c05 registered, then a batch on email only without c05: c02's
    email item is rewritten (registration carried over), its in-app item and both of c05's are
    kept for reminders with their own attributes (registered items absent from the new set)."""
    replace(store, SCORES)
    registered_at = NOW + timedelta(hours=1)
    store.mark_registered(PROGRAM, EVENT, "c02", registered_at, "in-app")
    store.mark_registered(PROGRAM, EVENT, "c05", registered_at, "email")
    later = NOW + timedelta(days=7)
    summary = replace(
        store, {k: v for k, v in SCORES.items() if k != "c05"} | {"c02": 0.42}, now=later, channels=["email"]
    )
    replace(store, {"c01": 0.4, "c02": 0.3}, event=OTHER_EVENT)
    return later, summary


def test_a_channel_dropped_from_the_program_keeps_the_registered_items_of_it(store):
    later, summary = drop_a_channel_with_registered_customers(store)
    registered_at = NOW + timedelta(hours=1)
    assert (summary.items_written, summary.items_deleted) == (7, 6)  # the others' in-app items go
    assert (summary.registered_preserved, summary.registered_retained) == (1, 3)
    c02 = store.candidates_for_customer(PROGRAM, "c02", now=later)
    assert c02.select(
        "event_id", "channel", "score", "status", "status_at", "registered_channel", "batch_date"
    ).rows() == [
        (EVENT, "email", 0.42, "registered", registered_at, "in-app", later.date()),
        (EVENT, "in-app", 0.85, "registered", registered_at, "in-app", NOW.date()),  # its own, kept
        (OTHER_EVENT, "email", 0.3, "candidate", NOW, None, NOW.date()),
        (OTHER_EVENT, "in-app", 0.3, "candidate", NOW, None, NOW.date()),
    ]
    assert set(c02.filter(pl.col("event_id") == EVENT)["expires_at"]) == {ci.expires_at(later, TTL)}  # raised
    top = store.top_candidates_for_channel(PROGRAM, EVENT, "in-app", 0.0, 10, exclude_registered=False, now=later)
    assert top.items.select("customer_id", "score").rows() == [("c02", 0.85), ("c05", 0.66)]
    email = store.top_candidates_for_channel(PROGRAM, EVENT, "email", 0.0, 10, now=later)
    assert email.items["customer_id"].to_list() == ["c01", "c03", "c04", "c06", "c07", "c08"]
    customers, more = store.registered_customers_page(PROGRAM, EVENT, 10, None, later)
    assert [(c.customer_id, c.score, c.channel) for c in customers] == [("c02", 0.85, "in-app"), ("c05", 0.66, "email")]
    assert not more
    assert store.count_event_items(PROGRAM, EVENT, now=later) == 10
    keys = store.event_item_keys(PROGRAM, EVENT, now=later)
    assert keys.filter(pl.col("channel") == "in-app")["customer_id"].to_list() == ["c02", "c05"]
    page = store.served_customer_items(PROGRAM, "c02", EVENT, 1, None, later)
    assert json.loads(page.items[0])["channel"] == "email" and page.next_position == [EVENT, "email"]
    rest = store.served_customer_items(PROGRAM, "c02", EVENT, 1, ("evt-2025-01", "email"), later)
    assert [json.loads(text)["score"] for text in rest.items] == [0.85] and rest.next_position is None
    assert_frame_equal(
        store.exported_items(PROGRAM, EVENT, now=later), ci.export_frame(store.event_items(PROGRAM, EVENT, now=later))
    )
    # Both channels again: c02 one customer again, registered, every item the new batch's.
    final = later + timedelta(days=1)
    replace(store, {"c02": 0.6, "c05": 0.7}, now=final)
    items = store.event_items(PROGRAM, EVENT, now=final)
    assert items.select("customer_id", "channel", "score", "status").rows() == [
        ("c02", "email", 0.6, "registered"),
        ("c02", "in-app", 0.6, "registered"),
        ("c05", "email", 0.7, "registered"),
        ("c05", "in-app", 0.7, "registered"),
    ]


@sqlite_only
def test_the_sqlite_store_keeps_a_row_per_customer_and_event_and_one_per_differing_group(store):
    """What halves the local write: a customer's items of an event are one row, unless they differ."""
    replace(store, SCORES)
    assert raw(store, "SELECT count(*), min(channels), max(channels) FROM candidate_rows") == [
        (len(SCORES), '["email","in-app"]', '["email","in-app"]')
    ]
    drop_a_channel_with_registered_customers(store)
    sql = "SELECT channels, score, status FROM candidate_rows WHERE customer_id = ? AND event_id = ? ORDER BY channels"
    assert raw(store, sql, ("c02", EVENT)) == [('["email"]', 0.42, "registered"), ('["in-app"]', 0.85, "registered")]
    assert raw(store, sql, ("c05", EVENT)) == [('["email","in-app"]', 0.66, "registered")]
    assert raw(store, sql, ("c01", EVENT)) == [('["email"]', 0.91, "candidate")]


# The score cache of releases before 2026-12-04, as they created it.
LEGACY_CACHE_DDL = """
CREATE TABLE score_cache (
    pk TEXT NOT NULL, sk TEXT NOT NULL, customer_id TEXT NOT NULL, event_id TEXT NOT NULL, model_id TEXT NOT NULL,
    model_version TEXT NOT NULL, probability REAL NOT NULL, cached_at TEXT NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (pk, sk)
);
"""


@sqlite_only
def test_a_score_cache_of_the_earlier_layout_is_copied_into_the_keyed_table_when_opened(store):
    """A file whose cache is keyed (pk, sk): its live entries answer look-ups after it is opened,
    expired ones still expire, and the old table is gone."""
    scores = pl.DataFrame({"customer_id": ["c01", "c02", "c03"], "probability": [0.25, 0.5, 0.75]})
    entries = cache_entries(EVENT, "m1", "v1", scores, NOW, TTL)
    older = cache_entries(OTHER_EVENT, "m1", "v1", scores.head(1), NOW - timedelta(days=TTL), TTL)
    store.put_cached_scores(EVENT, "m2", "v1", scores.tail(1), NOW, TTL)  # written by this release
    store.close()
    with sqlite3.connect(store.path) as conn:
        conn.executescript(LEGACY_CACHE_DDL)
        legacy = pl.concat([entries, older])
        conn.executemany(
            f"INSERT INTO score_cache ({', '.join(legacy.columns)}) VALUES ({', '.join('?' * legacy.width)})",
            legacy.rows(),
        )
    reopened = SqliteCandidateStore(path=store.path)
    asked = pl.Series(["c03", "c01", "c02", "c04"])
    hits = reopened.get_cached_scores(EVENT, "m1", "v1", asked, NOW).sort("customer_id")
    assert hits.rows() == [("c01", 0.25), ("c02", 0.5), ("c03", 0.75)]
    assert reopened.get_cached_scores(OTHER_EVENT, "m1", "v1", asked, NOW).height == 0  # expired on arrival
    assert raw(reopened, "SELECT count(*) FROM sqlite_master WHERE name = 'score_cache'") == [(0,)]
    assert reopened.get_cached_scores(EVENT, "m2", "v1", asked, NOW).rows() == [("c03", 0.75)]
    assert reopened.purge_expired(NOW) == 1
    assert raw(reopened, "SELECT count(*) FROM score_cache_entries") == [(4,)]
    reopened.close()


@sqlite_only
def test_a_score_cache_written_before_its_expiries_were_recorded_is_still_purged(store):
    store.put_cached_scores(EVENT, "m1", "v1", pl.DataFrame({"customer_id": ["c01"], "probability": [0.5]}), NOW, 3)
    store.close()
    with sqlite3.connect(store.path) as conn:  # a file of the release before the expiries table
        conn.execute("DROP TABLE score_cache_expiries")
    reopened = SqliteCandidateStore(path=store.path)
    assert reopened.purge_expired(NOW + timedelta(days=3)) == 1
    assert raw(reopened, "SELECT count(*) FROM score_cache_entries") == [(0,)]
    reopened.close()


# The table of releases before rows (one row per item), as they created it.
LEGACY_ITEMS_DDL = f"""
CREATE TABLE candidate_items (
    pk TEXT NOT NULL, sk TEXT NOT NULL, gsi1pk TEXT NOT NULL, gsi2pk TEXT NOT NULL, gsi2sk TEXT NOT NULL,
    customer_id TEXT NOT NULL, program_id TEXT NOT NULL, event_id TEXT NOT NULL, channel TEXT NOT NULL,
    score REAL NOT NULL, score_band TEXT, status TEXT NOT NULL, status_at TEXT NOT NULL, registered_channel TEXT,
    batch_date TEXT NOT NULL, written_at TEXT NOT NULL, expires_at INTEGER NOT NULL,
    {", ".join(f"{name} TEXT" for name in ci.EXTRA_ATTRIBUTES)},
    p_event_attendance_v3 REAL, p_interest_affinity_v2 REAL,
    PRIMARY KEY (pk, sk)
);
CREATE INDEX candidate_items_gsi1 ON candidate_items (gsi1pk, score DESC, customer_id);
CREATE INDEX candidate_items_gsi2 ON candidate_items (gsi2pk, gsi2sk);
"""


def every_read(store: SqliteCandidateStore, now: datetime) -> dict[str, object]:
    """What every read of the store answers (the scenario's events, customers and channels)."""
    return {
        "items": [store.event_items(PROGRAM, event, now=now) for event in (EVENT, OTHER_EVENT)],
        "exported": store.exported_items(PROGRAM, EVENT, now=now),
        "keys": store.event_item_keys(PROGRAM, EVENT, now=now),
        "tops": [
            store.served_top_candidates(PROGRAM, EVENT, channel, 0.0, 3, False, None, now).items for channel in CHANNELS
        ],
        "registered": store.registered_customers_page(PROGRAM, EVENT, 10, None, now),
        "customer": store.served_customer_items(PROGRAM, "c02", None, 10, None, now).items,
        "expiry": store.next_expiry(ci.epoch_seconds(now)),
    }


@sqlite_only
@pytest.mark.parametrize("with_served_json", [True, False])
def test_a_store_file_of_one_row_per_item_is_rebuilt_into_rows_when_opened(store, with_served_json):
    """A file as releases before rows wrote it (and, older, without the served JSON): its items
    become rows when opened, registrations, TTLs and a retained item's own attributes kept."""
    later, _ = drop_a_channel_with_registered_customers(store)
    expected = every_read(store, later)
    items = stored_items(store)
    store.close()
    with sqlite3.connect(store.path) as conn:  # the same items, as the previous layout held them
        conn.executescript(LEGACY_ITEMS_DDL + "DROP TABLE candidate_rows; DROP TABLE candidate_item_expiries;")
        if with_served_json:
            conn.execute("ALTER TABLE candidate_items ADD COLUMN item_json TEXT")
        legacy = items.select([name for name in items.columns if name != "item_json"])
        columns = ", ".join(legacy.columns)
        conn.executemany(
            f"INSERT INTO candidate_items ({columns}) VALUES ({', '.join('?' * legacy.width)})", legacy.rows()
        )
    reopened = SqliteCandidateStore(path=store.path)
    actual = every_read(reopened, later)
    for name in ("tops", "registered", "customer", "expiry"):
        assert actual[name] == expected[name], name
    for got, want in zip([*actual["items"], actual["exported"], actual["keys"]],
                         [*expected["items"], expected["exported"], expected["keys"]], strict=True):  # fmt: skip
        assert_frame_equal(got, want)
    assert raw(reopened, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'candidate_items%'") == [(0,)]
    assert raw(reopened, "SELECT count(*) FROM candidate_rows WHERE customer_id = 'c02'") == [(3,)]
    reopened.close()
