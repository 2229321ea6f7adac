"""The tracking, attendance and survey feeds' validators: which hits, attendances and survey answers
are stored, and why each of the others is quarantined (pure polars, no Dagster, no I/O).

Each puts every input row in exactly one of `accepted` (the engagement store's schema) and
`rejected` (feed_records.QUARANTINE_SCHEMA, with a reason code); see domain/feed_records.py for
the shared parsing and rules. Registrations and provider feedback have their own
(domain/registrations.py, domain/feedback.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import polars as pl

from eventreach_assets.domain.campaigns import to_utc_naive
from eventreach_assets.domain.feed_records import (
    ATTENDANCE_RECORD,
    FUTURE_TIMESTAMP,
    INVALID_ID,
    INVALID_TIMESTAMP,
    INVALID_TOKEN,
    MISSING_FIELD,
    SURVEY_RECORD,
    TRACKING_RECORD,
    UNKNOWN_EVENT,
    Validation,
    any_missing,
    apply_rules,
    bad_id,
    in_future,
    integer,
    quarantine,
    require_columns,
    utc_naive,
    with_claims,
)
from eventreach_assets.domain.link_tokens import LinkClaims

# Reason codes of these feeds (besides the shared ones in feed_records).
NOT_A_TRACKING_TOKEN = "not_a_tracking_token"  # genuine, but a register / survey token in the tracking feed
UNKNOWN_PATH = "unknown_path"  # a tracking path we never serve
PATH_MISMATCH = "path_mismatch"  # e.g. an open-pixel token hitting the unsubscribe path
EVENT_NOT_STARTED = "event_not_started"  # attendance for an event that has not begun
INVALID_MINUTES = "invalid_minutes_watched"  # not an integer in 0..duration + GRACE_MINUTES
JOINED_TOO_EARLY = "joined_too_early"  # before start - GRACE_MINUTES
NOT_A_SURVEY_TOKEN = "not_a_survey_token"  # genuine, but not the survey email's token
NOT_AN_ATTENDEE = "not_an_attendee"  # the token's customer has no attendance for the token's event
INVALID_RATING = "invalid_rating"  # not an integer 1..5

TRACKED_ACTIONS: tuple[str, ...] = ("open", "click", "unsubscribe")
# The paths the tracking service serves for each token action (messages.link: join and
# calendar links carry the click token).
TRACKING_PATHS: dict[str, tuple[str, ...]] = {
    "open": ("open",),
    "click": ("click", "join", "calendar"),
    "unsubscribe": ("unsubscribe",),
}
GRACE_MINUTES = 60  # attendance: doors open an hour early, overtime up to an hour
UNKNOWN_DURATION_MINUTES = 24 * 60  # bound for minutes watched when an event has no duration
MAX_COMMENT_CHARS = 2000
COMMENT_TRUNCATED = "comment_truncated"  # a note, not a rejection: see validate_survey


def validate_tracking(
    rows: pl.DataFrame, verify: Callable[[str], LinkClaims | None], *, now: datetime | None = None
) -> Validation:
    """Tracking hits (token, path, occurred_at) as interactions (INTERACTION_SCHEMA).

    The token must be genuine and for a tracked action (open, click, unsubscribe); register and
    survey tokens belong to other feeds and are rejected as NOT_A_TRACKING_TOKEN. The path must be
    one the token's action is served on (TRACKING_PATHS). Repeated hits (an email opened twice)
    are all accepted, earliest first: the store keeps the first per key, so they are not errors.
    `now`, when given, rejects hits dated in the future.
    """
    rows = require_columns(rows, TRACKING_RECORD, "tracking").with_row_index("_row")
    rows = with_claims(rows, verify).with_columns(utc_naive("occurred_at", rows.schema["occurred_at"]).alias("_at"))
    pairs = [f"{action}/{path}" for action, paths in TRACKING_PATHS.items() for path in paths]
    all_paths = sorted({path for paths in TRACKING_PATHS.values() for path in paths})
    reason = (
        pl.when(any_missing("token", "path", "occurred_at"))
        .then(pl.lit(MISSING_FIELD))
        .when(pl.col("_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(pl.col("claim_action").is_null())
        .then(pl.lit(INVALID_TOKEN))
        .when(~pl.col("claim_action").is_in(TRACKED_ACTIONS))
        .then(pl.lit(NOT_A_TRACKING_TOKEN))
        .when(bad_id("claim_event_id", "claim_customer_id", "claim_channel", "claim_campaign_id"))
        .then(pl.lit(INVALID_ID))
        .when(~pl.col("path").is_in(all_paths))
        .then(pl.lit(UNKNOWN_PATH))
        .when(~pl.concat_str("claim_action", "path", separator="/").is_in(pairs))
        .then(pl.lit(PATH_MISMATCH))
        .when(in_future("_at", now))
        .then(pl.lit(FUTURE_TIMESTAMP))
    )
    rows = rows.with_columns(reason.alias("reason"))
    accepted = (
        rows.filter(pl.col("reason").is_null())
        .sort("_at", "_row")
        .select(
            pl.col("claim_event_id").alias("event_id"),
            pl.col("claim_customer_id").alias("customer_id"),
            pl.col("claim_channel").alias("channel"),
            pl.col("claim_campaign_id").alias("campaign_id"),
            pl.col("claim_action").alias("action"),
            pl.col("_at").alias("occurred_at"),
        )
    )
    rejected = quarantine(rows.filter(pl.col("reason").is_not_null()), pl.col("claim_event_id"))
    return Validation(accepted=accepted, rejected=rejected)


def validate_attendance(rows: pl.DataFrame, events: pl.DataFrame, now: datetime) -> Validation:
    """Attendance records (event_id, customer_id, joined_at, minutes_watched) as ATTENDANCE_SCHEMA.

    `events` has event_id, start_time_utc, duration_minutes. The event must be known and have
    started by `now`; minutes_watched an integer in 0..duration + 60 (overtime); joined_at no
    earlier than an hour before the start and not in the future. A customer has one attendance
    per event: later records of the same event x customer in the batch (by joined_at) are
    rejected as DUPLICATE, the earliest is kept.
    """
    rows = require_columns(rows, ATTENDANCE_RECORD, "attendance").with_row_index("_row")
    info = events.select(
        pl.col("event_id").cast(pl.String),
        utc_naive("start_time_utc", events.schema["start_time_utc"]).alias("_start"),
        pl.col("duration_minutes").cast(pl.Int64).alias("_duration"),
    ).unique("event_id", keep="first")
    rows = (
        rows.with_columns(
            pl.col("event_id").cast(pl.String),
            pl.col("customer_id").cast(pl.String),
            utc_naive("joined_at", rows.schema["joined_at"]).alias("_at"),
            integer("minutes_watched", rows.schema["minutes_watched"]).alias("_minutes"),
        )
        .join(info, on="event_id", how="left", maintain_order="left")
        .with_columns(pl.col("event_id").is_in(info["event_id"].implode()).alias("_known"))
    )
    bound = pl.col("_duration").fill_null(UNKNOWN_DURATION_MINUTES) + GRACE_MINUTES
    reason = (
        pl.when(any_missing("event_id", "customer_id", "joined_at", "minutes_watched"))
        .then(pl.lit(MISSING_FIELD))
        .when(~pl.col("_known"))
        .then(pl.lit(UNKNOWN_EVENT))
        .when(bad_id("customer_id"))
        .then(pl.lit(INVALID_ID))
        .when(pl.col("_start") > pl.lit(to_utc_naive(now), pl.Datetime("us")))
        .then(pl.lit(EVENT_NOT_STARTED))
        .when(pl.col("_minutes").is_null() | (pl.col("_minutes") < 0) | (pl.col("_minutes") > bound))
        .then(pl.lit(INVALID_MINUTES))
        .when(pl.col("_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(pl.col("_at") < pl.col("_start") - pl.duration(minutes=GRACE_MINUTES))
        .then(pl.lit(JOINED_TOO_EARLY))
        .when(in_future("_at", now))
        .then(pl.lit(FUTURE_TIMESTAMP))
    )
    good, rejected = _one_per_person(rows, reason, "event_id", "customer_id")
    accepted = good.select(
        "event_id",
        "customer_id",
        pl.col("_at").alias("joined_at"),
        pl.col("_minutes").cast(pl.Int32).alias("minutes_watched"),
    )
    return Validation(accepted=accepted, rejected=rejected)


def validate_survey(
    rows: pl.DataFrame,
    verify: Callable[[str], LinkClaims | None],
    attended: pl.DataFrame,
    *,
    now: datetime | None = None,
) -> Validation:
    """Survey answers (token, rating, comment, submitted_at) as SURVEY_SCHEMA.

    event_id and customer_id are the survey token's claims (a record body cannot answer for
    someone else); that customer must be in `attended` (event_id, customer_id), the rating an
    integer 1..5. One answer per event x customer: later ones in the batch are DUPLICATE.
    Comments are stripped (blank = none) and cut to MAX_COMMENT_CHARS rather than rejected: the
    rating is the answer that counts and the limit is one of storage, not of validity;
    `notes["comment_truncated"]` says how many were cut.
    """
    rows = _survey_rows(rows, verify, attended)
    good, rejected = _one_per_person(rows, _survey_reason(now), "claim_event_id", "claim_customer_id")
    truncated = good.filter(pl.col("_comment").str.len_chars() > MAX_COMMENT_CHARS).height
    accepted = good.select(
        pl.col("claim_event_id").alias("event_id"),
        pl.col("claim_customer_id").alias("customer_id"),
        pl.col("_rating").cast(pl.Int8).alias("rating"),
        pl.col("_comment").str.slice(0, MAX_COMMENT_CHARS).alias("comment"),
        pl.col("_at").alias("submitted_at"),
    )
    return Validation(accepted=accepted, rejected=rejected, notes={COMMENT_TRUNCATED: truncated})


def _survey_rows(
    rows: pl.DataFrame, verify: Callable[[str], LinkClaims | None], attended: pl.DataFrame
) -> pl.DataFrame:
    """Survey records with their token's claims, parsed values and whether the claimed customer attended."""
    rows = require_columns(rows, SURVEY_RECORD, "survey").with_row_index("_row")
    comment = pl.col("comment").cast(pl.String).str.strip_chars()
    rows = with_claims(rows, verify).with_columns(
        utc_naive("submitted_at", rows.schema["submitted_at"]).alias("_at"),
        integer("rating", rows.schema["rating"]).alias("_rating"),
        pl.when(comment.str.len_chars() > 0).then(comment).alias("_comment"),
    )
    seen = attended.select(
        pl.col("event_id").cast(pl.String).alias("claim_event_id"),
        pl.col("customer_id").cast(pl.String).alias("claim_customer_id"),
        pl.lit(True).alias("_attended"),
    ).unique(["claim_event_id", "claim_customer_id"])
    return rows.join(seen, on=["claim_event_id", "claim_customer_id"], how="left", maintain_order="left")


def _survey_reason(now: datetime | None) -> pl.Expr:
    """The survey's rules in order: the first that fails names the row."""
    return (
        pl.when(any_missing("token", "rating", "submitted_at"))
        .then(pl.lit(MISSING_FIELD))
        .when(pl.col("_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(pl.col("claim_action").is_null())
        .then(pl.lit(INVALID_TOKEN))
        .when(pl.col("claim_action") != "survey")
        .then(pl.lit(NOT_A_SURVEY_TOKEN))
        .when(bad_id("claim_event_id", "claim_customer_id"))
        .then(pl.lit(INVALID_ID))
        .when(pl.col("_rating").is_null() | ~pl.col("_rating").is_between(1, 5))
        .then(pl.lit(INVALID_RATING))
        .when(pl.col("_attended").is_null())
        .then(pl.lit(NOT_AN_ATTENDEE))
        .when(in_future("_at", now))
        .then(pl.lit(FUTURE_TIMESTAMP))
    )


def _one_per_person(
    rows: pl.DataFrame, reason: pl.Expr, event: str, customer: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows, rejected rows as QUARANTINE_SCHEMA) under `reason`, one per `event` x `customer`:
    the earliest by `_at` wins, later ones are DUPLICATE. Attendance and survey answers are both
    had once per customer and event."""
    rows = apply_rules(rows, reason, order=["_at"], unique_by=[event, customer])
    return rows.filter(pl.col("reason").is_null()), quarantine(
        rows.filter(pl.col("reason").is_not_null()), pl.col(event)
    )
