"""The engagement store: what customers did with what we sent, per event.

Registrations (accepted and waitlisted), interactions with tracking links (open, click,
unsubscribe), attendance and survey responses. Every write is idempotent on the record's
natural key, so a feed file read twice, or a registration delivered by both the feed and the
webhook, is stored once, and the first occurrence wins (its timestamps are the true ones).
The daily metrics and campaign report read these records; nothing keeps counters on the side.
This module is the interface and what every store shares: the record kinds, validation and
storage form; a store only writes and reads stored rows.

Natural keys:
- registration: (event_id, customer_id); status "registered" | "waitlisted" | "cancelled"
- interaction:  (event_id, customer_id, channel, campaign_id, action)
- attendance:   (event_id, customer_id)
- survey:       (event_id, customer_id)

`SqliteEngagementStore` keeps them in the local SQLite file the candidate store and ledger
share; `DynamoDBEngagementStore` in one DynamoDB table keyed PK = EVENT#{event_id},
SK = {record}#{customer_id}[#...] with conditional puts (attribute_not_exists) for idempotency,
so every read of an event is one key query.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl

from eventreach_assets.domain.engagement_schemas import (
    ATTENDANCE_SCHEMA,
    CANCELLED,
    INTERACTION_SCHEMA,
    REGISTERED,
    REGISTRATION_SCHEMA,
    SURVEY_SCHEMA,
    WAITLISTED,
)

STATUSES: tuple[str, ...] = (REGISTERED, WAITLISTED, CANCELLED)

# Times are stored as fixed-width UTC text (ordered as text), like the delivery ledger's.
_TS_POLARS = "%Y-%m-%dT%H:%M:%S%.6fZ"
_ID = r"^[^#\s]+$"  # key segments: no separator, no whitespace (DynamoDB sort keys join them with '#')


# ---- shared by both stores: what a record is, validation, storage form ---------------------


@dataclass(frozen=True)
class RecordKind:
    """How one kind of engagement record is keyed and stored; both stores read these."""

    name: str  # for error messages
    schema: dict[str, pl.DataType]
    keys: tuple[str, ...]  # the natural key, event_id first
    time: str  # when it happened: required; reads sort by it, then by the rest of the key
    optional: tuple[str, ...]  # columns the input may lack (stored as null)
    table: str  # SQLite table
    tag: str  # DynamoDB sort-key prefix

    @property
    def order(self) -> list[str]:
        """Deterministic read order: time, customer_id, then the rest of the natural key."""
        return [self.time, *(key for key in self.keys if key != "event_id")]


REGISTRATION = RecordKind(
    "registration",
    REGISTRATION_SCHEMA,
    ("event_id", "customer_id"),
    "registered_at",
    ("channel", "campaign_id"),
    "engagement_registrations",
    "REG",
)
INTERACTION = RecordKind(
    "interaction",
    INTERACTION_SCHEMA,
    ("event_id", "customer_id", "channel", "campaign_id", "action"),
    "occurred_at",
    (),
    "engagement_interactions",
    "INT",
)
ATTENDANCE = RecordKind(
    "attendance", ATTENDANCE_SCHEMA, ("event_id", "customer_id"), "joined_at", (), "engagement_attendance", "ATT"
)
SURVEY = RecordKind(
    "survey response",
    SURVEY_SCHEMA,
    ("event_id", "customer_id"),
    "submitted_at",
    ("comment",),
    "engagement_survey",
    "SRV",
)
RECORD_KINDS: tuple[RecordKind, ...] = (REGISTRATION, INTERACTION, ATTENDANCE, SURVEY)


def naive_utc(moment: datetime) -> datetime:
    """The project's time convention for engagement: naive UTC (aware values are converted)."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def check_status(status: str) -> str:
    """A registration status, or a ValueError naming the allowed ones."""
    if status not in STATUSES:
        raise ValueError(f"registration status must be one of {list(STATUSES)}, got {status!r}")
    return status


def _time_column(frame: pl.DataFrame, kind: RecordKind, name: str) -> pl.Expr:
    dtype = frame.schema[name]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"{kind.name} column {name} must be a datetime column, got {dtype}")
    column = pl.col(name)
    if dtype.time_zone is not None:
        column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return column.dt.cast_time_unit("us")


def prepare_records(frame: pl.DataFrame, kind: RecordKind) -> pl.DataFrame:
    """The rows to store: exactly the schema's columns and dtypes, times naive UTC, one row per
    natural key (the earliest occurrence wins, as it would across calls).

    Input a store cannot key is a caller error, raised with what is wrong: a missing column, a
    value of the wrong type, a null key or time, a key with '#' or whitespace.
    """
    missing = set(kind.schema) - set(kind.optional) - set(frame.columns)
    if missing:
        raise ValueError(f"{kind.name} frame lacks columns {sorted(missing)}")
    columns: list[pl.Expr] = []
    for name, dtype in kind.schema.items():
        if name not in frame.columns:
            columns.append(pl.lit(None, dtype=dtype).alias(name))
        elif isinstance(dtype, pl.Datetime):
            columns.append(_time_column(frame, kind, name))
        else:
            columns.append(pl.col(name).cast(dtype, strict=False))
    rows = frame.select(columns)
    for name in (name for name in kind.schema if name in frame.columns):
        count = frame[name].count() - rows[name].count()  # values a (non-strict) cast turned into nulls
        if count:
            raise ValueError(f"{count} {kind.name} values of {name} are not valid {kind.schema[name]}")
    required = [*kind.keys, kind.time]
    nulls = rows.select(pl.any_horizontal(pl.col(required).is_null()).sum()).item()
    if nulls:
        raise ValueError(f"{nulls} {kind.name} rows lack one of {required}")
    for name in kind.keys:
        bad = rows.select((~pl.col(name).str.contains(_ID)).sum()).item()
        if bad:
            raise ValueError(f"{bad} {kind.name} rows have an empty {name} or one with '#' or whitespace")
    return rows.sort(kind.time, maintain_order=True).unique(list(kind.keys), keep="first", maintain_order=True)


def to_storage(rows: pl.DataFrame, kind: RecordKind) -> pl.DataFrame:
    """Prepared rows with their times as fixed-width UTC text (what both stores keep)."""
    times = [name for name, dtype in kind.schema.items() if isinstance(dtype, pl.Datetime)]
    return rows.with_columns(pl.col(times).dt.to_string(_TS_POLARS))


def from_storage(rows: Sequence[Sequence[Any]], kind: RecordKind) -> pl.DataFrame:
    """Stored rows (tuples in schema order, times as text) as a frame of the schema, in read order."""
    times = [name for name, dtype in kind.schema.items() if isinstance(dtype, pl.Datetime)]
    text_schema = {name: (pl.String() if name in times else dtype) for name, dtype in kind.schema.items()}
    frame = pl.DataFrame(rows, schema=text_schema, orient="row")
    frame = frame.with_columns(pl.col(times).str.to_datetime(_TS_POLARS, time_unit="us"))
    return frame.sort(kind.order, nulls_last=True)


# ---- interface ----------------------------------------------------------------------------


class EngagementStoreResource(dg.ConfigurableResource, abc.ABC):
    """Interface; each `record_*` takes a frame with (at least) the columns of its schema and
    returns how many rows were new (already-stored keys are left untouched).

    Input times may be naive (taken as UTC) or aware; reads return the schema's columns and
    dtypes (naive UTC times), empty frames included, sorted by time then customer_id (then the
    rest of the natural key). Validation and storage form are shared (`prepare_records`,
    `to_storage`, `from_storage`); an implementation only writes and reads stored rows.
    """

    def record_registrations(self, registrations: pl.DataFrame, status: str, now: datetime) -> int:
        """Columns of REGISTRATION_SCHEMA minus status/recorded_at (channel and campaign_id may be
        absent: unattributed). Returns the rows new or changed. The only status changes made:

        - waitlisted -> registered (a seat: registration redelivered or waitlist promotion); the
          first registered_at stays;
        - registered | waitlisted -> cancelled (the seat is free again); registered_at stays;
        - cancelled -> registered | waitlisted only for a registration made after the cancelled
          one (a later registered_at, which replaces it): a replay of the old one changes nothing.
        """
        frame = registrations.with_columns(
            status=pl.lit(check_status(status)),
            recorded_at=pl.lit(naive_utc(now), dtype=pl.Datetime("us")),
        )
        return self._record(REGISTRATION, frame)

    def registrations(self, event_id: str, status: str | None = None) -> pl.DataFrame:
        """The event's registrations, all or one status (reminders read `registered`)."""
        return self._read(REGISTRATION, event_id, None if status is None else check_status(status))

    def registrations_page(
        self, event_id: str, status: str, limit: int, after: str | None = None
    ) -> tuple[list[tuple], bool]:
        """Up to `limit` of the event's registrations of `status` by customer_id, strictly after the
        customer `after` (the key's own order: one page read, not the list), and whether more
        follow. Rows in storage form: tuples in REGISTRATION_SCHEMA order, times as UTC text."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        rows = self._fetch_page(event_id, check_status(status), after, limit + 1)
        return rows[:limit], len(rows) > limit

    def cancelled_among(self, event_id: str, customer_ids: Sequence[str]) -> set[str]:
        """Which of `customer_ids` hold a cancelled registration for the event (one keyed read)."""
        return self._cancelled_among(event_id, list(customer_ids)) if customer_ids else set()

    def record_interactions(self, interactions: pl.DataFrame) -> int:
        """Opens, clicks, unsubscribes: one per customer x channel x campaign x action (the first)."""
        return self._record(INTERACTION, interactions)

    def interactions(self, event_id: str) -> pl.DataFrame:
        """The event's interactions (the campaign report's opens and clicks)."""
        return self._read(INTERACTION, event_id, None)

    def record_attendance(self, attendance: pl.DataFrame) -> int:
        """Who joined the event (one row per customer: the first report wins)."""
        return self._record(ATTENDANCE, attendance)

    def attendance(self, event_id: str) -> pl.DataFrame:
        """The event's attendance."""
        return self._read(ATTENDANCE, event_id, None)

    def record_survey_responses(self, responses: pl.DataFrame) -> int:
        """Survey answers (comment may be absent); one per customer, the first wins."""
        return self._record(SURVEY, responses)

    def survey_responses(self, event_id: str) -> pl.DataFrame:
        """The event's survey responses (comments may hold PII: do not log them)."""
        return self._read(SURVEY, event_id, None)

    # -- shared: validation and storage form --

    def _record(self, kind: RecordKind, frame: pl.DataFrame) -> int:
        rows = prepare_records(frame, kind)
        return self._write(kind, to_storage(rows, kind)) if rows.height else 0

    def _read(self, kind: RecordKind, event_id: str, status: str | None) -> pl.DataFrame:
        return from_storage(self._fetch(kind, event_id, status), kind)

    # -- what a store provides --

    @abc.abstractmethod
    def _write(self, kind: RecordKind, stored: pl.DataFrame) -> int:
        """Store rows (storage form) unless their key exists (registrations: the status changes
        `record_registrations` lists); returns the rows new or changed."""

    @abc.abstractmethod
    def _fetch(self, kind: RecordKind, event_id: str, status: str | None) -> list[tuple]:
        """The event's stored rows of `kind` (tuples in schema order; registrations of `status`)."""

    @abc.abstractmethod
    def _fetch_page(self, event_id: str, status: str, after: str | None, count: int) -> list[tuple]:
        """Up to `count` stored registrations of `status` by customer_id after `after` (schema order)."""

    @abc.abstractmethod
    def _cancelled_among(self, event_id: str, customer_ids: list[str]) -> set[str]:
        """The customers of `customer_ids` whose stored registration is cancelled."""
