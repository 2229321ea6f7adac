"""In-app banners POSTed to the in-app service's HTTP webhook, over kept-alive connections."""

from __future__ import annotations

import http.client
import json
import logging
import random
import ssl
import time
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    OutboundMessage,
    PermanentSendError,
    ThrottledSendError,
    TransientSendError,
)
from eventreach_assets.resources.channels.base import InAppChannelResource
from eventreach_assets.resources.channels.pacing import retry_after_seconds
from eventreach_assets.resources.channels.pool import SlotPool

log = logging.getLogger(__name__)


class HttpSession:
    """One slot of the connection pool: a kept-alive connection, None until needed or after an error."""

    def __init__(self) -> None:
        self.connection: http.client.HTTPConnection | None = None

    def drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()


class WebhookInApp(InAppChannelResource):
    """POSTs the banner as JSON to the in-app service, `Idempotency-Key` = the message's idempotency key.

    Each sending thread keeps its own HTTP/1.1 connection alive (a pool of at most `concurrency`),
    reconnecting after an error. The service deduplicates on the key, so retrying is safe: 5xx
    and connection errors are retried with exponential backoff (honouring Retry-After) up to
    `max_retries` times, then raised as `TransientSendError`; 429 is `ThrottledSendError` with
    its Retry-After, so the channel slows down (base.py). Any other 4xx is `PermanentSendError`
    with the response text (401/403: `ChannelUnavailableError`). The API key, from
    `dg.EnvVar("EVENTREACH_IN_APP_API_KEY")`, is sent as a bearer token and never logged.
    """

    url: str
    api_key: str | None = Field(default=None, repr=False, description='dg.EnvVar("EVENTREACH_IN_APP_API_KEY")')
    timeout: float = 10.0
    max_retries: int = Field(default=3, ge=0)
    backoff_seconds: float = Field(default=0.5, ge=0, description="First retry delay; doubles each retry.")
    max_backoff_seconds: float = 30.0

    _pool: SlotPool[HttpSession] | None = PrivateAttr(default=None)

    def _deliver(self, message: OutboundMessage, payload: bytes) -> str:
        headers = self._headers(message)
        problem = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                status, text, retry_after = self._post(payload, headers)
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timeout
                problem = f"in-app webhook: {type(error).__name__}: {error}"
            else:
                if 200 <= status < 300:
                    return self._message_id(text, message)
                problem = self._retryable_problem(status, text)
                if status == 429:
                    raise ThrottledSendError(problem, retry_after_seconds(retry_after))
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                log.info("%s; retry %d/%d in %.2fs", problem, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise TransientSendError(f"{problem} (after {self.max_retries} retries)")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close_all()

    def _headers(self, message: OutboundMessage) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": message.idempotency_key,
            "User-Agent": "eventreach",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        """One POST on this thread's connection; a kept-alive one the server closed meanwhile is retried once."""
        with self._sessions().slot() as session:
            if session.connection is not None:
                try:
                    return self._exchange(session, body, headers)
                except (OSError, http.client.HTTPException):
                    pass  # e.g. the server's idle timeout: once more on a new connection (the key deduplicates)
            return self._exchange(session, body, headers)

    def _exchange(self, session: HttpSession, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        """Request and whole response on the session's connection (opened if needed, dropped on error)."""
        connection = session.connection = session.connection or self._connect()
        try:
            connection.request("POST", self._target(), body=body, headers=headers)
            response = connection.getresponse()
            text = response.read()
        except (OSError, http.client.HTTPException):
            session.drop()
            raise
        if response.will_close:
            session.drop()
        return response.status, text, response.getheader("Retry-After")

    def _connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        if parts.scheme != "http":
            raise ChannelUnavailableError(f"in-app webhook URL must be http(s), not {parts.scheme!r}")
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.timeout)

    def _target(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def _sessions(self) -> SlotPool[HttpSession]:
        pool = self._pool
        if pool is None:
            with self._setup_lock:
                if self._pool is None:
                    self._pool = SlotPool(self.concurrency, HttpSession, HttpSession.drop)
                pool = self._pool
        return pool

    @staticmethod
    def _retryable_problem(status: int, text: bytes) -> str:
        """The reason a non-2xx answer may be retried (429, 5xx); raises for the answers that may not."""
        reason = f"in-app webhook HTTP {status}: {text.decode(errors='replace')[:500]}"
        if status in (401, 403):
            raise ChannelUnavailableError(f"in-app webhook HTTP {status}: credentials refused")
        if status != 429 and status < 500:
            raise PermanentSendError(reason)
        return reason

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_seconds * 2**attempt * (1 + random.random() / 4)
        delay = max(delay, retry_after_seconds(retry_after) or 0.0)
        return min(delay, self.max_backoff_seconds)

    @staticmethod
    def _message_id(text: bytes, message: OutboundMessage) -> str:
        """The service's id when it answers JSON with one, else the idempotency key (what it deduplicates on)."""
        try:
            answer = json.loads(text or b"null")
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            for name in ("message_id", "messageId", "id"):
                if answer.get(name):
                    return str(answer[name])
        return message.idempotency_key
