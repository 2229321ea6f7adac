"""The three channel interfaces (email, push, in-app) and what every provider shares.

`ChannelResource.send(message)` encodes the message (the exact bytes or request the provider
gets), waits for its turn in the channel's token bucket, then hands it over (`_deliver`, one
per provider), and returns the provider's message id, or raises

- `TransientSendError` when trying again later may work (timeouts, throttling, 4xx SMTP
  replies, 5xx HTTP, lost connections). `ChannelUnavailableError`, a subclass, says the
  channel itself is unusable (bad credentials, account paused): every further send would fail
  the same way, so a caller may stop the campaign instead of burning through it;
- `PermanentSendError` when this message will never be accepted (invalid recipient, 5xx SMTP
  replies, rejected content): record the reason and carry on with the rest.

`send` is safe to call from `concurrency` threads at once (the send loop owns the threads).
A "too fast" answer (`ThrottledSendError`, raised by `_deliver`) never reaches the caller: the
bucket slows down and the call is retried after a full-jitter backoff, at most
`max_throttle_retries` times, then it is a plain `TransientSendError` (the send loop's to retry
or record as failed_transient, which the next run sends).

Providers that deduplicate get the message's idempotency key (webhook `Idempotency-Key`,
a stable email Message-ID, SNS FIFO deduplication id). Secrets (SMTP password, webhook API
key) come from `dg.EnvVar` in production and are never logged or put into an error message.
"""

from __future__ import annotations

import abc
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from email.message import EmailMessage
from typing import Any, NamedTuple, TypeVar

import dagster as dg
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    OutboundMessage,
    PermanentSendError,
    ThrottledSendError,
    TransientSendError,
)
from eventreach_assets.domain.email_wire import email_wire_bytes, message_id, to_email_message
from eventreach_assets.resources.channels.pacing import PacingStats, TokenBucket, throttle_backoff

Answer = TypeVar("Answer")

__all__ = [
    "ChannelResource",
    "ChannelUnavailableError",
    "EmailChannelResource",
    "EmailWire",
    "InAppChannelResource",
    "PacingStats",
    "PermanentSendError",
    "PushChannelResource",
    "ThrottledSendError",
    "TokenBucket",
    "TransientSendError",
    "build_email",
    "document_bytes",
    "email_bytes",
    "message_document",
]


class ChannelResource(dg.ConfigurableResource, abc.ABC):
    """Hands one rendered message to a provider; returns the provider's message id."""

    max_messages_per_second: float = Field(default=0.0, ge=0.0, description="0 = unlimited.")
    concurrency: int = Field(default=32, ge=1, le=256, description="Sends in flight at once.")
    max_throttle_retries: int = Field(
        default=6, ge=0, description='Retries of a send the provider answered "too fast", then it is transient.'
    )
    throttle_backoff_seconds: float = Field(
        default=0.25, ge=0.0, description="First throttle retry waits up to this (full jitter), doubling."
    )
    max_throttle_backoff_seconds: float = Field(
        default=20.0, ge=0.0, description="Longest throttle wait; a longer Retry-After gives up at once."
    )

    _bucket: TokenBucket | None = PrivateAttr(default=None)
    _setup_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _gave_up: int = PrivateAttr(default=0)
    _clock: Callable[[], float] = PrivateAttr(default=time.monotonic)
    _sleep: Callable[[float], None] = PrivateAttr(default=time.sleep)
    _random: Callable[[], float] = PrivateAttr(default=random.random)

    def send(self, message: OutboundMessage) -> str:
        """Encode (a message that cannot be encoded fails before it waits), pace, deliver; slow down when throttled."""
        payload = self.encode(message)
        return self._paced(lambda: self._deliver(message, payload))

    def _paced(self, deliver: Callable[[], Answer], messages: int = 1) -> Answer:
        """`deliver()` once the bucket allows `messages` more; a "too fast" answer slows the bucket down and
        is retried after a backoff, up to `max_throttle_retries` times, then it is a TransientSendError."""
        bucket = self._pacer()
        reason = ""
        for attempt in range(self.max_throttle_retries + 1):
            bucket.acquire(messages)
            try:
                return deliver()
            except ThrottledSendError as throttled:
                bucket.throttled()
                reason = str(throttled)
                wait = self._throttle_wait(attempt, throttled.retry_after)
                if wait is None:
                    break
                self._sleep(wait)
        with self._setup_lock:
            self._gave_up += 1
        raise TransientSendError(f"{reason} (still throttled after {attempt} retries)")

    def send_many(self, messages: Sequence[OutboundMessage]) -> list[str | BaseException]:
        """Send several messages; per message its id or the Exception it met. A provider that can hand over a
        batch more cheaply than one by one overrides this and `batch_size` (the local outbox)."""
        answers: list[str | BaseException] = []
        for message in messages:
            try:
                answers.append(self.send(message))
            except Exception as error:  # the send loop sorts the answers out
                answers.append(error)
        return answers

    @property
    def batch_size(self) -> int:
        """Messages one `send_many` call takes (1: the send loop calls `send` per message)."""
        return 1

    def provider_rate(self) -> float | None:
        """Messages per second this channel paces to when nothing throttles (None = unlimited); worked out once."""
        return self._pacer().configured_rate

    def pacing_stats(self) -> PacingStats:
        """Concurrency, the rate paced to, the rate now and the throttling seen so far (campaign metadata)."""
        bucket = self._pacer()
        with self._setup_lock:
            gave_up = self._gave_up
        return PacingStats(self.concurrency, bucket.configured_rate, bucket.rate_now(), bucket.throttle_count, gave_up)

    def throttled_count(self) -> int:
        """How many "too fast" answers the provider gave so far."""
        return self._pacer().throttle_count

    def use_clock(
        self, clock: Callable[[], float], sleep: Callable[[float], None], rng: Callable[[], float] | None = None
    ) -> None:
        """Pace and back off on this clock (tests drive a fake one); call before the first send."""
        with self._setup_lock:
            self._clock, self._sleep = clock, sleep
            self._random = rng or self._random
            self._bucket = None

    def _discover_rate(self) -> float | None:
        """The rate to pace to: `max_messages_per_second`, None when 0. A provider that can ask overrides it."""
        return self.max_messages_per_second or None

    def _pacer(self) -> TokenBucket:
        bucket = self._bucket
        if bucket is None:
            with self._setup_lock:
                if self._bucket is None:
                    self._bucket = TokenBucket(self._discover_rate(), clock=self._clock, sleep=self._sleep)
                bucket = self._bucket
        return bucket

    def _throttle_wait(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before throttle retry `attempt + 1`; None when none is left or Retry-After is too long."""
        if attempt >= self.max_throttle_retries:
            return None
        if retry_after is not None and retry_after > self.max_throttle_backoff_seconds:
            return None
        wait = throttle_backoff(attempt, self.throttle_backoff_seconds, self.max_throttle_backoff_seconds, self._random)
        return max(wait, retry_after or 0.0)

    @abc.abstractmethod
    def encode(self, message: OutboundMessage) -> Any:
        """What the provider gets for `message`; PermanentSendError when it cannot be built."""

    @abc.abstractmethod
    def _deliver(self, message: OutboundMessage, payload: Any) -> str:
        """Hand the encoded message to the provider; its message id (ThrottledSendError when "too fast")."""

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
