"""The rows the API answers with: the registered / waitlisted view, and rows as public JSON.

Pure polars. Whichever store a registration came from, it is served in one shape
(`REGISTRATION_VIEW`); the `email` attribute (PII) never leaves, times are ISO 8601 UTC.
"""

from __future__ import annotations

import polars as pl

PII_COLUMNS = ("email",)
_JSON_TS = "%Y-%m-%dT%H:%M:%S%.6fZ"

# What a registered-candidates row holds, whichever store it came from.
REGISTRATION_VIEW: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "status": pl.String(),
    "registered_at": pl.Datetime("us", "UTC"),
    "channel": pl.String(),  # the channel the registration is attributed to (null: unknown)
    "campaign_id": pl.String(),  # waitlisted rows only (the candidate store does not keep it)
    "score": pl.Float64(),  # registered rows only: the candidate's score (best over channels)
    "score_band": pl.String(),
    "marketplace": pl.String(),
    "timezone": pl.String(),
}


def registered_view(items: pl.DataFrame) -> pl.DataFrame:
    """Registered candidate items (one per customer x channel) as one row per customer, by customer_id."""
    return (
        items.group_by("customer_id")
        .agg(
            pl.col("status_at").min().dt.convert_time_zone("UTC").alias("registered_at"),
            pl.col("registered_channel").drop_nulls().first().alias("channel"),
            pl.col("score").max(),
            pl.col("score_band").sort_by("score", descending=True).first(),
            pl.col("marketplace").drop_nulls().first(),
            pl.col("timezone").drop_nulls().first(),
        )
        .with_columns(status=pl.lit("registered"), campaign_id=pl.lit(None, pl.String))
        .select([pl.col(name).cast(dtype) for name, dtype in REGISTRATION_VIEW.items()])
        .sort("customer_id")
    )


def waitlisted_view(registrations: pl.DataFrame) -> pl.DataFrame:
    """Waitlisted engagement-store rows (naive UTC times) in the registered view's shape."""
    return (
        registrations.select(
            "customer_id",
            "status",
            pl.col("registered_at").dt.replace_time_zone("UTC"),
            "channel",
            "campaign_id",
        )
        .with_columns(
            pl.lit(None, pl.Float64).alias("score"),
            *(pl.lit(None, pl.String).alias(name) for name in ("score_band", "marketplace", "timezone")),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in REGISTRATION_VIEW.items()])
        .unique("customer_id", keep="first", maintain_order=True)
        .sort("customer_id")
    )


def public_rows(frame: pl.DataFrame) -> bytes:
    """Rows as a JSON array, without PII columns, times as ISO 8601 UTC (`...Z`)."""
    columns: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        if name in PII_COLUMNS:
            continue
        column = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is not None:
                column = column.dt.convert_time_zone("UTC")
            column = column.dt.to_string(_JSON_TS)
        columns.append(column)
    return frame.select(columns).write_json().encode() if columns else b"[]"
