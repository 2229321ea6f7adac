"""Validating registrations from the event platform before they mark a candidate "registered",
the platform's cancellations that free a seat again, and who the waitlist promotes into it.

Pure polars, no Dagster, no I/O: the polled feed and the serving API's webhook both call the
same ingestion function, which calls this, so a registration is judged the same way however
it arrives. Every row comes out in exactly one frame (accepted, waitlisted or rejected) with a
reason code, so nothing the platform sent is silently lost. Rejected rows take the quarantine
shape every engagement feed shares (domain/feed_records.py), the record kept as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from eventreach_assets.domain.campaigns import remaining_capacity
from eventreach_assets.domain.engagement_schemas import CANCELLED, REGISTERED, WAITLISTED
from eventreach_assets.domain.feed_records import (
    DUPLICATE,
    FUTURE_TIMESTAMP,
    ID_PATTERN,
    INVALID_ID,
    INVALID_TIMESTAMP,
    INVALID_TOKEN,
    META_SCHEMA,
    MISSING_FIELD,
    REGISTRATION_RECORD,
    UNKNOWN_EVENT,
    apply_rules,
    bad_id,
    in_future,
    quarantine,
    require_columns,
    utc_naive,
    with_claims,
)
from eventreach_assets.domain.link_tokens import LinkClaims

INCOMING_SCHEMA: dict[str, pl.DataType] = REGISTRATION_RECORD
OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "registration_id": pl.String(),
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "registered_at": pl.Datetime("us"),  # naive UTC, like the warehouse
    "channel": pl.String(),  # attributed: the register token's channel ...
    "campaign_id": pl.String(),  # ... and campaign
}

# Reason codes, in the order the rules are applied (the first that fails names the row):
# MISSING_FIELD, INVALID_TIMESTAMP, UNKNOWN_EVENT (shared with the engagement feeds), then
UNKNOWN_CUSTOMER = "unknown_customer"
# INVALID_TOKEN (shared), then
TOKEN_MISMATCH = "token_mismatch"
AFTER_DEADLINE = "after_registration_deadline"
# DUPLICATE (shared); valid rows over capacity are waitlisted with
CAPACITY_REACHED = "capacity_reached"


@dataclass(frozen=True)
class RegistrationOutcome:
    """Where each incoming row went; `waitlisted` rows are valid but over capacity (kept, not dropped).

    `rejected` is QUARANTINE_SCHEMA (domain/feed_records.py); `stored`, set by ingestion, is how
    many engagement-store rows the batch added or upgraded (0 for a replay).
    """

    accepted: pl.DataFrame
    waitlisted: pl.DataFrame
    rejected: pl.DataFrame
    stored: int | None = None
    cancelled: pl.DataFrame | None = None  # accepted cancellations (CANCELLED_SCHEMA), set by ingestion

    def summary(self) -> dict[str, int]:
        """Counts per outcome and per rejection reason (for run metadata and logs; no PII)."""
        reasons = dict(self.rejected.group_by("reason").len().sort("reason").iter_rows())
        counts = {"accepted": self.accepted.height, "waitlisted": self.waitlisted.height}
        if self.cancelled is not None and self.cancelled.height:  # only batches that cancelled something
            counts["cancelled"] = self.cancelled.height
        counts["rejected"] = self.rejected.height
        if self.stored is not None:
            counts["stored"] = self.stored
        return {**counts, **reasons}


def normalize_incoming(incoming: pl.DataFrame) -> pl.DataFrame:
    """The incoming columns with their types, plus META_SCHEMA's record columns and `_at_given`
    (a registered_at value was sent, so a null `registered_at` means it did not parse).

    Times become naive UTC (`utc_naive`: ISO text, naive or aware datetimes). Missing columns are
    a caller error (raised), not a row-level rejection. Normalizing twice changes nothing.
    """
    rows = require_columns(incoming, INCOMING_SCHEMA, "incoming registrations")
    given = pl.col("_at_given") if "_at_given" in rows.columns else pl.col("registered_at").is_not_null()
    return rows.select(
        pl.col("registration_id").cast(pl.String),
        pl.col("event_id").cast(pl.String),
        pl.col("customer_id").cast(pl.String),
        utc_naive("registered_at", rows.schema["registered_at"]),
        pl.col("token").cast(pl.String),
        *META_SCHEMA,
        given.alias("_at_given"),
    )


def validate_registrations(
    incoming: pl.DataFrame,
    *,
    events: pl.DataFrame,
    known_customers: pl.Series | set[str],
    already_registered: pl.DataFrame,
    capacity_limit: int,
    deadline_days: int,
    verify: Callable[[str], LinkClaims | None],
    cancelled: pl.DataFrame | None = None,
) -> RegistrationOutcome:
    """Split incoming registrations into accepted, waitlisted and rejected (with a reason).

    `events` is normalized (event_id, start_time_utc naive UTC, capacity); `already_registered`
    holds event_id, customer_id of registrations recorded before (they count against capacity
    and make a redelivery a duplicate). Within the batch the earliest row of an
    event x customer wins; seats go in registered_at order, the rest are waitlisted. Accepted and
    waitlisted rows carry the token's channel and campaign (attribution); rejected rows are
    QUARANTINE_SCHEMA, the record as JSON in `raw`. `cancelled` (event_id, customer_id,
    registered_at of cancelled registrations) makes a replay of a cancelled registration a
    duplicate; a registration made after it (a later registered_at) is a new one.
    """
    prior = (
        already_registered.select(pl.col("event_id").cast(pl.String), pl.col("customer_id").cast(pl.String))
        .drop_nulls()
        .unique()
    )
    rows = _registration_rows(incoming, verify, events, known_customers, prior, cancelled)
    rows = apply_rules(
        rows, _registration_reason(deadline_days), order=["registered_at", "registration_id"],
        unique_by=["event_id", "customer_id"],
    )  # fmt: skip
    accepted, waitlisted = _seat(rows.filter(pl.col("reason").is_null()), prior, capacity_limit)
    rejected = quarantine(rows.filter(pl.col("reason").is_not_null()), pl.col("event_id"))
    return RegistrationOutcome(accepted=accepted, waitlisted=waitlisted, rejected=rejected)


def _registration_rows(
    incoming: pl.DataFrame,
    verify: Callable[[str], LinkClaims | None],
    events: pl.DataFrame,
    known_customers: pl.Series | set[str],
    prior: pl.DataFrame,
    cancelled: pl.DataFrame | None,
) -> pl.DataFrame:
    """The incoming rows with their token's claims, their event's start and capacity, and what the
    rules need to know: a known event and customer, registered before, cancelled when."""
    rows = normalize_incoming(incoming).with_row_index("_row")
    rows = with_claims(rows, verify)
    known = pl.Series("customer_id", sorted(known_customers) if isinstance(known_customers, set) else known_customers)
    event_info = events.select(
        pl.col("event_id").cast(pl.String),
        pl.col("start_time_utc").cast(pl.Datetime("us")).alias("_start"),
        pl.col("capacity").cast(pl.Int64).alias("_capacity"),
    ).unique("event_id", keep="first")
    gone = (
        pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String, "_cancelled_registered_at": pl.Datetime})
        if cancelled is None
        else cancelled.select(
            pl.col("event_id").cast(pl.String),
            pl.col("customer_id").cast(pl.String),
            pl.col("registered_at").cast(pl.Datetime("us")).alias("_cancelled_registered_at"),
        ).unique(["event_id", "customer_id"], keep="last")
    ).with_columns(pl.col("_cancelled_registered_at").cast(pl.Datetime("us")))
    rows = rows.join(gone, on=["event_id", "customer_id"], how="left", maintain_order="left")
    return rows.join(event_info, on="event_id", how="left", maintain_order="left").with_columns(
        pl.col("event_id").is_in(event_info["event_id"].implode()).alias("_event_known"),
        pl.col("customer_id").is_in(known.cast(pl.String).implode()).alias("_customer_known"),
        pl.struct("event_id", "customer_id").is_in(pl.struct(prior).implode()).alias("_prior")
        if prior.height
        else pl.lit(False).alias("_prior"),
    )


def _registration_reason(deadline_days: int) -> pl.Expr:
    """The registration rules in order: the first that fails names the row."""
    deadline = pl.col("_start") - pl.duration(days=deadline_days)
    return (
        pl.when(pl.any_horizontal(pl.col("event_id", "customer_id").is_null()) | ~pl.col("_at_given"))
        .then(pl.lit(MISSING_FIELD))
        .when(pl.col("registered_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(~pl.col("_event_known"))
        .then(pl.lit(UNKNOWN_EVENT))
        .when(~pl.col("_customer_known"))
        .then(pl.lit(UNKNOWN_CUSTOMER))
        .when(pl.col("claim_action").is_null() | (pl.col("claim_action") != "register"))
        .then(pl.lit(INVALID_TOKEN))
        .when((pl.col("claim_customer_id") != pl.col("customer_id")) | (pl.col("claim_event_id") != pl.col("event_id")))
        .then(pl.lit(TOKEN_MISMATCH))
        .when(pl.col("registered_at") > deadline)
        .then(pl.lit(AFTER_DEADLINE))
        .when(pl.col("_prior") | (pl.col("registered_at") <= pl.col("_cancelled_registered_at")).fill_null(False))
        .then(pl.lit(DUPLICATE))
    )


def _seat(valid: pl.DataFrame, prior: pl.DataFrame, capacity_limit: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accepted, waitlisted): the valid rows (in time order) get the seats still free after those
    registered before, per event; the rest wait with CAPACITY_REACHED."""
    seated = prior.group_by("event_id").agg(pl.len().cast(pl.Int64).alias("_seated"))
    good = valid.join(seated, on="event_id", how="left").with_columns(
        pl.max_horizontal(
            pl.min_horizontal(pl.col("_capacity").fill_null(capacity_limit), pl.lit(capacity_limit))
            - pl.col("_seated").fill_null(0),
            pl.lit(0),
        ).alias("_remaining"),
        pl.int_range(1, pl.len() + 1).over("event_id").alias("_seat"),  # rows are in time order
    )
    columns = [
        "registration_id",
        "event_id",
        "customer_id",
        "registered_at",
        pl.col("claim_channel").alias("channel"),
        pl.col("claim_campaign_id").alias("campaign_id"),
    ]
    accepted = good.filter(pl.col("_seat") <= pl.col("_remaining")).select(columns)
    waitlisted = good.filter(pl.col("_seat") > pl.col("_remaining")).select(
        *columns, pl.lit(CAPACITY_REACHED).alias("reason")
    )
    return accepted, waitlisted


# ---- cancellations ---------------------------------------------------------------------------

# A feed / webhook record is a registration unless its `action` says otherwise.
ACTION_REGISTER = "register"
ACTION_CANCEL = "cancel"
ACTIONS: tuple[str, ...] = (ACTION_REGISTER, ACTION_CANCEL)
CANCELLATION_RECORD: dict[str, pl.DataType] = {
    "action": pl.String(),  # "cancel"
    "registration_id": pl.String(),  # optional: the platform's id of the registration cancelled
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "cancelled_at": pl.Datetime("us"),  # ISO 8601; without an offset taken as UTC
}
CANCELLATION_REQUIRED: tuple[str, ...] = ("event_id", "customer_id", "cancelled_at")
CANCELLED_SCHEMA: dict[str, pl.DataType] = {  # accepted cancellations: what the stores record
    "registration_id": pl.String(),
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "registered_at": pl.Datetime("us"),  # the registration's own time (kept in the store)
    "channel": pl.String(),
    "campaign_id": pl.String(),
    "cancelled_at": pl.Datetime("us"),
    "previous_status": pl.String(),  # registered | waitlisted: a registered one frees a seat
}
# Reason codes of cancellations (besides MISSING_FIELD, INVALID_TIMESTAMP, FUTURE_TIMESTAMP,
# INVALID_ID, UNKNOWN_EVENT and DUPLICATE, shared):
UNKNOWN_ACTION = "unknown_action"  # `action` is neither "register" nor "cancel"
NOT_REGISTERED = "not_registered"  # nothing to cancel: the customer holds no seat or waitlist place
CANCELLED_BEFORE_REGISTRATION = "cancelled_before_registration"  # older than the registration it would cancel
# Who holds what for an event when cancellations are judged (the shell gathers it).
CURRENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "status": pl.String(),  # registered | waitlisted | cancelled
    "registration_id": pl.String(),
    "registered_at": pl.Datetime("us"),
    "channel": pl.String(),
    "campaign_id": pl.String(),
}


def record_action(record: Mapping[str, Any]) -> str:
    """The record's action, normalized: "register" when absent or blank (today's records)."""
    value = record.get("action")
    if value is None or (isinstance(value, str) and not value.strip()):
        return ACTION_REGISTER
    return value.strip().lower() if isinstance(value, str) else repr(value)


def cancellation_problem(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, what is wrong) when a record cannot be a registration or a cancellation as sent:
    an unknown `action`, or a cancellation lacking a required field, with an id the stores cannot
    key or a `cancelled_at` that is not a date-time. None for a well-formed record (registrations
    are judged by validate_registrations). The webhook answers these with a 400 naming the field.
    """
    action = record_action(record)
    if action not in ACTIONS:
        return "action", f"must be one of {list(ACTIONS)}, got {record.get('action')!r}"
    if action != ACTION_CANCEL:
        return None
    for name in CANCELLATION_REQUIRED:
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return name, "is required for a cancellation"
    for name in ("event_id", "customer_id"):
        value = record[name]
        if not isinstance(value, str) or not pl.select(pl.lit(value).str.contains(ID_PATTERN)).item():
            return name, "must be a non-empty id without '#' or whitespace"
    value = record["cancelled_at"]
    text = pl.DataFrame({"t": [value if isinstance(value, str) else str(value)]})
    if text.select(utc_naive("t", pl.String())).item() is None:
        return "cancelled_at", f"not an ISO 8601 date-time: {value!r}"
    return None


@dataclass(frozen=True)
class CancellationOutcome:
    """Accepted cancellations (CANCELLED_SCHEMA) and rejected rows (QUARANTINE_SCHEMA, with a reason)."""

    accepted: pl.DataFrame
    rejected: pl.DataFrame

    @property
    def freed(self) -> int:
        """Seats the accepted cancellations free (waitlisted ones held none)."""
        return self.accepted.filter(pl.col("previous_status") == REGISTERED).height


def normalize_cancellations(incoming: pl.DataFrame) -> pl.DataFrame:
    """CANCELLATION_RECORD columns typed (times naive UTC; registration_id may be absent) plus
    META_SCHEMA and `_at_given` (a cancelled_at value was sent, so null means unparseable)."""
    frame = incoming if "registration_id" in incoming.columns else incoming.with_columns(registration_id=pl.lit(None))
    if "action" not in frame.columns:
        frame = frame.with_columns(action=pl.lit(ACTION_CANCEL))
    rows = require_columns(frame, CANCELLATION_RECORD, "incoming cancellations")
    given = pl.col("_at_given") if "_at_given" in rows.columns else pl.col("cancelled_at").is_not_null()
    return rows.select(
        pl.col("action").cast(pl.String),
        pl.col("registration_id").cast(pl.String),
        pl.col("event_id").cast(pl.String),
        pl.col("customer_id").cast(pl.String),
        utc_naive("cancelled_at", rows.schema["cancelled_at"]),
        *META_SCHEMA,
        given.alias("_at_given"),
    )


def validate_cancellations(
    incoming: pl.DataFrame, *, events: pl.DataFrame, current: pl.DataFrame, now: datetime
) -> CancellationOutcome:
    """Split cancellation records into accepted and rejected (the first failing rule names the row).

    Rules: MISSING_FIELD (event_id, customer_id, cancelled_at), INVALID_TIMESTAMP,
    FUTURE_TIMESTAMP (later than `now` + FUTURE_TOLERANCE), INVALID_ID, UNKNOWN_EVENT,
    UNKNOWN_ACTION (an action other than "cancel" in a cancellations frame), DUPLICATE (already
    cancelled, or a later row of the same event x customer in the batch), NOT_REGISTERED (no seat
    or waitlist place to cancel), CANCELLED_BEFORE_REGISTRATION (older than the registration it
    would cancel: a stale record from before a re-registration). `current` is CURRENT_SCHEMA:
    one row per event x customer known to hold or have held a place.
    """
    rows = _cancellation_rows(incoming, events, current)
    rows = apply_rules(rows, _cancellation_reason(now), order=["cancelled_at"], unique_by=["event_id", "customer_id"])
    accepted = rows.filter(pl.col("reason").is_null()).select(
        pl.coalesce("registration_id", "_registration_id").alias("registration_id"),
        "event_id",
        "customer_id",
        pl.col("_registered_at").alias("registered_at"),
        pl.col("_channel").alias("channel"),
        pl.col("_campaign_id").alias("campaign_id"),
        "cancelled_at",
        pl.col("_status").alias("previous_status"),
    )
    rejected = quarantine(rows.filter(pl.col("reason").is_not_null()), pl.col("event_id"))
    return CancellationOutcome(accepted=accepted.cast(CANCELLED_SCHEMA), rejected=rejected)  # type: ignore[arg-type]


def _cancellation_rows(incoming: pl.DataFrame, events: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """The cancellation records with the place each cancels (`current`, prefixed `_`) and whether
    their event is known."""
    rows = normalize_cancellations(incoming).with_row_index("_row")
    known = current.select(
        pl.col(name).cast(dtype) for name, dtype in CURRENT_SCHEMA.items() if name != "registration_id"
    ).rename({"registered_at": "_registered_at", "status": "_status", "channel": "_channel"})
    known = known.rename({"campaign_id": "_campaign_id"}).unique(["event_id", "customer_id"], keep="first")
    ids = current.select(
        pl.col("event_id").cast(pl.String), pl.col("customer_id").cast(pl.String),
        pl.col("registration_id").cast(pl.String).alias("_registration_id"),
    ).unique(["event_id", "customer_id"], keep="first")  # fmt: skip
    event_ids = events.select(pl.col("event_id").cast(pl.String)).unique()["event_id"]
    return (
        rows.join(known, on=["event_id", "customer_id"], how="left", maintain_order="left")
        .join(ids, on=["event_id", "customer_id"], how="left", maintain_order="left")
        .with_columns(pl.col("event_id").is_in(event_ids.implode()).alias("_event_known"))
    )


def _cancellation_reason(now: datetime) -> pl.Expr:
    """The cancellation rules in order (see validate_cancellations): the first that fails names the row."""
    return (
        pl.when(pl.any_horizontal(pl.col("event_id", "customer_id").is_null()) | ~pl.col("_at_given"))
        .then(pl.lit(MISSING_FIELD))
        .when(pl.col("cancelled_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(in_future("cancelled_at", now))
        .then(pl.lit(FUTURE_TIMESTAMP))
        .when(bad_id("event_id", "customer_id"))
        .then(pl.lit(INVALID_ID))
        .when(~pl.col("_event_known"))
        .then(pl.lit(UNKNOWN_EVENT))
        .when(pl.col("action").str.strip_chars().str.to_lowercase() != ACTION_CANCEL)
        .then(pl.lit(UNKNOWN_ACTION))
        .when(pl.col("_status") == CANCELLED)
        .then(pl.lit(DUPLICATE))
        .when(pl.col("_status").is_null() | ~pl.col("_status").is_in([REGISTERED, WAITLISTED]))
        .then(pl.lit(NOT_REGISTERED))
        .when(pl.col("cancelled_at") < pl.col("_registered_at"))
        .then(pl.lit(CANCELLED_BEFORE_REGISTRATION))
    )


# ---- waitlist ----------------------------------------------------------------------------------


def promote_waitlist(
    waitlisted: pl.DataFrame, registered_count: int, capacity: int, capacity_limit: int | None = None
) -> pl.DataFrame:
    """The waitlisted customers who get the seats now open, first come first served.

    Order: registered_at, then customer_id (a stable tie-break); never more than
    `remaining_capacity(capacity, capacity_limit, registered_count)` (the program's limit
    defaults to the event's capacity), so promotion never overbooks. Rows keep their columns.
    """
    seats = remaining_capacity(capacity, capacity if capacity_limit is None else capacity_limit, registered_count)
    ordered = waitlisted.sort("registered_at", "customer_id", nulls_last=True, maintain_order=True)
    return ordered.unique("customer_id", keep="first", maintain_order=True).head(seats)
