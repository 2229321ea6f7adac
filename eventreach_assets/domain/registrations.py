"""Validating registrations from the event platform before they mark a candidate "registered".

Pure polars, no Dagster, no I/O: the polled feed and the serving API's webhook both call the
same ingestion function, which calls this, so a registration is judged the same way however
it arrives. Every row comes out in exactly one frame (accepted, waitlisted or rejected) with a
reason code, so nothing the platform sent is silently lost. Rejected rows take the quarantine
shape every engagement feed shares (domain/engagement.py), the record kept as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from eventreach_assets.domain.engagement import (
    DUPLICATE,
    INVALID_TIMESTAMP,
    INVALID_TOKEN,
    META_SCHEMA,
    MISSING_FIELD,
    REGISTRATION_RECORD,
    UNKNOWN_EVENT,
    claims_frame,
    quarantine,
    require_columns,
    utc_naive,
)
from eventreach_assets.domain.messages import LinkClaims

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

    `rejected` is QUARANTINE_SCHEMA (domain/engagement.py); `stored`, set by ingestion, is how
    many engagement-store rows the batch added or upgraded (0 for a replay).
    """

    accepted: pl.DataFrame
    waitlisted: pl.DataFrame
    rejected: pl.DataFrame
    stored: int | None = None

    def summary(self) -> dict[str, int]:
        """Counts per outcome and per rejection reason (for run metadata and logs; no PII)."""
        reasons = dict(self.rejected.group_by("reason").len().sort("reason").iter_rows())
        counts = {"accepted": self.accepted.height, "waitlisted": self.waitlisted.height}
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
) -> RegistrationOutcome:
    """Split incoming registrations into accepted, waitlisted and rejected (with a reason).

    `events` is normalized (event_id, start_time_utc naive UTC, capacity); `already_registered`
    holds event_id, customer_id of registrations recorded before (they count against capacity
    and make a redelivery a duplicate). Within the batch the earliest row of an
    event x customer wins; seats go in registered_at order, the rest are waitlisted. Accepted and
    waitlisted rows carry the token's channel and campaign (attribution); rejected rows are
    QUARANTINE_SCHEMA, the record as JSON in `raw`.
    """
    rows = normalize_incoming(incoming).with_row_index("_row")
    rows = pl.concat([rows, claims_frame(rows["token"].to_list(), verify)], how="horizontal")
    known = pl.Series("customer_id", sorted(known_customers) if isinstance(known_customers, set) else known_customers)
    event_info = events.select(
        pl.col("event_id").cast(pl.String),
        pl.col("start_time_utc").cast(pl.Datetime("us")).alias("_start"),
        pl.col("capacity").cast(pl.Int64).alias("_capacity"),
    ).unique("event_id", keep="first")
    prior = already_registered.select(pl.col("event_id").cast(pl.String), pl.col("customer_id").cast(pl.String))
    prior = prior.drop_nulls().unique()
    rows = rows.join(event_info, on="event_id", how="left", maintain_order="left").with_columns(
        pl.col("event_id").is_in(event_info["event_id"].implode()).alias("_event_known"),
        pl.col("customer_id").is_in(known.cast(pl.String).implode()).alias("_customer_known"),
        pl.struct("event_id", "customer_id").is_in(pl.struct(prior).implode()).alias("_prior")
        if prior.height
        else pl.lit(False).alias("_prior"),
    )
    deadline = pl.col("_start") - pl.duration(days=deadline_days)
    reason = (
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
        .when(pl.col("_prior"))
        .then(pl.lit(DUPLICATE))
    )
    rows = rows.with_columns(reason.alias("reason")).sort("registered_at", "registration_id", "_row", nulls_last=True)
    # Among otherwise valid rows, later deliveries of the same event x customer are duplicates.
    valid = pl.col("reason").is_null()
    rows = rows.with_columns(
        pl.when(valid & (pl.col("_row") != pl.col("_row").filter(valid).first().over("event_id", "customer_id")))
        .then(pl.lit(DUPLICATE))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    seated = prior.group_by("event_id").agg(pl.len().cast(pl.Int64).alias("_seated"))
    good = (
        rows.filter(pl.col("reason").is_null())
        .join(seated, on="event_id", how="left")
        .with_columns(
            pl.max_horizontal(
                pl.min_horizontal(pl.col("_capacity").fill_null(capacity_limit), pl.lit(capacity_limit))
                - pl.col("_seated").fill_null(0),
                pl.lit(0),
            ).alias("_remaining"),
            pl.int_range(1, pl.len() + 1).over("event_id").alias("_seat"),  # rows are in time order
        )
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
    rejected = quarantine(rows.filter(pl.col("reason").is_not_null()), pl.col("event_id"))
    return RegistrationOutcome(accepted=accepted, waitlisted=waitlisted, rejected=rejected)
