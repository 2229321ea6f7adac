"""Registrations: each validation rule with its reason, capacity waitlisting, replay, feed records, quarantine."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from eventreach_assets.domain import registrations as reg
from eventreach_assets.domain.engagement_schemas import CANCELLED, REGISTERED, WAITLISTED
from eventreach_assets.domain.feed_records import QUARANTINE_SCHEMA
from eventreach_assets.domain.link_tokens import InvalidLinkToken, LinkClaims, sign_link_token, verify_link_token
from eventreach_assets.ingestion import ingest_registrations, promote_from_waitlist, registered_customers
from eventreach_assets.program.config import default_program
from eventreach_assets.resources.candidate_store import SqliteCandidateStore
from eventreach_assets.resources.engagement_store import SqliteEngagementStore

SECRET = b"test-secret"
EVENT = "evt-2025-02"
START = datetime(2025, 2, 20, 17, 0)
T0 = datetime(2025, 2, 1, 9, 0)
NOW = datetime(2025, 2, 2, tzinfo=UTC)
EVENTS = pl.DataFrame(
    {"event_id": [EVENT], "start_time_utc": [START], "capacity": [3]},
    schema={"event_id": pl.String, "start_time_utc": pl.Datetime("us"), "capacity": pl.Int64},
)
CUSTOMERS = {"c01", "c02", "c03", "c04", "c05"}
FORGED = sign_link_token(
    b"forger", customer_id="c01", event_id=EVENT, channel="email", campaign_id="x", action="register"
)
NOBODY = pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String})


def token(customer: str, event: str = EVENT, action: str = "register", channel: str = "email") -> str:
    return sign_link_token(
        SECRET, customer_id=customer, event_id=event, channel=channel, campaign_id="cmp-1", action=action
    )


def verify(value: str) -> LinkClaims | None:
    try:
        return verify_link_token(SECRET, value, action="register")
    except InvalidLinkToken:
        return None


def incoming(*rows: tuple[str, str, str, datetime, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "registration_id": pl.String,
            "event_id": pl.String,
            "customer_id": pl.String,
            "registered_at": pl.Datetime("us"),
            "token": pl.String,
        },
        orient="row",
    )


def row(n: int, customer: str, *, minutes: int = 0, event: str = EVENT, tok: str | None = "auto") -> tuple:
    return (f"r{n}", event, customer, T0 + timedelta(minutes=minutes), token(customer, event) if tok == "auto" else tok)


def validate(frame: pl.DataFrame, **kw) -> reg.RegistrationOutcome:
    args = {
        "events": EVENTS,
        "known_customers": CUSTOMERS,
        "already_registered": NOBODY,
        "capacity_limit": 100,
        "deadline_days": 1,
        "verify": verify,
        **kw,
    }
    return reg.validate_registrations(frame, **args)


def reasons(outcome: reg.RegistrationOutcome) -> dict[str, str]:
    """registration_id -> reason, read back from the quarantined JSON."""
    return {
        json.loads(raw).get("registration_id"): reason
        for raw, reason in outcome.rejected.select("raw", "reason").iter_rows()
    }


def test_a_valid_registration_is_accepted_with_the_tokens_channel():
    outcome = validate(incoming((*row(1, "c01")[:4], token("c01", channel="in-app"))))
    assert outcome.rejected.height == 0 and outcome.waitlisted.height == 0
    assert outcome.accepted.select("event_id", "customer_id", "channel", "campaign_id").rows() == [
        (EVENT, "c01", "in-app", "cmp-1")
    ]
    assert outcome.accepted.schema == pl.Schema(reg.OUTPUT_SCHEMA)
    assert outcome.rejected.schema == pl.Schema(QUARANTINE_SCHEMA)


@pytest.mark.parametrize(
    ("registration", "reason"),
    [
        (row(1, "c01", event="evt-nope"), reg.UNKNOWN_EVENT),
        (row(1, "stranger"), reg.UNKNOWN_CUSTOMER),
        (row(1, "c01", tok=None), reg.INVALID_TOKEN),
        (row(1, "c01", tok="garbage.token"), reg.INVALID_TOKEN),
        (row(1, "c01", tok=token("c01", action="click")), reg.INVALID_TOKEN),
        (row(1, "c01", tok=FORGED), reg.INVALID_TOKEN),
        (row(1, "c01", tok=token("c02")), reg.TOKEN_MISMATCH),
        (row(1, "c01", tok=token("c01", event="evt-other")), reg.TOKEN_MISMATCH),
        (("r1", EVENT, "c01", START - timedelta(hours=23), token("c01")), reg.AFTER_DEADLINE),
        (("r1", EVENT, None, T0, token("c01")), reg.MISSING_FIELD),
        (("r1", EVENT, "c01", None, token("c01")), reg.MISSING_FIELD),
    ],
)
def test_each_rule_rejects_with_its_reason(registration: tuple, reason: str):
    outcome = validate(incoming(registration))
    assert outcome.accepted.height == 0
    assert reasons(outcome) == {"r1": reason}


def test_the_deadline_is_inclusive_of_start_minus_deadline_days():
    on_time = ("r1", EVENT, "c01", START - timedelta(days=1), token("c01"))
    assert validate(incoming(on_time)).accepted.height == 1


def test_duplicates_in_the_batch_keep_the_earliest_and_prior_registrations_are_duplicates():
    outcome = validate(
        incoming(row(1, "c01", minutes=5), row(2, "c01", minutes=1), row(3, "c01", minutes=1), row(4, "c02")),
        already_registered=pl.DataFrame({"event_id": [EVENT], "customer_id": ["c02"]}),
    )
    assert outcome.accepted.select("registration_id", "customer_id").rows() == [("r2", "c01")]
    assert reasons(outcome) == {"r1": reg.DUPLICATE, "r3": reg.DUPLICATE, "r4": reg.DUPLICATE}


def test_an_invalid_delivery_does_not_shadow_a_valid_one():
    outcome = validate(incoming(row(1, "c01", tok="bad.token"), row(2, "c01", minutes=3)))
    assert outcome.accepted["registration_id"].to_list() == ["r2"]
    assert reasons(outcome) == {"r1": reg.INVALID_TOKEN}


def test_over_capacity_is_waitlisted_in_time_order_not_dropped():
    # event capacity 3, program limit 4, one seat already taken: two seats left.
    frame = incoming(row(1, "c03", minutes=30), row(2, "c01", minutes=10), row(3, "c04", minutes=40), row(4, "c02"))
    outcome = validate(
        frame, capacity_limit=4, already_registered=pl.DataFrame({"event_id": [EVENT], "customer_id": ["c05"]})
    )
    assert outcome.accepted["customer_id"].to_list() == ["c02", "c01"]
    assert outcome.waitlisted["customer_id"].to_list() == ["c03", "c04"]
    assert set(outcome.waitlisted["reason"]) == {reg.CAPACITY_REACHED}
    assert outcome.rejected.height == 0
    assert validate(frame, capacity_limit=1).accepted["customer_id"].to_list() == ["c02"]
    assert outcome.summary() == {"accepted": 2, "waitlisted": 2, "rejected": 0}


def test_aware_and_string_times_are_taken_as_utc():
    frame = incoming(row(1, "c01")).with_columns(
        pl.col("registered_at").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Berlin")
    )
    assert validate(frame).accepted["registered_at"].to_list() == [T0]
    as_text = incoming(row(1, "c01")).with_columns(pl.lit("2025-02-01T10:00:00+01:00").alias("registered_at"))
    assert validate(as_text).accepted["registered_at"].to_list() == [T0]


def test_an_unparseable_time_is_rejected_as_such_not_as_missing():
    as_text = incoming(row(1, "c01")).with_columns(pl.lit("next tuesday").alias("registered_at"))
    outcome = validate(as_text)
    assert reasons(outcome) == {"r1": reg.INVALID_TIMESTAMP}
    assert outcome.rejected.select("source", "line", "event_id").rows() == [(None, 1, EVENT)]


# ---- ingestion shell ---------------------------------------------------------------------


class FakeWarehouse:
    """The three reads ingestion needs, from frames (the DuckDB warehouse is tested elsewhere)."""

    def __init__(self, registrations: pl.DataFrame) -> None:
        self.registrations = registrations

    def events(self) -> pl.DataFrame:
        return EVENTS.with_columns(topics=pl.lit("devops"), target_regions=pl.lit("US"))

    def event_registrations(self, event_id: str) -> pl.DataFrame:
        return self.registrations.filter(pl.col("event_id") == event_id)

    def contacts(self, customer_ids: list[str]) -> pl.DataFrame:
        return pl.DataFrame({"customer_id": sorted(CUSTOMERS & set(customer_ids))}, schema={"customer_id": pl.String})


def stored(store: SqliteCandidateStore) -> list[tuple]:
    frame = store.registered_candidates("event-invitations", EVENT, now=NOW)
    return frame.select(sorted(frame.columns)).rows()


@pytest.fixture
def stores(tmp_path: Path):
    """A candidate store with c01, c02 as candidates and an empty engagement store, one SQLite file."""
    program = default_program()
    store = SqliteCandidateStore(path=str(tmp_path / "local.sqlite"))
    scored = pl.DataFrame({"customer_id": ["c01", "c02"], "score": [0.9, 0.5], "score_band": ["high", "medium"]})
    store.replace_event_candidates(program.program_id, EVENT, scored, ["email", "in-app"], NOW, 14, 10)
    engagement = SqliteEngagementStore(path=str(tmp_path / "local.sqlite"))
    yield program, store, engagement
    engagement.close()


NO_REGISTRATIONS = pl.DataFrame(schema=NOBODY.schema | {"registered_at": pl.Datetime("us")})


def test_replaying_a_batch_marks_and_stores_nothing_twice(stores):
    program, store, engagement = stores
    warehouse = FakeWarehouse(NO_REGISTRATIONS)
    batch = incoming(row(1, "c01", minutes=2), row(2, "c01", minutes=9), row(3, "c03"), row(4, "stranger"))

    def ingest():
        return ingest_registrations(
            batch, warehouse=warehouse, store=store, engagement=engagement, program=program, secret=SECRET, now=NOW
        )

    first = ingest()
    assert first.accepted["customer_id"].to_list() == ["c03", "c01"]  # c03 is not a candidate: nothing to mark
    assert first.stored == 2
    after_first = stored(store)
    marked = store.registered_candidates(program.program_id, EVENT, now=NOW)
    assert marked.select("customer_id", "channel").rows() == [("c01", "email"), ("c01", "in-app")]
    assert set(marked["status_at"].dt.replace_time_zone(None)) == {T0 + timedelta(minutes=2)}  # the earliest
    assert set(marked["registered_channel"]) == {"email"}
    kept = engagement.registrations(EVENT)
    assert kept.select("customer_id", "registration_id", "channel", "campaign_id", "status").rows() == [
        ("c03", "r3", "email", "cmp-1", REGISTERED),
        ("c01", "r1", "email", "cmp-1", REGISTERED),
    ]
    second = ingest()
    assert stored(store) == after_first
    assert engagement.registrations(EVENT).equals(kept)
    assert second.stored == 0
    # The engagement store now knows c03 too: the whole replay is duplicates (and the stranger).
    assert second.accepted.height == 0
    assert sorted(reasons(second).values()) == [reg.DUPLICATE] * 3 + [reg.UNKNOWN_CUSTOMER]
    assert second.summary() == {
        "accepted": 0,
        "waitlisted": 0,
        "rejected": 4,
        "stored": 0,
        reg.DUPLICATE: 3,
        reg.UNKNOWN_CUSTOMER: 1,
    }


def test_engagement_store_registrations_count_against_capacity_and_waitlisted_rows_are_kept(stores):
    program, store, engagement = stores
    warehouse = FakeWarehouse(NO_REGISTRATIONS)  # EVENTS: capacity 3
    earlier = incoming(row(1, "c01"), row(2, "c02", minutes=1))
    ingest_registrations(
        earlier, warehouse=warehouse, store=store, engagement=engagement, program=program, secret=SECRET, now=NOW
    )
    # A new webhook batch: one seat is left, c04 registered after c03 and is waitlisted.
    later = incoming(row(3, "c03", minutes=5), row(4, "c04", minutes=6))
    outcome = ingest_registrations(
        later, warehouse=warehouse, store=store, engagement=engagement, program=program, secret=SECRET, now=NOW
    )
    assert outcome.accepted["customer_id"].to_list() == ["c03"]
    assert outcome.waitlisted["customer_id"].to_list() == ["c04"]
    statuses = dict(engagement.registrations(EVENT).select("customer_id", "status").iter_rows())
    assert statuses == {"c01": REGISTERED, "c02": REGISTERED, "c03": REGISTERED, "c04": WAITLISTED}
    assert outcome.summary()["stored"] == 2


def test_feed_records_are_ingested_and_malformed_lines_quarantined_with_their_reason(stores):
    program, store, engagement = stores

    def record(r: tuple, line: int) -> dict:
        values = (*r[:3], r[3].isoformat() + "Z", r[4])
        return {**dict(zip(reg.INCOMING_SCHEMA, values, strict=True)), "_source": "0001.jsonl", "_line": line}

    records = [
        record(row(1, "c01"), 1),
        {"_error": "not JSON: Expecting value", "_raw": "{oops", "_source": "0001.jsonl", "_line": 2},
        record(row(3, "c02", tok=FORGED), 3),
        {**record(row(4, "c03"), 4), "registered_at": "soon"},
        {"registration_id": "r5", "event_id": EVENT, "_source": "0001.jsonl", "_line": 5},
    ]
    outcome = ingest_registrations(
        records,
        warehouse=FakeWarehouse(NO_REGISTRATIONS),
        store=store,
        engagement=engagement,
        program=program,
        secret=SECRET,
        now=NOW,
    )
    assert outcome.accepted.select("customer_id", "registered_at").rows() == [("c01", T0)]
    assert outcome.rejected.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert outcome.rejected.select("source", "line", "event_id", "reason").rows() == [
        ("0001.jsonl", 2, None, "malformed_record"),
        ("0001.jsonl", 3, EVENT, reg.INVALID_TOKEN),
        ("0001.jsonl", 4, EVENT, reg.INVALID_TIMESTAMP),
        ("0001.jsonl", 5, EVENT, reg.MISSING_FIELD),
    ]
    assert outcome.rejected["raw"][0] == "{oops"  # the line as it came, for the quarantine file
    assert json.loads(outcome.rejected["raw"][2])["registered_at"] == "soon"
    assert engagement.registrations(EVENT)["customer_id"].to_list() == ["c01"]


# ---- cancellations and the waitlist -------------------------------------------------------------


class CatalogWarehouse(FakeWarehouse):
    """FakeWarehouse whose event capacity the catalog can raise."""

    def __init__(self, registrations: pl.DataFrame, capacity: int = 3) -> None:
        super().__init__(registrations)
        self.capacity = capacity

    def events(self) -> pl.DataFrame:
        return super().events().with_columns(capacity=pl.lit(self.capacity, pl.Int64))


def cancel_record(customer: str, *, minutes: int = 60, line: int = 1, **fields) -> dict:
    return {
        "action": "cancel",
        "event_id": EVENT,
        "customer_id": customer,
        "cancelled_at": (T0 + timedelta(minutes=minutes)).isoformat() + "Z",
        "_source": "0002.jsonl",
        "_line": line,
        **fields,
    }


def seated(warehouse, store, engagement, program) -> list[str]:
    frame = registered_customers(warehouse, store, engagement, program.program_id, EVENT, NOW)
    return sorted(frame["customer_id"].to_list())


def test_cancellation_problems_name_the_field():
    good = {"action": "cancel", "event_id": EVENT, "customer_id": "c01", "cancelled_at": "2025-02-01T10:00:00Z"}
    assert reg.cancellation_problem(good) is None
    assert reg.cancellation_problem({"event_id": EVENT}) is None  # a registration: judged by validate_registrations
    assert reg.cancellation_problem({**good, "action": "CANCEL "}) is None
    assert reg.cancellation_problem({**good, "action": "delete"})[0] == "action"
    assert reg.cancellation_problem({**good, "cancelled_at": " "})[0] == "cancelled_at"
    assert reg.cancellation_problem({**good, "cancelled_at": "tomorrow"})[0] == "cancelled_at"
    assert reg.cancellation_problem({**good, "customer_id": "c 01"})[0] == "customer_id"
    assert reg.cancellation_problem({k: v for k, v in good.items() if k != "event_id"})[0] == "event_id"


def test_validate_cancellations_rules_in_order():
    current = pl.DataFrame(
        {
            "event_id": [EVENT] * 4,
            "customer_id": ["c01", "c02", "c03", "c04"],
            "status": [REGISTERED, WAITLISTED, CANCELLED, REGISTERED],
            "registration_id": ["r1", "r2", "r3", "r4"],
            "registered_at": [T0, T0, T0, T0 + timedelta(hours=5)],
            "channel": ["email", None, "email", "in-app"],
            "campaign_id": ["cmp-1", None, "cmp-1", "cmp-2"],
        },
        schema=reg.CURRENT_SCHEMA,
    )
    at = T0 + timedelta(hours=1)
    rows = [
        ("cancel", None, EVENT, "c01", at),  # accepted, frees a seat
        ("cancel", None, EVENT, "c01", at + timedelta(minutes=1)),  # later duplicate in the batch
        ("cancel", "x2", EVENT, "c02", at),  # waitlisted: accepted, frees nothing
        ("cancel", None, EVENT, "c03", at),  # already cancelled
        ("cancel", None, EVENT, "c04", at),  # older than c04's registration
        ("cancel", None, EVENT, "c05", at),  # holds nothing
        ("cancel", None, "evt-unknown", "c01", at),
        ("cancel", None, EVENT, "c01", datetime(2025, 3, 1)),  # after NOW
        ("cancel", None, EVENT, None, at),
        ("delete", None, EVENT, "c01", at),
    ]
    incoming = pl.DataFrame(rows, schema=reg.CANCELLATION_RECORD, orient="row")
    outcome = reg.validate_cancellations(incoming, events=EVENTS, current=current, now=NOW)
    assert outcome.accepted.select("customer_id", "registration_id", "previous_status", "channel").rows() == [
        ("c01", "r1", REGISTERED, "email"),
        ("c02", "x2", WAITLISTED, None),
    ]
    assert outcome.freed == 1
    assert outcome.accepted.schema == pl.Schema(reg.CANCELLED_SCHEMA)
    assert dict(outcome.rejected.select("line", "reason").rows()) == {
        2: reg.DUPLICATE,
        4: reg.DUPLICATE,
        5: reg.CANCELLED_BEFORE_REGISTRATION,
        6: reg.NOT_REGISTERED,
        7: reg.UNKNOWN_EVENT,
        8: reg.FUTURE_TIMESTAMP,
        9: reg.MISSING_FIELD,
        10: reg.UNKNOWN_ACTION,
    }


def test_promote_waitlist_is_first_come_first_served_and_never_overbooks():
    waitlisted = pl.DataFrame(
        {"customer_id": ["w3", "w1", "w2", "w0"], "registered_at": [T0 + timedelta(minutes=m) for m in (5, 1, 1, 9)]}
    )
    assert reg.promote_waitlist(waitlisted, 8, 10)["customer_id"].to_list() == ["w1", "w2"]
    assert reg.promote_waitlist(waitlisted, 8, 10, capacity_limit=9)["customer_id"].to_list() == ["w1"]
    assert reg.promote_waitlist(waitlisted, 12, 10).is_empty()  # overbooked already: nobody
    assert reg.promote_waitlist(waitlisted, 0, 100)["customer_id"].to_list() == ["w1", "w2", "w3", "w0"]


def test_a_cancellation_frees_a_seat_and_the_earliest_waitlisted_is_promoted_once(stores):
    program, store, engagement = stores
    warehouse = CatalogWarehouse(NO_REGISTRATIONS, capacity=3)

    def ingest(batch):
        return ingest_registrations(
            batch, warehouse=warehouse, store=store, engagement=engagement, program=program, secret=SECRET, now=NOW
        )

    full = ingest(incoming(row(1, "c01"), row(2, "c02", minutes=1), row(3, "c03", minutes=2), row(5, "c05", minutes=4),
                           row(4, "c04", minutes=3)))  # fmt: skip
    assert full.waitlisted["customer_id"].to_list() == ["c04", "c05"]  # c04 registered first
    assert promote_from_waitlist(warehouse, store, engagement, program, EVENT, NOW).is_empty()  # no seat yet

    cancelled = ingest([cancel_record("c01"), cancel_record("c09", line=2), cancel_record("c02", line=3, action="x")])
    assert cancelled.cancelled.select("customer_id", "previous_status").rows() == [("c01", REGISTERED)]
    assert cancelled.rejected.select("line", "reason").rows() == [(2, reg.NOT_REGISTERED), (3, reg.UNKNOWN_ACTION)]
    assert cancelled.summary()["cancelled"] == 1
    assert seated(warehouse, store, engagement, program) == ["c02", "c03"]  # c01's mark no longer counts

    promoted = promote_from_waitlist(warehouse, store, engagement, program, EVENT, NOW)
    assert promoted.select("customer_id", "registration_id", "registered_at").rows() == [
        ("c04", "r4", T0 + timedelta(minutes=3))
    ]
    assert promoted["promoted_at"].to_list() == [NOW.replace(tzinfo=None)]
    statuses = dict(engagement.registrations(EVENT).select("customer_id", "status").iter_rows())
    assert statuses == {"c01": CANCELLED, "c02": REGISTERED, "c03": REGISTERED, "c04": REGISTERED, "c05": WAITLISTED}
    assert seated(warehouse, store, engagement, program) == ["c02", "c03", "c04"]
    assert promote_from_waitlist(warehouse, store, engagement, program, EVENT, NOW).is_empty()  # running again
    assert ingest([cancel_record("c01")]).rejected["reason"].to_list() == [reg.DUPLICATE]  # replayed cancellation

    # A replay of c01's old registration does not take a seat back; a new registration is waitlisted.
    assert ingest(incoming(row(1, "c01"))).rejected["reason"].to_list() == [reg.DUPLICATE]
    again = ingest(incoming(row(6, "c01", minutes=90)))
    assert again.waitlisted["customer_id"].to_list() == ["c01"]
    statuses = dict(engagement.registrations(EVENT).select("customer_id", "status").iter_rows())
    assert statuses["c01"] == WAITLISTED


def test_a_capacity_raised_in_the_catalog_promotes_as_many_as_it_opens(stores):
    program, store, engagement = stores
    warehouse = CatalogWarehouse(NO_REGISTRATIONS, capacity=1)
    batch = incoming(*(row(n, f"c0{n}", minutes=n) for n in range(1, 6)))
    ingest_registrations(
        batch, warehouse=warehouse, store=store, engagement=engagement, program=program, secret=SECRET, now=NOW
    )
    assert seated(warehouse, store, engagement, program) == ["c01"]
    warehouse.capacity = 3
    promoted = promote_from_waitlist(warehouse, store, engagement, program, EVENT, NOW)
    assert promoted["customer_id"].to_list() == ["c02", "c03"]
    assert seated(warehouse, store, engagement, program) == ["c01", "c02", "c03"]
    marked = store.registered_candidates(program.program_id, EVENT, now=NOW)
    assert sorted(set(marked["customer_id"])) == ["c01", "c02"]  # c03 is not a candidate: nothing to mark
    assert promote_from_waitlist(warehouse, store, engagement, program, EVENT, NOW).is_empty()
    # Nobody is promoted once the event has started.
    warehouse.capacity = 10
    assert promote_from_waitlist(warehouse, store, engagement, program, EVENT, START).is_empty()
    assert len(promote_from_waitlist(warehouse, store, engagement, program, EVENT, NOW)) == 2
