"""Registrations: each validation rule with its reason, capacity waitlisting, replay, the feed cursor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from eventreach_assets.domain import registrations as reg
from eventreach_assets.domain.messages import InvalidLinkToken, LinkClaims, sign_link_token, verify_link_token
from eventreach_assets.program.config import default_program
from eventreach_assets.registrations import ingest_registrations, read_feed
from eventreach_assets.resources.candidate_store import SqliteCandidateStore

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
    return dict(outcome.rejected.select("registration_id", "reason").iter_rows())


def test_a_valid_registration_is_accepted_with_the_tokens_channel():
    outcome = validate(incoming((*row(1, "c01")[:4], token("c01", channel="in-app"))))
    assert outcome.rejected.height == 0 and outcome.waitlisted.height == 0
    assert outcome.accepted.select("event_id", "customer_id", "channel").rows() == [(EVENT, "c01", "in-app")]
    assert outcome.accepted.schema == pl.Schema(reg.OUTPUT_SCHEMA)


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
    assert outcome.summary() == {"accepted": 2, "waitlisted": 2}


def test_aware_and_string_times_are_taken_as_utc():
    frame = incoming(row(1, "c01")).with_columns(
        pl.col("registered_at").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Berlin")
    )
    assert validate(frame).accepted["registered_at"].to_list() == [T0]
    as_text = incoming(row(1, "c01")).with_columns(pl.lit("2025-02-01T10:00:00+01:00").alias("registered_at"))
    assert validate(as_text).accepted["registered_at"].to_list() == [T0]


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


def test_replaying_a_batch_marks_nothing_twice(tmp_path: Path):
    program = default_program()
    store = SqliteCandidateStore(path=str(tmp_path / "candidates.sqlite"))
    scored = pl.DataFrame({"customer_id": ["c01", "c02"], "score": [0.9, 0.5], "score_band": ["high", "medium"]})
    store.replace_event_candidates(program.program_id, EVENT, scored, ["email", "in-app"], NOW, 14, 10)
    warehouse = FakeWarehouse(pl.DataFrame(schema=NOBODY.schema | {"registered_at": pl.Datetime("us")}))
    batch = incoming(row(1, "c01", minutes=2), row(2, "c01", minutes=9), row(3, "c03"), row(4, "stranger"))

    def ingest():
        return ingest_registrations(batch, warehouse=warehouse, store=store, program=program, secret=SECRET, now=NOW)

    first = ingest()
    assert first.accepted["customer_id"].to_list() == ["c03", "c01"]  # c03 is not a candidate: nothing to mark
    after_first = stored(store)
    marked = store.registered_candidates(program.program_id, EVENT, now=NOW)
    assert marked.select("customer_id", "channel").rows() == [("c01", "email"), ("c01", "in-app")]
    assert set(marked["status_at"].dt.replace_time_zone(None)) == {T0 + timedelta(minutes=2)}  # the earliest
    assert set(marked["registered_channel"]) == {"email"}
    second = ingest()
    assert stored(store) == after_first
    assert "c01" in second.rejected.filter(pl.col("reason") == reg.DUPLICATE)["customer_id"].to_list()
    assert second.accepted["customer_id"].to_list() == ["c03"]  # re-marking it is a no-op


def test_feed_cursor_reads_only_new_files(tmp_path: Path):
    def drop(name: str, *rows: tuple) -> None:
        lines = [
            json.dumps(dict(zip(reg.INCOMING_SCHEMA, (*r[:3], r[3].isoformat() + "Z", r[4]), strict=True)))
            for r in rows
        ]
        (tmp_path / name).write_text("\n".join(lines) + "\n\n")

    empty, cursor = read_feed(tmp_path, None)
    assert empty.height == 0 and cursor is None
    drop("2025-02-01T09.jsonl", row(1, "c01"), row(2, "c02"))
    drop("2025-02-01T10.jsonl", row(3, "c03"))
    (tmp_path / "notes.txt").write_text("ignored")
    frame, cursor = read_feed(tmp_path, None)
    assert frame["registration_id"].to_list() == ["r1", "r2", "r3"] and cursor == "2025-02-01T10.jsonl"
    assert validate(frame).accepted.height == 3
    nothing_new, same = read_feed(tmp_path, cursor)
    assert nothing_new.height == 0 and same == cursor
    drop("2025-02-01T11.jsonl", row(4, "c04"))
    frame, cursor = read_feed(tmp_path, cursor)
    assert frame["registration_id"].to_list() == ["r4"] and cursor == "2025-02-01T11.jsonl"
