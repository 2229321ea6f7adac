"""Engagement validation and the event funnel, pure: each rule with its reason, tokens decide who."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from eventreach_assets.domain.engagement_feeds import (
    COMMENT_TRUNCATED,
    EVENT_NOT_STARTED,
    INVALID_MINUTES,
    INVALID_RATING,
    JOINED_TOO_EARLY,
    MAX_COMMENT_CHARS,
    NOT_A_SURVEY_TOKEN,
    NOT_A_TRACKING_TOKEN,
    NOT_AN_ATTENDEE,
    PATH_MISMATCH,
    UNKNOWN_PATH,
    validate_attendance,
    validate_survey,
    validate_tracking,
)
from eventreach_assets.domain.engagement_schemas import (
    ATTENDANCE_SCHEMA,
    CANCELLED,
    INTERACTION_SCHEMA,
    REGISTERED,
    REGISTRATION_SCHEMA,
    SURVEY_SCHEMA,
    WAITLISTED,
)
from eventreach_assets.domain.feed_records import (
    ATTENDANCE_RECORD,
    DUPLICATE,
    FUTURE_TIMESTAMP,
    INVALID_ID,
    INVALID_TIMESTAMP,
    INVALID_TOKEN,
    MALFORMED_RECORD,
    META_SCHEMA,
    MISSING_FIELD,
    QUARANTINE_SCHEMA,
    SURVEY_RECORD,
    TRACKING_RECORD,
    UNKNOWN_EVENT,
    Validation,
    link_verifier,
    records_frame,
    utc_naive,
)
from eventreach_assets.domain.funnel import FUNNEL_SCHEMA, FUNNEL_STAGES, event_funnel
from eventreach_assets.domain.link_tokens import sign_link_token

SECRET = b"test-secret"
EVENT = "evt-1"
START = datetime(2026, 11, 30, 17, 0)
AFTER = datetime(2026, 12, 1, 9, 0)  # the morning after the event
EVENTS = pl.DataFrame(
    {
        "event_id": [EVENT, "evt-later"],
        "start_time_utc": [START, START + timedelta(days=30)],
        "duration_minutes": [90, 60],
    }
)
VERIFY = link_verifier(SECRET)


def token(customer: str, action: str, *, event: str = EVENT, channel: str = "email", secret: bytes = SECRET) -> str:
    return sign_link_token(
        secret, customer_id=customer, event_id=event, channel=channel, campaign_id="cmp-1", action=action
    )


def altered(value: str) -> str:
    """The token with its payload's customer swapped and the signature kept: what a tamperer sends."""
    payload, signature = value.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["c"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    return f"{forged.rstrip(b'=').decode()}.{signature}"


def rows(schema: dict[str, pl.DataType], *records: dict) -> pl.DataFrame:
    frame, rejected = records_frame(list(records), schema, source="batch.jsonl")
    assert rejected.is_empty()
    return frame


def reasons(result: Validation) -> list[tuple[int, str]]:
    return result.rejected.select("line", "reason").rows()


def assert_partition(result: Validation, height: int) -> None:
    assert result.accepted.height + result.rejected.height == height
    assert result.rejected.schema == pl.Schema(QUARANTINE_SCHEMA)


# ---- records and times ------------------------------------------------------------------------


def test_records_become_text_columns_and_malformed_lines_are_rejected_with_their_raw_line():
    records = [
        {"event_id": EVENT, "customer_id": 17, "joined_at": "2026-11-30T17:05:00Z", "minutes_watched": 45,
         "extra": {"x": 1}, "_source": "0001.jsonl", "_line": 1},
        {"_error": "not JSON: Expecting value", "_raw": "{not json", "_source": "0001.jsonl", "_line": 2},
        {"event_id": "  ", "joined_at": datetime(2026, 11, 30, 18, tzinfo=UTC), "minutes_watched": True},
    ]  # fmt: skip
    frame, rejected = records_frame(records, ATTENDANCE_RECORD, source="webhook")
    assert frame.schema == pl.Schema({**{name: pl.String() for name in ATTENDANCE_RECORD}, **META_SCHEMA})
    assert frame.drop("_raw").rows() == [
        (EVENT, "17", "2026-11-30T17:05:00Z", "45", "0001.jsonl", 1),
        (None, None, "2026-11-30T18:00:00+00:00", "true", "webhook", 3),  # blank is missing; position as line
    ]
    assert json.loads(frame["_raw"][0]) == {k: v for k, v in records[0].items() if not k.startswith("_")}
    assert rejected.rows() == [("0001.jsonl", 2, None, MALFORMED_RECORD, "{not json")]


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-30T17:05:00Z",
        "2026-11-30T18:05:00+01:00",
        "2026-11-30T18:05:00.000+0100",
        "2026-11-30T17:05:00",
        "2026-11-30 17:05:00",
        " 2026-11-30t17:05z ",
    ],
)
def test_iso_times_with_or_without_offset_are_naive_utc(text: str):
    parsed = pl.DataFrame({"at": [text, "2026-11-30T17:05:00+05:30"]}).select(utc_naive("at", pl.String()))
    assert parsed["at"].to_list() == [datetime(2026, 11, 30, 17, 5), datetime(2026, 11, 30, 11, 35)]


def test_text_that_is_not_a_time_is_null_and_other_types_are_refused():
    parsed = pl.DataFrame({"at": ["tomorrow", "2026-13-01T00:00:00", "2026-11-30"]}).select(
        utc_naive("at", pl.String())
    )
    assert parsed["at"].to_list() == [None, None, None]
    with pytest.raises(ValueError, match="at must be a datetime or ISO 8601 text column, got Int64"):
        utc_naive("at", pl.Int64())


# ---- tracking ---------------------------------------------------------------------------------


def hit(tok: str | None, path: str | None = "open", at: str | None = "2026-11-20T10:00:00Z") -> dict:
    return {"token": tok, "path": path, "occurred_at": at}


def test_genuine_hits_become_interactions_attributed_by_their_token():
    batch = rows(
        TRACKING_RECORD,
        hit(token("c1", "click", channel="in-app"), "join", "2026-11-20T11:00:00Z"),
        hit(token("c1", "open"), "open", "2026-11-20T10:00:00+01:00"),
        hit(token("c2", "unsubscribe"), "unsubscribe"),
        hit(token("c1", "open"), "open", "2026-11-21T08:00:00Z"),  # opened again: accepted, store keeps the first
    )
    result = validate_tracking(batch, VERIFY, now=AFTER)
    assert_partition(result, 4)
    assert result.rejected.is_empty()
    assert result.accepted.schema == pl.Schema(INTERACTION_SCHEMA)
    assert result.accepted.rows() == [
        (EVENT, "c1", "email", "cmp-1", "open", datetime(2026, 11, 20, 9)),
        (EVENT, "c2", "email", "cmp-1", "unsubscribe", datetime(2026, 11, 20, 10)),
        (EVENT, "c1", "in-app", "cmp-1", "click", datetime(2026, 11, 20, 11)),
        (EVENT, "c1", "email", "cmp-1", "open", datetime(2026, 11, 21, 8)),
    ]


def test_each_tracking_rule_rejects_with_its_reason():
    genuine = token("c1", "open")
    batch = rows(
        TRACKING_RECORD,
        hit(None),
        hit(genuine, at="last week"),
        hit(token("c1", "open", secret=b"forger")),
        hit(altered(genuine)),
        hit(genuine[:-3] + "abc"),
        hit("not-a-token"),
        hit(token("c1", "register"), "open"),
        hit(token("c1", "survey"), "open"),
        hit(genuine, "admin"),
        hit(genuine, "unsubscribe"),  # an open pixel's token cannot unsubscribe anyone
        hit(token("c1", "click"), "open"),
        hit(genuine, at="2026-12-01T09:06:00Z"),  # 6 minutes after `now`
        hit(genuine, at="2026-12-01T09:04:00Z"),  # within the clock-skew tolerance: accepted
    )
    result = validate_tracking(batch, VERIFY, now=AFTER)
    assert_partition(result, 13)
    assert reasons(result) == [
        (1, MISSING_FIELD),
        (2, INVALID_TIMESTAMP),
        (3, INVALID_TOKEN),
        (4, INVALID_TOKEN),
        (5, INVALID_TOKEN),
        (6, INVALID_TOKEN),
        (7, NOT_A_TRACKING_TOKEN),
        (8, NOT_A_TRACKING_TOKEN),
        (9, UNKNOWN_PATH),
        (10, PATH_MISMATCH),
        (11, PATH_MISMATCH),
        (12, FUTURE_TIMESTAMP),
    ]
    # The event is named only when a genuine token says so; a forged one names nothing.
    assert result.rejected["event_id"].to_list()[2:6] == [None] * 4
    assert set(result.rejected["event_id"].to_list()[6:]) == {EVENT}
    assert result.accepted["occurred_at"].to_list() == [datetime(2026, 12, 1, 9, 4)]


def test_rows_missing_a_column_are_a_caller_error():
    with pytest.raises(ValueError, match=r"tracking rows lack columns \['path'\]"):
        validate_tracking(pl.DataFrame({"token": ["x"], "occurred_at": ["y"]}), VERIFY)


# ---- attendance -------------------------------------------------------------------------------


def seen(customer: str | None, minutes: object = 45, joined: str | None = "2026-11-30T17:02:00Z", event=EVENT) -> dict:
    return {"event_id": event, "customer_id": customer, "joined_at": joined, "minutes_watched": minutes}


def test_attendance_within_the_window_is_accepted_as_integers():
    batch = rows(
        ATTENDANCE_RECORD,
        seen("c1", 150, "2026-11-30T16:00:00Z"),  # doors open an hour early; 90 + 60 minutes at most
        seen("c2", "0", "2026-11-30T18:00:00+01:00"),
        seen("c3", 45.0, "2026-11-30T17:30:00"),  # a whole number written as a float
    )
    result = validate_attendance(batch, EVENTS, AFTER)
    assert result.rejected.is_empty()
    assert result.accepted.schema == pl.Schema(ATTENDANCE_SCHEMA)
    assert result.accepted.rows() == [
        (EVENT, "c1", datetime(2026, 11, 30, 16), 150),
        (EVENT, "c2", START, 0),
        (EVENT, "c3", datetime(2026, 11, 30, 17, 30), 45),
    ]


def test_each_attendance_rule_rejects_with_its_reason():
    batch = rows(
        ATTENDANCE_RECORD,
        seen(None),
        seen("c1", event="evt-nope"),
        seen("c1", event="evt-later"),  # has not started yet
        seen("c 1"),
        seen("c1", 151),
        seen("c1", -1),
        seen("c1", 45.5),
        seen("c1", "forty"),
        seen("c1", joined="half past five"),
        seen("c1", joined="2026-11-30T15:59:00Z"),  # 61 minutes before the start
        seen("c1", joined="2026-12-01T10:00:00Z"),  # after `now`
        seen("c2", 30, "2026-11-30T17:20:00Z"),
        seen("c2", 60, "2026-11-30T17:01:00Z"),  # the earlier join of c2 wins
    )
    result = validate_attendance(batch, EVENTS, AFTER)
    assert_partition(result, 13)
    assert reasons(result) == [
        (1, MISSING_FIELD),
        (2, UNKNOWN_EVENT),
        (3, EVENT_NOT_STARTED),
        (4, INVALID_ID),
        (5, INVALID_MINUTES),
        (6, INVALID_MINUTES),
        (7, INVALID_MINUTES),
        (8, INVALID_MINUTES),
        (9, INVALID_TIMESTAMP),
        (10, JOINED_TOO_EARLY),
        (11, FUTURE_TIMESTAMP),
        (12, DUPLICATE),
    ]
    assert result.accepted.rows() == [(EVENT, "c2", datetime(2026, 11, 30, 17, 1), 60)]
    assert result.rejected["event_id"].to_list()[1:3] == ["evt-nope", "evt-later"]


def test_attendance_before_the_event_has_started_is_rejected():
    batch = rows(ATTENDANCE_RECORD, seen("c1", 0, "2026-11-30T16:30:00Z"))
    before = validate_attendance(batch, EVENTS, START - timedelta(minutes=1))
    assert reasons(before) == [(1, EVENT_NOT_STARTED)]
    assert validate_attendance(batch, EVENTS, START).accepted.height == 1


# ---- survey -----------------------------------------------------------------------------------

ATTENDED = pl.DataFrame({"event_id": [EVENT, EVENT], "customer_id": ["c1", "c2"]})


def answer(tok: str | None, rating: object = 4, comment: str | None = "Great talk", at: str | None = None) -> dict:
    return {"token": tok, "rating": rating, "comment": comment, "submitted_at": at or "2026-11-30T19:00:00Z"}


def test_survey_answers_are_about_the_tokens_customer_and_event_not_the_body():
    body = {**answer(token("c1", "survey"), "5", "  "), "event_id": "evt-other", "customer_id": "c9"}
    result = validate_survey(rows(SURVEY_RECORD, body), VERIFY, ATTENDED, now=AFTER)
    assert result.accepted.schema == pl.Schema(SURVEY_SCHEMA)
    assert result.accepted.rows() == [(EVENT, "c1", 5, None, datetime(2026, 11, 30, 19))]
    assert result.notes == {COMMENT_TRUNCATED: 0}


def test_each_survey_rule_rejects_with_its_reason():
    batch = rows(
        SURVEY_RECORD,
        answer(None),
        answer(token("c1", "survey"), at="after the talk"),
        answer(token("c1", "survey", secret=b"forger")),
        answer(altered(token("c1", "survey"))),
        answer(token("c1", "open")),
        answer(token("c1", "survey"), 0),
        answer(token("c1", "survey"), 6),
        answer(token("c1", "survey"), "4.5"),
        answer(token("c3", "survey")),  # did not attend
        answer(token("c1", "survey", event="evt-later")),  # attended evt-1, not this one
        answer(token("c1", "survey"), at="2026-12-02T00:00:00Z"),
        answer(token("c2", "survey"), 3, at="2026-11-30T20:00:00Z"),
        answer(token("c2", "survey"), 1, at="2026-11-30T19:30:00Z"),  # c2's first answer wins
    )
    result = validate_survey(batch, VERIFY, ATTENDED, now=AFTER)
    assert_partition(result, 13)
    assert reasons(result) == [
        (1, MISSING_FIELD),
        (2, INVALID_TIMESTAMP),
        (3, INVALID_TOKEN),
        (4, INVALID_TOKEN),
        (5, NOT_A_SURVEY_TOKEN),
        (6, INVALID_RATING),
        (7, INVALID_RATING),
        (8, INVALID_RATING),
        (9, NOT_AN_ATTENDEE),
        (10, NOT_AN_ATTENDEE),
        (11, FUTURE_TIMESTAMP),
        (12, DUPLICATE),
    ]
    assert result.accepted.select("customer_id", "rating").rows() == [("c2", 1)]


def test_a_long_comment_is_cut_to_the_limit_and_counted_not_rejected():
    long = "ab" * MAX_COMMENT_CHARS
    batch = rows(SURVEY_RECORD, answer(token("c1", "survey"), 2, long), answer(token("c2", "survey"), 5, "ok"))
    result = validate_survey(batch, VERIFY, ATTENDED)
    assert result.rejected.is_empty()
    assert result.accepted["comment"].to_list() == [long[:MAX_COMMENT_CHARS], "ok"]
    assert result.notes == {COMMENT_TRUNCATED: 1}


def test_nobody_attended_means_every_answer_is_rejected():
    nobody = pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String})
    result = validate_survey(rows(SURVEY_RECORD, answer(token("c1", "survey"))), VERIFY, nobody)
    assert reasons(result) == [(1, NOT_AN_ATTENDEE)]


# ---- funnel -----------------------------------------------------------------------------------


def deliveries(*rows_: tuple[str, str, str, str]) -> pl.DataFrame:
    columns = ("customer_id", "channel", "kind", "status")
    return pl.DataFrame(rows_, schema=dict.fromkeys(columns, pl.String()), orient="row")


def scenario() -> dict[str, pl.DataFrame]:
    """Eight customers, two invitation channels; see the expected table in the test."""
    sent = [
        *((c, "email", "invitation", "sent") for c in ("c1", "c2", "c3", "c4")),
        ("c5", "email", "invitation", "failed_permanent"),  # never reached c5: not invited by email
        *((c, "in-app", "invitation", "sent") for c in ("c3", "c5", "c6")),
        ("c1", "push", "reminder", "sent"),
        ("c3", "push", "reminder", "sent"),
        ("c2", "email", "day-of", "sent"),
        ("c4", "push", "reminder", "suppressed"),
    ]
    at = datetime(2026, 11, 20, 10)
    interactions = pl.DataFrame(
        [
            (EVENT, "c1", "email", "cmp-1", "open", at),
            (EVENT, "c1", "email", "cmp-2", "open", at),  # opened a second mail: still one customer
            (EVENT, "c1", "email", "cmp-1", "click", at),
            (EVENT, "c2", "email", "cmp-1", "click", at),  # pixel blocked: the click proves the open
            (EVENT, "c3", "email", "cmp-1", "open", at),
            (EVENT, "c3", "in-app", "cmp-3", "click", at),
            (EVENT, "c4", "email", "cmp-1", "unsubscribe", at),
            (EVENT, "c6", "in-app", "cmp-3", "open", at),
        ],
        schema=INTERACTION_SCHEMA,
        orient="row",
    )
    registrations = pl.DataFrame(
        [
            (EVENT, "c1", "r1", at, "email", "cmp-1", REGISTERED, at),
            (EVENT, "c2", "r2", at, "email", "cmp-1", REGISTERED, at),
            (EVENT, "c3", "r3", at, "in-app", "cmp-3", REGISTERED, at),  # no in-app open seen: implied
            (EVENT, "c5", "r5", at, "in-app", "cmp-3", WAITLISTED, at),  # no seat: not registered
            (EVENT, "c7", "r7", at, None, None, REGISTERED, at),  # unattributed: "all" only
        ],
        schema=REGISTRATION_SCHEMA,
        orient="row",
    )
    attendance = pl.DataFrame(
        [(EVENT, "c1", START, 60), (EVENT, "c3", START, 30), (EVENT, "c7", START, 90), (EVENT, "c8", START, 10)],
        schema=ATTENDANCE_SCHEMA,
        orient="row",
    )
    survey = pl.DataFrame(
        [(EVENT, "c1", 5, None, AFTER), (EVENT, "c3", 3, "meh", AFTER), (EVENT, "c8", 4, None, AFTER)],
        schema=SURVEY_SCHEMA,
        orient="row",
    )
    return {
        "deliveries": deliveries(*sent),
        "registrations": registrations,
        "interactions": interactions,
        "attendance": attendance,
        "survey": survey,
    }


def test_the_funnel_counts_distinct_customers_per_stage_and_channel():
    funnel = event_funnel(**scenario())
    assert funnel.schema == pl.Schema(FUNNEL_SCHEMA)
    counts = {(stage, channel): count for stage, channel, count in funnel.select("stage", "channel", "count").rows()}
    expected = {
        #              all  email  in-app
        "invited": (6, 4, 3),  # c1-c6 / c1-c4 / c3 c5 c6 (c5's email failed)
        "opened": (4, 3, 2),  # c1 c2 c3 c6 / c1 c2 (click) c3 / c3 (registered) c6
        "clicked": (3, 2, 1),  # c1 c2 c3 / c1 c2 / c3
        "registered": (4, 2, 1),  # c1 c2 c3 c7 (c5 waitlisted) / c1 c2 / c3
        "reminded": (3, 2, 1),  # c1 c2 (day-of) c3; c4's reminder was suppressed
        "attended": (4, 1, 1),  # c1 c3 c7 c8 / c1 / c3
        "rated": (3, 1, 1),  # c1 c3 c8 / c1 / c3
    }
    assert counts == {
        (stage, channel): number
        for stage, numbers in expected.items()
        for channel, number in zip(("all", "email", "in-app"), numbers, strict=True)
    }
    assert funnel.select("stage", "channel").rows()[:4] == [
        ("invited", "all"),
        ("invited", "email"),
        ("invited", "in-app"),
        ("opened", "all"),
    ]
    email = funnel.filter(pl.col("channel") == "email")
    assert email["rate_of_previous"].to_list() == pytest.approx([None, 3 / 4, 2 / 3, 1.0, 1.0, 1 / 2, 1.0], nan_ok=True)
    overall = funnel.filter(pl.col("channel") == "all")
    assert overall["rate_of_previous"].to_list()[3] == pytest.approx(4 / 3)  # c7 registered without our invitation
    averages = funnel.filter(pl.col("stage").is_in(["attended", "rated"])).select(
        "stage", "channel", "average_minutes_watched", "average_rating"
    )
    assert averages.rows() == [
        ("attended", "all", 47.5, None),
        ("attended", "email", 60.0, None),
        ("attended", "in-app", 30.0, None),
        ("rated", "all", None, 4.0),
        ("rated", "email", None, 5.0),
        ("rated", "in-app", None, 3.0),
    ]


def test_an_event_with_nothing_yet_has_every_stage_at_zero():
    empty = {
        "deliveries": deliveries(),
        "registrations": pl.DataFrame(schema=REGISTRATION_SCHEMA),
        "interactions": pl.DataFrame(schema=INTERACTION_SCHEMA),
        "attendance": pl.DataFrame(schema=ATTENDANCE_SCHEMA),
        "survey": pl.DataFrame(schema=SURVEY_SCHEMA),
    }
    funnel = event_funnel(**empty)
    assert funnel.select("stage", "channel", "count").rows() == [(stage, "all", 0) for stage in FUNNEL_STAGES]
    assert funnel["rate_of_previous"].null_count() == len(FUNNEL_STAGES)


def test_the_store_schemas_are_the_domains():
    from eventreach_assets.resources import engagement_store as store

    assert store.REGISTRATION.schema == REGISTRATION_SCHEMA
    assert store.INTERACTION.schema == INTERACTION_SCHEMA
    assert store.ATTENDANCE.schema == ATTENDANCE_SCHEMA
    assert store.SURVEY.schema == SURVEY_SCHEMA
    assert store.STATUSES == (REGISTERED, WAITLISTED, CANCELLED)
