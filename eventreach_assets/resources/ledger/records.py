"""The frames the ledger hands out and the stored form of their rows, shared by both backends.

Timestamps are stored as fixed-width UTC strings (`%Y-%m-%dT%H:%M:%S.%fZ`, ordered as text) and
returned as `pl.Datetime("us", "UTC")`; inputs may be naive (taken as UTC) or aware. Feedback
frames carry naive UTC times instead, as the domain's frames do. Each backend reads rows as
tuples of stored values in the column order of a schema here; the functions below turn them into
frames (and frames into rows to store), so both backends answer with identical frames.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from eventreach_assets.domain.feedback import FEEDBACK_KEY, STORED_FEEDBACK_SCHEMA, SUPPRESSION_SCHEMA
from eventreach_assets.resources.ledger.keys import decoded

ALL_CHANNELS = "*"  # opt-out channel meaning every channel
STORED_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_STORED_TIME_POLARS = "%Y-%m-%dT%H:%M:%S%.6fZ"
_UTC_US = pl.Datetime("us", "UTC")

RESERVATION_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "event_id": pl.String(),
    "channel": pl.String(),
    "kind": pl.String(),  # the base kind (decode_kind)
    "occurrence": pl.String(),  # "" unless a per-date kind
    "campaign_id": pl.String(),
    "granted": pl.Boolean(),  # reserved for this caller: send it now
    "status": pl.String(),  # the ledger status after the call (pending when granted)
    "previous_status": pl.String(),  # before the call; null = never seen
}
DELIVERY_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "event_id": pl.String(),
    "channel": pl.String(),
    "kind": pl.String(),  # the base kind (decode_kind)
    "occurrence": pl.String(),  # "" unless a per-date kind
    "campaign_id": pl.String(),
    "status": pl.String(),
    "reason": pl.String(),
    "provider_message_id": pl.String(),
    "attempts": pl.Int64(),  # reservations granted (1 + re-runs after transient failures)
    "sends": pl.Int64(),  # provider acceptances confirmed; > 1 would be a duplicate
    "reserved_at": _UTC_US,
    "updated_at": _UTC_US,
    "sent_at": _UTC_US,
}
OPT_OUT_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "channel": pl.String(),  # the channel opted out of, or "*" for all
    "source": pl.String(),
    "opted_out_at": _UTC_US,
}
MESSAGE_LOOKUP_SCHEMA: dict[str, pl.DataType] = {
    "provider_message_id": pl.String(),
    **{name: pl.String() for name in ("event_id", "channel", "kind", "customer_id", "campaign_id", "status")},
    "sent_at": _UTC_US,
}
INVITATIONS_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "invited_at": _UTC_US,
    "event_id": pl.String(),
    "channel": pl.String(),
}

# Stored rows carry the encoded kind, no occurrence: the column order each backend reads in.
STORED_RESERVATION = {name: dtype for name, dtype in RESERVATION_SCHEMA.items() if name != "occurrence"}
STORED_DELIVERY = {name: dtype for name, dtype in DELIVERY_SCHEMA.items() if name != "occurrence"}
FEEDBACK_COLUMNS = tuple(STORED_FEEDBACK_SCHEMA)


# ---- time as stored ------------------------------------------------------------------------


def to_utc(moment: datetime | None) -> datetime:
    """Aware UTC; None is now, naive is taken as UTC."""
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def stored_time(moment: datetime | None) -> str:
    """A moment (None = now) as the ledger stores it."""
    return to_utc(moment).strftime(STORED_TIME)


def parse_stored_time(text: str) -> datetime:
    """A stored time as an aware UTC datetime."""
    return datetime.strptime(text, STORED_TIME).replace(tzinfo=UTC)


def _parse_times(frame: pl.DataFrame, *names: str) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(name).str.to_datetime(_STORED_TIME_POLARS, time_zone="UTC", time_unit="us") for name in names
    )


def _naive_times(frame: pl.DataFrame, *names: str) -> pl.DataFrame:
    """Stored UTC text as naive UTC datetimes (the domain's convention for feedback frames)."""
    return _parse_times(frame, *names).with_columns(pl.col(name).dt.replace_time_zone(None) for name in names)


def _stored_time_column(name: str) -> pl.Expr:
    """A datetime column (naive = UTC) as the ledger's stored text."""
    return pl.col(name).dt.replace_time_zone(None).dt.strftime(_STORED_TIME_POLARS).alias(name)


def _frame(rows: list[tuple], schema: dict[str, pl.DataType], *times: str) -> pl.DataFrame:
    """Stored rows in `schema`'s column order, the `times` columns still text."""
    text_schema = {name: (pl.String() if name in times else dtype) for name, dtype in schema.items()}
    return pl.DataFrame(rows, schema=text_schema, orient="row")


def distinct_ids(series: pl.Series) -> list[str]:
    """The distinct non-null values of an id column as sorted strings: what a lookup asks for."""
    return series.cast(pl.String).drop_nulls().unique().sort().to_list()


# ---- stored rows -> frames -----------------------------------------------------------------


def reservation_frame(rows: list[tuple]) -> pl.DataFrame:
    """Reservation rows (STORED_RESERVATION order) as RESERVATION_SCHEMA (base kind + occurrence)."""
    return decoded(pl.DataFrame(rows, schema=STORED_RESERVATION, orient="row"), RESERVATION_SCHEMA)


def delivery_frame(rows: list[tuple]) -> pl.DataFrame:
    """Stored ledger rows (STORED_DELIVERY order) as DELIVERY_SCHEMA, by channel, stored kind and
    customer (a kind's occurrences follow it in date order)."""
    times = ("reserved_at", "updated_at", "sent_at")
    frame = _parse_times(_frame(rows, STORED_DELIVERY, *times), *times)
    return decoded(frame.sort("channel", "kind", "customer_id"), DELIVERY_SCHEMA)


def invitations_frame(rows: list[tuple]) -> pl.DataFrame:
    """Sent invitations (INVITATIONS_SCHEMA order, sent_at as text) by invitation time."""
    return _parse_times(_frame(rows, INVITATIONS_SCHEMA, "invited_at"), "invited_at").sort("invited_at")


def opt_out_frame(rows: list[tuple]) -> pl.DataFrame:
    """Stored opt-outs as OPT_OUT_SCHEMA: the earliest covering one per customer."""
    frame = _parse_times(_frame(rows, OPT_OUT_SCHEMA, "opted_out_at"), "opted_out_at")
    frame = frame.sort("customer_id", "opted_out_at", "channel")
    return frame.unique("customer_id", keep="first", maintain_order=True)


def lookup_frame(rows: list[tuple]) -> pl.DataFrame:
    """Ledger rows found by provider message id as MESSAGE_LOOKUP_SCHEMA, one per id."""
    frame = _parse_times(_frame(rows, MESSAGE_LOOKUP_SCHEMA, "sent_at"), "sent_at")
    return frame.unique("provider_message_id", keep="first").sort("provider_message_id")


def feedback_frame(rows: list[tuple]) -> pl.DataFrame:
    """Stored feedback (FEEDBACK_COLUMNS order, bounce_type '' for none) as STORED_FEEDBACK_SCHEMA."""
    frame = _naive_times(_frame(rows, STORED_FEEDBACK_SCHEMA, "occurred_at"), "occurred_at").with_columns(
        pl.when(pl.col("bounce_type") != "").then(pl.col("bounce_type")).alias("bounce_type")
    )
    return frame.sort("occurred_at", "provider_message_id", "recipient", "feedback")


def suppression_frame(rows: list[tuple]) -> pl.DataFrame:
    """Stored suppressions as SUPPRESSION_SCHEMA, by address."""
    return _naive_times(_frame(rows, SUPPRESSION_SCHEMA, "suppressed_at"), "suppressed_at").sort("address")


# ---- frames -> rows to store ---------------------------------------------------------------


def stored_feedback(rows: pl.DataFrame) -> pl.DataFrame:
    """STORED_FEEDBACK_SCHEMA rows as stored text (bounce_type '' for none), one per key."""
    missing = [name for name in FEEDBACK_COLUMNS if name not in rows.columns]
    if missing:
        raise ValueError(f"feedback rows lack columns {missing}")
    return (
        rows.select(FEEDBACK_COLUMNS)
        .with_columns(_stored_time_column("occurred_at"), pl.col("bounce_type").fill_null(""))
        .unique(list(FEEDBACK_KEY), maintain_order=True)
    )


def stored_suppressions(rows: pl.DataFrame) -> pl.DataFrame:
    """SUPPRESSION_SCHEMA rows as stored text, the earliest per address."""
    return (
        rows.select(list(SUPPRESSION_SCHEMA))
        .with_columns(_stored_time_column("suppressed_at"))
        .sort("address", "suppressed_at")
        .unique("address", keep="first", maintain_order=True)
    )


def stored_opt_outs(rows: pl.DataFrame) -> list[tuple]:
    """Opt-out rows (customer_id, channel (null = every channel), source, opted_out_at) as stored
    tuples, the earliest per customer x channel."""
    frame = rows.select(
        pl.col("customer_id").cast(pl.String),
        pl.col("channel").cast(pl.String).fill_null(ALL_CHANNELS),
        pl.col("source").cast(pl.String),
        _stored_time_column("opted_out_at"),
    ).drop_nulls(["customer_id"])
    return list(frame.sort("opted_out_at").unique(["customer_id", "channel"], maintain_order=True).iter_rows())
