"""Engagement store contract: the same tests against SQLite and DynamoDB (moto server over HTTP)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import boto3
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from eventreach_assets.domain.engagement_schemas import (
    ATTENDANCE_SCHEMA,
    CANCELLED,
    INTERACTION_SCHEMA,
    REGISTERED,
    REGISTRATION_SCHEMA,
    SURVEY_SCHEMA,
    WAITLISTED,
)
from eventreach_assets.resources.engagement_store import (
    DynamoDBEngagementStore,
    EngagementStoreResource,
    SqliteEngagementStore,
    engagement_table_definition,
)
from eventreach_assets.resources.ledger import SqliteDeliveryLedger
from eventreach_assets.resources.sqlite import table_names
from eventreach_assets_tests.stand_ins import REGION

T0 = datetime(2026, 11, 23, 10, 0)
EVENT = "evt-1"
OTHER = "evt-2"
TABLE = "eventreach-engagement"


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path) -> EngagementStoreResource:
    if request.param == "sqlite":
        engagement = SqliteEngagementStore(path=str(tmp_path / "campaign.sqlite"))
        yield engagement
        engagement.close()
    else:
        endpoint = request.getfixturevalue("aws_endpoint")
        engagement = DynamoDBEngagementStore(table_name=TABLE, region_name=REGION, endpoint_url=endpoint)
        assert engagement.create_table()
        assert not engagement.create_table()  # idempotent
        yield engagement


def registrations(*customers: str, at: datetime = T0, event: str = EVENT, channel: str | None = "email"):
    return pl.DataFrame(
        {
            "event_id": [event] * len(customers),
            "customer_id": list(customers),
            "registration_id": [f"r-{event}-{c}-{at:%H%M}" for c in customers],
            "registered_at": [at + timedelta(minutes=i) for i in range(len(customers))],
            "channel": [channel] * len(customers),
            "campaign_id": ["camp-1"] * len(customers),
        },
        schema={
            name: REGISTRATION_SCHEMA[name] for name in REGISTRATION_SCHEMA if name not in ("status", "recorded_at")
        },
    )


def interactions(*rows: tuple[str, str, str, str, datetime], event: str = EVENT) -> pl.DataFrame:
    return pl.DataFrame(
        [(event, *row) for row in rows],
        schema=INTERACTION_SCHEMA,
        orient="row",
    )


def by_customer(frame: pl.DataFrame) -> dict[str, dict]:
    return {row["customer_id"]: row for row in frame.iter_rows(named=True)}


# ---- idempotency --------------------------------------------------------------------------


def test_re_recording_stores_nothing_new_and_keeps_the_first_timestamps(store):
    assert store.record_registrations(registrations("a", "b"), REGISTERED, now=T0) == 2
    replay = registrations("a", "b", at=T0 + timedelta(hours=3), channel="in-app")
    assert store.record_registrations(replay, REGISTERED, now=T0 + timedelta(hours=4)) == 0
    rows = by_customer(store.registrations(EVENT))
    assert set(rows) == {"a", "b"}
    assert rows["a"]["registered_at"] == T0
    assert rows["b"]["registered_at"] == T0 + timedelta(minutes=1)
    assert rows["a"]["recorded_at"] == T0
    assert rows["a"]["channel"] == "email"
    assert rows["a"]["registration_id"] == "r-evt-1-a-1000"

    first = interactions(("a", "email", "camp-1", "open", T0))
    assert store.record_interactions(first) == 1
    again = interactions(("a", "email", "camp-1", "open", T0 + timedelta(days=1)))
    assert store.record_interactions(again) == 0
    assert store.interactions(EVENT)["occurred_at"].to_list() == [T0]


def test_a_frame_with_a_key_twice_keeps_the_earliest_row(store):
    late, early = T0 + timedelta(hours=1), T0
    frame = interactions(("a", "email", "camp-1", "click", late), ("a", "email", "camp-1", "click", early))
    assert store.record_interactions(frame) == 1
    assert store.interactions(EVENT)["occurred_at"].to_list() == [early]


def test_aware_times_are_stored_as_naive_utc(store):
    plus_two = timezone(timedelta(hours=2))
    frame = registrations("a").with_columns(
        pl.lit(datetime(2026, 11, 23, 12, 0, tzinfo=plus_two)).alias("registered_at")
    )
    store.record_registrations(frame, REGISTERED, now=datetime(2026, 11, 23, 13, 0, tzinfo=plus_two))
    row = store.registrations(EVENT).row(0, named=True)
    assert row["registered_at"] == datetime(2026, 11, 23, 10, 0)
    assert row["recorded_at"] == datetime(2026, 11, 23, 11, 0)


# ---- registrations: the one update ---------------------------------------------------------


def test_waitlisted_then_registered_upgrades_and_keeps_the_first_registration_time(store):
    assert store.record_registrations(registrations("a", "b"), WAITLISTED, now=T0) == 2
    assert store.registrations(EVENT, status=REGISTERED).is_empty()
    seat_freed = T0 + timedelta(days=1)
    upgraded = store.record_registrations(registrations("a", at=T0 + timedelta(hours=5)), REGISTERED, now=seat_freed)
    assert upgraded == 1
    rows = by_customer(store.registrations(EVENT))
    assert rows["a"]["status"] == REGISTERED
    assert rows["a"]["registered_at"] == T0  # the first occurrence's time stays
    assert rows["a"]["recorded_at"] == seat_freed  # when the seat was recorded
    assert rows["b"]["status"] == WAITLISTED
    assert rows["b"]["recorded_at"] == T0
    # Re-delivering the registration changes nothing more.
    assert store.record_registrations(registrations("a"), REGISTERED, now=seat_freed + timedelta(hours=1)) == 0
    assert store.registrations(EVENT, status=REGISTERED)["recorded_at"].to_list() == [seat_freed]


def test_registered_then_waitlisted_never_downgrades(store):
    store.record_registrations(registrations("a"), REGISTERED, now=T0)
    assert store.record_registrations(registrations("a"), WAITLISTED, now=T0 + timedelta(hours=1)) == 0
    row = store.registrations(EVENT).row(0, named=True)
    assert row["status"] == REGISTERED
    assert row["recorded_at"] == T0


def test_registrations_status_filter(store):
    store.record_registrations(registrations("r1", "r2"), REGISTERED, now=T0)
    store.record_registrations(registrations("w1", at=T0 + timedelta(hours=1)), WAITLISTED, now=T0)
    assert store.registrations(EVENT, status=REGISTERED)["customer_id"].to_list() == ["r1", "r2"]
    assert store.registrations(EVENT, status=WAITLISTED)["customer_id"].to_list() == ["w1"]
    assert store.registrations(EVENT)["customer_id"].to_list() == ["r1", "r2", "w1"]
    with pytest.raises(ValueError, match="status must be one of"):
        store.registrations(EVENT, status="attended")
    with pytest.raises(ValueError, match="status must be one of"):
        store.record_registrations(registrations("x"), "attended", now=T0)


def test_unattributed_registrations_need_no_channel_or_campaign_columns(store):
    frame = registrations("a").drop("channel", "campaign_id")
    assert store.record_registrations(frame, REGISTERED, now=T0) == 1
    row = store.registrations(EVENT).row(0, named=True)
    assert row["channel"] is None
    assert row["campaign_id"] is None


# ---- keys ---------------------------------------------------------------------------------


def test_events_are_isolated(store):
    store.record_registrations(registrations("a", event=EVENT), WAITLISTED, now=T0)
    assert store.record_registrations(registrations("a", event=OTHER), REGISTERED, now=T0) == 1  # not an upgrade
    assert store.registrations(EVENT)["status"].to_list() == [WAITLISTED]
    assert store.registrations(OTHER)["status"].to_list() == [REGISTERED]
    assert store.record_interactions(interactions(("a", "email", "c", "open", T0), event=OTHER)) == 1
    assert store.interactions(EVENT).is_empty()
    assert store.interactions(OTHER)["event_id"].to_list() == [OTHER]
    attendance = pl.DataFrame([(OTHER, "a", T0, 30)], schema=ATTENDANCE_SCHEMA, orient="row")
    assert store.record_attendance(attendance) == 1
    assert store.attendance(EVENT).is_empty()
    assert store.attendance(OTHER).height == 1


def test_interactions_are_keyed_by_customer_channel_campaign_and_action(store):
    t = T0
    frame = interactions(
        ("a", "email", "camp-1", "open", t),
        ("a", "email", "camp-1", "click", t + timedelta(minutes=1)),  # another action
        ("a", "email", "camp-2", "open", t + timedelta(minutes=2)),  # another campaign
        ("a", "in-app", "camp-1", "open", t + timedelta(minutes=3)),  # another channel
        ("b", "email", "camp-1", "open", t),  # another customer
    )
    assert store.record_interactions(frame) == 5
    assert store.record_interactions(frame) == 0
    stored = store.interactions(EVENT)
    assert stored.select("customer_id", "channel", "campaign_id", "action").rows() == [
        ("a", "email", "camp-1", "open"),
        ("b", "email", "camp-1", "open"),  # same time as a's open: customer_id breaks the tie
        ("a", "email", "camp-1", "click"),
        ("a", "email", "camp-2", "open"),
        ("a", "in-app", "camp-1", "open"),
    ]


def test_keys_that_cannot_be_stored_are_refused_with_the_reason(store):
    with pytest.raises(ValueError, match=r"lacks columns \['registered_at'\]"):
        store.record_registrations(registrations("a").drop("registered_at"), REGISTERED, now=T0)
    with pytest.raises(ValueError, match="1 interaction rows lack one of"):
        store.record_interactions(interactions(("a", "email", None, "open", T0)))
    with pytest.raises(ValueError, match="campaign_id or one with '#'"):
        store.record_interactions(interactions(("a", "email", "camp#1", "open", T0)))
    with pytest.raises(ValueError, match="joined_at must be a datetime column"):
        store.record_attendance(pl.DataFrame({"event_id": [EVENT], "customer_id": ["a"], "joined_at": ["10:00"],
                                              "minutes_watched": [3]}))  # fmt: skip
    with pytest.raises(ValueError, match="1 survey response values of rating are not valid Int8"):
        store.record_survey_responses(
            pl.DataFrame({"event_id": [EVENT], "customer_id": ["a"], "rating": [300], "submitted_at": [T0]})
        )
    # Nothing was half-written.
    assert store.registrations(EVENT).is_empty()
    assert store.interactions(EVENT).is_empty()
    assert store.attendance(EVENT).is_empty()
    assert store.survey_responses(EVENT).is_empty()


# ---- attendance and survey ----------------------------------------------------------------


def test_attendance_round_trip_with_dtypes(store):
    frame = pl.DataFrame(
        {
            "event_id": [EVENT, EVENT, EVENT],
            "customer_id": ["b", "a", "c"],
            "joined_at": [T0 + timedelta(minutes=5), T0 + timedelta(minutes=5), T0],
            "minutes_watched": [45, 90, None],  # Int64 in, Int32 out; null kept
        }
    )
    assert store.record_attendance(frame) == 3
    assert store.record_attendance(frame.with_columns(minutes_watched=pl.lit(1))) == 0
    expected = pl.DataFrame(
        [
            (EVENT, "c", T0, None),
            (EVENT, "a", T0 + timedelta(minutes=5), 90),
            (EVENT, "b", T0 + timedelta(minutes=5), 45),
        ],
        schema=ATTENDANCE_SCHEMA,
        orient="row",
    )
    assert_frame_equal(store.attendance(EVENT), expected)


def test_survey_round_trip_with_dtypes(store):
    comment = "Great talk — merci! 👍 line\u2028two"  # non-ASCII survives both stores
    frame = pl.DataFrame(
        {
            "event_id": [EVENT, EVENT],
            "customer_id": ["a", "b"],
            "rating": [5, 2],
            "comment": [comment, None],
            "submitted_at": [
                datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=UTC),
                datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
            ],
        }
    )
    assert store.record_survey_responses(frame) == 2
    assert store.record_survey_responses(frame.with_columns(rating=pl.lit(1))) == 0
    expected = pl.DataFrame(
        [
            (EVENT, "b", 2, None, datetime(2026, 12, 1, 8, 0)),
            (EVENT, "a", 5, comment, datetime(2026, 12, 1, 9, 0, 0, 123456)),
        ],
        schema=SURVEY_SCHEMA,
        orient="row",
    )
    assert_frame_equal(store.survey_responses(EVENT), expected)
    without_comment = frame.drop("comment").with_columns(customer_id=pl.lit("c")).head(1)
    assert store.record_survey_responses(without_comment) == 1
    assert store.survey_responses(EVENT).filter(pl.col("customer_id") == "c")["comment"].to_list() == [None]


# ---- reads --------------------------------------------------------------------------------


def test_empty_reads_have_the_schema(store):
    assert store.registrations(EVENT).schema == pl.Schema(REGISTRATION_SCHEMA)
    assert store.registrations(EVENT, status=WAITLISTED).schema == pl.Schema(REGISTRATION_SCHEMA)
    assert store.interactions(EVENT).schema == pl.Schema(INTERACTION_SCHEMA)
    assert store.attendance(EVENT).schema == pl.Schema(ATTENDANCE_SCHEMA)
    assert store.survey_responses(EVENT).schema == pl.Schema(SURVEY_SCHEMA)
    for frame in (store.registrations(EVENT), store.interactions(EVENT), store.attendance(EVENT)):
        assert frame.is_empty()
    empty = pl.DataFrame(schema=INTERACTION_SCHEMA)
    assert store.record_interactions(empty) == 0


def test_filled_reads_have_the_schema(store):
    store.record_registrations(registrations("a"), REGISTERED, now=T0)
    store.record_interactions(interactions(("a", "email", "c", "open", T0)))
    assert store.registrations(EVENT).schema == pl.Schema(REGISTRATION_SCHEMA)
    assert store.interactions(EVENT).schema == pl.Schema(INTERACTION_SCHEMA)


def test_many_rows_go_through_parallel_writes_and_paginated_reads(store):
    customers = [f"c{i:05d}" for i in range(600)]
    frame = interactions(*((c, "email", "camp-1", "open", T0) for c in customers))
    assert store.record_interactions(frame) == 600
    stored = store.interactions(EVENT)
    assert stored["customer_id"].to_list() == customers
    assert store.record_interactions(frame) == 0


def test_reads_past_one_query_page(store):
    # ~1.4 MB of comments: more than one DynamoDB Query page (1 MB), so every page must be read.
    customers = [f"c{i:03d}" for i in range(120)]
    frame = pl.DataFrame(
        {
            "event_id": EVENT,
            "customer_id": customers,
            "rating": 4,
            "comment": [f"{c} " + "x" * 12_000 for c in customers],
            "submitted_at": T0,
        }
    )
    assert store.record_survey_responses(frame) == 120
    stored = store.survey_responses(EVENT)
    assert stored["customer_id"].to_list() == customers
    assert stored["comment"].str.len_chars().min() > 12_000


# ---- implementation specifics -------------------------------------------------------------


def test_sqlite_shares_the_file_with_the_ledger(tmp_path):
    path = str(tmp_path / "campaign.sqlite")  # the local deployment's (deployments.py)
    ledger = SqliteDeliveryLedger(path=path)
    engagement = SqliteEngagementStore(path=path)
    ledger.record_opt_out("a", None, "test", T0)
    engagement.record_registrations(registrations("a"), REGISTERED, now=T0)
    with sqlite3.connect(path) as conn:
        tables = table_names(conn)
        primary_key = [row[1] for row in conn.execute("PRAGMA table_info(engagement_interactions)") if row[5]]
    assert {"delivery_ledger", "engagement_registrations", "engagement_interactions", "engagement_attendance",
            "engagement_survey"} <= tables  # fmt: skip
    assert primary_key == ["event_id", "customer_id", "channel", "campaign_id", "action"]
    assert ledger.opted_out(pl.Series(["a"]), "email") == {"a"}
    ledger.close()
    engagement.close()
    engagement.close()  # safe twice


def test_dynamodb_items_use_the_documented_keys(aws_endpoint):
    store = DynamoDBEngagementStore(table_name=TABLE, region_name=REGION, endpoint_url=aws_endpoint)
    store.create_table()
    store.record_registrations(registrations("a"), WAITLISTED, now=T0)
    store.record_interactions(interactions(("a", "email", "camp-1", "click", T0)))
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_endpoint)
    items = client.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"EVENT#{EVENT}"}},
    )["Items"]
    assert sorted(item["sk"]["S"] for item in items) == ["INT#a#email#camp-1#click", "REG#a"]
    description = client.describe_table(TableName=TABLE)["Table"]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert engagement_table_definition(TABLE)["KeySchema"] == description["KeySchema"]


def test_cancellation_frees_the_registration_once_and_only_a_later_registration_renews_it(store):
    store.record_registrations(registrations("r1", "r2"), REGISTERED, now=T0)
    store.record_registrations(registrations("w1", at=T0 + timedelta(hours=1)), WAITLISTED, now=T0)
    later = T0 + timedelta(days=1)
    assert store.record_registrations(registrations("r1"), CANCELLED, now=later) == 1
    assert store.record_registrations(registrations("w1", at=T0 + timedelta(hours=1)), CANCELLED, now=later) == 1
    assert store.record_registrations(registrations("r1"), CANCELLED, now=later) == 0  # once
    assert store.registrations(EVENT, status=CANCELLED)["customer_id"].to_list() == ["r1", "w1"]
    row = store.registrations(EVENT, status=CANCELLED).row(0, named=True)
    assert (row["registered_at"], row["recorded_at"], row["registration_id"]) == (T0, later, "r-evt-1-r1-1000")
    # A replay of the cancelled registration changes nothing; a new one (later registered_at) renews it.
    assert store.record_registrations(registrations("r1"), REGISTERED, now=later) == 0
    assert store.record_registrations(registrations("r1"), WAITLISTED, now=later) == 0
    again = T0 + timedelta(days=2, minutes=5)
    assert store.record_registrations(registrations("r1", at=again, channel=None), REGISTERED, now=again) == 1
    renewed = store.registrations(EVENT).filter(pl.col("customer_id") == "r1").row(0, named=True)
    assert (renewed["status"], renewed["registered_at"], renewed["registration_id"], renewed["channel"]) == (
        REGISTERED, again, "r-evt-1-r1-1005", None,
    )  # fmt: skip
    assert store.registrations(EVENT, status=REGISTERED)["customer_id"].to_list() == ["r2", "r1"]
