"""Pacing sends to a provider's rate from many threads, and slowing down when the provider says "too fast".

`TokenBucket` is the one schedule every sending thread of a channel shares: `acquire()` before
each provider call, `throttled()` when the provider answered "too fast". `throttle_backoff` is
the wait before a throttled call is tried again. Clock, sleep and randomness are injected, so
tests drive them by hand instead of timing anything.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

DECREASE_FACTOR = 0.5  # a throttling answer halves the rate...
MIN_RATE = 1.0  # ...never below 1 message/s (or the ceiling, if that is lower)...
RECOVERY_SECONDS = 10.0  # ...then it climbs back linearly, to the rate before the decrease in 10 s
DECREASE_COOLDOWN_SECONDS = 1.0  # sends in flight answer "too fast" together: one decrease per second
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class PacingStats:
    """What a channel's pacing did, for the campaign's metadata."""

    concurrency: int  # sends in flight at once
    provider_rate: float | None  # messages/s paced to when nothing throttles (None = unlimited)
    rate_now: float | None  # after throttling's decrease, on its way back up (None = unlimited)
    throttled: int  # "too fast" answers the provider gave
    gave_up: int  # sends still throttled after every retry (raised as TransientSendError)

    def as_metadata(self) -> dict[str, float | int | None]:
        return {
            "concurrency": self.concurrency,
            "provider_rate": self.provider_rate,
            "rate_now": None if self.rate_now is None else round(self.rate_now, 3),
            "throttled": self.throttled,
            "throttle_gave_up": self.gave_up,
        }


class TokenBucket:
    """Paces callers on any number of threads to `rate` per second, `burst` at once (rate None: unlimited).

    A caller takes its token under the lock (the bucket may go into debt) and sleeps outside it
    until that token is due, so 32 threads share one schedule and the n-th caller past the
    burst waits n/rate. `throttled()` multiplies the rate by DECREASE_FACTOR (at most once per
    DECREASE_COOLDOWN_SECONDS, never below MIN_RATE) and drops the saved-up burst; the rate then
    climbs back linearly, to the rate before the decrease in RECOVERY_SECONDS and on at that
    slope up to the ceiling: the configured rate or, for an unlimited bucket, the rate it was
    sending at when first throttled (reaching that makes it unlimited again). Throttling that
    goes on walks the rate down to what the provider takes; it then saws between half that and
    that, as TCP's congestion window does.
    """

    def __init__(
        self,
        rate: float | None,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 or None (unlimited), not {rate!r}")
        self.configured_rate = rate
        self._ceiling = rate
        self._rate = rate
        self._burst = burst if burst is not None else max(1.0, (rate or 0.0) / 10)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self._burst
        self._updated = clock()
        self._last_decrease = -math.inf
        self._increase = 0.0  # messages/s gained per second while recovering
        self._throttled = 0
        self._window_start, self._window_count, self._last_window_rate = self._updated, 0, 0.0

    @property
    def burst(self) -> float:
        return self._burst

    def acquire(self, tokens: int = 1) -> float:
        """Wait until this caller may send `tokens` messages (one batch call: SNS PublishBatch); the seconds
        it waited (0 when the tokens were ready)."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._count_send(now, tokens)
            if self._rate is None:
                return 0.0
            self._tokens -= tokens
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait

    def throttled(self) -> None:
        """The provider answered "too fast": slow down (once per cooldown), and count it."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._throttled += 1
            if now - self._last_decrease < DECREASE_COOLDOWN_SECONDS:
                return
            self._last_decrease = now
            if self._rate is None or self._ceiling is None:  # unlimited so far: what it managed is the ceiling
                self._ceiling = self._rate = max(self._observed_rate(now), MIN_RATE)
                self._burst = max(1.0, self._ceiling / 10)
            before = self._rate
            self._rate = max(min(MIN_RATE, self._ceiling), before * DECREASE_FACTOR)
            self._increase = max(before - self._rate, MIN_RATE) / RECOVERY_SECONDS
            self._tokens = min(self._tokens, 0.0)

    def rate_now(self) -> float | None:
        """The rate callers are paced to right now (None = unlimited)."""
        with self._lock:
            self._advance(self._clock())
            return self._rate

    @property
    def throttle_count(self) -> int:
        return self._throttled

    def _advance(self, now: float) -> None:
        """Recover the rate towards the ceiling (additive increase), then refill tokens up to the burst."""
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        if self._rate is None or self._ceiling is None:
            return
        if self._rate < self._ceiling:
            self._rate = min(self._ceiling, self._rate + self._increase * elapsed)
            if self._rate >= self._ceiling and self.configured_rate is None:
                self._rate = self._ceiling = None  # recovered: unlimited again
                return
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)

    def _count_send(self, now: float, messages: int) -> None:
        """Sends per second over the last whole second: an unlimited bucket's ceiling once throttled."""
        self._window_count += messages
        if now - self._window_start >= 1.0:
            self._last_window_rate = self._window_count / (now - self._window_start)
            self._window_start, self._window_count = now, 0

    def _observed_rate(self, now: float) -> float:
        current = self._window_count / max(now - self._window_start, 1.0)
        return max(self._last_window_rate, current)


def throttle_backoff(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)] (attempt 0 = first retry)."""
    return rng() * min(cap, base * 2.0 ** min(attempt, 30))


def retry_after_seconds(value: str | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """An HTTP Retry-After header (seconds, or an HTTP date) in seconds from now; None when absent or unreadable."""
    text = (value or "").strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())
