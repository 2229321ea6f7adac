"""The channels' token bucket, throttle backoff and connection pool, on a clock the tests drive by hand."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from eventreach_assets.resources.channels.pacing import (
    PacingStats,
    TokenBucket,
    retry_after_seconds,
    throttle_backoff,
)
from eventreach_assets.resources.channels.pool import SlotPool


class FakeClock:
    """A monotonic clock that moves only when told to (or, with `advance_on_sleep`, when someone sleeps)."""

    def __init__(self, advance_on_sleep: bool = True) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.advance_on_sleep = advance_on_sleep
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if self.advance_on_sleep:
                self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_batch_call_takes_a_token_per_message() -> None:
    clock = FakeClock()
    bucket = TokenBucket(20.0, clock=clock, sleep=clock.sleep)
    bucket.acquire(10)  # one PublishBatch of ten: the burst of 2, then 8 more at 20/s
    bucket.acquire(1)
    assert clock.sleeps == pytest.approx([0.4, 0.05])


def test_token_bucket_spaces_sends_after_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(20.0, clock=clock, sleep=clock.sleep)
    assert bucket.burst == 2.0  # a tenth of a second's worth, at least one
    for _ in range(5):
        bucket.acquire()
    assert clock.sleeps == pytest.approx([0.05, 0.05, 0.05])  # two at once, then 1/20 s apart
    assert clock.now - 100.0 == pytest.approx(0.15)


def test_token_bucket_gives_threads_one_shared_schedule() -> None:
    clock = FakeClock(advance_on_sleep=False)  # everyone arrives at the same instant
    bucket = TokenBucket(100.0, clock=clock, sleep=clock.sleep)
    with ThreadPoolExecutor(32) as pool:
        waits = sorted(pool.map(lambda _: bucket.acquire(), range(50)))
    # 10 go at once (the burst), then one every 10 ms: the 40th waiter is due after 0.4 s
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([n / 100 for n in range(1, 41)])
    clock.advance(1.0)  # idle for a second: the burst is back, and no more than the burst
    assert [bucket.acquire() for _ in range(11)] == pytest.approx([0.0] * 10 + [0.01])


def test_throttling_halves_the_rate_once_per_cooldown_and_drops_the_burst() -> None:
    clock = FakeClock(advance_on_sleep=False)
    bucket = TokenBucket(160.0, clock=clock, sleep=clock.sleep)
    bucket.throttled()
    assert bucket.rate_now() == 80.0
    for _ in range(31):  # the other sends in flight answer "too fast" at the same moment
        bucket.throttled()
    assert bucket.rate_now() == 80.0
    assert bucket.throttle_count == 32
    assert bucket.acquire() == pytest.approx(1 / 80)  # no burst saved up any more: paced at once
    assert bucket.configured_rate == 160.0


def test_throttling_that_goes_on_walks_the_rate_down_to_one_per_second_at_least() -> None:
    clock = FakeClock(advance_on_sleep=False)
    bucket = TokenBucket(160.0, clock=clock, sleep=clock.sleep)
    rates = []
    for _ in range(15):  # the provider keeps saying "too fast", once a second
        bucket.throttled()
        rates.append(bucket.rate_now())
        clock.advance(1.0)
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] == 1.0  # the floor: still sending, slowly


def test_the_rate_recovers_linearly_to_the_configured_rate() -> None:
    clock = FakeClock(advance_on_sleep=False)
    bucket = TokenBucket(100.0, clock=clock, sleep=clock.sleep)
    bucket.throttled()
    assert bucket.rate_now() == 50.0
    clock.advance(5.0)
    assert bucket.rate_now() == pytest.approx(75.0)  # back where it was in 10 s: + 5 per second
    clock.advance(5.0)
    assert bucket.rate_now() == pytest.approx(100.0)
    clock.advance(60.0)
    assert bucket.rate_now() == 100.0  # never past the configured rate


def test_an_unlimited_bucket_slows_to_half_of_what_it_managed_when_throttled_then_opens_again() -> None:
    clock = FakeClock(advance_on_sleep=False)
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    for _ in range(300):  # 300 sends in one second, none waits
        assert bucket.acquire() == 0.0
        clock.advance(1 / 300)
    bucket.throttled()
    assert bucket.rate_now() == pytest.approx(150.0, rel=0.02)
    assert bucket.acquire() > 0  # paced now
    clock.advance(4.0)
    assert bucket.rate_now() == pytest.approx(210.0, rel=0.02)  # + 15 per second
    clock.advance(6.0)
    assert bucket.rate_now() is None  # back at what it managed before: unlimited again
    assert bucket.configured_rate is None
    assert bucket.acquire() == 0.0


def test_a_bucket_needs_a_positive_rate_or_none() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0.0)


def test_throttle_backoff_is_full_jitter_exponential_and_capped() -> None:
    assert throttle_backoff(0, 0.25, 20.0, lambda: 1.0) == 0.25
    assert throttle_backoff(3, 0.25, 20.0, lambda: 1.0) == 2.0
    assert throttle_backoff(10, 0.25, 20.0, lambda: 1.0) == 20.0
    assert throttle_backoff(3, 0.25, 20.0, lambda: 0.5) == 1.0
    assert throttle_backoff(3, 0.25, 20.0, lambda: 0.0) == 0.0


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3", lambda: now) == 3.0
    assert retry_after_seconds(" 0.5 ", lambda: now) == 0.5
    assert retry_after_seconds("Tue, 01 Dec 2026 12:00:07 GMT", lambda: now) == 7.0
    assert retry_after_seconds("Tue, 01 Dec 2026 11:00:00 GMT", lambda: now) == 0.0
    for unreadable in (None, "", "soon", "-1", "inf"):
        assert retry_after_seconds(unreadable, lambda: now) is None


def test_pacing_stats_for_metadata() -> None:
    stats = PacingStats(concurrency=32, provider_rate=14.0, rate_now=7.00001, throttled=3, gave_up=0)
    assert stats.as_metadata() == {
        "concurrency": 32,
        "provider_rate": 14.0,
        "rate_now": 7.0,
        "throttled": 3,
        "throttle_gave_up": 0,
    }


def test_slot_pool_bounds_the_slots_reuses_the_last_returned_and_closes_all() -> None:
    created: list[dict[str, bool]] = []
    lock = threading.Lock()
    busy = {"now": 0, "most": 0}

    def create() -> dict[str, bool]:
        slot = {"open": True}
        created.append(slot)
        return slot

    def close(slot: dict[str, bool]) -> None:
        slot["open"] = False

    pool: SlotPool[dict[str, bool]] = SlotPool(3, create, close)
    release = threading.Event()

    def use(_: int) -> None:
        with pool.slot():
            with lock:
                busy["now"] += 1
                busy["most"] = max(busy["most"], busy["now"])
            release.wait(timeout=5)
            with lock:
                busy["now"] -= 1

    with ThreadPoolExecutor(10) as threads:
        futures = [threads.submit(use, n) for n in range(40)]
        release.set()
        for future in futures:
            future.result()
    assert len(created) == 3 and busy["most"] == 3

    with pool.slot() as first:
        pass
    with pool.slot() as again:
        assert again is first  # last returned, first taken
        pool.close_all()  # `again` is busy: closed when it comes back
        assert again["open"]
    assert not any(slot["open"] for slot in created)
