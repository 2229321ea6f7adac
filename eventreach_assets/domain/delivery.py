"""What every channel sends and what the delivery ledger records about it.

One ledger row per customer x event x channel x message kind: written `pending` before the
provider is called, confirmed `sent` with the provider's message id after. A re-run or a
retried run consults it first, so a message is never sent twice. Shared by the campaign
planning (domain), the ledger (resources/ledger.py) and the channel services
(resources/channels.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class MessageKind(StrEnum):
    INVITATION = "invitation"  # email or in-app invitation to register
    REMINDER = "reminder"  # push, one day before (eventConfig.reminderSchedule)
    DAY_OF = "day-of"  # email on the event day at 09:00 local
    SURVEY = "survey"  # to attendees, the day after the event


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # reserved, provider about to be called
    SENT = "sent"  # provider accepted; provider_message_id recorded
    FAILED_TRANSIENT = "failed_transient"  # provider error worth another try: a re-run sends it
    FAILED_PERMANENT = "failed_permanent"  # provider refused for good (bad address, ...): never retried
    SUPPRESSED = "suppressed"  # opted out / unsubscribed at send time: not sent
    IN_DOUBT = "in_doubt"  # a run died between calling the provider and confirming: not resent
    HELD_OUT = "held_out"  # randomized control group (metrics.holdout): deliberately not sent


@dataclass(frozen=True)
class DeliveryKey:
    """The ledger's primary key: at most one message of a kind per customer, event and channel."""

    customer_id: str
    event_id: str
    channel: str  # email | in-app | push
    kind: MessageKind


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
        return f"{self.key.event_id}:{self.key.channel}:{self.key.kind}:{self.key.customer_id}"


class TransientSendError(RuntimeError):
    """The provider failed in a way worth retrying (timeout, 5xx, throttling)."""


class PermanentSendError(RuntimeError):
    """The provider refused this message for good (invalid address, rejected content)."""


class ChannelUnavailableError(TransientSendError):
    """The channel cannot send anything (credentials, account, configuration): stop, do not try every message."""
