"""The delivery ledger: one row per customer x event x channel x message kind, so nothing is sent twice.

Protocol (the send loop in `domain/sending.py` follows it):

1. `reserve` the batch's keys before calling any provider. A key never seen gets a `pending`
   row and may be sent; a `failed_transient` row flips back to `pending` and may be sent again.
   Every other status blocks the key: `sent`, `failed_permanent`, `suppressed`, `held_out`,
   `in_doubt`, and `pending` held by a live run. A `pending` row older than the lease
   (`stale_after`) was left by a run that died between reserving and confirming. If that run
   had marked it attempted, we cannot know whether the provider got the message, so it becomes
   `in_doubt` and is never resent (a duplicate invitation is worse than a missing one; an
   operator can reconcile it with the provider's logs and `mark_sent` / `mark_failed` it); if
   not, nobody ever sent it and the new reservation takes it over.
   Each reservation records its `owner` (the Dagster run id, or none) and `reserved_at`.
2. `mark_attempting` right before the provider call: a conditional write that succeeds only
   while this very reservation (same `reserved_at`, still pending, not yet attempted) holds the
   row. `attempted_at` is '' from reservation to attempt (NULL on rows older than this column:
   treated as attempted, the safe side).
3. Call the provider, then confirm with `mark_sent` (provider message id) or `mark_failed`.
   `mark_suppressed` (opted out at send time), `mark_held_out` (control group) and `release`
   (reserved but not attempted because the run is aborting) complete the set.
4. `release_owner`: the run-failure sensor gives back a dead run's unattempted reservations
   and marks its attempted-but-unconfirmed ones `in_doubt` (at most one per hard kill).

Reservation is atomic per key: SQLite does it in one `BEGIN IMMEDIATE` transaction with
`INSERT ... ON CONFLICT DO NOTHING`; DynamoDB with a conditional `PutItem`
(`attribute_not_exists(pk)`) and conditional `UpdateItem`s for the status flips, so two runs
reserving the same keys at once each get a disjoint share.

Opt-outs live in the ledger too (customer x channel, or all channels): the send loop checks them
right before sending, so an unsubscribe recorded after the weekly batch still suppresses the send.

Per-date keys (reminders, day-of, updates: `DeliveryKey.occurrence`) need no schema change: the
stored `kind` is `kind` or `kind@occurrence` (`encode_kind` / `decode_kind`, the only two places
that know), and every frame handed out has the base `kind` plus an `occurrence` column ("" for
kinds sent once per event), so readers filtering on `kind == "reminder"` keep working.

Timestamps are stored as fixed-width UTC strings (`%Y-%m-%dT%H:%M:%S.%fZ`, ordered as text) and
returned as `pl.Datetime("us", "UTC")`; inputs may be naive (taken as UTC) or aware.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import dagster as dg
import polars as pl
from botocore.exceptions import ClientError
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.delivery import DeliveryKey, DeliveryStatus, MessageKind
from eventreach_assets.domain.feedback import (
    COUNTS_SCHEMA,
    FEEDBACK_SCHEMA,
    STORED_FEEDBACK_SCHEMA,
    SUPPRESSION_SCHEMA,
    campaign_counts,
    message_outcomes,
    normalize_addresses,
)
from eventreach_assets.domain.sending import DEFAULT_LEASE
from eventreach_assets.resources.dynamodb import DynamoDBClient, create_table_if_missing, is_conditional_failure
from eventreach_assets.resources.sqlite import SqliteBacked, SqliteConnections

ALL_CHANNELS = "*"  # opt-out channel meaning every channel
KEY_COLUMNS = ("customer_id", "event_id", "channel", "kind")  # as stored: kind is encode_kind(kind, occurrence)
OCCURRENCE_SEPARATOR = "@"
_TS = "%Y-%m-%dT%H:%M:%S.%fZ"
_TS_POLARS = "%Y-%m-%dT%H:%M:%S%.6fZ"
_UTC_US = pl.Datetime("us", "UTC")

# Statuses a new reservation may send from (absent = never seen).
SENDABLE_FROM = frozenset({DeliveryStatus.FAILED_TRANSIENT})

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


# ---- the stored kind: `kind` or `kind@occurrence` ------------------------------------------


def encode_kind(kind: MessageKind | str, occurrence: str = "") -> str:
    """The ledger's `kind` column for a key: `kind`, or `kind@occurrence` for a per-date message."""
    base = str(kind)
    if OCCURRENCE_SEPARATOR in base or "#" in occurrence or OCCURRENCE_SEPARATOR in occurrence:
        raise ValueError(f"kind {base!r} / occurrence {occurrence!r} must not contain '@' or '#'")
    return f"{base}{OCCURRENCE_SEPARATOR}{occurrence}" if occurrence else base


def decode_kind(stored: pl.Expr | str) -> tuple[pl.Expr, pl.Expr] | tuple[str, str]:
    """(base kind, occurrence) of a stored `kind`: a string, or an expression over a column of them."""
    if isinstance(stored, str):
        base, _, occurrence = stored.partition(OCCURRENCE_SEPARATOR)
        return base, occurrence
    parts = stored.str.splitn(OCCURRENCE_SEPARATOR, 2)
    return parts.struct.field("field_0"), parts.struct.field("field_1").fill_null("")


def _decoded(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A frame with the stored `kind` as base `kind` + `occurrence`, in `schema`'s column order."""
    kind, occurrence = decode_kind(pl.col("kind"))
    return frame.with_columns(kind.alias("kind"), occurrence.alias("occurrence")).select(list(schema))


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _ts(moment: datetime | None) -> str:
    return _utc(moment).strftime(_TS)


def _parse_times(frame: pl.DataFrame, *names: str) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(name).str.to_datetime(_TS_POLARS, time_zone="UTC", time_unit="us") for name in names
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
        pl.when(occurrence == "")
        .then(pl.col("kind").cast(pl.String))
        .otherwise(pl.concat_str(pl.col("kind").cast(pl.String), pl.lit(OCCURRENCE_SEPARATOR), occurrence))
        .alias("kind"),
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


def _decide(
    previous: str | None, reserved_at: str | None, cutoff: str, attempted_at: str | None = None
) -> tuple[bool, str]:
    """(granted, status after) for a key whose ledger row is `previous` (None = no row)."""
    if previous is None or previous in SENDABLE_FROM:
        return True, DeliveryStatus.PENDING.value
    if previous == DeliveryStatus.PENDING and reserved_at is not None and reserved_at < cutoff:
        if attempted_at == NOT_ATTEMPTED:  # its run died before calling the provider: ours now
            return True, DeliveryStatus.PENDING.value
        return False, DeliveryStatus.IN_DOUBT.value
    return False, previous


LEASE_EXPIRED_REASON = "lease expired: a run reserved it and died before confirming; not resent"
NOT_ATTEMPTED = ""  # attempted_at of a reservation whose provider call has not started
IN_DOUBT_AFTER_DEATH = "the run died during the provider call; not resent"


# ---- interface ----------------------------------------------------------------------------


class DeliveryLedgerResource(dg.ConfigurableResource):
    """Where every send is reserved before and confirmed after the provider call (see module doc).

    `now=None` means the current time everywhere. Single-key marks are upserts (a key never
    reserved, e.g. a held-out customer, gets a row) and never overwrite a `sent` row, except
    `mark_sent` itself, which counts each confirmation in `sends`.
    """

    def reserve(
        self,
        keys: pl.DataFrame,
        campaign_id_col: str = "campaign_id",
        now: datetime | None = None,
        stale_after: timedelta = DEFAULT_LEASE,
        owner: str | None = None,
    ) -> pl.DataFrame:
        """Atomically reserve `keys` (customer_id, event_id, channel, kind, campaign id column).

        Returns one row per distinct key (`RESERVATION_SCHEMA`): `granted` true for the keys the
        caller must send now (new ones and former `failed_transient`), false with the blocking
        `status` otherwise; stale `pending` rows come back as `status == "in_doubt"` with
        `previous_status == "pending"` (they are not sent), or granted if never attempted.
        `owner` (the run id) is recorded on the granted rows for `release_owner`.
        """
        raise NotImplementedError

    def mark_sent(
        self, key: DeliveryKey, provider_message_id: str, now: datetime | None = None, campaign_id: str | None = None
    ) -> None:
        """The provider accepted the message; records its id and `sent_at`."""
        raise NotImplementedError

    def mark_attempting(self, key: DeliveryKey, reserved_at: datetime, now: datetime | None = None) -> bool:
        """Right before the provider call: record the attempt, if the reservation made at `reserved_at`
        still holds the row (pending, not attempted). False: not ours any more, do not send."""
        raise NotImplementedError

    def release_owner(self, owner: str, reason: str, now: datetime | None = None) -> tuple[int, int]:
        """A run died (`owner` = its run id): its `pending` rows never attempted become `failed_transient`
        (the next run sends them), the attempted ones `in_doubt`. Returns (released, in_doubt); idempotent."""
        raise NotImplementedError

    def mark_failed(
        self,
        key: DeliveryKey,
        reason: str,
        permanent: bool,
        now: datetime | None = None,
        campaign_id: str | None = None,
    ) -> bool:
        """`failed_permanent` (never retried) or `failed_transient` (a later reservation retries it)."""
        status = DeliveryStatus.FAILED_PERMANENT if permanent else DeliveryStatus.FAILED_TRANSIENT
        return self._set_status(key, status, reason, now, campaign_id)

    def mark_suppressed(
        self, key: DeliveryKey, reason: str, now: datetime | None = None, campaign_id: str | None = None
    ) -> bool:
        """Not sent because the customer opted out (final: later runs skip it too)."""
        return self._set_status(key, DeliveryStatus.SUPPRESSED, reason, now, campaign_id)

    def mark_held_out(self, key: DeliveryKey, now: datetime | None = None, campaign_id: str | None = None) -> bool:
        """Deliberately not sent: randomized control group (final)."""
        return self._set_status(key, DeliveryStatus.HELD_OUT, "held out (control group)", now, campaign_id)

    def mark_held_out_many(
        self, keys: pl.DataFrame, campaign_id_col: str = "campaign_id", now: datetime | None = None
    ) -> int:
        """`mark_held_out` for a frame of keys; returns rows changed (sent rows are left alone)."""
        frame = key_frame(keys, campaign_id_col)
        return sum(self.mark_held_out(_key(row), now, row["campaign_id"]) for row in frame.iter_rows(named=True))

    def mark_in_doubt(self, key: DeliveryKey, reason: str, now: datetime | None = None) -> bool:
        """The provider may or may not have the message (interrupted mid-call): never resent."""
        return self._set_status(key, DeliveryStatus.IN_DOUBT, reason, now, None)

    def release(self, keys: Sequence[DeliveryKey], reason: str, now: datetime | None = None) -> int:
        """Give back `pending` reservations never attempted (the run is aborting), as `failed_transient`
        so the next run sends them. Rows in any other status are left alone; returns rows released."""
        raise NotImplementedError

    def _set_status(
        self, key: DeliveryKey, status: DeliveryStatus, reason: str, now: datetime | None, campaign_id: str | None
    ) -> bool:
        """Upsert `status` unless the row is `sent`; returns whether a row was written."""
        raise NotImplementedError

    # -- opt-outs --

    def record_opt_out(self, customer_id: str, channel: str | None, source: str, at: datetime | None = None) -> None:
        """Record an unsubscribe / opt-out (channel None = every channel); the first record wins."""
        raise NotImplementedError

    def opt_outs(self, customer_ids: pl.Series, channel: str) -> pl.DataFrame:
        """The opt-outs covering `channel` of those customers (`OPT_OUT_SCHEMA`), earliest first per
        customer, one row per customer (checks compare `opted_out_at` with `sent_at`)."""
        raise NotImplementedError

    def opted_out(self, customer_ids: pl.Series, channel: str) -> set[str]:
        """The customers of `customer_ids` opted out of `channel` (or of every channel): the send-time check."""
        return set(self.opt_outs(customer_ids, channel)["customer_id"].to_list())

    # -- reads --

    def invitations_since(self, since: datetime, until: datetime | None = None) -> pl.DataFrame:
        """Sent invitations (kind invitation, any channel or event) with since <= sent_at < until:
        customer_id, invited_at, event_id, channel (the frequency-cap filter counts these)."""
        raise NotImplementedError

    def deliveries(self, event_id: str, channel: str | None = None, kind: str | None = None) -> pl.DataFrame:
        """Every ledger row of the event (`DELIVERY_SCHEMA`), optionally one channel / kind."""
        raise NotImplementedError

    def sent_count(self, event_id: str, channel: str | None = None, kind: str | None = None) -> int:
        """How many messages of the event were sent (optionally one channel / kind)."""
        frame = self.deliveries(event_id, channel, kind)
        return frame.filter(pl.col("status") == DeliveryStatus.SENT.value).height

    def duplicates(self, event_id: str) -> pl.DataFrame:
        """Keys of the event confirmed sent more than once (sends > 1); must always be empty."""
        frame = self.deliveries(event_id)
        return frame.filter(pl.col("sends") > 1)

    # -- provider feedback (domain/feedback.py; assets/feedback.py ingests, the send loop and the
    # circuit breaker read). Feedback frames carry naive UTC times, as the domain's frames do. --

    def messages_by_provider_id(self, provider_message_ids: pl.Series) -> pl.DataFrame:
        """The ledger rows with these provider message ids (MESSAGE_LOOKUP_SCHEMA), one per id."""
        raise NotImplementedError

    def record_feedback(self, rows: pl.DataFrame) -> int:
        """Store feedback rows (STORED_FEEDBACK_SCHEMA) once each; returns how many were new (a replay adds 0)."""
        raise NotImplementedError

    def feedback(self, event_id: str, channel: str | None = None) -> pl.DataFrame:
        """The event's stored feedback (STORED_FEEDBACK_SCHEMA), optionally one channel."""
        raise NotImplementedError

    def bounce_history(self, addresses: pl.Series, since: datetime) -> pl.DataFrame:
        """Bounces of these (normalized) addresses since `since` (FEEDBACK_SCHEMA), any event."""
        raise NotImplementedError

    def suppress_addresses(self, rows: pl.DataFrame) -> int:
        """Suppress addresses on email (SUPPRESSION_SCHEMA rows); the first record of an address
        wins; returns how many addresses were newly suppressed."""
        raise NotImplementedError

    def address_suppressions(self, addresses: pl.Series) -> pl.DataFrame:
        """The suppressions of these addresses (SUPPRESSION_SCHEMA; the input is normalized first)."""
        raise NotImplementedError

    def suppressed_addresses(self, addresses: pl.Series) -> set[str]:
        """The given addresses (as given) whose normalized form is suppressed: the send-time check."""
        given = addresses.cast(pl.String).drop_nulls().unique()
        frame = pl.DataFrame({"given": given, "address": normalize_addresses(given)}).drop_nulls()
        if frame.height == 0:
            return set()
        found = self.address_suppressions(frame["address"])["address"]
        return set(frame.filter(pl.col("address").is_in(found.implode()))["given"].to_list())

    def record_opt_outs(self, rows: pl.DataFrame) -> int:
        """`record_opt_out` for a frame (customer_id, channel (null = every channel), source,
        opted_out_at), in one batch; the first record per customer x channel wins. Returns rows new."""
        raise NotImplementedError

    def rearm_breaker(self, event_id: str, channel: str, at: datetime | None = None, by: str = "operator") -> None:
        """An operator re-arms the campaign's circuit breaker: from `at` on, only messages sent
        after it (and their feedback) count (`campaign_counts`)."""
        raise NotImplementedError

    def breaker_rearmed_at(self, event_id: str, channel: str) -> datetime | None:
        """The campaign's latest re-arm time (aware UTC), None if never re-armed."""
        raise NotImplementedError

    def deliveries_with_feedback(
        self, event_id: str, channel: str | None = None, kind: str | None = None
    ) -> pl.DataFrame:
        """`deliveries` with feedback.OUTCOME_COLUMNS (delivered_at, bounced_at, soft_bounced_at,
        complained_at): what the campaign report and the daily metrics count."""
        return message_outcomes(self.deliveries(event_id, channel, kind), self.feedback(event_id, channel))

    def campaign_counts(self, event_id: str, channel: str | None = None, *, rearmed: bool = True) -> pl.DataFrame:
        """Per channel of the event (feedback.COUNTS_SCHEMA): sent, delivered, bounced (hard),
        soft_bounced, complained, rejected. With `rearmed`, a channel whose breaker was re-armed
        counts only messages sent since (what the circuit breaker and the checks judge)."""
        deliveries, feedback = self.deliveries(event_id, channel), self.feedback(event_id, channel)
        channels = sorted(set(deliveries["channel"].drop_nulls().to_list()))
        parts = [
            campaign_counts(
                deliveries.filter(pl.col("channel") == name),
                feedback.filter(pl.col("channel") == name),
                self.breaker_rearmed_at(event_id, name) if rearmed else None,
            )
            for name in channels
        ]
        return pl.concat(parts) if parts else pl.DataFrame(schema=COUNTS_SCHEMA)


def _key(row: dict[str, Any]) -> DeliveryKey:
    """The DeliveryKey of a stored-form row (kind encoded)."""
    kind, occurrence = decode_kind(row["kind"])
    return DeliveryKey(row["customer_id"], row["event_id"], row["channel"], MessageKind(kind), str(occurrence))


_STORED_RESERVATION = {name: dtype for name, dtype in RESERVATION_SCHEMA.items() if name != "occurrence"}


def _reservation(rows: list[tuple]) -> pl.DataFrame:
    """Reservation rows (stored kind) as RESERVATION_SCHEMA (base kind + occurrence)."""
    return _decoded(pl.DataFrame(rows, schema=_STORED_RESERVATION, orient="row"), RESERVATION_SCHEMA)


# ---- SQLite -------------------------------------------------------------------------------

_LEDGER = "delivery_ledger"
_OPT_OUTS = "delivery_opt_outs"
_DDL = f"""
CREATE TABLE IF NOT EXISTS {_LEDGER} (
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    campaign_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    provider_message_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    sends INTEGER NOT NULL DEFAULT 0,
    reserved_at TEXT,
    updated_at TEXT NOT NULL,
    sent_at TEXT,
    owner TEXT,
    attempted_at TEXT,
    PRIMARY KEY (event_id, channel, kind, customer_id)
);
CREATE INDEX IF NOT EXISTS {_LEDGER}_sent ON {_LEDGER} (kind, sent_at) WHERE status = 'sent';
CREATE TABLE IF NOT EXISTS {_OPT_OUTS} (
    customer_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    source TEXT NOT NULL,
    opted_out_at TEXT NOT NULL,
    PRIMARY KEY (customer_id, channel)
);
"""
_STORED_DELIVERY = {name: dtype for name, dtype in DELIVERY_SCHEMA.items() if name != "occurrence"}
_COLUMNS = ", ".join(_STORED_DELIVERY)
# A base-kind filter matches the kind and every occurrence of it.
_KIND_FILTER = "(:kind IS NULL OR kind = :kind OR substr(kind, 1, length(:kind) + 1) = :kind || '@')"
_PK = "(event_id, channel, kind, customer_id)"
_KEY_WHERE = "event_id = :event_id AND channel = :channel AND kind = :kind AND customer_id = :customer_id"
_ADDED_COLUMNS = {"owner": "TEXT", "attempted_at": "TEXT"}  # added to ledgers created before them


def _params(key: DeliveryKey, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": key.event_id,
        "channel": key.channel,
        "kind": encode_kind(key.kind, key.occurrence),
        "customer_id": key.customer_id,
        **extra,
    }


# Provider feedback tables (added, not changed: the ledger table itself is untouched). Feedback
# is its own table keyed by what the provider reported, not columns on the delivery row: one
# message gets several reports (delivered, then a complaint), a report may arrive for a message
# the ledger does not know (sent by hand, or in doubt), and a replayed file must change nothing.
_FEEDBACK = "delivery_feedback"
_SUPPRESSIONS = "email_suppressions"
_REARMS = "breaker_rearms"
_FEEDBACK_DDL = f"""
CREATE INDEX IF NOT EXISTS {_LEDGER}_provider_message ON {_LEDGER} (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS {_FEEDBACK} (
    provider_message_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    feedback TEXT NOT NULL,
    bounce_type TEXT NOT NULL,  -- '' when not a bounce (NULLs are distinct in a key)
    occurred_at TEXT NOT NULL,
    bounce_subtype TEXT,
    source TEXT,
    event_id TEXT,
    channel TEXT,
    kind TEXT,
    customer_id TEXT,
    campaign_id TEXT,
    PRIMARY KEY (provider_message_id, recipient, feedback, bounce_type, occurred_at)
);
CREATE INDEX IF NOT EXISTS {_FEEDBACK}_event ON {_FEEDBACK} (event_id, channel);
CREATE INDEX IF NOT EXISTS {_FEEDBACK}_bounces ON {_FEEDBACK} (recipient, occurred_at) WHERE feedback = 'bounced';
CREATE TABLE IF NOT EXISTS {_SUPPRESSIONS} (
    address TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    suppressed_at TEXT NOT NULL,
    provider_message_id TEXT
);
CREATE TABLE IF NOT EXISTS {_REARMS} (
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    rearmed_at TEXT NOT NULL,
    rearmed_by TEXT,
    PRIMARY KEY (event_id, channel, rearmed_at)
);
"""
_FEEDBACK_COLUMNS = tuple(STORED_FEEDBACK_SCHEMA)
_NAIVE = pl.Datetime("us")


def _naive_times(frame: pl.DataFrame, *names: str) -> pl.DataFrame:
    """Stored UTC text as naive UTC datetimes (the domain's convention for feedback frames)."""
    return _parse_times(frame, *names).with_columns(pl.col(name).dt.replace_time_zone(None) for name in names)


def _ts_column(name: str) -> pl.Expr:
    """A datetime column (naive = UTC) as the ledger's stored text."""
    return pl.col(name).dt.replace_time_zone(None).dt.strftime(_TS_POLARS).alias(name)


def _feedback_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """STORED_FEEDBACK_SCHEMA rows as stored text (bounce_type '' for none), one per key."""
    missing = [name for name in _FEEDBACK_COLUMNS if name not in rows.columns]
    if missing:
        raise ValueError(f"feedback rows lack columns {missing}")
    return (
        rows.select(_FEEDBACK_COLUMNS)
        .with_columns(_ts_column("occurred_at"), pl.col("bounce_type").fill_null(""))
        .unique(["provider_message_id", "recipient", "feedback", "bounce_type", "occurred_at"], maintain_order=True)
    )


def _feedback_frame(rows: list[tuple]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema={**STORED_FEEDBACK_SCHEMA, "occurred_at": pl.String()}, orient="row")
    frame = _naive_times(frame, "occurred_at").with_columns(
        pl.when(pl.col("bounce_type") != "").then(pl.col("bounce_type")).alias("bounce_type")
    )
    return frame.sort("occurred_at", "provider_message_id", "recipient", "feedback")


def _suppression_rows(rows: pl.DataFrame) -> pl.DataFrame:
    return (
        rows.select(list(SUPPRESSION_SCHEMA))
        .with_columns(_ts_column("suppressed_at"))
        .sort("address", "suppressed_at")
        .unique("address", keep="first", maintain_order=True)
    )


def _suppression_frame(rows: list[tuple]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema={**SUPPRESSION_SCHEMA, "suppressed_at": pl.String()}, orient="row")
    return _naive_times(frame, "suppressed_at").sort("address")


def _opt_out_rows(rows: pl.DataFrame) -> list[tuple]:
    frame = rows.select(
        pl.col("customer_id").cast(pl.String),
        pl.col("channel").cast(pl.String).fill_null(ALL_CHANNELS),
        pl.col("source").cast(pl.String),
        _ts_column("opted_out_at"),
    ).drop_nulls(["customer_id"])
    return list(frame.sort("opted_out_at").unique(["customer_id", "channel"], maintain_order=True).iter_rows())


def _lookup_frame(rows: list[tuple]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema={**MESSAGE_LOOKUP_SCHEMA, "sent_at": pl.String()}, orient="row")
    return _parse_times(frame, "sent_at").unique("provider_message_id", keep="first").sort("provider_message_id")


def _ids(series: pl.Series) -> list[str]:
    return series.cast(pl.String).drop_nulls().unique().sort().to_list()


class _SqliteFeedback:
    """The feedback methods of `SqliteDeliveryLedger` (see the interface); batched statements."""

    def messages_by_provider_id(self, provider_message_ids: pl.Series) -> pl.DataFrame:
        ids = _ids(provider_message_ids)
        rows: list[tuple] = []
        if ids:
            with self._connect() as conn:  # type: ignore[attr-defined]
                rows = conn.execute(
                    "SELECT l.provider_message_id, l.event_id, l.channel, l.kind, l.customer_id, l.campaign_id, "
                    f"l.status, l.sent_at FROM json_each(?) AS j JOIN {_LEDGER} AS l "
                    "ON l.provider_message_id = j.value",
                    (json.dumps(ids),),
                ).fetchall()
        return _lookup_frame(rows)

    def record_feedback(self, rows: pl.DataFrame) -> int:
        frame = _feedback_rows(rows)
        if frame.height == 0:
            return 0
        placeholders = ", ".join("?" for _ in _FEEDBACK_COLUMNS)
        with self._transaction() as conn:  # type: ignore[attr-defined]
            before = conn.total_changes
            conn.executemany(
                f"INSERT INTO {_FEEDBACK} ({', '.join(_FEEDBACK_COLUMNS)}) VALUES ({placeholders}) "
                "ON CONFLICT DO NOTHING",
                frame.iter_rows(),
            )
            return conn.total_changes - before

    def feedback(self, event_id: str, channel: str | None = None) -> pl.DataFrame:
        with self._connect() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(
                f"SELECT {', '.join(_FEEDBACK_COLUMNS)} FROM {_FEEDBACK} WHERE event_id = ? "
                "AND (? IS NULL OR channel = ?)",
                (event_id, channel, channel),
            ).fetchall()
        return _feedback_frame(rows)

    def bounce_history(self, addresses: pl.Series, since: datetime) -> pl.DataFrame:
        ids = _ids(addresses)
        rows: list[tuple] = []
        if ids:
            with self._connect() as conn:  # type: ignore[attr-defined]
                rows = conn.execute(
                    f"SELECT {', '.join(_FEEDBACK_COLUMNS)} FROM json_each(?) AS j JOIN {_FEEDBACK} AS f "
                    "ON f.recipient = j.value WHERE f.feedback = 'bounced' AND f.occurred_at >= ?",
                    (json.dumps(ids), _ts(since)),
                ).fetchall()
        return _feedback_frame(rows).select(list(FEEDBACK_SCHEMA))

    def suppress_addresses(self, rows: pl.DataFrame) -> int:
        frame = _suppression_rows(rows)
        if frame.height == 0:
            return 0
        with self._transaction() as conn:  # type: ignore[attr-defined]
            before = conn.total_changes
            conn.executemany(
                f"INSERT INTO {_SUPPRESSIONS} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", frame.iter_rows()
            )
            return conn.total_changes - before

    def address_suppressions(self, addresses: pl.Series) -> pl.DataFrame:
        ids = _ids(normalize_addresses(addresses))
        rows: list[tuple] = []
        if ids:
            with self._connect() as conn:  # type: ignore[attr-defined]
                rows = conn.execute(
                    f"SELECT s.address, s.reason, s.suppressed_at, s.provider_message_id "
                    f"FROM json_each(?) AS j JOIN {_SUPPRESSIONS} AS s ON s.address = j.value",
                    (json.dumps(ids),),
                ).fetchall()
        return _suppression_frame(rows)

    def record_opt_outs(self, rows: pl.DataFrame) -> int:
        values = _opt_out_rows(rows)
        if not values:
            return 0
        with self._transaction() as conn:  # type: ignore[attr-defined]
            before = conn.total_changes
            conn.executemany(f"INSERT INTO {_OPT_OUTS} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", values)
            return conn.total_changes - before

    def rearm_breaker(self, event_id: str, channel: str, at: datetime | None = None, by: str = "operator") -> None:
        with self._transaction() as conn:  # type: ignore[attr-defined]
            conn.execute(
                f"INSERT INTO {_REARMS} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (event_id, channel, _ts(at), by)
            )

    def breaker_rearmed_at(self, event_id: str, channel: str) -> datetime | None:
        with self._connect() as conn:  # type: ignore[attr-defined]
            (latest,) = conn.execute(
                f"SELECT max(rearmed_at) FROM {_REARMS} WHERE event_id = ? AND channel = ?", (event_id, channel)
            ).fetchone()
        return None if latest is None else datetime.strptime(latest, _TS).replace(tzinfo=UTC)


class SqliteDeliveryLedger(SqliteBacked, _SqliteFeedback, DeliveryLedgerResource):
    """The ledger in one SQLite file (WAL), like `SqliteCandidateStore`: one kept connection per
    process and thread, writers take the lock up front (BEGIN IMMEDIATE) and wait up to the busy
    timeout, so concurrent step processes serialize instead of failing or double-reserving."""

    path: str = Field(description="SQLite file; may be the candidate store's; created on first use.")
    busy_timeout_seconds: float = Field(default=30.0, description="How long a call waits for another writer.")

    _sqlite: SqliteConnections | None = PrivateAttr(default=None)
    _ddl: ClassVar[str] = _DDL + _FEEDBACK_DDL

    def _db(self) -> SqliteConnections:
        fresh = self._sqlite is None
        db = super()._db()
        if fresh:  # a ledger file from before the lease columns: add them (NULL attempted_at = maybe attempted)
            with db.transaction() as conn:
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({_LEDGER})")}
                for name, kind in _ADDED_COLUMNS.items():
                    if name not in present:
                        conn.execute(f"ALTER TABLE {_LEDGER} ADD COLUMN {name} {kind}")
        return db

    def reserve(
        self,
        keys: pl.DataFrame,
        campaign_id_col: str = "campaign_id",
        now: datetime | None = None,
        stale_after: timedelta = DEFAULT_LEASE,
        owner: str | None = None,
    ) -> pl.DataFrame:
        frame = key_frame(keys, campaign_id_col)
        moment = _utc(now)
        at, cutoff = _ts(moment), _ts(moment - stale_after)
        rows: list[tuple] = []
        with self._transaction() as conn:  # the write lock is held from here: read-decide-write is atomic
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS reserve_keys "
                "(customer_id TEXT, event_id TEXT, channel TEXT, kind TEXT, campaign_id TEXT)"
            )
            conn.execute("DELETE FROM temp.reserve_keys")
            conn.executemany("INSERT INTO temp.reserve_keys VALUES (?, ?, ?, ?, ?)", frame.iter_rows())
            existing = {
                (c, e, ch, k): (status, reserved_at, attempted_at)
                for c, e, ch, k, status, reserved_at, attempted_at in conn.execute(
                    f"SELECT r.customer_id, r.event_id, r.channel, r.kind, l.status, l.reserved_at, l.attempted_at "
                    f"FROM temp.reserve_keys AS r JOIN {_LEDGER} AS l "
                    "USING (event_id, channel, kind, customer_id)"
                )
            }
            inserts, retries, doubts = [], [], []
            for customer_id, event_id, channel, kind, campaign_id in frame.iter_rows():
                previous, reserved_at, attempted_at = existing.get(
                    (customer_id, event_id, channel, kind), (None, None, None)
                )
                granted, status = _decide(previous, reserved_at, cutoff, attempted_at)
                rows.append((customer_id, event_id, channel, kind, campaign_id, granted, status, previous))
                params = (campaign_id, at, event_id, channel, kind, customer_id, owner)
                if previous is None:
                    inserts.append(params)
                elif granted:
                    retries.append(params)
                elif status == DeliveryStatus.IN_DOUBT and previous == DeliveryStatus.PENDING:
                    doubts.append((at, event_id, channel, kind, customer_id))
            inserted = conn.executemany(
                f"INSERT INTO {_LEDGER} (campaign_id, reserved_at, event_id, channel, kind, customer_id, owner, "
                "status, attempts, sends, updated_at, attempted_at) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 1, 0, ?2, '') ON CONFLICT DO NOTHING",
                inserts,
            ).rowcount
            if inserts and inserted != len(inserts):  # impossible under the lock; fail loudly, never send twice
                raise RuntimeError(f"reserved {inserted} of {len(inserts)} new keys: the ledger changed under the lock")
            conn.executemany(
                f"UPDATE {_LEDGER} SET status = 'pending', reason = NULL, attempts = attempts + 1, "
                "campaign_id = ?1, reserved_at = ?2, updated_at = ?2, owner = ?7, attempted_at = '' "
                "WHERE event_id = ?3 AND channel = ?4 AND kind = ?5 AND customer_id = ?6 "
                "AND (status = 'failed_transient' OR (status = 'pending' AND attempted_at = ''))",
                retries,
            )
            conn.executemany(
                f"UPDATE {_LEDGER} SET status = 'in_doubt', reason = '{LEASE_EXPIRED_REASON}', updated_at = ?1 "
                "WHERE event_id = ?2 AND channel = ?3 AND kind = ?4 AND customer_id = ?5 AND status = 'pending'",
                doubts,
            )
        return _reservation(rows)

    def mark_sent(
        self, key: DeliveryKey, provider_message_id: str, now: datetime | None = None, campaign_id: str | None = None
    ) -> None:
        with self._transaction() as conn:
            conn.execute(
                f"INSERT INTO {_LEDGER} (event_id, channel, kind, customer_id, campaign_id, status, "
                "provider_message_id, sends, updated_at, sent_at) "
                "VALUES (:event_id, :channel, :kind, :customer_id, :campaign_id, 'sent', :pid, 1, :at, :at) "
                f"ON CONFLICT {_PK} DO UPDATE SET status = 'sent', reason = NULL, provider_message_id = :pid, "
                "sends = sends + 1, updated_at = :at, sent_at = :at, "
                "campaign_id = coalesce(:campaign_id, campaign_id)",
                _params(key, campaign_id=campaign_id, pid=provider_message_id, at=_ts(now)),
            )

    def _set_status(
        self, key: DeliveryKey, status: DeliveryStatus, reason: str, now: datetime | None, campaign_id: str | None
    ) -> bool:
        with self._transaction() as conn:
            return (
                conn.execute(
                    f"INSERT INTO {_LEDGER} (event_id, channel, kind, customer_id, campaign_id, status, reason, "
                    "updated_at) "
                    "VALUES (:event_id, :channel, :kind, :customer_id, :campaign_id, :status, :reason, :at) "
                    f"ON CONFLICT {_PK} DO UPDATE SET status = :status, reason = :reason, updated_at = :at, "
                    "campaign_id = coalesce(:campaign_id, campaign_id) WHERE status <> 'sent'",
                    _params(key, campaign_id=campaign_id, status=status.value, reason=reason, at=_ts(now)),
                ).rowcount
                > 0
            )

    def mark_attempting(self, key: DeliveryKey, reserved_at: datetime, now: datetime | None = None) -> bool:
        with self._transaction() as conn:
            return (
                conn.execute(
                    f"UPDATE {_LEDGER} SET attempted_at = :at, updated_at = :at WHERE {_KEY_WHERE} "
                    "AND status = 'pending' AND attempted_at = '' AND reserved_at = :reserved",
                    _params(key, at=_ts(now), reserved=_ts(reserved_at)),
                ).rowcount
                > 0
            )

    def release_owner(self, owner: str, reason: str, now: datetime | None = None) -> tuple[int, int]:
        params = {"owner": owner, "at": _ts(now), "reason": f"{reason}: reserved, never attempted; released"}
        with self._transaction() as conn:
            released = conn.execute(
                f"UPDATE {_LEDGER} SET status = 'failed_transient', reason = :reason, updated_at = :at "
                "WHERE owner = :owner AND status = 'pending' AND attempted_at = ''",
                params,
            ).rowcount
            doubted = conn.execute(
                f"UPDATE {_LEDGER} SET status = 'in_doubt', reason = :reason, updated_at = :at "
                "WHERE owner = :owner AND status = 'pending'",
                params | {"reason": f"{reason}: {IN_DOUBT_AFTER_DEATH}"},
            ).rowcount
        return released, doubted

    def release(self, keys: Sequence[DeliveryKey], reason: str, now: datetime | None = None) -> int:
        at = _ts(now)
        with self._transaction() as conn:
            cursor = conn.executemany(
                f"UPDATE {_LEDGER} SET status = 'failed_transient', reason = :reason, updated_at = :at "
                f"WHERE {_KEY_WHERE} AND status = 'pending'",
                [_params(key, reason=reason, at=at) for key in keys],
            )
            return max(cursor.rowcount, 0)

    def record_opt_out(self, customer_id: str, channel: str | None, source: str, at: datetime | None = None) -> None:
        with self._transaction() as conn:
            conn.execute(
                f"INSERT INTO {_OPT_OUTS} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (customer_id, channel or ALL_CHANNELS, source, _ts(at)),
            )

    def opt_outs(self, customer_ids: pl.Series, channel: str) -> pl.DataFrame:
        ids = customer_ids.cast(pl.String).drop_nulls().unique().to_list()
        rows: list[tuple] = []
        if ids:
            with self._connect() as conn:
                rows = conn.execute(
                    f"SELECT o.customer_id, o.channel, o.source, o.opted_out_at "
                    f"FROM json_each(?) AS j JOIN {_OPT_OUTS} AS o "
                    "ON o.customer_id = j.value WHERE o.channel IN (?, ?)",
                    (json.dumps(ids), channel, ALL_CHANNELS),
                ).fetchall()
        return _opt_out_frame(rows)

    def invitations_since(self, since: datetime, until: datetime | None = None) -> pl.DataFrame:
        upper = _ts(until) if until is not None else "9999"
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT customer_id, sent_at, event_id, channel FROM {_LEDGER} "
                "WHERE kind = ? AND status = 'sent' AND sent_at >= ? AND sent_at < ? ORDER BY sent_at",
                (MessageKind.INVITATION.value, _ts(since), upper),
            ).fetchall()
        frame = pl.DataFrame(rows, schema={**INVITATIONS_SCHEMA, "invited_at": pl.String()}, orient="row")
        return _parse_times(frame, "invited_at")

    def deliveries(self, event_id: str, channel: str | None = None, kind: str | None = None) -> pl.DataFrame:
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {_LEDGER} WHERE event_id = :event_id "
                f"AND (:channel IS NULL OR channel = :channel) AND {_KIND_FILTER} "
                "ORDER BY channel, kind, customer_id",
                {"event_id": event_id, "channel": channel, "kind": None if kind is None else str(kind)},
            ).fetchall()
        return _delivery_frame(rows)

    def sent_count(self, event_id: str, channel: str | None = None, kind: str | None = None) -> int:
        with self._connect() as conn:
            return int(
                conn.execute(
                    f"SELECT count(*) FROM {_LEDGER} WHERE event_id = :event_id AND status = 'sent' "
                    f"AND (:channel IS NULL OR channel = :channel) AND {_KIND_FILTER}",
                    {"event_id": event_id, "channel": channel, "kind": None if kind is None else str(kind)},
                ).fetchone()[0]
            )


def _opt_out_frame(rows: list[tuple]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema={**OPT_OUT_SCHEMA, "opted_out_at": pl.String()}, orient="row")
    frame = _parse_times(frame, "opted_out_at").sort("customer_id", "opted_out_at", "channel")
    return frame.unique("customer_id", keep="first", maintain_order=True)


def _delivery_frame(rows: list[tuple]) -> pl.DataFrame:
    """Stored ledger rows (kind encoded, times as text) as DELIVERY_SCHEMA."""
    times = ("reserved_at", "updated_at", "sent_at")
    schema = {name: (pl.String() if name in times else dtype) for name, dtype in _STORED_DELIVERY.items()}
    return _decoded(_parse_times(pl.DataFrame(rows, schema=schema, orient="row"), *times), DELIVERY_SCHEMA)


# ---- DynamoDB -----------------------------------------------------------------------------

SENT_INDEX = "SENT"
OWNER_INDEX = "OWNER"


MESSAGE_INDEX = "MESSAGE"
MESSAGE_INDEX_DEFINITION: dict[str, Any] = {
    "IndexName": MESSAGE_INDEX,
    "KeySchema": [{"AttributeName": "provider_message_id", "KeyType": "HASH"}],
    "Projection": {
        "ProjectionType": "INCLUDE",
        "NonKeyAttributes": ["customer_id", "event_id", "channel", "kind", "campaign_id", "status", "sent_at"],
    },
}


def add_message_index(client: Any, table_name: str) -> bool:
    """Add the MESSAGE index to a ledger table created without it; returns whether it was added."""
    indexes = client.describe_table(TableName=table_name)["Table"].get("GlobalSecondaryIndexes", [])
    if any(index["IndexName"] == MESSAGE_INDEX for index in indexes):
        return False
    client.update_table(
        TableName=table_name,
        AttributeDefinitions=[{"AttributeName": "provider_message_id", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[{"Create": MESSAGE_INDEX_DEFINITION}],
    )
    return True


def ledger_table_definition(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the ledger table.

    pk = EVENT#{event_id}, sk = DELIVERY#{channel}#{encode_kind(kind, occurrence)}#{customer_id} (an event's deliveries
    are one Query); opt-outs share the table as pk = OPTOUT#{customer_id}, sk = CHANNEL#{channel|*}.
    Sparse GSI SENT: only sent rows carry sent_pk = SENT#{kind}#{YYYY-MM-DD} and
    sent_sk = {sent_at}#{event_id}#{channel}#{customer_id}, so `invitations_since` queries one
    partition per day (keys only + the attributes it reads).
    Sparse GSI MESSAGE on provider_message_id (rows the provider accepted): provider feedback
    finds its message. Feedback items: pk = EVENT#{event_id} (FEEDBACK#UNMATCHED when no ledger
    row), sk = FEEDBACK#{channel}#{message}#{recipient}#{feedback}#{bounce type}#{time}; bounces
    also as pk = BOUNCES#{address}, sk = {time}#{message}; suppressions pk = SUPPRESSED#{address},
    sk = EMAIL; breaker re-arms pk = BREAKER#{event_id}, sk = REARM#{channel}#{time}. A table
    created before the MESSAGE index needs it added once (`add_message_index`).
    Sparse GSI OWNER: rows reserved by a known run carry lease_owner = its run id, so
    `release_owner` finds a dead run's reservations in one query (status and attempted_at included).
    """
    return {
        "TableName": name,
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "AttributeDefinitions": [
            {"AttributeName": name_, "AttributeType": "S"}
            for name_ in ("pk", "sk", "sent_pk", "sent_sk", "provider_message_id", "lease_owner")
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": SENT_INDEX,
                "KeySchema": [
                    {"AttributeName": "sent_pk", "KeyType": "HASH"},
                    {"AttributeName": "sent_sk", "KeyType": "RANGE"},
                ],
                "Projection": {
                    "ProjectionType": "INCLUDE",
                    "NonKeyAttributes": ["customer_id", "event_id", "channel", "sent_at"],
                },
            },
            MESSAGE_INDEX_DEFINITION,
            {
                "IndexName": OWNER_INDEX,
                "KeySchema": [{"AttributeName": "lease_owner", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["status", "attempted_at"]},
            },
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_ledger_table(client: Any, table_name: str) -> bool:
    """Create the ledger table unless it exists and wait until it is active; returns whether created."""
    return create_table_if_missing(client, ledger_table_definition(table_name))


def _ddb_key(key: DeliveryKey) -> dict[str, dict[str, str]]:
    return {
        "pk": {"S": f"EVENT#{key.event_id}"},
        "sk": {"S": f"DELIVERY#{key.channel}#{encode_kind(key.kind, key.occurrence)}#{key.customer_id}"},
    }


def _key_attrs(key: DeliveryKey) -> dict[str, dict[str, str]]:
    return {
        ":customer_id": {"S": key.customer_id},
        ":event_id": {"S": key.event_id},
        ":channel": {"S": key.channel},
        ":kind": {"S": encode_kind(key.kind, key.occurrence)},
    }


_KEY_SET = "customer_id = :customer_id, event_id = :event_id, channel = :channel, kind = :kind"
_NAMES = {"#status": "status"}  # a reserved word


def _s(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value.get("S") if value else None


def _n(item: dict[str, Any], name: str) -> int:
    value = item.get(name)
    return int(value["N"]) if value and "N" in value else 0


_UNMATCHED = "FEEDBACK#UNMATCHED"


def _item(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    """A DynamoDB item of string attributes (nulls left out). `provider_message_id` is stored as
    `message_id`: only delivery rows may carry the MESSAGE index's key."""
    renamed = {("message_id" if name == "provider_message_id" else name): value for name, value in values.items()}
    return {name: {"S": str(value)} for name, value in renamed.items() if value is not None}


def _attr(item: dict[str, Any], name: str) -> str | None:
    return _s(item, "message_id" if name == "provider_message_id" else name)


def _feedback_key(row: dict[str, Any]) -> dict[str, dict[str, str]]:
    pk = f"EVENT#{row['event_id']}" if row.get("event_id") else _UNMATCHED
    parts = (row.get("channel") or "-", row["provider_message_id"], row["recipient"], row["feedback"],
             row["bounce_type"] or "", row["occurred_at"])  # fmt: skip
    return {"pk": {"S": pk}, "sk": {"S": "FEEDBACK#" + "#".join(parts)}}


def _key_id(key: dict[str, dict[str, str]]) -> tuple[str, str]:
    return key["pk"]["S"], key["sk"]["S"]


class _DynamoDBFeedback:
    """The feedback methods of `DynamoDBDeliveryLedger` (see the interface and the table layout in
    `ledger_table_definition`). Writes go in BatchWriteItem requests of 25 after one BatchGetItem
    pass finds what already exists, so a replay writes nothing and the counts are of new rows.
    Two ingestions racing on the same address may both write it (the later time wins); the
    ingestion is one run at a time per feed, so this does not happen in practice."""

    def _batch_get(self, keys: list[dict[str, Any]], attributes: str | None = None) -> list[dict[str, Any]]:
        unique = list({_key_id(key): key for key in keys}.values())
        chunks = [unique[start : start + 100] for start in range(0, len(unique), 100)]

        def fetch(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            spec: dict[str, Any] = {"Keys": chunk, "ConsistentRead": True}
            if attributes:
                spec["ProjectionExpression"] = attributes
            request: dict[str, Any] = {self.table_name: spec}  # type: ignore[attr-defined]
            for _ in range(10):
                response = self.client().batch_get_item(RequestItems=request)  # type: ignore[attr-defined]
                found += response["Responses"].get(self.table_name, [])  # type: ignore[attr-defined]
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    return found
                time.sleep(0.05)
            raise RuntimeError("ledger batch read still unprocessed after 10 tries")

        return [item for items in self._parallel(fetch, chunks) for item in items]  # type: ignore[attr-defined]

    def _batch_write(self, items: list[dict[str, Any]]) -> None:
        unique = list({_key_id(item): item for item in items}.values())
        chunks = [unique[start : start + 25] for start in range(0, len(unique), 25)]

        def write(chunk: list[dict[str, Any]]) -> None:
            request: dict[str, Any] = {self.table_name: [{"PutRequest": {"Item": item}} for item in chunk]}  # type: ignore[attr-defined]
            for _ in range(10):
                response = self.client().batch_write_item(RequestItems=request)  # type: ignore[attr-defined]
                request = response.get("UnprocessedItems") or {}
                if not request:
                    return
                time.sleep(0.05)
            raise RuntimeError("ledger batch write still unprocessed after 10 tries")

        self._parallel(write, chunks)  # type: ignore[attr-defined]

    def _write_new(self, items: list[dict[str, Any]]) -> int:
        """Write the items whose key is not in the table yet; returns how many."""
        keys = [{"pk": item["pk"], "sk": item["sk"]} for item in items]
        existing = {_key_id(item) for item in self._batch_get(keys, "pk, sk")}
        new = list({_key_id(item): item for item in items if _key_id(item) not in existing}.values())
        self._batch_write(new)
        return len(new)

    def messages_by_provider_id(self, provider_message_ids: pl.Series) -> pl.DataFrame:
        def one(message_id: str) -> list[tuple]:
            items = self._query(  # type: ignore[attr-defined]
                IndexName=MESSAGE_INDEX,
                KeyConditionExpression="provider_message_id = :id",
                ExpressionAttributeValues={":id": {"S": message_id}},
            )
            names = ("event_id", "channel", "kind", "customer_id", "campaign_id", "status", "sent_at")
            return [
                (message_id, *(_s(item, name) for name in names))
                for item in items
                if (_s(item, "sk") or "").startswith("DELIVERY#")
            ]

        ids = _ids(provider_message_ids)
        return _lookup_frame([row for rows in self._parallel(one, ids) for row in rows])  # type: ignore[attr-defined]

    def record_feedback(self, rows: pl.DataFrame) -> int:
        frame = _feedback_rows(rows)
        items, bounces = [], []
        for row in frame.iter_rows(named=True):
            items.append({**_feedback_key(row), **_item({**row, "bounce_type": row["bounce_type"] or None})})
            if row["feedback"] == "bounced":
                bounces.append(
                    {
                        "pk": {"S": f"BOUNCES#{row['recipient']}"},
                        "sk": {"S": f"{row['occurred_at']}#{row['provider_message_id']}#{row['bounce_type']}"},
                        **_item({name: row[name] for name in FEEDBACK_SCHEMA}),
                    }
                )
        added = self._write_new(items)
        self._batch_write(bounces)  # same key, same content: a replay rewrites nothing new
        return added

    def _feedback_items(self, items: Iterator[dict[str, Any]]) -> pl.DataFrame:
        rows = [tuple(_attr(item, name) or ("" if name == "bounce_type" else None) for name in _FEEDBACK_COLUMNS)
                for item in items]  # fmt: skip
        return _feedback_frame(rows)

    def feedback(self, event_id: str, channel: str | None = None) -> pl.DataFrame:
        items = self._query(  # type: ignore[attr-defined]
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={
                ":pk": {"S": f"EVENT#{event_id}"},
                ":prefix": {"S": "FEEDBACK#" + (f"{channel}#" if channel is not None else "")},
            },
            ConsistentRead=True,
        )
        return self._feedback_items(items)

    def bounce_history(self, addresses: pl.Series, since: datetime) -> pl.DataFrame:
        low = _ts(since)

        def one(address: str) -> list[dict[str, Any]]:
            return list(
                self._query(  # type: ignore[attr-defined]
                    KeyConditionExpression="pk = :pk AND sk >= :low",
                    ExpressionAttributeValues={":pk": {"S": f"BOUNCES#{address}"}, ":low": {"S": low}},
                    ConsistentRead=True,
                )
            )

        items = [item for found in self._parallel(one, _ids(addresses)) for item in found]  # type: ignore[attr-defined]
        return self._feedback_items(iter(items)).select(list(FEEDBACK_SCHEMA))

    def suppress_addresses(self, rows: pl.DataFrame) -> int:
        items = [
            {"pk": {"S": f"SUPPRESSED#{row['address']}"}, "sk": {"S": "EMAIL"}, **_item(row)}
            for row in _suppression_rows(rows).iter_rows(named=True)
        ]
        return self._write_new(items)

    def address_suppressions(self, addresses: pl.Series) -> pl.DataFrame:
        keys = [{"pk": {"S": f"SUPPRESSED#{a}"}, "sk": {"S": "EMAIL"}} for a in _ids(normalize_addresses(addresses))]
        items = self._batch_get(keys)
        return _suppression_frame([tuple(_attr(item, name) for name in SUPPRESSION_SCHEMA) for item in items])

    def record_opt_outs(self, rows: pl.DataFrame) -> int:
        items = [
            {
                "pk": {"S": f"OPTOUT#{customer_id}"},
                "sk": {"S": f"CHANNEL#{channel}"},
                **_item({"customer_id": customer_id, "source": source, "opted_out_at": at}),
            }
            for customer_id, channel, source, at in _opt_out_rows(rows)
        ]
        return self._write_new(items)

    def rearm_breaker(self, event_id: str, channel: str, at: datetime | None = None, by: str = "operator") -> None:
        moment = _ts(at)
        self.client().put_item(  # type: ignore[attr-defined]
            TableName=self.table_name,  # type: ignore[attr-defined]
            Item={"pk": {"S": f"BREAKER#{event_id}"}, "sk": {"S": f"REARM#{channel}#{moment}"},
                  **_item({"event_id": event_id, "channel": channel, "rearmed_at": moment, "rearmed_by": by})},
        )  # fmt: skip

    def breaker_rearmed_at(self, event_id: str, channel: str) -> datetime | None:
        response = self.client().query(  # type: ignore[attr-defined]
            TableName=self.table_name,  # type: ignore[attr-defined]
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": f"BREAKER#{event_id}"}, ":prefix": {"S": f"REARM#{channel}#"}},
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = response.get("Items", [])
        latest = _s(items[0], "rearmed_at") if items else None
        return None if latest is None else datetime.strptime(latest, _TS).replace(tzinfo=UTC)


class DynamoDBDeliveryLedger(DynamoDBClient, _DynamoDBFeedback, DeliveryLedgerResource):
    """The ledger on its own DynamoDB table (`ledger_table_definition`); conditional writes make
    each reservation atomic per key. botocore's standard retries handle throttling; a
    conditional-check failure is an answer (someone else holds the key), not an error.

    One partition per event holds its deliveries: a 50,000-key reservation is 50,000 small
    writes, spread by `max_parallel_requests` threads (DynamoDB adapts a hot partition).
    """

    table_name: str = Field(description="The ledger table (see ledger_table_definition).")
    max_parallel_requests: int = Field(default=8, ge=1, le=64, description="Threads issuing per-key requests.")

    _table_definition = staticmethod(ledger_table_definition)

    def _get(self, key: DeliveryKey) -> dict[str, Any] | None:
        return self.client().get_item(TableName=self.table_name, Key=_ddb_key(key), ConsistentRead=True).get("Item")

    def _reserve_one(self, row: tuple, at: str, cutoff: str, owner: str | None = None) -> tuple:
        customer_id, event_id, channel, kind, campaign_id = row  # kind as stored
        key = _key({"customer_id": customer_id, "event_id": event_id, "channel": channel, "kind": kind})
        client = self.client()
        item = {
            **_ddb_key(key),
            "customer_id": {"S": customer_id},
            "event_id": {"S": event_id},
            "channel": {"S": channel},
            "kind": {"S": kind},
            "status": {"S": DeliveryStatus.PENDING.value},
            "attempts": {"N": "1"},
            "sends": {"N": "0"},
            "reserved_at": {"S": at},
            "updated_at": {"S": at},
            "attempted_at": {"S": NOT_ATTEMPTED},
        }
        if campaign_id is not None:
            item["campaign_id"] = {"S": campaign_id}
        if owner is not None:
            item["lease_owner"] = {"S": owner}
        try:
            client.put_item(TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)")
            return (*row, True, DeliveryStatus.PENDING.value, None)
        except ClientError as error:
            if not is_conditional_failure(error):
                raise
        for _ in range(5):  # the row exists: decide from its current state, flip it conditionally
            current = self._get(key) or {}
            previous, reserved_at = _s(current, "status"), _s(current, "reserved_at")
            if previous is None:  # deleted meanwhile (never happens in normal operation)
                return (*row, False, DeliveryStatus.IN_DOUBT.value, None)
            granted, status = _decide(previous, reserved_at, cutoff, _s(current, "attempted_at"))
            if status == previous and not granted:
                return (*row, False, status, previous)
            values: dict[str, Any] = {":previous": {"S": previous}, ":status": {"S": status}, ":at": {"S": at}}
            if granted:
                update = "SET #status = :status, reserved_at = :at, updated_at = :at, attempts = attempts + :one"
                update += ", attempted_at = :not_attempted"
                values |= {":one": {"N": "1"}, ":not_attempted": {"S": NOT_ATTEMPTED}}
                if campaign_id is not None:
                    update += ", campaign_id = :campaign"
                    values[":campaign"] = {"S": campaign_id}
                if owner is not None:
                    update += ", lease_owner = :owner REMOVE reason"
                    values[":owner"] = {"S": owner}
                else:
                    update += " REMOVE reason, lease_owner"
                condition = "#status = :previous"
                if previous == DeliveryStatus.PENDING:  # taking over a dead run's unattempted row
                    condition += " AND reserved_at = :reserved AND attempted_at = :not_attempted"
                    values[":reserved"] = {"S": reserved_at or ""}
            else:
                update = "SET #status = :status, reason = :reason, updated_at = :at"
                values |= {":reason": {"S": LEASE_EXPIRED_REASON}, ":reserved": {"S": reserved_at or ""}}
                condition = "#status = :previous AND reserved_at = :reserved"
            try:
                client.update_item(
                    TableName=self.table_name,
                    Key=_ddb_key(key),
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeNames=_NAMES,
                    ExpressionAttributeValues=values,
                )
                return (*row, granted, status, previous)
            except ClientError as error:
                if not is_conditional_failure(error):
                    raise
        raise RuntimeError(f"could not settle the reservation of {key}: the row keeps changing")

    def reserve(
        self,
        keys: pl.DataFrame,
        campaign_id_col: str = "campaign_id",
        now: datetime | None = None,
        stale_after: timedelta = DEFAULT_LEASE,
        owner: str | None = None,
    ) -> pl.DataFrame:
        frame = key_frame(keys, campaign_id_col)
        moment = _utc(now)
        at, cutoff = _ts(moment), _ts(moment - stale_after)
        rows = list(frame.iter_rows())
        return _reservation(self._parallel(lambda row: self._reserve_one(row, at, cutoff, owner), rows))

    def mark_sent(
        self, key: DeliveryKey, provider_message_id: str, now: datetime | None = None, campaign_id: str | None = None
    ) -> None:
        at = _ts(now)
        update = (
            f"SET #status = :sent, provider_message_id = :pid, updated_at = :at, sent_at = :at, {_KEY_SET}, "
            "sends = if_not_exists(sends, :zero) + :one, sent_pk = :sent_pk, sent_sk = :sent_sk"
        )
        values = {
            **_key_attrs(key),
            ":sent": {"S": DeliveryStatus.SENT.value},
            ":pid": {"S": provider_message_id},
            ":at": {"S": at},
            ":zero": {"N": "0"},
            ":one": {"N": "1"},
            ":sent_pk": {"S": f"SENT#{key.kind}#{at[:10]}"},
            ":sent_sk": {"S": f"{at}#{key.event_id}#{key.channel}#{key.customer_id}"},
        }
        if campaign_id is not None:
            update += ", campaign_id = :campaign"
            values[":campaign"] = {"S": campaign_id}
        self.client().update_item(
            TableName=self.table_name,
            Key=_ddb_key(key),
            UpdateExpression=update + " REMOVE reason",
            ExpressionAttributeNames=_NAMES,
            ExpressionAttributeValues=values,
        )

    def _set_status(
        self, key: DeliveryKey, status: DeliveryStatus, reason: str, now: datetime | None, campaign_id: str | None
    ) -> bool:
        update = f"SET #status = :status, reason = :reason, updated_at = :at, {_KEY_SET}"
        update += ", attempts = if_not_exists(attempts, :zero), sends = if_not_exists(sends, :zero)"
        values = {
            **_key_attrs(key),
            ":status": {"S": status.value},
            ":reason": {"S": reason},
            ":at": {"S": _ts(now)},
            ":sent": {"S": DeliveryStatus.SENT.value},
            ":zero": {"N": "0"},
        }
        if campaign_id is not None:
            update += ", campaign_id = :campaign"
            values[":campaign"] = {"S": campaign_id}
        try:
            self.client().update_item(
                TableName=self.table_name,
                Key=_ddb_key(key),
                UpdateExpression=update,
                ConditionExpression="attribute_not_exists(pk) OR #status <> :sent",
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if is_conditional_failure(error):
                return False
            raise
        return True

    def mark_attempting(self, key: DeliveryKey, reserved_at: datetime, now: datetime | None = None) -> bool:
        try:
            self.client().update_item(
                TableName=self.table_name,
                Key=_ddb_key(key),
                UpdateExpression="SET attempted_at = :at, updated_at = :at",
                ConditionExpression="#status = :pending AND attempted_at = :not_attempted AND reserved_at = :reserved",
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":at": {"S": _ts(now)},
                    ":pending": {"S": DeliveryStatus.PENDING.value},
                    ":not_attempted": {"S": NOT_ATTEMPTED},
                    ":reserved": {"S": _ts(reserved_at)},
                },
            )
        except ClientError as error:
            if is_conditional_failure(error):
                return False
            raise
        return True

    def _owned_pending(self, owner: str) -> list[dict[str, Any]]:
        """Keys of `owner`'s pending rows: from the OWNER index, or a filtered scan on a table made before it."""
        request: dict[str, Any] = {
            "FilterExpression": "#status = :pending",
            "ExpressionAttributeNames": _NAMES,
            "ExpressionAttributeValues": {":pending": {"S": DeliveryStatus.PENDING.value}, ":owner": {"S": owner}},
        }
        try:
            items = list(self._query(IndexName=OWNER_INDEX, KeyConditionExpression="lease_owner = :owner", **request))
        except ClientError as error:
            if error.response["Error"]["Code"] != "ValidationException":
                raise
            request["FilterExpression"] += " AND lease_owner = :owner"
            items, scan = [], dict(request)
            while True:
                response = self.client().scan(TableName=self.table_name, **scan)
                items += response.get("Items", [])
                if "LastEvaluatedKey" not in response:
                    break
                scan["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return [{"pk": item["pk"], "sk": item["sk"]} for item in items]

    def release_owner(self, owner: str, reason: str, now: datetime | None = None) -> tuple[int, int]:
        at = _ts(now)
        outcomes = (
            (
                DeliveryStatus.FAILED_TRANSIENT,
                f"{reason}: reserved, never attempted; released",
                " AND attempted_at = :not_attempted",
            ),
            (DeliveryStatus.IN_DOUBT, f"{reason}: {IN_DOUBT_AFTER_DEATH}", ""),
        )

        def one(key: dict[str, Any]) -> DeliveryStatus | None:
            for status, why, extra in outcomes:  # unattempted first; attempted (or unknown) ones are in doubt
                values = {
                    ":status": {"S": status.value},
                    ":reason": {"S": why},
                    ":at": {"S": at},
                    ":pending": {"S": DeliveryStatus.PENDING.value},
                    ":owner": {"S": owner},
                }
                if extra:
                    values[":not_attempted"] = {"S": NOT_ATTEMPTED}
                try:
                    self.client().update_item(
                        TableName=self.table_name,
                        Key=key,
                        UpdateExpression="SET #status = :status, reason = :reason, updated_at = :at",
                        ConditionExpression="#status = :pending AND lease_owner = :owner" + extra,
                        ExpressionAttributeNames=_NAMES,
                        ExpressionAttributeValues=values,
                    )
                    return status
                except ClientError as error:
                    if not is_conditional_failure(error):
                        raise
            return None

        done = Counter(self._parallel(one, self._owned_pending(owner)))
        return done[DeliveryStatus.FAILED_TRANSIENT], done[DeliveryStatus.IN_DOUBT]

    def release(self, keys: Sequence[DeliveryKey], reason: str, now: datetime | None = None) -> int:
        at = _ts(now)

        def one(key: DeliveryKey) -> int:
            try:
                self.client().update_item(
                    TableName=self.table_name,
                    Key=_ddb_key(key),
                    UpdateExpression="SET #status = :failed, reason = :reason, updated_at = :at",
                    ConditionExpression="#status = :pending",
                    ExpressionAttributeNames=_NAMES,
                    ExpressionAttributeValues={
                        ":failed": {"S": DeliveryStatus.FAILED_TRANSIENT.value},
                        ":pending": {"S": DeliveryStatus.PENDING.value},
                        ":reason": {"S": reason},
                        ":at": {"S": at},
                    },
                )
            except ClientError as error:
                if is_conditional_failure(error):
                    return 0
                raise
            return 1

        return sum(self._parallel(one, list(keys)))

    def record_opt_out(self, customer_id: str, channel: str | None, source: str, at: datetime | None = None) -> None:
        try:
            self.client().put_item(
                TableName=self.table_name,
                Item={
                    "pk": {"S": f"OPTOUT#{customer_id}"},
                    "sk": {"S": f"CHANNEL#{channel or ALL_CHANNELS}"},
                    "customer_id": {"S": customer_id},
                    "source": {"S": source},
                    "opted_out_at": {"S": _ts(at)},
                },
                ConditionExpression="attribute_not_exists(pk)",  # the first record wins
            )
        except ClientError as error:
            if not is_conditional_failure(error):
                raise

    def opt_outs(self, customer_ids: pl.Series, channel: str) -> pl.DataFrame:
        ids = customer_ids.cast(pl.String).drop_nulls().unique().to_list()
        keys = [
            {"pk": {"S": f"OPTOUT#{customer_id}"}, "sk": {"S": f"CHANNEL#{name}"}}
            for customer_id in ids
            for name in dict.fromkeys((channel, ALL_CHANNELS))
        ]
        chunks = [keys[start : start + 100] for start in range(0, len(keys), 100)]  # BatchGetItem's limit

        def fetch(chunk: list[dict[str, Any]]) -> list[tuple]:
            found: list[tuple] = []
            request: dict[str, Any] = {self.table_name: {"Keys": chunk, "ConsistentRead": True}}
            for _ in range(10):
                response = self.client().batch_get_item(RequestItems=request)
                found += [
                    (_s(item, "customer_id"), (_s(item, "sk") or "")[len("CHANNEL#") :], _s(item, "source"),
                     _s(item, "opted_out_at"))
                    for item in response["Responses"].get(self.table_name, [])
                ]  # fmt: skip
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    return found
                time.sleep(0.05)
            raise RuntimeError("opt-out lookup still unprocessed after 10 tries; refusing to send unchecked")

        return _opt_out_frame([row for rows in self._parallel(fetch, chunks) for row in rows])

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        while True:
            response = self.client().query(TableName=self.table_name, **kwargs)
            yield from response.get("Items", [])
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def invitations_since(self, since: datetime, until: datetime | None = None) -> pl.DataFrame:
        start, end = _utc(since), _utc(until)
        days = [(start + timedelta(days=offset)).strftime("%Y-%m-%d") for offset in range((end - start).days + 2)]
        days = sorted({day for day in days if day <= end.strftime("%Y-%m-%d")})
        low, high = _ts(start), _ts(end)

        def day_rows(day: str) -> list[tuple]:
            items = self._query(
                IndexName=SENT_INDEX,
                KeyConditionExpression="sent_pk = :pk AND sent_sk BETWEEN :low AND :high",
                ExpressionAttributeValues={
                    ":pk": {"S": f"SENT#{MessageKind.INVITATION}#{day}"},
                    ":low": {"S": low},
                    ":high": {"S": high},
                },
            )
            return [
                (_s(i, "customer_id"), _s(i, "sent_at"), _s(i, "event_id"), _s(i, "channel"))
                for i in items
                if (_s(i, "sent_at") or "") < high or until is None
            ]

        rows = [row for rows in self._parallel(day_rows, days) for row in rows]
        frame = pl.DataFrame(rows, schema={**INVITATIONS_SCHEMA, "invited_at": pl.String()}, orient="row")
        return _parse_times(frame, "invited_at").sort("invited_at")

    def deliveries(self, event_id: str, channel: str | None = None, kind: str | None = None) -> pl.DataFrame:
        # `kind` is a base kind: the prefix also matches its `kind@occurrence` rows; the filter below
        # drops kinds that merely start with it.
        prefix = "DELIVERY#" + (f"{channel}#" + (str(kind) if kind is not None else "") if channel is not None else "")
        items = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": f"EVENT#{event_id}"}, ":prefix": {"S": prefix}},
            ConsistentRead=True,
        )
        rows = [
            (
                *(_s(item, name) for name in ("customer_id", "event_id", "channel", "kind", "campaign_id")),
                *(_s(item, name) for name in ("status", "reason", "provider_message_id")),
                _n(item, "attempts"),
                _n(item, "sends"),
                *(_s(item, name) for name in ("reserved_at", "updated_at", "sent_at")),
            )
            for item in items
        ]
        frame = _delivery_frame(rows)
        if kind is not None:
            frame = frame.filter(pl.col("kind") == str(kind))
        return frame.sort("channel", "kind", "occurrence", "customer_id")  # SQLite's order (kind@occurrence)
