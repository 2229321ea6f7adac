"""The ledger's key in stored form: customer_id, event_id, channel and the stored `kind`.

Per-date keys (reminders, day-of, updates: `DeliveryKey.occurrence`) need no schema change: the
stored `kind` is `kind` or `kind@occurrence` (`domain.delivery.encode_kind` / `decode_kind`, the only
two places that know), and every frame handed out has the base `kind` plus an `occurrence` column ("" for
kinds sent once per event), so readers filtering on `kind == "reminder"` keep working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from eventreach_assets.domain.delivery import OCCURRENCE_SEPARATOR, DeliveryKey, MessageKind

KEY_COLUMNS = ("customer_id", "event_id", "channel", "kind")  # as stored: kind is encode_kind(kind, occurrence)


def decode_kind(stored: pl.Expr | str) -> tuple[pl.Expr, pl.Expr] | tuple[str, str]:
    """(base kind, occurrence) of a stored `kind`: a string, or an expression over a column of them."""
    if isinstance(stored, str):
        base, _, occurrence = stored.partition(OCCURRENCE_SEPARATOR)
        return base, occurrence
    parts = stored.str.splitn(OCCURRENCE_SEPARATOR, 2)
    return parts.struct.field("field_0"), parts.struct.field("field_1").fill_null("")


def decoded(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A frame with the stored `kind` as base `kind` + `occurrence`, in `schema`'s column order."""
    kind, occurrence = decode_kind(pl.col("kind"))
    return frame.with_columns(kind.alias("kind"), occurrence.alias("occurrence")).select(list(schema))


def stored_key(row: dict[str, Any]) -> DeliveryKey:
    """The DeliveryKey of a stored-form row (kind encoded)."""
    kind, occurrence = decode_kind(row["kind"])
    return DeliveryKey(row["customer_id"], row["event_id"], row["channel"], MessageKind(kind), str(occurrence))


def _stored_kind(occurrence: pl.Expr) -> pl.Expr:
    """`encode_kind` over the `kind` column and an occurrence expression."""
    kind = pl.col("kind").cast(pl.String)
    return (
        pl.when(occurrence == "")
        .then(kind)
        .otherwise(pl.concat_str(kind, pl.lit(OCCURRENCE_SEPARATOR), occurrence))
        .alias("kind")
    )


def key_frame(keys: pl.DataFrame, campaign_id_col: str = "campaign_id") -> pl.DataFrame:
    """The reservation input in stored form: key columns (kind encoded with the optional
    `occurrence` column) + campaign_id as strings, one row per key (first wins)."""
    missing = {*KEY_COLUMNS, campaign_id_col} - set(keys.columns)
    if missing:
        raise ValueError(f"keys lacks columns {sorted(missing)}")
    occurrence = pl.col("occurrence").cast(pl.String).fill_null("") if "occurrence" in keys.columns else pl.lit("")
    bad = keys.select(
        (
            pl.col("kind").cast(pl.String).str.contains(OCCURRENCE_SEPARATOR, literal=True)
            | occurrence.str.contains("[@#]")
        )
        .fill_null(False)
        .sum()
    ).item()
    if bad:
        raise ValueError(f"{bad} keys have '@' in kind or '@'/'#' in occurrence")
    frame = keys.select(
        *(pl.col(name).cast(pl.String) for name in KEY_COLUMNS if name != "kind"),
        _stored_kind(occurrence),
        pl.col(campaign_id_col).cast(pl.String).alias("campaign_id"),
    ).select(*KEY_COLUMNS, "campaign_id")
    if frame.select(pl.any_horizontal(pl.col(*KEY_COLUMNS).is_null()).any()).item():
        raise ValueError("keys has null key columns")
    return frame.unique(list(KEY_COLUMNS), keep="first", maintain_order=True)


def keys_frame(keys: Sequence[DeliveryKey], campaign_id: str | Sequence[str] = "") -> pl.DataFrame:
    """DeliveryKeys as the frame `reserve` takes (handy for callers holding messages)."""
    campaigns = [campaign_id] * len(keys) if isinstance(campaign_id, str) else list(campaign_id)
    return pl.DataFrame(
        {
            "customer_id": [k.customer_id for k in keys],
            "event_id": [k.event_id for k in keys],
            "channel": [k.channel for k in keys],
            "kind": [str(k.kind) for k in keys],
            "occurrence": [k.occurrence for k in keys],
            "campaign_id": campaigns,
        },
        schema={name: pl.String() for name in (*KEY_COLUMNS, "occurrence", "campaign_id")},
    )
