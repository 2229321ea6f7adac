"""Engagement from the feeds, judged before it is stored: tracking hits, attendance, survey answers,
and the event funnel they add up to.

Pure polars, no Dagster, no I/O. Feed records (resources/feeds.py) become a frame of text columns
(`records_frame`): values are parsed by the validators, so a bad value becomes a rejected row with
its reason instead of failing the batch. Every validator puts each input row in exactly one of
`accepted` (the store's schema) and `rejected` (QUARANTINE_SCHEMA, one shape for every feed, the
record kept as JSON so it can be inspected and replayed). Rules are applied in order; the first
that fails names the row.

Who and which event a tracking hit or a survey answer is about comes from its signed link token,
never from the record body: a record can claim anything, a genuine token only what we signed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from eventreach_assets.domain.campaigns import to_utc_naive
from eventreach_assets.domain.delivery import DeliveryStatus, MessageKind
from eventreach_assets.domain.messages import InvalidLinkToken, LinkClaims, verify_link_token

# ---- schemas -------------------------------------------------------------------------------

# The engagement store's records (resources/engagement.py holds the same schemas; a test keeps
# them equal until that module imports these).
REGISTERED = "registered"
WAITLISTED = "waitlisted"
CANCELLED = "cancelled"  # the customer cancelled (feed / webhook cancellation record): the seat is free
REGISTRATION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "registration_id": pl.String(),
    "registered_at": pl.Datetime("us"),  # naive UTC
    "channel": pl.String(),  # attributed channel (from the link token), null if unknown
    "campaign_id": pl.String(),
    "status": pl.String(),  # registered | waitlisted | cancelled
    "recorded_at": pl.Datetime("us"),  # when the current status was recorded
}
INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "channel": pl.String(),
    "campaign_id": pl.String(),
    "action": pl.String(),  # open | click | unsubscribe
    "occurred_at": pl.Datetime("us"),
}
ATTENDANCE_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "joined_at": pl.Datetime("us"),
    "minutes_watched": pl.Int32(),
}
SURVEY_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "rating": pl.Int8(),  # 1..5
    "comment": pl.String(),  # free text (may hold PII: never logged, never in metadata)
    "submitted_at": pl.Datetime("us"),
}

# Record formats of the feeds, with the type each value must parse to (records_frame keeps text).
REGISTRATION_RECORD: dict[str, pl.DataType] = {
    "registration_id": pl.String(),
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "registered_at": pl.Datetime("us"),
    "token": pl.String(),
}
TRACKING_RECORD: dict[str, pl.DataType] = {"token": pl.String(), "path": pl.String(), "occurred_at": pl.Datetime("us")}
ATTENDANCE_RECORD: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "joined_at": pl.Datetime("us"),
    "minutes_watched": pl.Int32(),
}
SURVEY_RECORD: dict[str, pl.DataType] = {
    "token": pl.String(),
    "rating": pl.Int8(),
    "comment": pl.String(),
    "submitted_at": pl.Datetime("us"),
}
FEED_RECORDS: dict[str, dict[str, pl.DataType]] = {  # feed (resources/feeds.py) -> its record
    "registrations": REGISTRATION_RECORD,
    "tracking": TRACKING_RECORD,
    "attendance": ATTENDANCE_RECORD,
    "survey": SURVEY_RECORD,
}

# Rejected rows of every feed.
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),  # feed file name; null for a batch handed in directly (the webhook)
    "line": pl.Int64(),  # 1-based line in the file (position in the batch otherwise)
    "event_id": pl.String(),  # when known: a genuine token's event, or the record's own event_id
    "reason": pl.String(),  # a reason code below
    "raw": pl.String(),  # the record as JSON (may hold PII: quarantine files only, never logs)
}
# Columns records_frame adds to the record's own.
META_SCHEMA: dict[str, pl.DataType] = {"_source": pl.String(), "_line": pl.Int64(), "_raw": pl.String()}

# ---- reason codes ----------------------------------------------------------------------------

MALFORMED_RECORD = "malformed_record"  # the line is not a JSON object
MISSING_FIELD = "missing_field"  # a required value is absent or blank
INVALID_TIMESTAMP = "invalid_timestamp"  # not an ISO 8601 date-time
FUTURE_TIMESTAMP = "timestamp_in_future"  # later than the ingestion time (+ FUTURE_TOLERANCE)
INVALID_TOKEN = "invalid_token"  # not a token we issued, or altered since
NOT_A_TRACKING_TOKEN = "not_a_tracking_token"  # genuine, but a register / survey token in the tracking feed
UNKNOWN_PATH = "unknown_path"  # a tracking path we never serve
PATH_MISMATCH = "path_mismatch"  # e.g. an open-pixel token hitting the unsubscribe path
INVALID_ID = "invalid_id"  # an id the stores cannot key: empty, or with '#' or whitespace
UNKNOWN_EVENT = "unknown_event"
EVENT_NOT_STARTED = "event_not_started"  # attendance for an event that has not begun
INVALID_MINUTES = "invalid_minutes_watched"  # not an integer in 0..duration + GRACE_MINUTES
JOINED_TOO_EARLY = "joined_too_early"  # before start - GRACE_MINUTES
DUPLICATE = "duplicate"  # a later record of the same event x customer in the batch
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
ID_PATTERN = r"^[^#\s]+$"  # what the engagement store accepts in a key
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew between the platform and us
GRACE_MINUTES = 60  # attendance: doors open an hour early, overtime up to an hour
UNKNOWN_DURATION_MINUTES = 24 * 60  # bound for minutes watched when an event has no duration
MAX_COMMENT_CHARS = 2000
COMMENT_TRUNCATED = "comment_truncated"  # a note, not a rejection: see validate_survey

CLAIM_SCHEMA: dict[str, pl.DataType] = {
    name: pl.String()
    for name in ("claim_customer_id", "claim_event_id", "claim_channel", "claim_campaign_id", "claim_action")
}

_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M%:z", "%Y-%m-%dT%H:%M")


@dataclass(frozen=True)
class Validation:
    """One validator's verdict: every input row is in exactly one of the two frames."""

    accepted: pl.DataFrame  # the store's schema
    rejected: pl.DataFrame  # QUARANTINE_SCHEMA
    notes: dict[str, int] = field(default_factory=dict)  # counts worth reporting that are not rejections


# ---- shared parsing ----------------------------------------------------------------------------


def utc_naive(column: str, dtype: pl.DataType) -> pl.Expr:
    """`column` as naive UTC Datetime("us"), the warehouse's convention, whatever it arrived as.

    ISO 8601 text with an offset or `Z` is converted, text without one is taken as UTC (the feed
    contract), `T` or a space may separate date and time; naive datetimes are taken as UTC,
    aware ones converted. Text that is not a date-time becomes null (callers reject it with
    INVALID_TIMESTAMP); a column of any other type is a caller error.
    """
    value = pl.col(column)
    if dtype == pl.String:
        text = value.str.strip_chars().str.replace(r"^(\d{4}-\d{2}-\d{2})[ tT]", "${1}T")
        text = text.str.replace(r"[zZ]$", "+00:00")
        parsed = pl.coalesce(
            [text.str.to_datetime(fmt, time_unit="us", time_zone="UTC", strict=False) for fmt in _ISO_FORMATS]
        )
    elif isinstance(dtype, pl.Datetime):
        parsed = value.dt.replace_time_zone("UTC") if dtype.time_zone is None else value.dt.convert_time_zone("UTC")
    elif dtype == pl.Null:
        parsed = pl.lit(None, pl.Datetime("us", "UTC"))
    else:
        raise ValueError(f"{column} must be a datetime or ISO 8601 text column, got {dtype}")
    return parsed.dt.replace_time_zone(None).dt.cast_time_unit("us").alias(column)


def integer(column: str, dtype: pl.DataType) -> pl.Expr:
    """`column` as Int64 when it holds a whole number ("45", 45, 45.0), else null ("45.5", "forty").

    Counts and ratings are integers in every feed; a JSON encoder that writes 45 as 45.0 is
    tolerated, a fraction is not.
    """
    value = pl.col(column)
    if dtype.is_integer():
        return value.cast(pl.Int64).alias(column)
    text = value.cast(pl.String).str.strip_chars()
    number = text.cast(pl.Float64, strict=False)
    whole = pl.when(number.is_finite() & (number == number.floor())).then(number).cast(pl.Int64, strict=False)
    return pl.coalesce(text.str.to_integer(strict=False), whole).alias(column)


def _text(value: Any) -> str | None:
    """A record value as the text the validators parse: strings as they are (blank = missing),
    datetimes in ISO 8601, anything else as JSON (so 45 -> "45", true -> "true")."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, datetime):
        return value.isoformat()
    return json.dumps(value, default=str, sort_keys=True)


def _raw(record: Mapping[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key not in ("_source", "_line")}
    return json.dumps(body, default=str, sort_keys=True, ensure_ascii=False)


def records_frame(
    records: Sequence[Mapping[str, Any]], schema: Mapping[str, pl.DataType], *, source: str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Feed records as (rows, rejected): the schema's columns as text plus `_source`, `_line`,
    `_raw`; `_error` records (lines that were not JSON objects) rejected as MALFORMED_RECORD.

    Values stay text here so each validator can reject a bad one with its own reason. Fields the
    schema does not name are ignored (they are still in `_raw`). A record without `_source` /
    `_line` (a batch not read from a file) gets `source` and its 1-based position.
    """
    good = [(n, r) for n, r in enumerate(records, start=1) if "_error" not in r]
    bad = [(n, r) for n, r in enumerate(records, start=1) if "_error" in r]
    rows = pl.DataFrame(
        {
            **{name: [_text(r.get(name)) for _, r in good] for name in schema},
            "_source": [r.get("_source", source) for _, r in good],
            "_line": [r.get("_line", n) for n, r in good],
            "_raw": [_raw(r) for _, r in good],
        },
        schema={**{name: pl.String() for name in schema}, **META_SCHEMA},
    )
    rejected = pl.DataFrame(
        {
            "source": [r.get("_source", source) for _, r in bad],
            "line": [r.get("_line", n) for n, r in bad],
            "event_id": [None] * len(bad),
            "reason": [MALFORMED_RECORD] * len(bad),
            "raw": [_text(r.get("_raw")) for _, r in bad],
        },
        schema=QUARANTINE_SCHEMA,
    )
    return rows, rejected


def with_record_meta(frame: pl.DataFrame, source: str | None = None) -> pl.DataFrame:
    """`frame` with the META_SCHEMA columns records_frame adds, for batches that arrive as a frame
    (the webhook): `_line` is the row's position, `_raw` the row as JSON. Present ones are kept."""
    data = [name for name in frame.columns if name not in META_SCHEMA]
    added = {
        "_source": pl.lit(source, pl.String()),
        "_line": pl.int_range(1, pl.len() + 1, dtype=pl.Int64()),
        "_raw": pl.struct(data).struct.json_encode() if data else pl.lit("{}"),
    }
    return frame.with_columns(expr.alias(name) for name, expr in added.items() if name not in frame.columns)


def require_columns(rows: pl.DataFrame, schema: Mapping[str, pl.DataType], what: str) -> pl.DataFrame:
    """`rows` with META_SCHEMA columns; missing record columns are a caller error (raised)."""
    missing = sorted(set(schema) - set(rows.columns))
    if missing:
        raise ValueError(f"{what} rows lack columns {missing}")
    return with_record_meta(rows)


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def quarantine(rows: pl.DataFrame, event_id: pl.Expr) -> pl.DataFrame:
    """Rejected `rows` (with META_SCHEMA columns and `reason`) as QUARANTINE_SCHEMA, input order."""
    ordered = rows.sort("_row") if "_row" in rows.columns else rows
    return ordered.select(
        pl.col("_source").cast(pl.String).alias("source"),
        pl.col("_line").cast(pl.Int64).alias("line"),
        event_id.cast(pl.String).alias("event_id"),
        pl.col("reason").cast(pl.String),
        pl.col("_raw").cast(pl.String).alias("raw"),
    )


# ---- tokens ----------------------------------------------------------------------------------


def link_verifier(secret: bytes | str, action: str | None = None) -> Callable[[str], LinkClaims | None]:
    """`verify(token)`: the claims of a genuine token (for `action`, when given), else None."""

    def verify(token: str) -> LinkClaims | None:
        try:
            return verify_link_token(secret, token, action=action)
        except InvalidLinkToken:
            return None

    return verify


def claims_frame(tokens: Iterable[str | None], verify: Callable[[str], LinkClaims | None]) -> pl.DataFrame:
    """One row of claims (CLAIM_SCHEMA) per token, nulls when missing or not genuine.

    Verification is the only per-row Python of the validators (an HMAC per token).
    """
    claims = [verify(token) if token else None for token in tokens]
    return pl.DataFrame(
        {
            "claim_customer_id": [c.customer_id if c else None for c in claims],
            "claim_event_id": [c.event_id if c else None for c in claims],
            "claim_channel": [c.channel if c else None for c in claims],
            "claim_campaign_id": [c.campaign_id if c else None for c in claims],
            "claim_action": [c.action if c else None for c in claims],
        },
        schema=CLAIM_SCHEMA,
    )


def _with_claims(rows: pl.DataFrame, verify: Callable[[str], LinkClaims | None]) -> pl.DataFrame:
    return pl.concat([rows, claims_frame(rows["token"].to_list(), verify)], how="horizontal")


def _missing(*columns: str) -> pl.Expr:
    return pl.any_horizontal(pl.col(*columns).is_null())


def _bad_id(*columns: str) -> pl.Expr:
    return ~pl.all_horizontal(pl.col(*columns).str.contains(ID_PATTERN))


def _in_future(column: str, now: datetime | None) -> pl.Expr:
    if now is None:
        return pl.lit(False)
    return pl.col(column) > pl.lit(to_utc_naive(now) + FUTURE_TOLERANCE, pl.Datetime("us"))


def _first_per(valid: pl.Expr, *keys: str) -> pl.Expr:
    """True on rows that are valid but not the first valid row of their key (rows sorted first)."""
    return valid & (pl.col("_row") != pl.col("_row").filter(valid).first().over(*keys))


# ---- validators ------------------------------------------------------------------------------


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
    rows = _with_claims(rows, verify).with_columns(utc_naive("occurred_at", rows.schema["occurred_at"]).alias("_at"))
    pairs = [f"{action}/{path}" for action, paths in TRACKING_PATHS.items() for path in paths]
    all_paths = sorted({path for paths in TRACKING_PATHS.values() for path in paths})
    reason = (
        pl.when(_missing("token", "path", "occurred_at"))
        .then(pl.lit(MISSING_FIELD))
        .when(pl.col("_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(pl.col("claim_action").is_null())
        .then(pl.lit(INVALID_TOKEN))
        .when(~pl.col("claim_action").is_in(TRACKED_ACTIONS))
        .then(pl.lit(NOT_A_TRACKING_TOKEN))
        .when(_bad_id("claim_event_id", "claim_customer_id", "claim_channel", "claim_campaign_id"))
        .then(pl.lit(INVALID_ID))
        .when(~pl.col("path").is_in(all_paths))
        .then(pl.lit(UNKNOWN_PATH))
        .when(~pl.concat_str("claim_action", "path", separator="/").is_in(pairs))
        .then(pl.lit(PATH_MISMATCH))
        .when(_in_future("_at", now))
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
        pl.when(_missing("event_id", "customer_id", "joined_at", "minutes_watched"))
        .then(pl.lit(MISSING_FIELD))
        .when(~pl.col("_known"))
        .then(pl.lit(UNKNOWN_EVENT))
        .when(_bad_id("customer_id"))
        .then(pl.lit(INVALID_ID))
        .when(pl.col("_start") > pl.lit(to_utc_naive(now), pl.Datetime("us")))
        .then(pl.lit(EVENT_NOT_STARTED))
        .when(pl.col("_minutes").is_null() | (pl.col("_minutes") < 0) | (pl.col("_minutes") > bound))
        .then(pl.lit(INVALID_MINUTES))
        .when(pl.col("_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(pl.col("_at") < pl.col("_start") - pl.duration(minutes=GRACE_MINUTES))
        .then(pl.lit(JOINED_TOO_EARLY))
        .when(_in_future("_at", now))
        .then(pl.lit(FUTURE_TIMESTAMP))
    )
    rows = rows.with_columns(reason.alias("reason")).sort("_at", "_row", nulls_last=True)
    rows = rows.with_columns(
        pl.when(_first_per(pl.col("reason").is_null(), "event_id", "customer_id"))
        .then(pl.lit(DUPLICATE))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    accepted = rows.filter(pl.col("reason").is_null()).select(
        "event_id",
        "customer_id",
        pl.col("_at").alias("joined_at"),
        pl.col("_minutes").cast(pl.Int32).alias("minutes_watched"),
    )
    rejected = quarantine(rows.filter(pl.col("reason").is_not_null()), pl.col("event_id"))
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
    rows = require_columns(rows, SURVEY_RECORD, "survey").with_row_index("_row")
    comment = pl.col("comment").cast(pl.String).str.strip_chars()
    rows = _with_claims(rows, verify).with_columns(
        utc_naive("submitted_at", rows.schema["submitted_at"]).alias("_at"),
        integer("rating", rows.schema["rating"]).alias("_rating"),
        pl.when(comment.str.len_chars() > 0).then(comment).alias("_comment"),
    )
    seen = attended.select(
        pl.col("event_id").cast(pl.String).alias("claim_event_id"),
        pl.col("customer_id").cast(pl.String).alias("claim_customer_id"),
        pl.lit(True).alias("_attended"),
    ).unique(["claim_event_id", "claim_customer_id"])
    rows = rows.join(seen, on=["claim_event_id", "claim_customer_id"], how="left", maintain_order="left")
    reason = (
        pl.when(_missing("token", "rating", "submitted_at"))
        .then(pl.lit(MISSING_FIELD))
        .when(pl.col("_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(pl.col("claim_action").is_null())
        .then(pl.lit(INVALID_TOKEN))
        .when(pl.col("claim_action") != "survey")
        .then(pl.lit(NOT_A_SURVEY_TOKEN))
        .when(_bad_id("claim_event_id", "claim_customer_id"))
        .then(pl.lit(INVALID_ID))
        .when(pl.col("_rating").is_null() | ~pl.col("_rating").is_between(1, 5))
        .then(pl.lit(INVALID_RATING))
        .when(pl.col("_attended").is_null())
        .then(pl.lit(NOT_AN_ATTENDEE))
        .when(_in_future("_at", now))
        .then(pl.lit(FUTURE_TIMESTAMP))
    )
    rows = rows.with_columns(reason.alias("reason")).sort("_at", "_row", nulls_last=True)
    rows = rows.with_columns(
        pl.when(_first_per(pl.col("reason").is_null(), "claim_event_id", "claim_customer_id"))
        .then(pl.lit(DUPLICATE))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    good = rows.filter(pl.col("reason").is_null())
    truncated = good.filter(pl.col("_comment").str.len_chars() > MAX_COMMENT_CHARS).height
    accepted = good.select(
        pl.col("claim_event_id").alias("event_id"),
        pl.col("claim_customer_id").alias("customer_id"),
        pl.col("_rating").cast(pl.Int8).alias("rating"),
        pl.col("_comment").str.slice(0, MAX_COMMENT_CHARS).alias("comment"),
        pl.col("_at").alias("submitted_at"),
    )
    rejected = quarantine(rows.filter(pl.col("reason").is_not_null()), pl.col("claim_event_id"))
    return Validation(accepted=accepted, rejected=rejected, notes={COMMENT_TRUNCATED: truncated})


# ---- the funnel --------------------------------------------------------------------------------

FUNNEL_STAGES: tuple[str, ...] = ("invited", "opened", "clicked", "registered", "reminded", "attended", "rated")
ALL_CHANNELS = "all"
FUNNEL_SCHEMA: dict[str, pl.DataType] = {
    "stage": pl.String(),
    "channel": pl.String(),  # a channel, or "all" (each customer once across channels)
    "count": pl.Int64(),  # distinct customers
    "rate_of_previous": pl.Float64(),  # count / the previous stage's count in the same channel
    "average_minutes_watched": pl.Float64(),  # attended rows only
    "average_rating": pl.Float64(),  # rated rows only
}
REMINDER_KINDS: tuple[str, ...] = (MessageKind.REMINDER.value, MessageKind.DAY_OF.value)
OPENED, CLICKED = "opened", "clicked"
TOUCH_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "channel": pl.String(),
    "campaign_id": pl.String(),  # the message's campaign (from its link token)
    "stage": pl.String(),  # opened | clicked
    "at": pl.Datetime("us"),  # naive UTC: when the interaction or registration happened
}


def _column(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    """`name` from `frame` as `dtype` (times as naive UTC), or nulls when the frame lacks it."""
    if name not in frame.columns:
        return pl.lit(None, dtype).alias(name)
    if isinstance(dtype, pl.Datetime):
        return utc_naive(name, frame.schema[name])
    return pl.col(name).cast(dtype)


def engagement_touches(interactions: pl.DataFrame, registrations: pl.DataFrame) -> pl.DataFrame:
    """Every sign that a message was opened or clicked (TOUCH_SCHEMA), one row per sign and stage.

    The one rule for "opened" and "clicked", shared by the funnel and the campaign report: an open
    proves opened; a click proves opened and clicked (mail clients often block the open pixel); a
    registration (status registered) through a channel's link proves both (the register link is a
    link clicked). Unsubscribes prove nothing. A registration without a channel is no sign.
    """

    def signs(frame: pl.DataFrame, stage: str, at: str) -> pl.DataFrame:
        return frame.select(
            _column(frame, "event_id", pl.String()),
            pl.col("customer_id").cast(pl.String),
            pl.col("channel").cast(pl.String),
            _column(frame, "campaign_id", pl.String()),
            pl.lit(stage, pl.String()).alias("stage"),
            _column(frame, at, pl.Datetime("us")).alias("at"),
        )

    through_link = registrations.filter((pl.col("status") == REGISTERED) & pl.col("channel").is_not_null())
    return pl.concat(
        [
            signs(interactions.filter(pl.col("action").is_in(["open", "click"])), OPENED, "occurred_at"),
            signs(through_link, OPENED, "registered_at"),
            signs(interactions.filter(pl.col("action") == "click"), CLICKED, "occurred_at"),
            signs(through_link, CLICKED, "registered_at"),
        ]
    ).cast(TOUCH_SCHEMA)


def event_funnel(
    *,
    deliveries: pl.DataFrame,
    registrations: pl.DataFrame,
    interactions: pl.DataFrame,
    attendance: pl.DataFrame,
    survey: pl.DataFrame,
) -> pl.DataFrame:
    """The use case's funnel for one event, per channel and over all channels (FUNNEL_SCHEMA).

    Inputs are one event's ledger deliveries (customer_id, channel, kind, status) and engagement
    records (the store's schemas). Rules, all counting distinct customers:

    - invited: a sent invitation on the channel (ledger status sent, kind invitation);
    - opened: an open on the channel's messages, or a click or registration through them (a click
      proves the message was opened; mail clients often block the open pixel) — `engagement_touches`;
    - clicked: a click on the channel's links, or a registration through them (the register link
      is a link clicked) — `engagement_touches`;
    - registered: status registered (waitlisted customers hold no seat), channel = the channel the
      registration is attributed to (its link token's);
    - reminded: sent a reminder or a day-of message (any channel);
    - attended: an attendance record (`average_minutes_watched` over those customers);
    - rated: a survey answer (`average_rating`).

    From registered on, a customer's channel is their registration's attributed channel, so a
    channel's row follows the customers it brought in; customers without a registration (e.g.
    registered before EventReach, or attending without one) count in "all" only. `rate_of_previous`
    is null for the first stage and when the previous count is 0; stages are not intersected with
    earlier ones, so it can exceed 1 (e.g. reminders also reach registrants from the warehouse).
    Every stage x channel appears, with count 0 when nobody reached it.
    """
    sent = deliveries.filter(pl.col("status") == DeliveryStatus.SENT.value)
    registered = registrations.filter(pl.col("status") == REGISTERED).select("customer_id", "channel")
    attributed = registered.filter(pl.col("channel").is_not_null()).unique("customer_id", keep="first")
    touches = engagement_touches(interactions, registrations)

    def touched(name: str) -> pl.DataFrame:
        return touches.filter(pl.col("stage") == name).select("customer_id", "channel")

    def by_registration(frame: pl.DataFrame, value: str | None = None) -> pl.DataFrame:
        """The stage's customers with their registration's channel (null without one)."""
        measure = pl.col(value) if value else pl.lit(None)
        picked = frame.select("customer_id", measure.cast(pl.Float64).alias("value"))
        return picked.join(attributed, on="customer_id", how="left", maintain_order="left")

    def stage(name: str, *parts: pl.DataFrame) -> pl.DataFrame:
        frames = [
            part.select(
                pl.lit(name).alias("stage"),
                pl.col("channel").cast(pl.String),
                pl.col("customer_id").cast(pl.String),
                (pl.col("value") if "value" in part.columns else pl.lit(None)).cast(pl.Float64).alias("value"),
            )
            for part in parts
        ]
        return pl.concat(frames)

    members = pl.concat(
        [
            stage("invited", sent.filter(pl.col("kind") == MessageKind.INVITATION.value)),
            stage("opened", touched(OPENED)),
            stage("clicked", touched(CLICKED)),
            stage("registered", registered),
            stage("reminded", by_registration(sent.filter(pl.col("kind").is_in(REMINDER_KINDS)))),
            stage("attended", by_registration(attendance, "minutes_watched")),
            stage("rated", by_registration(survey, "rating")),
        ]
    )
    per_channel = members.filter(pl.col("channel").is_not_null()).unique(
        ["stage", "channel", "customer_id"], keep="first", maintain_order=True
    )
    overall = members.with_columns(pl.lit(ALL_CHANNELS).alias("channel")).unique(
        ["stage", "channel", "customer_id"], keep="first", maintain_order=True
    )
    counted = (
        pl.concat([overall, per_channel])
        .group_by("stage", "channel")
        .agg(pl.len().cast(pl.Int64).alias("count"), pl.col("value").mean().alias("average"))
    )
    channels = [ALL_CHANNELS, *sorted(set(per_channel["channel"].to_list()))]
    grid = pl.DataFrame(
        {
            "stage": [name for name in FUNNEL_STAGES for _ in channels],
            "channel": channels * len(FUNNEL_STAGES),
            "_order": [index for index in range(len(FUNNEL_STAGES)) for _ in channels],
        },
        schema={"stage": pl.String(), "channel": pl.String(), "_order": pl.Int64()},
    )
    previous = pl.col("count").shift(1).over("channel", order_by="_order")
    return (
        grid.join(counted, on=["stage", "channel"], how="left", maintain_order="left")
        .with_columns(pl.col("count").fill_null(0))
        .select(
            "stage",
            "channel",
            "count",
            pl.when(previous > 0).then(pl.col("count") / previous).alias("rate_of_previous"),
            pl.when(pl.col("stage") == "attended").then(pl.col("average")).alias("average_minutes_watched"),
            pl.when(pl.col("stage") == "rated").then(pl.col("average")).alias("average_rating"),
        )
        .cast(FUNNEL_SCHEMA)
    )
