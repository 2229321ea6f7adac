"""The send loop: reserve in the ledger, check opt-outs, call the channel, confirm. Never twice.

Independent of Dagster and of any channel: `send` is any callable that delivers one
`OutboundMessage` and returns the provider's message id, raising `TransientSendError` for errors
worth retrying, `PermanentSendError` for refusals. Anything else means the process is in
trouble: the message being sent is marked `failed_transient` (the provider raised before
accepting it, so a retry may send it), the reservations not yet attempted are released for the
next run, and the error propagates so the run fails. A `BaseException` that is not an
`Exception` (KeyboardInterrupt, Dagster's run termination) may arrive mid-call, when we cannot
know whether the provider got the message: that one becomes `in_doubt` (never resent).

Messages stream: `messages` may be a generator that renders each one as it is asked for, so a
campaign of 50,000 holds one chunk (`chunk_size`) of rendered messages at a time, never all.
Each chunk is reserved and checked against opt-outs right before its messages are handed to the
senders: an unsubscribe that lands while a long campaign is sending takes effect from the next
chunk. Up to `concurrency` messages are in the provider's hands at once (worker threads; the
channel's own limit and rate decide the number), so a provider round trip of 20 ms costs 20 ms per
`concurrency` messages, not per message. A channel that can hand over several messages in one call
(`send_many`, e.g. the local outbox: one durability barrier for the batch instead of one `fsync` per
file) gets them `batch_size` at a time, a batch per sender thread: fewer thread hand-offs and ledger
batches per message, the same at-most-`concurrency` in flight.

A hard kill (SIGKILL, OOM, node loss) gives no chance to clean up. Reservations therefore record
their `owner` (the Dagster run id) and every message is marked attempted (`mark_attempting_many`,
conditional writes, one batch per refill of the in-flight window) right before its provider call,
and confirmed (`mark_sent_many`, one batch) as soon as its answer is in, before the window is
refilled: at any moment at most `concurrency` messages are attempted and unconfirmed, so a kill
leaves at most that many `in_doubt`. The reserved-but-never-attempted rows go back to the next
run, by the run-failure sensor (`release_owner` of the dead run) or, failing that, by the next
reservation once the lease expired. An attempt mark succeeds only while this reservation still
holds the row, so a run presumed dead that wakes up never sends a row given to someone else.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, Protocol

import polars as pl

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    DeliveryKey,
    DeliveryStatus,
    MessageKind,
    OutboundMessage,
    PermanentSendError,
    SentConfirmation,
    TransientSendError,
)

DEFAULT_LEASE = timedelta(hours=1)  # how long a pending reservation is presumed alive; > one chunk's sending
DEFAULT_CHUNK = 500  # messages reserved (and rendered) at a time

# Hands several messages over in one call; one answer per message, in order: the provider's id, or the
# exception that message met (TransientSendError, PermanentSendError, ...). Raising fails the whole batch.
SendMany = Callable[[Sequence[OutboundMessage]], list["str | BaseException"]]

# Why a reserved-elsewhere key is skipped, by the ledger status that blocked it.
SKIP_REASONS: dict[str, str] = {
    DeliveryStatus.SENT.value: "already_sent",
    DeliveryStatus.FAILED_PERMANENT.value: "permanent_failure_earlier",
    DeliveryStatus.SUPPRESSED.value: "suppressed",
    DeliveryStatus.HELD_OUT.value: "held_out",
    DeliveryStatus.IN_DOUBT.value: "in_doubt",
    DeliveryStatus.PENDING.value: "in_progress",  # another live run holds the reservation
}
DUPLICATE_IN_BATCH = "duplicate_in_batch"
RESERVATION_LOST = "reservation_lost"  # our lease expired and another run took the row over: not ours to send
OPTED_OUT = "suppressed"  # opted out at send time: the same reason as suppressed earlier


class Ledger(Protocol):
    """What the loop needs of `resources.ledger.DeliveryLedgerResource`."""

    def reserve(
        self,
        keys: pl.DataFrame,
        campaign_id_col: str = ...,
        now: datetime | None = ...,
        stale_after: timedelta = ...,
        owner: str | None = ...,
    ) -> pl.DataFrame: ...
    def mark_sent_many(self, confirmations: Sequence[SentConfirmation], now: datetime | None = ...) -> None: ...
    def mark_failed(
        self, key: DeliveryKey, reason: str, permanent: bool, now: datetime | None = ..., campaign_id: str | None = ...
    ) -> bool: ...
    def mark_suppressed(
        self, key: DeliveryKey, reason: str, now: datetime | None = ..., campaign_id: str | None = ...
    ) -> bool: ...
    def mark_in_doubt(self, key: DeliveryKey, reason: str, now: datetime | None = ...) -> bool: ...
    def release(self, keys: Sequence[DeliveryKey], reason: str, now: datetime | None = ...) -> int: ...
    def opted_out(self, customer_ids: pl.Series, channel: str) -> set[str]: ...
    def suppressed_addresses(self, addresses: pl.Series) -> set[str]: ...
    def mark_attempting_many(
        self, keys: Sequence[DeliveryKey], reserved_at: datetime, now: datetime | None = ...
    ) -> set[DeliveryKey]: ...
    def release_owner(self, owner: str, reason: str, now: datetime | None = ...) -> tuple[int, int]: ...


@dataclass
class DeliveryReport:
    """What one `deliver` call did; `as_metadata()` is what an asset shows."""

    attempted: int = 0  # distinct messages handed in
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count (SKIP_REASONS values, ...)
    failed_transient: int = 0  # gave up after retries; the next run retries them
    failed_permanent: int = 0
    failure_reasons: Counter[str] = field(default_factory=Counter)  # provider reason -> count
    became_in_doubt: int = 0  # attempted rows of dead runs found by this run (not sent)
    transient_retries: int = 0  # provider calls repeated after a TransientSendError
    released: int = 0  # reserved but not attempted because the run aborted
    taken_over: int = 0  # unattempted reservations of `dead_owners` given back before reserving
    per_campaign: dict[str, Counter[str]] = field(default_factory=dict)  # campaign -> outcome -> count
    concurrency: int = 1  # sends allowed in flight at once
    peak_in_flight: int = 0  # the most that were
    sending_s: float = 0.0  # wall seconds from the first reservation to the last confirmation

    def _count(self, campaign_id: str, outcome: str) -> None:
        self.per_campaign.setdefault(campaign_id, Counter())[outcome] += 1

    def _skip(self, campaign_id: str, reason: str) -> None:
        self.skipped[reason] += 1
        self._count(campaign_id, f"skipped:{reason}")

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def messages_per_second(self) -> float:
        """Sent over the sending time (0 when nothing was sent)."""
        return self.sent / self.sending_s if self.sent and self.sending_s > 0 else 0.0

    def skipped_frame(self) -> pl.DataFrame:
        """Skips by reason (reason, count), most frequent first: a table for asset metadata."""
        rows = sorted(self.skipped.items(), key=lambda item: (-item[1], item[0]))
        return pl.DataFrame(rows, schema={"reason": pl.String(), "count": pl.Int64()}, orient="row")

    def as_metadata(self) -> dict[str, Any]:
        """Plain JSON-able values (wrap with dg.MetadataValue.json / .int at the call site)."""
        return {
            "attempted": self.attempted,
            "sent": self.sent,
            "skipped": self.skipped_total,
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "failed_transient": self.failed_transient,
            "failed_permanent": self.failed_permanent,
            "failure_reasons": dict(self.failure_reasons.most_common(20)),
            "became_in_doubt": self.became_in_doubt,
            "transient_retries": self.transient_retries,
            "released": self.released,
            "taken_over": self.taken_over,
            "per_campaign": {name: dict(sorted(c.items())) for name, c in sorted(self.per_campaign.items())},
            "concurrency": self.concurrency,
            "peak_in_flight": self.peak_in_flight,
            "sending_s": round(self.sending_s, 3),
            "messages_per_second": round(self.messages_per_second, 1),
        }


def exponential_backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Full-jitter exponential backoff: U(0, min(cap, base * 2^(attempt-1))) seconds."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


def deliver(
    messages: Iterable[OutboundMessage],
    *,
    ledger: Ledger,
    send: Callable[[OutboundMessage], str],
    now: Callable[[], datetime],
    concurrency: int = 1,
    max_transient_retries: int = 3,
    backoff: Callable[[int], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    chunk_size: int = DEFAULT_CHUNK,
    lease: timedelta = DEFAULT_LEASE,
    owner: str | None = None,
    dead_owners: Sequence[str | None] = (),
    send_many: SendMany | None = None,
    batch_size: int = 1,
) -> DeliveryReport:
    """Send each message at most once ever, recording every outcome in the ledger.

    Safe to call again with the same messages (a re-materialization or a retried run): keys
    already sent, refused for good, suppressed, held out or in doubt are skipped and counted.
    Messages are handed to the senders in the caller's order (e.g. score descending), reserved
    `chunk_size` at a time, at most `concurrency` in flight. A hard kill (OOM, SIGKILL: no chance
    to release) leaves at most one chunk (plus the next, reserved ahead) `pending`, of which only
    the in-flight messages were attempted (they become `in_doubt`); `lease` must exceed the time
    one chunk takes to send, retries included. `owner` (the Dagster run id; None outside Dagster)
    lets the run-failure sensor give a dead run's reservations back. `dead_owners` (e.g. the failed
    run this run retries) are finished: their unattempted reservations are given back first, so a
    retry need not wait for the sensor or the lease. `send_many` with `batch_size` > 1 hands the
    senders up to `batch_size` messages per call (a message it answers with a TransientSendError is
    retried one by one through `send`).
    """
    if max_transient_retries < 0 or chunk_size <= 0 or concurrency <= 0 or batch_size <= 0:
        raise ValueError("max_transient_retries must be >= 0, chunk_size, concurrency and batch_size > 0")
    report = DeliveryReport(concurrency=concurrency)
    batch_size = min(batch_size, concurrency) if send_many is not None else 1
    retrying = _Retrying(send, max_transient_retries, backoff or exponential_backoff, sleep,
                         send_many if batch_size > 1 else None, batch_size)  # fmt: skip
    for dead in dict.fromkeys(o for o in dead_owners if o is not None and o != owner):
        released, in_doubt = ledger.release_owner(dead, f"run {dead} ended before confirming", now())
        report.taken_over += released
        report.became_in_doubt += in_doubt
    started = time.perf_counter()
    senders = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send")
    try:
        _Pipeline(ledger, now, report, retrying, senders, _unique(messages, report), chunk_size, lease, owner).run()
    finally:
        senders.shutdown(wait=False, cancel_futures=True)  # an interrupt does not wait for the provider
        report.sending_s = time.perf_counter() - started
    return report


def _unique(messages: Iterable[OutboundMessage], report: DeliveryReport) -> Iterator[OutboundMessage]:
    """The messages in order, each key once; repeats are counted as DUPLICATE_IN_BATCH skips."""
    seen: set[DeliveryKey] = set()
    for message in messages:
        if message.key in seen:
            report._skip(message.campaign_id, DUPLICATE_IN_BATCH)
            continue
        seen.add(message.key)
        report.attempted += 1
        yield message


# ---- one message in a sender thread ---------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """What a sender thread got for one message: a provider id, or the error that ended its tries."""

    message: OutboundMessage
    provider_id: str | None = None
    error: BaseException | None = None
    retries: int = 0


@dataclass(frozen=True)
class _Retrying:
    """`send` with `max_transient_retries` retries of a TransientSendError, `wait(attempt)` apart; batches
    of up to `batch_size` through `send_many` when the channel has it."""

    send: Callable[[OutboundMessage], str]
    max_transient_retries: int
    wait: Callable[[int], float]
    sleep: Callable[[float], None]
    send_many: SendMany | None = None
    batch_size: int = 1

    def __call__(self, message: OutboundMessage, attempt: int = 0) -> _Outcome:
        while True:
            try:
                return _Outcome(message, provider_id=self.send(message), retries=attempt)
            except ChannelUnavailableError as error:  # every further message would fail the same way
                return _Outcome(message, error=error, retries=attempt)
            except TransientSendError as error:
                if attempt >= self.max_transient_retries:
                    return _Outcome(message, error=error, retries=attempt)
                attempt += 1
                self.sleep(self.wait(attempt))
            except BaseException as error:  # permanent refusals, and what must stop the run
                return _Outcome(message, error=error, retries=attempt)

    def batch(self, messages: Sequence[OutboundMessage]) -> list[_Outcome]:
        """One sender thread's batch: through `send_many` in one call (else one by one); a transient answer
        is retried through `send` after its backoff, like a single send's."""
        if self.send_many is None or len(messages) == 1:
            return [self(message) for message in messages]
        try:
            answers = self.send_many(messages)
        except BaseException as error:  # the whole batch met it (an interrupt: the provider may have some)
            answers = [error] * len(messages)
        return [self._settled(message, answer) for message, answer in zip(messages, answers, strict=True)]

    def _settled(self, message: OutboundMessage, answer: str | BaseException) -> _Outcome:
        if not isinstance(answer, BaseException):
            return _Outcome(message, provider_id=answer)
        retry = isinstance(answer, TransientSendError) and not isinstance(answer, ChannelUnavailableError)
        if not retry or self.max_transient_retries == 0:
            return _Outcome(message, error=answer)
        self.sleep(self.wait(1))
        return self(message, attempt=1)


# ---- the pipeline: chunks reserved ahead, a window of sends in flight, confirmations in batches ----


class _Abort(Exception):
    """Carries the error that must stop the campaign out of the confirmation step."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Pipeline:
    """One `deliver` call's state: the granted queue, the in-flight window, the report."""

    def __init__(
        self, ledger: Ledger, now: Callable[[], datetime], report: DeliveryReport, retrying: _Retrying,
        senders: ThreadPoolExecutor, source: Iterator[OutboundMessage], chunk_size: int, lease: timedelta,
        owner: str | None,
    ) -> None:  # fmt: skip
        self.ledger, self.now, self.report, self.retrying, self.senders = ledger, now, report, retrying, senders
        self.source, self.chunk_size, self.lease, self.owner = source, chunk_size, lease, owner
        self.concurrency = report.concurrency
        self.batch_size = retrying.batch_size  # messages per sender call
        # free slots that make a refill worth a ledger batch (a whole sender batch, when batching)
        self.refill_at = min(self.concurrency, max(1, self.concurrency // 4, self.batch_size))
        self.render_slice = max(8, self.concurrency)  # messages rendered ahead per turn of the loop
        self.staged: list[OutboundMessage] = []  # rendered, not reserved yet (at most one chunk)
        self.queue: deque[tuple[OutboundMessage, datetime]] = deque()  # granted, not attempted, with reserved_at
        self.in_flight: dict[Future[list[_Outcome]], list[OutboundMessage]] = {}  # a sender's batch
        self.in_flight_count = 0  # messages in the in-flight batches
        self.exhausted = False

    def run(self) -> None:
        try:
            while True:
                self._top_up()
                if not self.queue and not self.in_flight and not self.staged and self.exhausted:
                    return
                self._launch()
                self._collect()
        except _Abort as abort:  # a send's error that stops the campaign (already recorded)
            self._abort(abort.error)
            raise abort.error from None
        except BaseException as error:
            self._abort(error)
            raise

    def _top_up(self) -> None:
        """Render the next chunk a slice per turn while the current one sends, and reserve it once whole:
        neither the renderer nor the ledger makes the senders wait. When nothing is queued any more
        (rendering is the bottleneck), the chunk is finished at once."""
        if not self.exhausted and len(self.queue) < self.chunk_size:
            room = self.chunk_size - len(self.staged)
            step = room if not self.queue else min(room, self.render_slice)
            rendered = list(islice(self.source, step))
            self.staged += rendered
            self.exhausted = len(rendered) < step
        if self.staged and (len(self.staged) >= self.chunk_size or self.exhausted):
            chunk, self.staged, reserved_at = self.staged, [], self.now()
            granted = _reserve(chunk, self.ledger, reserved_at, self.lease, self.report, self.owner)
            self.queue.extend((message, reserved_at) for message in self._not_opted_out(granted))

    def _not_opted_out(self, granted: list[OutboundMessage]) -> list[OutboundMessage]:
        """The granted messages whose recipient may be sent to now; the others are marked suppressed."""
        opted = _opted_out(granted, self.ledger)
        for message in granted:
            if (message.key.channel, message.key.customer_id) in opted:
                self.ledger.mark_suppressed(message.key, "opted out", self.now(), message.campaign_id)
                self.report._skip(message.campaign_id, OPTED_OUT)
        return [m for m in granted if (m.key.channel, m.key.customer_id) not in opted]

    def _launch(self) -> None:
        """Fill the free slots: mark the next messages attempted (one batch per reservation), hand them out."""
        free = self.concurrency - self.in_flight_count
        if not self.queue or (free < self.refill_at and self.in_flight):
            return
        window = [self.queue.popleft() for _ in range(min(free, len(self.queue)))]
        for reserved_at in dict.fromkeys(at for _, at in window):
            batch = [message for message, at in window if at == reserved_at]
            attempted = self.ledger.mark_attempting_many([m.key for m in batch], reserved_at, self.now())
            for message in batch:
                if message.key not in attempted:
                    self.report._skip(message.campaign_id, RESERVATION_LOST)
            self._hand_out([message for message in batch if message.key in attempted])
        self.report.peak_in_flight = max(self.report.peak_in_flight, self.in_flight_count)

    def _hand_out(self, messages: list[OutboundMessage]) -> None:
        """Give the senders `messages`, `batch_size` per thread."""
        for start in range(0, len(messages), self.batch_size):
            batch = messages[start : start + self.batch_size]
            self.in_flight[self.senders.submit(self.retrying.batch, batch)] = batch
            self.in_flight_count += len(batch)

    def _collect(self) -> None:
        """Wait until a refill's worth of answers is in (or nothing is in flight), confirm them in one batch."""
        outcomes: list[_Outcome] = []
        while self.in_flight and len(outcomes) < self.refill_at:
            done, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                outcomes += future.result()
                self.in_flight_count -= len(self.in_flight.pop(future))
        if outcomes:
            self._confirm(outcomes)

    def _confirm(self, outcomes: list[_Outcome]) -> None:
        """Record each answer: the sent ones in one ledger batch, failures one by one (they are few)."""
        report, stop = self.report, None
        sent = [o for o in outcomes if o.error is None]
        if sent:
            self.ledger.mark_sent_many(
                [SentConfirmation(o.message.key, str(o.provider_id), o.message.campaign_id) for o in sent], self.now()
            )
        for outcome in outcomes:
            report.transient_retries += outcome.retries
            if outcome.error is None:
                report.sent += 1
                report._count(outcome.message.campaign_id, "sent")
            else:
                stop = self._record_failure(outcome.message, outcome.error) or stop
        if stop is not None:
            raise _Abort(stop)

    def _record_failure(self, message: OutboundMessage, error: BaseException) -> BaseException | None:
        """Record a failed send; returns the error when it must stop the campaign."""
        key, campaign, at = message.key, message.campaign_id, self.now()
        if not isinstance(error, Exception):  # interrupted mid-call: the provider may have it. Never resend.
            self.ledger.mark_in_doubt(key, f"interrupted during the provider call: {_reason(error)}", at)
            return error
        if isinstance(error, PermanentSendError):
            self._failed(message, _reason(error), permanent=True)
            return None
        if isinstance(error, ChannelUnavailableError):  # every further message would fail the same way
            self._failed(message, f"channel unavailable: {_reason(error)}", permanent=False)
            return error
        if isinstance(error, TransientSendError):  # retries spent: the next run tries again
            self._failed(message, _reason(error), permanent=False)
            return None
        # The channel raised before returning an id: not delivered, so a retry sends it; the run stops.
        self.ledger.mark_failed(key, f"run aborted: {_reason(error)}", permanent=False, now=at, campaign_id=campaign)
        self.report.failed_transient += 1
        self.report._count(campaign, "failed_transient")
        return error

    def _failed(self, message: OutboundMessage, reason: str, permanent: bool) -> None:
        self.ledger.mark_failed(message.key, reason, permanent=permanent, now=self.now(),
                                campaign_id=message.campaign_id)  # fmt: skip
        if permanent:
            self.report.failed_permanent += 1
        else:
            self.report.failed_transient += 1
        outcome = "failed_permanent" if permanent else "failed_transient"
        self.report.failure_reasons[reason] += 1
        self.report._count(message.campaign_id, outcome)

    def _abort(self, error: BaseException) -> None:
        """Stop: settle what is in flight, give back the reservations never attempted, so a retry sends them.

        An Exception waits for the in-flight answers and records them; an interrupt does not wait:
        what is still in the provider's hands becomes `in_doubt` (a send that had not started is
        given back). If the ledger fails here too, the rows turn in_doubt (attempted) or go back
        (not attempted) after the lease: safe either way.
        """
        if self.in_flight and isinstance(error, Exception):
            outcomes = [outcome for future in wait(self.in_flight).done for outcome in future.result()]
            self.in_flight.clear()
            with suppress(_Abort):
                self._confirm(outcomes)
        rest = [message.key for message, _ in self.queue]
        for future, batch in self.in_flight.items():
            if future.cancel():
                rest += [message.key for message in batch]
                continue
            reason = f"run interrupted during the provider call: {_reason(error)}"
            for message in batch:
                self.ledger.mark_in_doubt(message.key, reason, self.now())
        self.in_flight.clear()
        self.in_flight_count = 0
        self.queue.clear()
        if rest:
            reason = f"not attempted: run aborted ({_reason(error)})"
            self.report.released += self.ledger.release(rest, reason, self.now())


def _reserve(
    chunk: list[OutboundMessage],
    ledger: Ledger,
    reserved_at: datetime,
    lease: timedelta,
    report: DeliveryReport,
    owner: str | None,
) -> list[OutboundMessage]:
    """Reserve a chunk; returns the messages this run must send (in order), counts the rest."""
    keys = pl.DataFrame(
        [
            (k.customer_id, k.event_id, k.channel, str(k.kind), k.occurrence, m.campaign_id)
            for m in chunk
            for k in [m.key]
        ],
        schema={
            name: pl.String() for name in ("customer_id", "event_id", "channel", "kind", "occurrence", "campaign_id")
        },
        orient="row",
    )
    by_key = {m.key: m for m in chunk}
    granted: set[DeliveryKey] = set()
    for row in ledger.reserve(keys, now=reserved_at, stale_after=lease, owner=owner).iter_rows(named=True):
        key = DeliveryKey(
            row["customer_id"], row["event_id"], row["channel"], MessageKind(row["kind"]), row.get("occurrence") or ""
        )
        if row["granted"]:
            granted.add(key)
            continue
        if row["status"] == DeliveryStatus.IN_DOUBT and row["previous_status"] == DeliveryStatus.PENDING:
            report.became_in_doubt += 1
        report._skip(by_key[key].campaign_id, SKIP_REASONS.get(row["status"], row["status"]))
    return [m for m in chunk if m.key in granted]


SUPPRESSED_ADDRESS_CHANNELS = frozenset({"email"})  # where `recipient` is an address the providers bounce


def _opted_out(chunk: list[OutboundMessage], ledger: Ledger) -> set[tuple[str, str]]:
    """(channel, customer_id) of the chunk's recipients opted out right now, and of its email
    messages whose recipient address is suppressed (a hard bounce, repeated soft bounces or a
    complaint: the ledger's `suppressed_addresses`), whoever the customer is."""
    opted: set[tuple[str, str]] = set()
    for channel in sorted({m.key.channel for m in chunk}):
        ids = pl.Series([m.key.customer_id for m in chunk if m.key.channel == channel], dtype=pl.String)
        opted |= {(channel, customer_id) for customer_id in ledger.opted_out(ids, channel)}
    emails = [m for m in chunk if m.key.channel in SUPPRESSED_ADDRESS_CHANNELS and m.recipient]
    if emails:
        suppressed = ledger.suppressed_addresses(pl.Series([m.recipient for m in emails], dtype=pl.String))
        opted |= {(m.key.channel, m.key.customer_id) for m in emails if m.recipient in suppressed}
    return opted
