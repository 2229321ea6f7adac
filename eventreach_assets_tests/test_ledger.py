"""Delivery ledger contract: the same tests against SQLite and DynamoDB (moto server over HTTP)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from eventreach_assets.domain.delivery import DeliveryKey, MessageKind, occurrence_of
from eventreach_assets.resources.ledger import (
    DELIVERY_SCHEMA,
    NOT_ATTEMPTED,
    ReservationWrite,
    SqliteDeliveryLedger,
    decide,
    decode_kind,
    encode_kind,
    key_frame,
    keys_frame,
    ledger_table_definition,
)

NOW = datetime(2026, 11, 23, 10, 0)
EVENT = "evt-1"


def key(customer: str, channel: str = "email", kind: MessageKind = MessageKind.INVITATION, event: str = EVENT):
    return DeliveryKey(customer, event, channel, kind)


def frame(*keys: DeliveryKey, campaign: str = "camp-1") -> pl.DataFrame:
    return keys_frame(list(keys), campaign)


def granted(reservation: pl.DataFrame) -> set[str]:
    return set(reservation.filter("granted")["customer_id"])


def test_reserve_grants_new_keys_once_and_blocks_them_afterwards(ledger):
    first = ledger.reserve(frame(key("a"), key("b"), key("a")), now=NOW)  # duplicates collapse
    assert first.height == 2
    assert granted(first) == {"a", "b"}
    assert first["previous_status"].to_list() == [None, None]
    again = ledger.reserve(frame(key("a"), key("b")), now=NOW + timedelta(minutes=1))
    assert granted(again) == set()
    assert set(again["status"]) == {"pending"}  # held by a live run
    rows = ledger.deliveries(EVENT)
    assert rows["status"].to_list() == ["pending", "pending"]
    assert rows["campaign_id"].to_list() == ["camp-1", "camp-1"]
    assert rows["attempts"].to_list() == [1, 1]


def test_outcomes_decide_what_a_later_reservation_may_send(ledger):
    keys = [key(c) for c in "abcdefg"]
    ledger.reserve(frame(*keys), now=NOW)
    ledger.mark_sent(keys[0], "msg-a", NOW)
    assert ledger.mark_failed(keys[1], "mailbox unavailable", permanent=True, now=NOW)
    assert ledger.mark_failed(keys[2], "timeout", permanent=False, now=NOW)
    assert ledger.mark_suppressed(keys[3], "opted out", NOW)
    assert ledger.mark_held_out(keys[4], NOW)
    # keys[5] and keys[6] stay pending and their run dies; keys[6] was in the provider's hands:
    # after the lease it is in doubt, not resent, while keys[5], never attempted, is sent now.
    assert ledger.mark_attempting(keys[6], NOW, NOW)
    later = ledger.reserve(frame(*keys, campaign="camp-2"), now=NOW + timedelta(hours=2))
    by_customer = {row["customer_id"]: row for row in later.iter_rows(named=True)}
    assert granted(later) == {"c", "f"}
    assert {c: by_customer[c]["status"] for c in "abcdefg"} == {
        "a": "sent",
        "b": "failed_permanent",
        "c": "pending",
        "d": "suppressed",
        "e": "held_out",
        "f": "pending",
        "g": "in_doubt",
    }
    assert by_customer["c"]["previous_status"] == "failed_transient"
    assert by_customer["f"]["previous_status"] == "pending"
    assert by_customer["g"]["previous_status"] == "pending"
    rows = {row["customer_id"]: row for row in ledger.deliveries(EVENT).iter_rows(named=True)}
    assert rows["a"]["provider_message_id"] == "msg-a"
    assert rows["a"]["sends"] == 1
    assert rows["a"]["sent_at"] == NOW.replace(tzinfo=rows["a"]["sent_at"].tzinfo)
    assert rows["b"]["reason"] == "mailbox unavailable"
    assert rows["c"]["attempts"] == 2
    assert rows["c"]["campaign_id"] == "camp-2"
    assert rows["f"]["attempts"] == 2
    assert rows["g"]["status"] == "in_doubt"
    assert "lease expired" in rows["g"]["reason"]
    # in_doubt stays in doubt: a third reservation does not flip it again.
    third = ledger.reserve(frame(keys[6]), now=NOW + timedelta(hours=5))
    assert third.row(0, named=True)["previous_status"] == "in_doubt"


def test_marks_never_overwrite_a_sent_row_and_duplicates_show_double_sends(ledger):
    k = key("a")
    ledger.reserve(frame(k), now=NOW)
    ledger.mark_sent(k, "m1", NOW)
    assert not ledger.mark_failed(k, "late error", permanent=True, now=NOW)
    assert not ledger.mark_suppressed(k, "late opt-out", NOW)
    assert ledger.deliveries(EVENT)["status"].to_list() == ["sent"]
    assert ledger.duplicates(EVENT).is_empty()
    ledger.mark_sent(k, "m2", NOW)  # would mean the provider accepted it twice
    dupes = ledger.duplicates(EVENT)
    assert dupes["customer_id"].to_list() == ["a"]
    assert dupes["sends"].to_list() == [2]


def test_held_out_keys_need_no_reservation(ledger):
    assert ledger.mark_held_out_many(frame(key("h1"), key("h2"), campaign="camp-h"), now=NOW) == 2
    assert granted(ledger.reserve(frame(key("h1"), key("x")), now=NOW)) == {"x"}
    rows = ledger.deliveries(EVENT).filter(pl.col("status") == "held_out")
    assert rows["campaign_id"].to_list() == ["camp-h", "camp-h"]


def test_release_gives_back_only_pending_reservations(ledger):
    a, b = key("a"), key("b")
    ledger.reserve(frame(a, b), now=NOW)
    ledger.mark_sent(a, "m", NOW)
    assert ledger.release([a, b], "run aborted", NOW) == 1
    assert granted(ledger.reserve(frame(a, b), now=NOW)) == {"b"}


def test_an_attempt_needs_the_reservation_it_was_granted_by(ledger):
    a = key("a")
    ledger.reserve(frame(a), now=NOW, owner="run-dead")
    taken_over = NOW + timedelta(hours=2)  # past the lease, never attempted: the next run takes it over
    assert granted(ledger.reserve(frame(a), now=taken_over, owner="run-next")) == {"a"}
    assert not ledger.mark_attempting(a, NOW, taken_over)  # the presumed-dead run woke up: not its row any more
    assert ledger.mark_attempting(a, taken_over, taken_over)
    assert not ledger.mark_attempting(a, taken_over, taken_over)  # one attempt per reservation
    assert not ledger.mark_attempting(key("never-reserved"), NOW, NOW)
    ledger.mark_sent(a, "m", taken_over)
    assert not ledger.mark_attempting(a, taken_over, taken_over)


def test_release_owner_gives_back_a_dead_runs_unattempted_rows_and_doubts_the_attempted_one(ledger):
    a, b, c, d, e = (key(name) for name in "abcde")
    ledger.reserve(frame(a, b, c, e), now=NOW, owner="run-1")
    ledger.reserve(frame(d), now=NOW, owner="run-2")
    ledger.mark_attempting(c, NOW, NOW)
    ledger.mark_sent(c, "m-c", NOW)
    ledger.mark_attempting(b, NOW, NOW)  # the provider call the kill interrupted
    assert ledger.release_owner("run-1", "run run-1 failed", NOW) == (2, 1)
    assert ledger.release_owner("run-1", "run run-1 failed", NOW) == (0, 0)  # safe to call twice
    assert ledger.release_owner("run-unknown", "no such run", NOW) == (0, 0)
    rows = dict(ledger.deliveries(EVENT).select("customer_id", "status").iter_rows())
    assert rows == {"a": "failed_transient", "b": "in_doubt", "c": "sent", "d": "pending", "e": "failed_transient"}
    reasons = dict(ledger.deliveries(EVENT).select("customer_id", "reason").iter_rows())
    assert reasons["b"].startswith("run run-1 failed") and "not resent" in reasons["b"]
    # The next run, well within the lease, sends the released rows; run-2's live reservation stays its own.
    assert granted(ledger.reserve(frame(a, b, c, d, e), now=NOW + timedelta(minutes=1), owner="run-3")) == {"a", "e"}


def test_sent_count_and_deliveries_filter_by_channel_and_kind(ledger):
    keys = [key("a"), key("a", "push", MessageKind.REMINDER), key("b", "in-app"), key("c", event="other")]
    ledger.reserve(frame(*keys), now=NOW)
    for k in keys:
        ledger.mark_sent(k, f"id-{k.customer_id}-{k.channel}", NOW)
    assert ledger.sent_count(EVENT) == 3
    assert ledger.sent_count(EVENT, "email") == 1
    assert ledger.sent_count(EVENT, kind=MessageKind.REMINDER) == 1
    assert ledger.sent_count(EVENT, "push", MessageKind.INVITATION) == 0
    assert ledger.deliveries(EVENT, "push", "reminder")["customer_id"].to_list() == ["a"]
    assert ledger.deliveries("other").height == 1
    assert ledger.deliveries("nothing").is_empty()
    assert ledger.deliveries("nothing").schema == ledger.deliveries(EVENT).schema


def test_opt_outs_per_channel_and_for_all_channels(ledger):
    ledger.record_opt_out("a", "email", "list-unsubscribe", NOW)
    ledger.record_opt_out("b", None, "preference-center", NOW)
    ledger.record_opt_out("a", "email", "again", NOW + timedelta(days=1))  # replay: first wins
    ids = pl.Series(["a", "b", "c", None, "a"])
    assert ledger.opted_out(ids, "email") == {"a", "b"}
    assert ledger.opted_out(ids, "push") == {"b"}
    assert ledger.opted_out(pl.Series([], dtype=pl.String), "email") == set()
    many = pl.Series([f"c{i}" for i in range(260)] + ["b"])  # more than one BatchGetItem
    assert ledger.opted_out(many, "in-app") == {"b"}


def test_invitations_since_returns_only_sent_invitations_in_the_window(ledger):
    sends = {
        key("old"): NOW - timedelta(days=40),
        key("recent"): NOW - timedelta(days=3),
        key("recent", "in-app", event="evt-2"): NOW - timedelta(days=1, hours=3),
        key("reminder", "push", MessageKind.REMINDER): NOW - timedelta(days=2),
    }
    ledger.reserve(keys_frame([*sends, key("failed"), key("pending")], "c"), now=NOW - timedelta(days=50))
    for k, at in sends.items():
        ledger.mark_sent(k, "m", at)
    ledger.mark_failed(key("failed"), "bounced", permanent=True, now=NOW - timedelta(days=2))
    result = ledger.invitations_since(NOW - timedelta(days=30), until=NOW)
    assert result.columns == ["customer_id", "invited_at", "event_id", "channel"]
    assert result.schema["invited_at"] == pl.Datetime("us", "UTC")
    assert sorted(zip(result["customer_id"], result["event_id"], strict=True)) == [
        ("recent", "evt-1"),
        ("recent", "evt-2"),
    ]
    assert ledger.invitations_since(NOW - timedelta(days=30), until=NOW - timedelta(days=2)).height == 1
    assert ledger.invitations_since(NOW - timedelta(days=60), until=NOW).height == 3


def test_two_threads_reserving_the_same_keys_each_key_goes_to_one(ledger):
    keys = frame(*(key(f"c{i:03d}") for i in range(60)))
    results: list[pl.DataFrame] = []
    barrier = threading.Barrier(2)

    def run():
        barrier.wait()
        results.append(ledger.reserve(keys, now=NOW))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    first, second = granted(results[0]), granted(results[1])
    assert not first & second
    assert first | second == set(keys["customer_id"])


def test_dynamodb_table_definition_has_the_sparse_sent_index():
    definition = ledger_table_definition("t")
    assert [k["AttributeName"] for k in definition["KeySchema"]] == ["pk", "sk"]
    indexes = {index["IndexName"]: index for index in definition["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"SENT", "MESSAGE", "OWNER"}
    assert indexes["OWNER"]["KeySchema"] == [{"AttributeName": "lease_owner", "KeyType": "HASH"}]
    assert indexes["MESSAGE"]["KeySchema"] == [{"AttributeName": "provider_message_id", "KeyType": "HASH"}]


def test_opt_outs_frame_gives_the_earliest_covering_opt_out_per_customer(ledger):
    ledger.record_opt_out("a", None, "preference-center", NOW + timedelta(days=2))
    ledger.record_opt_out("a", "email", "list-unsubscribe", NOW)
    ledger.record_opt_out("b", "push", "app", NOW)
    result = ledger.opt_outs(pl.Series(["a", "b", "c"]), "email")
    assert result.columns == ["customer_id", "channel", "source", "opted_out_at"]
    assert result.schema["opted_out_at"] == pl.Datetime("us", "UTC")
    assert result.rows() == [("a", "email", "list-unsubscribe", NOW.replace(tzinfo=UTC))]
    in_app = ledger.opt_outs(pl.Series(["a", "b"]), "in-app")
    assert in_app.select("customer_id", "channel", "source").rows() == [("a", "*", "preference-center")]
    assert ledger.opt_outs(pl.Series([], dtype=pl.String), "email").is_empty()


# ---- per-date keys: the kind column holds `kind@occurrence` -----------------------------------

FIRST_DATE, NEW_DATE = occurrence_of(datetime(2026, 12, 1, 15, 0)), occurrence_of(datetime(2026, 12, 8, 15, 0))


def test_kind_encoding_round_trips_and_refuses_the_separator():
    assert encode_kind(MessageKind.REMINDER, "20261201T1500") == "reminder@20261201T1500"
    assert encode_kind(MessageKind.INVITATION) == "invitation"
    assert decode_kind("reminder@20261201T1500") == ("reminder", "20261201T1500")
    assert decode_kind("day-of") == ("day-of", "")
    with pytest.raises(ValueError, match="'@'"):
        encode_kind(MessageKind.REMINDER, "2026@x")
    with pytest.raises(ValueError, match="'@'"):
        key_frame(frame(DeliveryKey("a", EVENT, "push", MessageKind.REMINDER, "x#y")))


def test_the_reservation_rule_both_backends_apply():
    """`decide`: what a reservation grants and writes, per state of the key's row (cutoff = lease start)."""
    cutoff, stale, live = "2026-11-23T09:00:00.000000Z", "2026-11-23T08:00:00.000000Z", "2026-11-23T09:30:00.000000Z"
    cases = {
        (None, None, None): (True, "pending", ReservationWrite.INSERT),
        ("failed_transient", stale, "x"): (True, "pending", ReservationWrite.TAKE_OVER),
        ("pending", stale, NOT_ATTEMPTED): (True, "pending", ReservationWrite.TAKE_OVER),  # died before the call
        ("pending", stale, "2026-11-23T08:01:00.000000Z"): (False, "in_doubt", ReservationWrite.EXPIRE),
        ("pending", stale, None): (False, "in_doubt", ReservationWrite.EXPIRE),  # a row older than attempted_at
        ("pending", live, NOT_ATTEMPTED): (False, "pending", ReservationWrite.NONE),  # a live run holds it
        ("sent", stale, "x"): (False, "sent", ReservationWrite.NONE),
        ("held_out", None, None): (False, "held_out", ReservationWrite.NONE),
    }
    for (previous, reserved_at, attempted_at), expected in cases.items():
        decision = decide(previous, reserved_at, cutoff, attempted_at)
        assert (decision.granted, decision.status, decision.write) == expected, previous


def test_a_reminder_is_sent_once_per_event_date(ledger):
    old = DeliveryKey("a", EVENT, "push", MessageKind.REMINDER, FIRST_DATE)
    new = DeliveryKey("a", EVENT, "push", MessageKind.REMINDER, NEW_DATE)
    first = ledger.reserve(frame(old, key("a")), now=NOW)
    assert first.select("kind", "occurrence", "granted").rows() == [
        ("reminder", FIRST_DATE, True),
        ("invitation", "", True),
    ]
    ledger.mark_sent(old, "msg-old", NOW)
    assert not ledger.reserve(frame(old), now=NOW + timedelta(hours=1))["granted"].item()  # same date: once
    moved = ledger.reserve(frame(new), now=NOW + timedelta(hours=1))  # the event moved: the new date's reminder
    assert moved.select("kind", "occurrence", "granted", "previous_status").rows() == [
        ("reminder", NEW_DATE, True, None)
    ]
    ledger.mark_sent(new, "msg-new", NOW + timedelta(hours=1))
    rows = ledger.deliveries(EVENT, "push", "reminder")
    assert rows.select("kind", "occurrence", "status", "provider_message_id").rows() == [
        ("reminder", FIRST_DATE, "sent", "msg-old"),
        ("reminder", NEW_DATE, "sent", "msg-new"),
    ]
    assert ledger.deliveries(EVENT).columns == list(DELIVERY_SCHEMA)
    assert ledger.sent_count(EVENT, "push", "reminder") == 2
    assert ledger.sent_count(EVENT, kind="reminder") == 2
    assert ledger.deliveries(EVENT, kind="invitation")["occurrence"].to_list() == [""]
    assert ledger.duplicates(EVENT).is_empty()
    # Marks address the occurrence too: failing the new date's key leaves the old one alone.
    assert ledger.mark_suppressed(DeliveryKey("b", EVENT, "push", MessageKind.REMINDER, NEW_DATE), "opted out", NOW)
    assert ledger.release([new], "aborted", NOW) == 0  # sent rows are not pending
    statuses = ledger.deliveries(EVENT, "push").select("customer_id", "occurrence", "status").rows()
    assert statuses == [("a", FIRST_DATE, "sent"), ("a", NEW_DATE, "sent"), ("b", NEW_DATE, "suppressed")]


def test_the_stored_kind_is_encoded_at_the_ledger_boundary(ledger):
    reminder = DeliveryKey("a", EVENT, "push", MessageKind.REMINDER, FIRST_DATE)
    ledger.reserve(frame(reminder), now=NOW)
    ledger.mark_sent(reminder, "m", NOW)
    if isinstance(ledger, SqliteDeliveryLedger):
        with sqlite3.connect(ledger.path) as conn:
            stored = conn.execute("SELECT kind FROM delivery_ledger").fetchall()
        assert stored == [(f"reminder@{FIRST_DATE}",)]
    else:
        items = ledger.client().scan(TableName=ledger.table_name)["Items"]
        assert [(i["sk"]["S"], i["kind"]["S"]) for i in items] == [
            (f"DELIVERY#push#reminder@{FIRST_DATE}#a", f"reminder@{FIRST_DATE}")
        ]


def test_a_sqlite_ledger_from_before_the_attempt_column_is_migrated_and_its_pending_rows_stay_safe(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the ledger's schema before owner / attempted_at
        conn.execute(
            "CREATE TABLE delivery_ledger (event_id TEXT NOT NULL, channel TEXT NOT NULL, kind TEXT NOT NULL, "
            "customer_id TEXT NOT NULL, campaign_id TEXT, status TEXT NOT NULL, reason TEXT, "
            "provider_message_id TEXT, attempts INTEGER NOT NULL DEFAULT 0, sends INTEGER NOT NULL DEFAULT 0, "
            "reserved_at TEXT, updated_at TEXT NOT NULL, sent_at TEXT, "
            "PRIMARY KEY (event_id, channel, kind, customer_id))"
        )
        conn.execute(
            "INSERT INTO delivery_ledger (event_id, channel, kind, customer_id, status, attempts, reserved_at, "
            "updated_at) VALUES (?, 'email', 'invitation', 'old', 'pending', 1, ?, ?)",
            (EVENT, "2026-11-23T09:00:00.000000Z", "2026-11-23T09:00:00.000000Z"),
        )
    store = SqliteDeliveryLedger(path=str(path))
    try:
        later = store.reserve(frame(key("old"), key("new")), now=NOW + timedelta(hours=2), owner="run-1")
        # Whether the old row reached the provider is unknown: in doubt, as before; the new key works as usual.
        assert dict(later.select("customer_id", "status").iter_rows()) == {"old": "in_doubt", "new": "pending"}
        assert store.mark_attempting(key("new"), NOW + timedelta(hours=2))
    finally:
        store.close()
