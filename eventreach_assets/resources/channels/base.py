"""The three channel interfaces (email, push, in-app) and what every provider shares.

`ChannelResource.send(message)` encodes the message (the exact bytes or request the provider
gets), waits for the channel's rate limit, then hands it over (`_deliver`, one per provider),
and returns the provider's message id, or raises

- `TransientSendError` when trying again later may work (timeouts, throttling, 4xx SMTP
  replies, 5xx HTTP, lost connections). `ChannelUnavailableError`, a subclass, says the
  channel itself is unusable (bad credentials, account paused): every further send would fail
  the same way, so a caller may stop the campaign instead of burning through it;
- `PermanentSendError` when this message will never be accepted (invalid recipient, 5xx SMTP
  replies, rejected content): record the reason and carry on with the rest.

Providers that deduplicate get the message's idempotency key (webhook `Idempotency-Key`,
a stable email Message-ID, SNS FIFO deduplication id). Secrets (SMTP password, webhook API
key) come from `dg.EnvVar` in production and are never logged or put into an error message.
"""

from __future__ import annotations

import abc
import json
import threading
import time
from dataclasses import replace
from email.message import EmailMessage
from typing import Any, NamedTuple

import dagster as dg
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    OutboundMessage,
    PermanentSendError,
    TransientSendError,
)
from eventreach_assets.domain.email_wire import email_wire_bytes, message_id, to_email_message

__all__ = [
    "ChannelResource",
    "ChannelUnavailableError",
    "EmailChannelResource",
    "EmailWire",
    "InAppChannelResource",
    "PermanentSendError",
    "PushChannelResource",
    "RateLimiter",
    "TransientSendError",
    "build_email",
    "document_bytes",
    "email_bytes",
    "message_document",
]


class RateLimiter:
    """At most `per_second` calls per second, evenly spaced (providers count sends per second)."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            time.sleep(delay)


class ChannelResource(dg.ConfigurableResource, abc.ABC):
    """Hands one rendered message to a provider; returns the provider's message id."""

    max_messages_per_second: float = Field(default=0.0, description="0 = unlimited.")

    _limiter: RateLimiter | None = PrivateAttr(default=None)

    def send(self, message: OutboundMessage) -> str:
        """Encode (a message that cannot be encoded fails before it waits), pace, deliver."""
        payload = self.encode(message)
        if self._limiter is None:
            self._limiter = RateLimiter(self.max_messages_per_second)
        self._limiter.wait()
        return self._deliver(message, payload)

    @abc.abstractmethod
    def encode(self, message: OutboundMessage) -> Any:
        """What the provider gets for `message`; PermanentSendError when it cannot be built."""

    @abc.abstractmethod
    def _deliver(self, message: OutboundMessage, payload: Any) -> str:
        """Hand the encoded message to the provider; its message id."""

    def close(self) -> None:
        """Release any connection kept between sends (no-op where none is kept)."""

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()


# ---- email ------------------------------------------------------------------------------------


class EmailWire(NamedTuple):
    """An email as every email channel sends it: the RFC 5322 bytes and their Message-ID."""

    data: bytes
    message_id: str


def _with_sender(message: OutboundMessage, sender: str | None) -> OutboundMessage:
    if sender and not any(name.lower() == "from" for name in message.headers):
        return replace(message, headers={"From": sender, **message.headers})
    return message


def build_email(message: OutboundMessage, sender: str | None = None) -> EmailMessage:
    """The RFC 5322 message as an EmailMessage, parsed from its wire bytes
    (domain.email_wire.to_email_message); `sender` fills a missing From header."""
    return to_email_message(_with_sender(message, sender))


def email_bytes(message: OutboundMessage, sender: str | None = None) -> EmailWire:
    """(wire bytes, Message-ID) of an email: what every email channel sends, byte for byte.

    The bytes come from `domain.email_wire.email_wire_bytes` only, so the outbox file, SMTP DATA
    and SES `Content.Raw` are identical and are what `email_problems` validated: for a message
    that `checked_email` / `email_problems` found fit shortly before, the very bytes it checked
    (not serialized a second time). A message that cannot be serialized (e.g. a List-Unsubscribe
    URI over the line limit) is a PermanentSendError.
    """
    message = _with_sender(message, sender)
    try:
        return EmailWire(email_wire_bytes(message), message_id(message))
    except ValueError as error:
        raise PermanentSendError(f"email cannot be serialized: {error}") from None


class EmailChannelResource(ChannelResource):
    """Sends one rendered email; returns the provider's message id."""

    sender: str = Field(description="From when the message has none.")

    def encode(self, message: OutboundMessage) -> EmailWire:
        return email_bytes(message, self.sender)

    @abc.abstractmethod
    def _deliver(self, message: OutboundMessage, payload: EmailWire) -> str:
        """Hand the email's wire bytes to the provider; its message id."""


# ---- push and in-app --------------------------------------------------------------------------


def message_document(message: OutboundMessage) -> dict[str, Any]:
    """The JSON shape of a push or in-app message (local outboxes and the webhook body)."""
    return {
        "idempotency_key": message.idempotency_key,
        "campaign_id": message.campaign_id,
        "customer_id": message.key.customer_id,
        "event_id": message.key.event_id,
        "channel": message.key.channel,
        "kind": str(message.key.kind),
        "recipient": message.recipient,
        "title": message.subject,
        "body": message.body_text,
        "payload": message.payload,
        "scheduled_at": message.scheduled_at.isoformat() if message.scheduled_at else None,
    }


def document_bytes(message: OutboundMessage) -> bytes:
    """`message_document` as UTF-8 JSON with sorted keys: the outbox file and the webhook body."""
    return json.dumps(message_document(message), ensure_ascii=False, sort_keys=True, default=str).encode()


class PushChannelResource(ChannelResource):
    """Sends one push notification; returns the provider's message id."""

    def encode(self, message: OutboundMessage) -> Any:
        """The message document's JSON bytes; a provider with its own request shape overrides this."""
        return document_bytes(message)


class InAppChannelResource(ChannelResource):
    """Hands one in-app banner to the in-app service; returns its message id."""

    def encode(self, message: OutboundMessage) -> bytes:
        return document_bytes(message)

    @abc.abstractmethod
    def _deliver(self, message: OutboundMessage, payload: bytes) -> str:
        """Hand the banner's JSON bytes to the in-app service; its message id."""
