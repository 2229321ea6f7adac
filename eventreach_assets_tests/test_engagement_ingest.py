"""Engagement ingestion against the real local resources: feed files, SQLite engagement store and
delivery ledger, a DuckDB warehouse. Forgeries are refused, replays store nothing, unsubscribes stop
every channel, and the funnel reads what was stored."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from eventreach_assets.domain.delivery import DeliveryKey, MessageKind, OutboundMessage
from eventreach_assets.domain.engagement_feeds import (
    EVENT_NOT_STARTED,
    INVALID_MINUTES,
    JOINED_TOO_EARLY,
    NOT_A_TRACKING_TOKEN,
    NOT_AN_ATTENDEE,
)
from eventreach_assets.domain.engagement_schemas import REGISTERED
from eventreach_assets.domain.feed_records import INVALID_TOKEN, MALFORMED_RECORD, MISSING_FIELD, UNKNOWN_EVENT
from eventreach_assets.domain.funnel import event_funnel
from eventreach_assets.domain.link_tokens import sign_link_token
from eventreach_assets.domain.schema import EVENT_COLUMNS
from eventreach_assets.domain.sending import deliver
from eventreach_assets.ingestion import UNSUBSCRIBE_SOURCE, ingest_attendance, ingest_survey, ingest_tracking
from eventreach_assets.resources.engagement_store import SqliteEngagementStore
from eventreach_assets.resources.feeds import LocalFolderFeed
from eventreach_assets.resources.ledger import SqliteDeliveryLedger
from eventreach_assets.resources.warehouse import DuckDBWarehouse

SECRET = b"test-secret"
EVENT = "evt-1"
LATER_EVENT = "evt-2"
START = datetime(2026, 11, 30, 17, 0)
NOW = datetime(2026, 12, 1, 9, 0)  # the morning after the event
CHANNELS = ("email", "in-app", "push")


def token(customer: str, action: str, *, channel: str = "email", event: str = EVENT, secret: bytes = SECRET) -> str:
    return sign_link_token(
        secret, customer_id=customer, event_id=event, channel=channel, campaign_id="cmp-1", action=action
    )


def tampered(value: str) -> str:
    """Signature of one token on the payload of another (customer swapped): not genuine."""
    return f"{token('c9', 'unsubscribe').split('.')[0]}.{value.split('.')[1]}"


@pytest.fixture
def local(tmp_path: Path):
    """The local deployment's engagement pieces: one SQLite file for store and ledger, a feed folder."""
    store = SqliteEngagementStore(path=str(tmp_path / "local.sqlite"))
    ledger = SqliteDeliveryLedger(path=str(tmp_path / "local.sqlite"))
    yield store, ledger, LocalFolderFeed(base_dir=str(tmp_path / "feeds"))
    store.close()
    ledger.close()


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBWarehouse:
    """A DuckDB warehouse whose events table has evt-1 (started, 90 minutes) and evt-2 (next month)."""
    path = tmp_path / "warehouse.duckdb"
    columns = ", ".join(f"{name} {sql}" for name, sql in EVENT_COLUMNS.items())
    with duckdb.connect(str(path)) as connection:
        connection.execute(f"CREATE TABLE events ({columns})")
        connection.executemany(
            f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [EVENT, "Cloud Summit", "cloud-computing", "webinar", 0.5, START, 90, 500, "US", "scheduled", START],
                [LATER_EVENT, "Next", "devops", "webinar", 0.5, START + timedelta(days=30), 60, 500, "US",
                 "scheduled", START],
            ],
        )  # fmt: skip
    return DuckDBWarehouse(path=str(path))


def feed_file(feed: LocalFolderFeed, kind: str, name: str, records: list[dict], bad_line: str | None = None) -> list:
    """Drop a feed file (optionally with a line that is not JSON) and read it back as the sensor's run would."""
    lines = [json.dumps(record) for record in records] + ([bad_line] if bad_line else [])
    folder = Path(feed.base_dir, kind)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return feed.read(kind, [name])


def hit(tok: str, path: str, at: str = "2026-11-20T10:00:00Z") -> dict:
    return {"token": tok, "path": path, "occurred_at": at}


# ---- tracking ---------------------------------------------------------------------------------


def test_forged_and_altered_tokens_are_rejected_and_nothing_of_theirs_is_stored(local):
    store, ledger, feed = local
    genuine = token("c1", "open")
    records = feed_file(
        feed,
        "tracking",
        "20261120T100000Z-0001.jsonl",
        [
            hit(genuine, "open"),
            hit(token("c2", "unsubscribe", secret=b"not-our-secret"), "unsubscribe"),
            hit(tampered(token("c2", "unsubscribe")), "unsubscribe"),
            hit(token("c3", "register"), "open"),
        ],
        bad_line="open?t=" + genuine,
    )
    outcome = ingest_tracking(records, ledger=ledger, store=store, secret=SECRET, now=NOW)
    assert outcome.rejected.select("source", "line", "reason").rows() == [
        ("20261120T100000Z-0001.jsonl", 2, INVALID_TOKEN),
        ("20261120T100000Z-0001.jsonl", 3, INVALID_TOKEN),
        ("20261120T100000Z-0001.jsonl", 4, NOT_A_TRACKING_TOKEN),
        ("20261120T100000Z-0001.jsonl", 5, MALFORMED_RECORD),
    ]
    assert store.interactions(EVENT).select("customer_id", "action").rows() == [("c1", "open")]
    assert ledger.opted_out(pl.Series(["c2", "c9"]), "email") == set()  # no forged unsubscribe took effect
    assert outcome.summary() == {
        "records": 5,
        "accepted": 1,
        "rejected": 4,
        "stored": 1,
        "unsubscribed_customers": 0,
        INVALID_TOKEN: 2,
        MALFORMED_RECORD: 1,
        NOT_A_TRACKING_TOKEN: 1,
    }
    assert not any(isinstance(value, str) for value in outcome.summary().values())


def test_a_replayed_tracking_file_stores_nothing_new(local):
    store, ledger, feed = local
    records = feed_file(
        feed,
        "tracking",
        "20261120T100000Z-0001.jsonl",
        [
            hit(token("c1", "open"), "open"),
            hit(token("c1", "open"), "open", "2026-11-21T10:00:00Z"),  # second open: the first is kept
            hit(token("c1", "click"), "calendar"),
            hit(token("c2", "click", channel="in-app"), "join"),
        ],
    )
    first = ingest_tracking(records, ledger=ledger, store=store, secret=SECRET, now=NOW)
    kept = store.interactions(EVENT)
    again = ingest_tracking(feed.read("tracking", ["20261120T100000Z-0001.jsonl"]), ledger=ledger, store=store,
                            secret=SECRET, now=NOW)  # fmt: skip
    assert (first.stored, again.stored) == (3, 0)
    assert store.interactions(EVENT).equals(kept)
    assert kept.filter(pl.col("action") == "open")["occurred_at"].to_list() == [datetime(2026, 11, 20, 10)]


def test_an_unsubscribe_link_suppresses_later_sends_on_every_channel(local):
    store, ledger, feed = local
    clicked_at = "2026-11-25T08:30:00Z"
    records = feed_file(
        feed, "tracking", "20261125T090000Z-0001.jsonl", [hit(token("c1", "unsubscribe"), "unsubscribe", clicked_at)]
    )
    outcome = ingest_tracking(records, ledger=ledger, store=store, secret=SECRET, now=NOW)
    assert outcome.summary()["unsubscribed_customers"] == 1
    # The email link opted c1 out of every channel, not only email.
    for channel in CHANNELS:
        assert ledger.opted_out(pl.Series(["c1", "c2"]), channel) == {"c1"}
    opt_out = ledger.opt_outs(pl.Series(["c1"]), "push").row(0, named=True)
    assert (opt_out["channel"], opt_out["source"]) == ("*", UNSUBSCRIBE_SOURCE)
    assert opt_out["opted_out_at"].replace(tzinfo=None) == datetime(2026, 11, 25, 8, 30)

    # The later reminder run on all three channels sends to c2 only.
    messages = [
        OutboundMessage(
            key=DeliveryKey(customer, LATER_EVENT, channel, MessageKind.REMINDER),
            campaign_id=f"{LATER_EVENT}:{channel}",
            recipient=f"{customer}@example.com",
        )
        for customer in ("c1", "c2")
        for channel in CHANNELS
    ]
    sent: list[tuple[str, str]] = []

    def send(message: OutboundMessage) -> str:
        sent.append((message.key.customer_id, message.key.channel))
        return f"provider-{len(sent)}"

    report = deliver(messages, ledger=ledger, send=send, now=lambda: NOW, sleep=lambda _: None)
    assert sorted(sent) == [("c2", channel) for channel in CHANNELS]
    assert report.skipped == {"suppressed": 3}
    statuses = ledger.deliveries(LATER_EVENT).select("customer_id", "channel", "status").sort("customer_id", "channel")
    assert statuses.filter(pl.col("customer_id") == "c1")["status"].to_list() == ["suppressed"] * 3


# ---- attendance -------------------------------------------------------------------------------


def attendee(customer: str, minutes: object = 45, joined: str = "2026-11-30T17:03:00Z", event: str = EVENT) -> dict:
    return {"event_id": event, "customer_id": customer, "joined_at": joined, "minutes_watched": minutes}


def test_attendance_is_checked_against_the_warehouse_events_and_a_replay_stores_nothing(local, warehouse):
    store, _, feed = local
    name = "20261201T080000Z-0001.jsonl"
    records = feed_file(
        feed,
        "attendance",
        name,
        [
            attendee("c1", 80),
            attendee("c2", 151),  # 90 minutes + 60 of overtime at most
            attendee("c3", 20, "2026-11-30T15:30:00Z"),  # before the doors opened
            attendee("c4", 0, event=LATER_EVENT),  # that event is next month
            attendee("c5", 10, event="evt-unknown"),
            attendee("c6", 150, "2026-11-30T16:00:00Z"),
        ],
        bad_line='{"event_id": "evt-1", "customer_id": ',
    )
    first = ingest_attendance(records, warehouse=warehouse, store=store, now=NOW)
    assert first.rejected.select("line", "event_id", "reason").rows() == [
        (2, EVENT, INVALID_MINUTES),
        (3, EVENT, JOINED_TOO_EARLY),
        (4, LATER_EVENT, EVENT_NOT_STARTED),
        (5, "evt-unknown", UNKNOWN_EVENT),
        (7, None, MALFORMED_RECORD),
    ]
    kept = store.attendance(EVENT)
    assert kept.select("customer_id", "minutes_watched").rows() == [("c6", 150), ("c1", 80)]
    again = ingest_attendance(feed.read("attendance", [name]), warehouse=warehouse, store=store, now=NOW)
    assert (first.stored, again.stored) == (2, 0)
    assert store.attendance(EVENT).equals(kept)
    assert again.summary()["rejected"] == 5


def test_attendance_reported_before_the_event_starts_is_rejected(local, warehouse):
    store, _, _ = local
    early = [attendee("c1", 0, "2026-11-30T16:30:00Z")]
    outcome = ingest_attendance(early, warehouse=warehouse, store=store, now=START - timedelta(minutes=30))
    assert outcome.rejected.select("line", "reason").rows() == [(1, EVENT_NOT_STARTED)]
    assert store.attendance(EVENT).is_empty()


# ---- survey -----------------------------------------------------------------------------------


def answer(customer: str, rating: object, *, comment: str | None = None, event: str = EVENT) -> dict:
    return {
        "token": token(customer, "survey", event=event),
        "rating": rating,
        "comment": comment,
        "submitted_at": "2026-11-30T19:00:00Z",
    }


def test_only_attendees_answer_the_survey_and_a_replay_stores_nothing(local, warehouse):
    store, _, feed = local
    ingest_attendance([attendee("c1", 70), attendee("c2", 5)], warehouse=warehouse, store=store, now=NOW)
    name = "20261201T080000Z-0001.jsonl"
    records = feed_file(
        feed,
        "survey",
        name,
        [
            answer("c1", 5, comment="Loved the demo " * 200),  # 3000 characters: cut to 2000
            answer("c3", 4),  # registered maybe, but never joined
            {**answer("c2", 2), "customer_id": "c3", "event_id": LATER_EVENT},  # the body cannot speak for c3
            {**answer("c1", 1), "token": tampered(token("c1", "survey"))},
        ],
    )
    first = ingest_survey(records, store=store, secret=SECRET, now=NOW)
    assert first.rejected.select("line", "event_id", "reason").rows() == [
        (2, EVENT, NOT_AN_ATTENDEE),
        (4, None, INVALID_TOKEN),
    ]
    kept = store.survey_responses(EVENT)
    assert kept.select("customer_id", "rating").sort("customer_id").rows() == [("c1", 5), ("c2", 2)]
    assert kept.filter(pl.col("customer_id") == "c1")["comment"].str.len_chars().to_list() == [2000]
    assert first.summary()["comment_truncated"] == 1
    again = ingest_survey(feed.read("survey", [name]), store=store, secret=SECRET, now=NOW)
    assert (first.stored, again.stored) == (2, 0)
    assert store.survey_responses(EVENT).equals(kept)
    assert not store.survey_responses(LATER_EVENT).height


# ---- the funnel from stored records -----------------------------------------------------------


def test_the_funnel_reads_the_ledger_and_the_store(local, warehouse):
    store, ledger, _ = local
    for customer in ("c1", "c2", "c3"):
        ledger.mark_sent(DeliveryKey(customer, EVENT, "email", MessageKind.INVITATION), "pid", NOW, "cmp-1")
    ledger.mark_sent(DeliveryKey("c1", EVENT, "push", MessageKind.REMINDER), "pid", NOW, "cmp-r")
    ingest_tracking(
        [hit(token("c1", "open"), "open"), hit(token("c2", "open"), "open"), hit(token("c2", "click"), "click")],
        ledger=ledger,
        store=store,
        secret=SECRET,
        now=NOW,
    )
    registrations = pl.DataFrame(
        {"event_id": [EVENT], "customer_id": ["c1"], "registration_id": ["r1"], "registered_at": [START],
         "channel": ["email"], "campaign_id": ["cmp-1"]}
    )  # fmt: skip
    store.record_registrations(registrations, REGISTERED, NOW)
    ingest_attendance([attendee("c1", 75)], warehouse=warehouse, store=store, now=NOW)
    ingest_survey([answer("c1", 4)], store=store, secret=SECRET, now=NOW)

    funnel = event_funnel(
        deliveries=ledger.deliveries(EVENT),
        registrations=store.registrations(EVENT),
        interactions=store.interactions(EVENT),
        attendance=store.attendance(EVENT),
        survey=store.survey_responses(EVENT),
    )
    email = funnel.filter(pl.col("channel") == "email")
    assert email.select("stage", "count").rows() == [
        ("invited", 3),
        ("opened", 2),
        ("clicked", 2),  # c2 clicked, c1 registered through the email's link
        ("registered", 1),
        ("reminded", 1),
        ("attended", 1),
        ("rated", 1),
    ]
    assert email.filter(pl.col("stage") == "attended")["average_minutes_watched"].item() == 75.0
    assert email.filter(pl.col("stage") == "rated")["average_rating"].item() == 4.0
    assert set(funnel["channel"]) == {"all", "email"}


def test_a_per_event_attendance_run_leaves_other_events_records_for_their_own_run(local, warehouse):
    store, _, _ = local
    records = [
        attendee("c1", 30),
        attendee("c2", 40, event=LATER_EVENT),
        {"customer_id": "c3", "joined_at": "2026-11-30T17:00:00Z", "minutes_watched": 5},  # names no event
    ]
    outcome = ingest_attendance(records, warehouse=warehouse, store=store, now=NOW, event_id=EVENT)
    assert outcome.accepted["customer_id"].to_list() == ["c1"]
    assert outcome.rejected.select("line", "reason").rows() == [(3, MISSING_FIELD)]
    assert outcome.summary() == {
        "records": 2,
        "accepted": 1,
        "rejected": 1,
        "stored": 1,
        "other_events": 1,
        MISSING_FIELD: 1,
    }
    assert store.attendance(LATER_EVENT).is_empty()
