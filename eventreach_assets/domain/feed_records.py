"""Feed records before they are stored: the record format of each feed, parsing them into frames,
the quarantine shape every rejected row takes with its reason, and the link-token claims that say
who a record is about (pure polars, no Dagster, no I/O).

Feed records (resources/feeds/) become a frame of text columns (`records_frame`): values are
parsed by the validators (domain/engagement_feeds.py, domain/registrations.py,
domain/feedback.py), so a bad value becomes a rejected row with its reason instead of failing
the batch. Every validator puts each input row in exactly one of `accepted` (the store's
schema) and `rejected` (QUARANTINE_SCHEMA, one shape for every feed, the record kept as JSON so
it can be inspected and replayed). Rules are applied in order; the first that fails names the
row, and a later valid row of the same key is a DUPLICATE (`apply_rules`).

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
from eventreach_assets.domain.link_tokens import InvalidLinkToken, LinkClaims, verify_link_token

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
FEED_RECORDS: dict[str, dict[str, pl.DataType]] = {  # feed (resources/feeds/) -> its record
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
    "reason": pl.String(),  # a reason code: below, or the validator's own
    "raw": pl.String(),  # the record as JSON (may hold PII: quarantine files only, never logs)
}
# Columns records_frame adds to the record's own.
META_SCHEMA: dict[str, pl.DataType] = {"_source": pl.String(), "_line": pl.Int64(), "_raw": pl.String()}

# ---- reason codes shared by every feed -------------------------------------------------------

MALFORMED_RECORD = "malformed_record"  # the line is not a JSON object
MISSING_FIELD = "missing_field"  # a required value is absent or blank
INVALID_TIMESTAMP = "invalid_timestamp"  # not an ISO 8601 date-time
FUTURE_TIMESTAMP = "timestamp_in_future"  # later than the ingestion time (+ FUTURE_TOLERANCE)
INVALID_TOKEN = "invalid_token"  # not a token we issued, or altered since
INVALID_ID = "invalid_id"  # an id the stores cannot key: empty, or with '#' or whitespace
UNKNOWN_EVENT = "unknown_event"
DUPLICATE = "duplicate"  # a later record of the same event x customer in the batch

ID_PATTERN = r"^[^#\s]+$"  # what the engagement store accepts in a key
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew between the platform and us

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


def with_claims(rows: pl.DataFrame, verify: Callable[[str], LinkClaims | None]) -> pl.DataFrame:
    """`rows` (with a `token` column) and their tokens' claims (CLAIM_SCHEMA) side by side."""
    return pl.concat([rows, claims_frame(rows["token"].to_list(), verify)], how="horizontal")


# ---- rules -------------------------------------------------------------------------------------


def any_missing(*columns: str) -> pl.Expr:
    """A required value is absent (blank text is already null: records_frame)."""
    return pl.any_horizontal(pl.col(*columns).is_null())


def bad_id(*columns: str) -> pl.Expr:
    """An id the stores cannot key (ID_PATTERN)."""
    return ~pl.all_horizontal(pl.col(*columns).str.contains(ID_PATTERN))


def in_future(column: str, now: datetime | None) -> pl.Expr:
    """Later than `now` + FUTURE_TOLERANCE; never when there is no `now`."""
    if now is None:
        return pl.lit(False)
    return pl.col(column) > pl.lit(to_utc_naive(now) + FUTURE_TOLERANCE, pl.Datetime("us"))


def apply_rules(rows: pl.DataFrame, reason: pl.Expr, *, order: Sequence[str], unique_by: Sequence[str]) -> pl.DataFrame:
    """`rows` with `reason` (the first rule that fails, null for a valid row), sorted by `order` then
    `_row` (nulls last), and every valid row but the first of its `unique_by` key marked DUPLICATE:
    the earliest record wins, redeliveries and repeats are rejected."""
    rows = rows.with_columns(reason.alias("reason")).sort(*order, "_row", nulls_last=True)
    valid = pl.col("reason").is_null()
    later = valid & (pl.col("_row") != pl.col("_row").filter(valid).first().over(*unique_by))
    return rows.with_columns(pl.when(later).then(pl.lit(DUPLICATE)).otherwise(pl.col("reason")).alias("reason"))
