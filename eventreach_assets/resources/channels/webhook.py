"""In-app banners POSTed to the in-app service's HTTP webhook."""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request

from pydantic import Field

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    OutboundMessage,
    PermanentSendError,
    TransientSendError,
)
from eventreach_assets.resources.channels.base import InAppChannelResource

log = logging.getLogger(__name__)


class WebhookInApp(InAppChannelResource):
    """POSTs the banner as JSON to the in-app service, `Idempotency-Key` = the message's idempotency key.

    The service deduplicates on that key, so retrying is safe: 5xx, 429 and connection errors
    are retried with exponential backoff (honouring Retry-After) up to `max_retries` times,
    then raised as `TransientSendError`. Any other 4xx is `PermanentSendError` with the
    response text (401/403: `ChannelUnavailableError`). The API key, from
    `dg.EnvVar("EVENTREACH_IN_APP_API_KEY")`, is sent as a bearer token and never logged.
    """

    url: str
    api_key: str | None = Field(default=None, repr=False, description='dg.EnvVar("EVENTREACH_IN_APP_API_KEY")')
    timeout: float = 10.0
    max_retries: int = Field(default=3, ge=0)
    backoff_seconds: float = Field(default=0.5, ge=0, description="First retry delay; doubles each retry.")
    max_backoff_seconds: float = 30.0

    def _deliver(self, message: OutboundMessage, payload: bytes) -> str:
        headers = self._headers(message)
        problem = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                status, text, retry_after = self._post(payload, headers)
            except (OSError, urllib.error.URLError) as error:  # refused, reset, timeout
                problem = f"in-app webhook: {type(error).__name__}: {getattr(error, 'reason', error)}"
            else:
                if 200 <= status < 300:
                    return self._message_id(text, message)
                problem = self._retryable_problem(status, text)
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                log.info("%s; retry %d/%d in %.2fs", problem, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise TransientSendError(f"{problem} (after {self.max_retries} retries)")

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
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read(), None
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read(), error.headers.get("Retry-After")

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
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, float(retry_after))
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
