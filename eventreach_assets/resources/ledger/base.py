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
   not, nobody ever sent it and the new reservation takes it over (`decide`).
   Each reservation records its `owner` (the Dagster run id, or none) and `reserved_at`.
2. `mark_attempting` right before the provider call: a conditional write that succeeds only
   while this very reservation (same `reserved_at`, still pending, not yet attempted) holds the
   row. `attempted_at` is '' from reservation to attempt (NULL on rows older than this column:
   treated as attempted, the safe side).
   `mark_attempting_many` does it for a window of in-flight messages in one call.
3. Call the provider, then confirm with `mark_sent` (provider message id) or `mark_failed`;
   `mark_sent_many` confirms a window's acceptances in one call.
   `mark_suppressed` (opted out at send time), `mark_held_out` (control group) and `release`
   (reserved but not attempted because the run is aborting) complete the set.
4. `release_owner`: the run-failure sensor gives back a dead run's unattempted reservations
   and marks its attempted-but-unconfirmed ones `in_doubt` (at most the in-flight window per hard kill).

Reservation is atomic per key: SQLite does it in one `BEGIN IMMEDIATE` transaction with
`INSERT ... ON CONFLICT DO NOTHING`; DynamoDB with a conditional `PutItem`
(`attribute_not_exists(pk)`) and conditional `UpdateItem`s for the status flips, so two runs
reserving the same keys at once each get a disjoint share.

Opt-outs live in the ledger too (customer x channel, or all channels): the send loop checks them
right before sending, so an unsubscribe recorded after the weekly batch still suppresses the send.

`DeliveryLedgerResource` holds what both backends share (arguments to stored form, the
reservation rule, frames, counts); a backend implements the small abstract reads and writes,
which take and return stored values (`keys.py`, `records.py`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import dagster as dg
import polars as pl

from eventreach_assets.domain.delivery import DeliveryKey, DeliveryStatus, SentConfirmation
from eventreach_assets.domain.feedback import (
    COUNTS_SCHEMA,
    FEEDBACK_SCHEMA,
    campaign_counts,
    message_outcomes,
    normalize_addresses,
)
from eventreach_assets.domain.sending import DEFAULT_LEASE
from eventreach_assets.resources.ledger.keys import key_frame, stored_key
from eventreach_assets.resources.ledger.records import (
    ALL_CHANNELS,
    delivery_frame,
    distinct_ids,
    feedback_frame,
    invitations_frame,
    lookup_frame,
    opt_out_frame,
    parse_stored_time,
    reservation_frame,
    stored_feedback,
    stored_opt_outs,
    stored_suppressions,
    stored_time,
    suppression_frame,
    to_utc,
)

# Statuses a new reservation may send from (absent = never seen).
SENDABLE_FROM = frozenset({DeliveryStatus.FAILED_TRANSIENT})
NOT_ATTEMPTED = ""  # attempted_at of a reservation whose provider call has not started
LEASE_EXPIRED_REASON = "lease expired: a run reserved it and died before confirming; not resent"
IN_DOUBT_AFTER_DEATH = "the run died during the provider call; not resent"
RELEASED_UNATTEMPTED = "reserved, never attempted; released"


class ReservationWrite(StrEnum):
    """What a reservation writes to a key's row, once `decide` has judged it."""

    NONE = "none"  # the row blocks the key as it is
    INSERT = "insert"  # no row yet: a new pending one
    TAKE_OVER = "take_over"  # failed_transient, or a dead run's unattempted pending: pending again, ours
    EXPIRE = "expire"  # a dead run's attempted pending: in_doubt, never resent


@dataclass(frozen=True)
class ReservationDecision:
    granted: bool  # the caller sends it now
    status: str  # the row's status after the reservation
    write: ReservationWrite


def decide(
    previous: str | None, reserved_at: str | None, cutoff: str, attempted_at: str | None = None
) -> ReservationDecision:
    """The reservation rule for a key whose ledger row is `previous` (None = no row); `cutoff` is the
    stored time before which a `pending` reservation's lease has expired."""
    pending = DeliveryStatus.PENDING.value
    if previous is None:
        return ReservationDecision(True, pending, ReservationWrite.INSERT)
    if previous in SENDABLE_FROM:
        return ReservationDecision(True, pending, ReservationWrite.TAKE_OVER)
    if previous == DeliveryStatus.PENDING and reserved_at is not None and reserved_at < cutoff:
        if attempted_at == NOT_ATTEMPTED:  # its run died before calling the provider: ours now
            return ReservationDecision(True, pending, ReservationWrite.TAKE_OVER)
        return ReservationDecision(False, DeliveryStatus.IN_DOUBT.value, ReservationWrite.EXPIRE)
    return ReservationDecision(False, previous, ReservationWrite.NONE)


def opt_out_channels(channel: str) -> tuple[str, ...]:
    """The stored opt-out channels that cover sending on `channel`: its own and every channel's."""
    return tuple(dict.fromkeys((channel, ALL_CHANNELS)))


class DeliveryLedgerResource(dg.ConfigurableResource, abc.ABC):
    """Where every send is reserved before and confirmed after the provider call (see module doc).

    `now=None` means the current time everywhere. Single-key marks are upserts (a key never
    reserved, e.g. a held-out customer, gets a row) and never overwrite a `sent` row, except
    `mark_sent` itself, which counts each confirmation in `sends`.
    """

    # ---- reservations and marks ----

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
        frame = key_frame(keys, campaign_id_col)
        moment = to_utc(now)
        at, cutoff = stored_time(moment), stored_time(moment - stale_after)
        return reservation_frame(self._reserve_rows(frame, at, cutoff, owner))

    def mark_sent(
        self, key: DeliveryKey, provider_message_id: str, now: datetime | None = None, campaign_id: str | None = None
    ) -> None:
        """The provider accepted the message; records its id and `sent_at`."""
        self._write_sent(key, provider_message_id, stored_time(now), campaign_id)

    def mark_attempting(self, key: DeliveryKey, reserved_at: datetime, now: datetime | None = None) -> bool:
        """Right before the provider call: record the attempt, if the reservation made at `reserved_at`
        still holds the row (pending, not attempted). False: not ours any more, do not send."""
        return self._write_attempt(key, stored_time(reserved_at), stored_time(now))

    def mark_attempting_many(
        self, keys: Sequence[DeliveryKey], reserved_at: datetime, now: datetime | None = None
    ) -> set[DeliveryKey]:
        """`mark_attempting` for a window of keys, in as few round trips as the backend allows; returns
        the keys recorded as attempted (the others are not ours any more: do not send them)."""
        unique = list(dict.fromkeys(keys))  # a repeated key: its first attempt is the one recorded
        return self._write_attempts(unique, stored_time(reserved_at), stored_time(now)) if unique else set()

    def mark_sent_many(self, confirmations: Sequence[SentConfirmation], now: datetime | None = None) -> None:
        """`mark_sent` for each confirmation (in order; a key confirmed twice counts two sends, as two
        `mark_sent` calls would), in as few round trips as the backend allows."""
        if confirmations:
            self._write_sent_many([SentConfirmation(*confirmation) for confirmation in confirmations], stored_time(now))

    def release_owner(self, owner: str, reason: str, now: datetime | None = None) -> tuple[int, int]:
        """A run died (`owner` = its run id): its `pending` rows never attempted become `failed_transient`
        (the next run sends them), the attempted ones `in_doubt`. Returns (released, in_doubt); idempotent."""
        released_reason, doubted_reason = f"{reason}: {RELEASED_UNATTEMPTED}", f"{reason}: {IN_DOUBT_AFTER_DEATH}"
        return self._release_owned(owner, released_reason, doubted_reason, stored_time(now))

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
        return self._write_status(key, status, reason, stored_time(now), campaign_id)

    def mark_suppressed(
        self, key: DeliveryKey, reason: str, now: datetime | None = None, campaign_id: str | None = None
    ) -> bool:
        """Not sent because the customer opted out (final: later runs skip it too)."""
        return self._write_status(key, DeliveryStatus.SUPPRESSED, reason, stored_time(now), campaign_id)

    def mark_held_out(self, key: DeliveryKey, now: datetime | None = None, campaign_id: str | None = None) -> bool:
        """Deliberately not sent: randomized control group (final)."""
        reason = "held out (control group)"
        return self._write_status(key, DeliveryStatus.HELD_OUT, reason, stored_time(now), campaign_id)

    def mark_held_out_many(
        self, keys: pl.DataFrame, campaign_id_col: str = "campaign_id", now: datetime | None = None
    ) -> int:
        """`mark_held_out` for a frame of keys; returns rows changed (sent rows are left alone)."""
        frame = key_frame(keys, campaign_id_col)
        return sum(self.mark_held_out(stored_key(row), now, row["campaign_id"]) for row in frame.iter_rows(named=True))

    def mark_in_doubt(self, key: DeliveryKey, reason: str, now: datetime | None = None) -> bool:
        """The provider may or may not have the message (interrupted mid-call): never resent."""
        return self._write_status(key, DeliveryStatus.IN_DOUBT, reason, stored_time(now), None)

    def release(self, keys: Sequence[DeliveryKey], reason: str, now: datetime | None = None) -> int:
        """Give back `pending` reservations never attempted (the run is aborting), as `failed_transient`
        so the next run sends them. Rows in any other status are left alone; returns rows released."""
        return self._release_pending(keys, reason, stored_time(now))

    # ---- opt-outs ----

    def record_opt_out(self, customer_id: str, channel: str | None, source: str, at: datetime | None = None) -> None:
        """Record an unsubscribe / opt-out (channel None = every channel); the first record wins."""
        self._insert_opt_out(customer_id, channel or ALL_CHANNELS, source, stored_time(at))

    def record_opt_outs(self, rows: pl.DataFrame) -> int:
        """`record_opt_out` for a frame (customer_id, channel (null = every channel), source,
        opted_out_at), in one batch; the first record per customer x channel wins. Returns rows new."""
        values = stored_opt_outs(rows)
        return self._insert_opt_outs(values) if values else 0

    def opt_outs(self, customer_ids: pl.Series, channel: str) -> pl.DataFrame:
        """The opt-outs covering `channel` of those customers (`OPT_OUT_SCHEMA`), earliest first per
        customer, one row per customer (checks compare `opted_out_at` with `sent_at`)."""
        ids = customer_ids.cast(pl.String).drop_nulls().unique().to_list()
        return opt_out_frame(self._opt_out_rows(ids, opt_out_channels(channel)) if ids else [])

    def opted_out(self, customer_ids: pl.Series, channel: str) -> set[str]:
        """The customers of `customer_ids` opted out of `channel` (or of every channel): the send-time check."""
        return set(self.opt_outs(customer_ids, channel)["customer_id"].to_list())

    # ---- reads ----

    def invitations_since(self, since: datetime, until: datetime | None = None) -> pl.DataFrame:
        """Sent invitations (kind invitation, any channel or event) with since <= sent_at < until:
        customer_id, invited_at, event_id, channel (the frequency-cap filter counts these)."""
        return invitations_frame(self._sent_invitation_rows(to_utc(since), None if until is None else to_utc(until)))

    def deliveries(self, event_id: str, channel: str | None = None, kind: str | None = None) -> pl.DataFrame:
        """Every ledger row of the event (`DELIVERY_SCHEMA`), optionally one channel / kind (a base
        kind: every occurrence of it)."""
        base_kind = None if kind is None else str(kind)
        frame = delivery_frame(self._delivery_rows(event_id, channel, base_kind))
        return frame if base_kind is None else frame.filter(pl.col("kind") == base_kind)

    def sent_count(self, event_id: str, channel: str | None = None, kind: str | None = None) -> int:
        """How many messages of the event were sent (optionally one channel / kind)."""
        return self._count_sent(event_id, channel, None if kind is None else str(kind))

    def duplicates(self, event_id: str) -> pl.DataFrame:
        """Keys of the event confirmed sent more than once (sends > 1); must always be empty."""
        return self.deliveries(event_id).filter(pl.col("sends") > 1)

    # ---- provider feedback (domain/feedback.py; assets/feedback.py ingests, the send loop and the
    # circuit breaker read). Feedback frames carry naive UTC times, as the domain's frames do. ----

    def messages_by_provider_id(self, provider_message_ids: pl.Series) -> pl.DataFrame:
        """The ledger rows with these provider message ids (MESSAGE_LOOKUP_SCHEMA), one per id."""
        ids = distinct_ids(provider_message_ids)
        return lookup_frame(self._message_rows(ids) if ids else [])

    def record_feedback(self, rows: pl.DataFrame) -> int:
        """Store feedback rows (STORED_FEEDBACK_SCHEMA) once each; returns how many were new (a replay adds 0)."""
        frame = stored_feedback(rows)
        return self._insert_feedback(frame) if frame.height else 0

    def feedback(self, event_id: str, channel: str | None = None) -> pl.DataFrame:
        """The event's stored feedback (STORED_FEEDBACK_SCHEMA), optionally one channel."""
        return feedback_frame(self._feedback_rows(event_id, channel))

    def bounce_history(self, addresses: pl.Series, since: datetime) -> pl.DataFrame:
        """Bounces of these (normalized) addresses since `since` (FEEDBACK_SCHEMA), any event."""
        ids = distinct_ids(addresses)
        return feedback_frame(self._bounce_rows(ids, stored_time(since)) if ids else []).select(list(FEEDBACK_SCHEMA))

    def suppress_addresses(self, rows: pl.DataFrame) -> int:
        """Suppress addresses on email (SUPPRESSION_SCHEMA rows); the first record of an address
        wins; returns how many addresses were newly suppressed."""
        frame = stored_suppressions(rows)
        return self._insert_suppressions(frame) if frame.height else 0

    def address_suppressions(self, addresses: pl.Series) -> pl.DataFrame:
        """The suppressions of these addresses (SUPPRESSION_SCHEMA; the input is normalized first)."""
        ids = distinct_ids(normalize_addresses(addresses))
        return suppression_frame(self._suppression_rows(ids) if ids else [])

    def suppressed_addresses(self, addresses: pl.Series) -> set[str]:
        """The given addresses (as given) whose normalized form is suppressed: the send-time check."""
        given = addresses.cast(pl.String).drop_nulls().unique()
        frame = pl.DataFrame({"given": given, "address": normalize_addresses(given)}).drop_nulls()
        if frame.height == 0:
            return set()
        found = self.address_suppressions(frame["address"])["address"]
        return set(frame.filter(pl.col("address").is_in(found.implode()))["given"].to_list())

    def rearm_breaker(self, event_id: str, channel: str, at: datetime | None = None, by: str = "operator") -> None:
        """An operator re-arms the campaign's circuit breaker: from `at` on, only messages sent
        after it (and their feedback) count (`campaign_counts`)."""
        self._insert_rearm(event_id, channel, stored_time(at), by)

    def breaker_rearmed_at(self, event_id: str, channel: str) -> datetime | None:
        """The campaign's latest re-arm time (aware UTC), None if never re-armed."""
        latest = self._latest_rearm(event_id, channel)
        return None if latest is None else parse_stored_time(latest)

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

    # ---- what a backend implements: stored values in and out (times as `stored_time` text, kinds
    # encoded, rows as tuples in the column order of the `records` schemas) ----

    @abc.abstractmethod
    def _reserve_rows(self, frame: pl.DataFrame, at: str, cutoff: str, owner: str | None) -> list[tuple]:
        """Reserve the keys of `frame` (`key_frame`) atomically per key by `decide`; one
        STORED_RESERVATION row per key."""

    @abc.abstractmethod
    def _write_sent(self, key: DeliveryKey, provider_message_id: str, at: str, campaign_id: str | None) -> None:
        """Upsert the key as sent (sends + 1, sent_at = at; campaign_id kept when None)."""

    @abc.abstractmethod
    def _write_status(
        self, key: DeliveryKey, status: DeliveryStatus, reason: str, at: str, campaign_id: str | None
    ) -> bool:
        """Upsert `status` unless the row is `sent`; returns whether a row was written."""

    @abc.abstractmethod
    def _write_attempt(self, key: DeliveryKey, reserved_at: str, at: str) -> bool:
        """Set attempted_at if the row is pending, unattempted and reserved at `reserved_at`."""

    @abc.abstractmethod
    def _write_attempts(self, keys: list[DeliveryKey], reserved_at: str, at: str) -> set[DeliveryKey]:
        """`_write_attempt` for each of these distinct keys; the keys whose attempt was recorded."""

    @abc.abstractmethod
    def _write_sent_many(self, confirmations: list[SentConfirmation], at: str) -> None:
        """`_write_sent` for each confirmation (a repeated key counts each)."""

    @abc.abstractmethod
    def _release_owned(self, owner: str, released_reason: str, doubted_reason: str, at: str) -> tuple[int, int]:
        """`owner`'s pending rows: unattempted ones to failed_transient, the others to in_doubt; the counts."""

    @abc.abstractmethod
    def _release_pending(self, keys: Sequence[DeliveryKey], reason: str, at: str) -> int:
        """The keys still pending to failed_transient; how many."""

    @abc.abstractmethod
    def _delivery_rows(self, event_id: str, channel: str | None, kind: str | None) -> list[tuple]:
        """The event's STORED_DELIVERY rows (at least those of `channel` and base `kind`, when given)."""

    @abc.abstractmethod
    def _count_sent(self, event_id: str, channel: str | None, kind: str | None) -> int:
        """How many of the event's rows (of `channel` and base `kind`, when given) are sent."""

    @abc.abstractmethod
    def _sent_invitation_rows(self, since: datetime, until: datetime | None) -> list[tuple]:
        """Sent invitations as INVITATIONS_SCHEMA rows (sent_at text), since <= sent_at < until (aware UTC)."""

    @abc.abstractmethod
    def _insert_opt_out(self, customer_id: str, channel: str, source: str, at: str) -> None:
        """Store one opt-out unless the customer x channel has one."""

    @abc.abstractmethod
    def _insert_opt_outs(self, rows: list[tuple]) -> int:
        """Store (customer_id, channel, source, opted_out_at) rows whose customer x channel has none; how many."""

    @abc.abstractmethod
    def _opt_out_rows(self, customer_ids: list[str], channels: tuple[str, ...]) -> list[tuple]:
        """OPT_OUT_SCHEMA rows of these customers on these stored channels."""

    @abc.abstractmethod
    def _message_rows(self, provider_message_ids: list[str]) -> list[tuple]:
        """MESSAGE_LOOKUP_SCHEMA rows of the delivery rows with these provider message ids."""

    @abc.abstractmethod
    def _insert_feedback(self, frame: pl.DataFrame) -> int:
        """Store `stored_feedback` rows not stored yet; how many."""

    @abc.abstractmethod
    def _feedback_rows(self, event_id: str, channel: str | None) -> list[tuple]:
        """The event's stored feedback rows (FEEDBACK_COLUMNS order), optionally one channel."""

    @abc.abstractmethod
    def _bounce_rows(self, addresses: list[str], since: str) -> list[tuple]:
        """Stored bounce rows (FEEDBACK_COLUMNS order) of these addresses at or after `since`."""

    @abc.abstractmethod
    def _insert_suppressions(self, frame: pl.DataFrame) -> int:
        """Store `stored_suppressions` rows whose address has none; how many."""

    @abc.abstractmethod
    def _suppression_rows(self, addresses: list[str]) -> list[tuple]:
        """SUPPRESSION_SCHEMA rows of these normalized addresses."""

    @abc.abstractmethod
    def _insert_rearm(self, event_id: str, channel: str, at: str, by: str) -> None:
        """Store a breaker re-arm of the campaign."""

    @abc.abstractmethod
    def _latest_rearm(self, event_id: str, channel: str) -> str | None:
        """The campaign's latest stored re-arm time, None if never re-armed."""
