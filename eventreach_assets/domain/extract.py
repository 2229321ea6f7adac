"""From warehouse rows to the candidate model: validate, quarantine, dedupe.

Nothing is dropped silently: every row that does not become a candidate is returned in the
quarantine frame with a reason code, so "why is customer X missing?" has an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import available_timezones

import polars as pl

from eventreach_assets.domain.schema import CANDIDATE_SCHEMA

TAGS_PATTERN = r"^[a-z0-9-]+(,[a-z0-9-]+)*$"
KNOWN_TIMEZONES: frozenset[str] = frozenset(available_timezones())

# Reason codes, in the order they are tested (a row gets the first that applies).
NULL_CUSTOMER_ID = "null_customer_id"
UNPARSEABLE_TAGS = "unparseable_interest_tags"
UNKNOWN_REGION = "unknown_region"
UNKNOWN_TIMEZONE = "unknown_timezone"
ENGAGEMENT_OUT_OF_RANGE = "engagement_score_out_of_range"
ATTENDANCE_OUT_OF_RANGE = "attendance_count_out_of_range"
DUPLICATE_SUPERSEDED = "duplicate_customer_id_superseded"

# Dedupe rule: one row per customer_id; the newest `updated_at` wins, ties broken by the
# higher engagement_score, then the lexicographically smaller interest_tags string, so the
# choice never depends on the order the warehouse returned rows in.
DEDUPE_ORDER = ("updated_at", "engagement_score", "interest_tags")
DEDUPE_DESCENDING = (True, True, False)


@dataclass(frozen=True)
class ExtractResult:
    candidates: pl.DataFrame
    quarantine: pl.DataFrame  # the raw row plus `reason`
    extracted_rows: int

    @property
    def quarantine_counts(self) -> dict[str, int]:
        counts = self.quarantine.group_by("reason").len().sort("reason")
        return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))


def invalid_reason(known_regions: list[str]) -> pl.Expr:
    """Reason code for a row that cannot become a candidate, or null when it is valid."""
    score = pl.col("engagement_score")
    attendance = pl.col("event_attendance_history")
    return (
        pl.when(pl.col("customer_id").is_null() | (pl.col("customer_id").str.strip_chars() == ""))
        .then(pl.lit(NULL_CUSTOMER_ID))
        .when(pl.col("interest_tags").is_not_null() & ~pl.col("interest_tags").str.contains(TAGS_PATTERN))
        .then(pl.lit(UNPARSEABLE_TAGS))
        .when(~pl.col("geographic_region").is_in(known_regions).fill_null(False))
        .then(pl.lit(UNKNOWN_REGION))
        .when(~pl.col("timezone").is_in(sorted(KNOWN_TIMEZONES)).fill_null(False))
        .then(pl.lit(UNKNOWN_TIMEZONE))
        .when(score.is_null() | score.is_nan() | (score < 0) | (score > 1))
        .then(pl.lit(ENGAGEMENT_OUT_OF_RANGE))
        .when(attendance.is_null() | (attendance < 0))
        .then(pl.lit(ATTENDANCE_OUT_OF_RANGE))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def to_candidate_model(valid: pl.LazyFrame) -> pl.LazyFrame:
    """Map warehouse columns onto the candidate model (tags as a list, typed flags)."""
    return valid.with_columns(
        pl.col("interest_tags").fill_null("").str.split(",").list.eval(pl.element().filter(pl.element() != "")),
        pl.col("event_attendance_history").cast(pl.Int32),
        pl.col("is_verified").fill_null(False),
        pl.col("fraud_flag").fill_null(False),
        pl.col("marketing_opt_out").fill_null(False),
        pl.col("updated_at").cast(pl.Datetime("us")),
    ).select([pl.col(name).cast(dtype) for name, dtype in CANDIDATE_SCHEMA.items()])


def newest_opt_out(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Each customer's opt-out as of their newest row, valid or not.

    An opt-out must be honoured even when it arrives on a row that is quarantined for some
    other defect (say an unknown timezone): falling back to an older valid row would
    otherwise resurrect a customer who said no.
    """
    return (
        frame.filter(pl.col("customer_id").is_not_null())
        .sort(["customer_id", *DEDUPE_ORDER], descending=[False, *DEDUPE_DESCENDING], nulls_last=True)
        .group_by("customer_id", maintain_order=True)
        .agg(_newest_opt_out=pl.col("marketing_opt_out").first().fill_null(False))
    )


def validate_and_dedupe(raw: pl.DataFrame | pl.LazyFrame, known_regions: list[str]) -> ExtractResult:
    """Split extracted rows into one candidate per customer and a quarantine with reasons."""
    frame = raw.lazy().with_columns(reason=invalid_reason(known_regions))
    ranked = (
        frame.filter(pl.col("reason").is_null())
        .sort(["customer_id", *DEDUPE_ORDER], descending=[False, *DEDUPE_DESCENDING], nulls_last=True)
        .with_columns(newest=pl.col("customer_id").is_first_distinct())
    )
    invalid = frame.filter(pl.col("reason").is_not_null())
    superseded = ranked.filter(~pl.col("newest")).drop("newest").with_columns(reason=pl.lit(DUPLICATE_SUPERSEDED))
    candidates, quarantine, total = pl.collect_all(
        [
            to_candidate_model(
                ranked.filter(pl.col("newest"))
                .drop("newest", "reason")
                .join(newest_opt_out(frame), on="customer_id", how="left", maintain_order="left")
                .with_columns(pl.col("marketing_opt_out").fill_null(False) | pl.col("_newest_opt_out"))
            ),
            pl.concat([invalid, superseded]),
            frame.select(pl.len()),
        ]
    )
    return ExtractResult(candidates=candidates, quarantine=quarantine, extracted_rows=int(total.item()))
