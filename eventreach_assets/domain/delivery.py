"""What every channel sends and what the delivery ledger records about it.

One ledger row per customer x event x channel x message kind (x event date for the kinds sent
once per date: reminders, day-of, updates): written `pending` before the
provider is called, confirmed `sent` with the provider's message id after. A re-run or a
retried run consults it first, so a message is never sent twice. Shared by the campaign
planning (domain), the ledger (resources/ledger/) and the channel services
(resources/channels/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

import polars as pl


class MessageKind(StrEnum):
    INVITATION = "invitation"  # email or in-app invitation to register
    REMINDER = "reminder"  # push, one day before (eventConfig.reminderSchedule)
    DAY_OF = "day-of"  # email on the event day at 09:00 local
    SURVEY = "survey"  # to attendees, the day after the event
    UPDATE = "update"  # the event moved: updated calendar invite (METHOD:REQUEST, SEQUENCE + 1), once per new date
    CANCELLATION = "cancellation"  # the event is off: METHOD:CANCEL to invitees and registrants, push to registrants
    WAITLIST_CONFIRMATION = "waitlist-confirmation"  # a seat freed up: the promoted customer's confirmation + .ics


# Kinds sent once per event date: a reschedule gives them a new key, so they go out again for
# the new date (a reminder sent for the old date does not block the new date's reminder).
PER_DATE_KINDS: frozenset[MessageKind] = frozenset({MessageKind.REMINDER, MessageKind.DAY_OF, MessageKind.UPDATE})
OCCURRENCE_FORMAT = "%Y%m%dT%H%M"  # the event start in UTC, e.g. 20261201T1500


def occurrence_of(start_time_utc: datetime) -> str:
    """The event date a per-date message is about: its start in UTC as `%Y%m%dT%H%M` (naive = UTC)."""
    start = start_time_utc if start_time_utc.tzinfo is None else start_time_utc.astimezone(UTC)
    return start.strftime(OCCURRENCE_FORMAT)


def occurrence_for(kind: MessageKind | str, start_time_utc: datetime) -> str:
    """The key's occurrence: the event date for PER_DATE_KINDS, "" for kinds sent once per event."""
    return occurrence_of(start_time_utc) if MessageKind(kind) in PER_DATE_KINDS else ""


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # reserved, provider about to be called
    SENT = "sent"  # provider accepted; provider_message_id recorded
    FAILED_TRANSIENT = "failed_transient"  # provider error worth another try: a re-run sends it
    FAILED_PERMANENT = "failed_permanent"  # provider refused for good (bad address, ...): never retried
    SUPPRESSED = "suppressed"  # opted out / unsubscribed at send time: not sent
    IN_DOUBT = "in_doubt"  # a run died between calling the provider and confirming: not resent
    HELD_OUT = "held_out"  # randomized control group (metrics.holdout): deliberately not sent


OCCURRENCE_SEPARATOR = "@"


def encode_kind(kind: str, occurrence: str = "") -> str:
    """A key's message kind as stored and sent: `kind`, or `kind@occurrence` for a per-date message
    (reminders, day-of, updates); the ledger and the providers' idempotency keys both use it."""
    base = str(kind)
    if OCCURRENCE_SEPARATOR in base or "#" in occurrence or OCCURRENCE_SEPARATOR in occurrence:
        raise ValueError(f"kind {base!r} / occurrence {occurrence!r} must not contain '@' or '#'")
    return f"{base}{OCCURRENCE_SEPARATOR}{occurrence}" if occurrence else base


@dataclass(frozen=True)
class DeliveryKey:
    """The ledger's primary key: at most one message of a kind per customer, event and channel
    (and per event date, `occurrence`, for PER_DATE_KINDS; "" for the others)."""

    customer_id: str
    event_id: str
    channel: str  # email | in-app | push
    kind: MessageKind
    occurrence: str = ""  # occurrence_of(event start) for PER_DATE_KINDS


class SentConfirmation(NamedTuple):
    """A provider's acceptance of one message, to record in the ledger (`mark_sent_many`): the
    send loop confirms a window of in-flight messages in one call instead of one per message."""

    key: DeliveryKey
    provider_message_id: str
    campaign_id: str | None = None  # None keeps the campaign stored at reservation


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str  # e.g. "text/calendar; method=REQUEST; charset=utf-8"
    data: bytes


@dataclass(frozen=True)
class OutboundMessage:
    """A rendered message, ready for a channel service. Contact data lives only here and in the store."""

    key: DeliveryKey
    campaign_id: str  # event x channel x segment x send date
    recipient: str  # email address, push target (customer id / endpoint), or customer id for in-app
    subject: str = ""  # email subject / push title / banner headline
    body_text: str = ""
    body_html: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # e.g. List-Unsubscribe
    attachments: tuple[Attachment, ...] = ()
    payload: dict[str, Any] = field(default_factory=dict)  # push / in-app structured fields
    scheduled_at: datetime | None = None  # naive UTC; when the provider should deliver it

    @property
    def idempotency_key(self) -> str:
        """Stable across retries, so providers that deduplicate (webhooks, Message-ID) can."""
        key = self.key
        return f"{key.event_id}:{key.channel}:{encode_kind(key.kind, key.occurrence)}:{key.customer_id}"


class TransientSendError(RuntimeError):
    """The provider failed in a way worth retrying (timeout, 5xx, throttling)."""


class PermanentSendError(RuntimeError):
    """The provider refused this message for good (invalid address, rejected content)."""


class ChannelUnavailableError(TransientSendError):
    """The channel cannot send anything (credentials, account, configuration): stop, do not try every message."""


class ThrottledSendError(TransientSendError):
    """The provider refused the message because we send too fast (not delivered): slow down, then retry.

    `retry_after` is the provider's own wait in seconds (HTTP Retry-After), when it gave one.
    Channels handle it themselves (token bucket + backoff) and raise a plain TransientSendError
    once their throttle retries are spent, so the send loop never sees this class.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# ---- who hears about a change, and with which calendar SEQUENCE ---------------------------------

FIRST_CHANGE_SEQUENCE = 1  # the original invitation's .ics is SEQUENCE 0; the first change is 1
RECIPIENTS_SCHEMA: dict[str, pl.DataType] = {"customer_id": pl.String(), "registered": pl.Boolean()}
SEQUENCES_SCHEMA: dict[str, pl.DataType] = {"customer_id": pl.String(), "sequence": pl.Int64()}
# The emails that put the event in a customer's calendar (and so must be moved or cancelled there).
CALENDAR_KINDS: tuple[str, ...] = (MessageKind.INVITATION.value, MessageKind.WAITLIST_CONFIRMATION.value)


def _event_rows(deliveries: pl.DataFrame, event_id: str) -> pl.LazyFrame:
    """The event's ledger rows with an `occurrence` column ("" when the frame has none)."""
    frame = deliveries.lazy().filter(pl.col("event_id") == event_id)
    if "occurrence" not in deliveries.columns:
        frame = frame.with_columns(occurrence=pl.lit(""))
    return frame.with_columns(pl.col("customer_id").cast(pl.String), pl.col("occurrence").fill_null(""))


def calendar_sequences(deliveries: pl.DataFrame, event_id: str, occurrence: str) -> pl.DataFrame:
    """The iCalendar SEQUENCE of a change notice (update for `occurrence`, or "" for a cancellation
    or waitlist confirmation) per customer: 1 + the update occurrences other than this one already
    in the ledger for that customer and event.

    Calendars apply a notice only if its SEQUENCE is higher than the one they hold, so every later
    notice must carry a strictly larger one; rendering the same update again (a retry) gives the
    same number. One row per customer with any ledger row of the event; customers absent get
    FIRST_CHANGE_SEQUENCE (`fill_null(FIRST_CHANGE_SEQUENCE)` after a left join).
    """
    rows = _event_rows(deliveries, event_id)
    updates = (
        rows.filter((pl.col("kind") == MessageKind.UPDATE.value) & (pl.col("occurrence") != occurrence))
        .group_by("customer_id")
        .agg(pl.col("occurrence").n_unique().cast(pl.Int64).alias("_earlier"))
    )
    return (
        rows.select("customer_id")
        .unique()
        .join(updates, on="customer_id", how="left")
        .select("customer_id", (pl.col("_earlier").fill_null(0) + FIRST_CHANGE_SEQUENCE).alias("sequence"))
        .sort("customer_id")
        .collect()
        .cast(SEQUENCES_SCHEMA)  # type: ignore[arg-type]
    )


def change_notice_recipients(deliveries: pl.DataFrame, registered: pl.DataFrame, event_id: str) -> pl.DataFrame:
    """Who must hear that the event moved or is off: customers the event's calendar invite reached
    (a SENT email invitation or waitlist confirmation) and everyone registered (whichever channel
    brought them in). customer_id, registered (push cancellations go to registrants only), one row
    per customer, by customer_id."""
    invited = (
        _event_rows(deliveries, event_id)
        .filter(
            (pl.col("status") == DeliveryStatus.SENT.value)
            & (pl.col("channel") == "email")
            & pl.col("kind").is_in(CALENDAR_KINDS)
        )
        .select("customer_id")
    )
    seated = registered.lazy().select(pl.col("customer_id").cast(pl.String)).drop_nulls().unique()
    return (
        pl.concat([invited, seated])
        .unique()
        .join(seated.with_columns(registered=pl.lit(True)), on="customer_id", how="left")
        .select("customer_id", pl.col("registered").fill_null(False))
        .sort("customer_id")
        .collect()
        .cast(RECIPIENTS_SCHEMA)  # type: ignore[arg-type]
    )
