"""The send loop: reserve in the ledger, check opt-outs, call the channel, confirm. Never twice.

Independent of Dagster and of any channel: `send` is any callable that delivers one
`OutboundMessage` and returns the provider's message id, raising `TransientSendError` for errors
worth retrying, `PermanentSendError` for refusals. Anything else means the process is in
trouble: the message being sent is marked `failed_transient` (the provider raised before
accepting it, so a retry may send it), the reservations not yet attempted are released for the
next run, and the error propagates so the run fails. A `BaseException` that is not an
`Exception` (KeyboardInterrupt, Dagster's run termination) may arrive mid-call, when we cannot
know whether the provider got the message: that one becomes `in_doubt` (never resent).

Messages are reserved and checked against opt-outs a chunk (`chunk_size`) at a time, right before
the chunk is sent: an unsubscribe that lands while a long campaign is sending takes effect from
the next chunk.

A hard kill (SIGKILL, OOM, node loss) gives no chance to clean up. Reservations therefore record
their `owner` (the Dagster run id) and each message is marked attempted (`mark_attempting`, one
conditional write) right before its provider call: afterwards only that one message can be
`in_doubt`. The reserved-but-never-attempted rows go back to the next run, by the run-failure
sensor (`release_owner` of the dead run) or, failing that, by the next reservation once the lease
expired. `mark_attempting` succeeds only while this reservation still holds the row, so a run
presumed dead that wakes up never sends a row given to someone else.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import polars as pl

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    DeliveryKey,
    DeliveryStatus,
    MessageKind,
    OutboundMessage,
    PermanentSendError,
    TransientSendError,
)

DEFAULT_LEASE = timedelta(hours=1)  # how long a pending reservation is presumed alive; > one chunk's sending

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
    def mark_sent(
        self, key: DeliveryKey, provider_message_id: str, now: datetime | None = ..., campaign_id: str | None = ...
    ) -> None: ...
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
    def mark_attempting(self, key: DeliveryKey, reserved_at: datetime, now: datetime | None = ...) -> bool: ...
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

    def _count(self, campaign_id: str, outcome: str) -> None:
        self.per_campaign.setdefault(campaign_id, Counter())[outcome] += 1

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

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
        }


def exponential_backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Full-jitter exponential backoff: U(0, min(cap, base * 2^(attempt-1))) seconds."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


def deliver(
    messages: Sequence[OutboundMessage],
    *,
    ledger: Ledger,
    send: Callable[[OutboundMessage], str],
    now: Callable[[], datetime],
    max_transient_retries: int = 3,
    backoff: Callable[[int], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    chunk_size: int = 100,
    lease: timedelta = DEFAULT_LEASE,
    owner: str | None = None,
    dead_owners: Sequence[str | None] = (),
) -> DeliveryReport:
    """Send each message at most once ever, recording every outcome in the ledger.

    Safe to call again with the same messages (a re-materialization or a retried run): keys
    already sent, refused for good, suppressed, held out or in doubt are skipped and counted.
    Messages go in the caller's order (e.g. score descending), `chunk_size` at a time: each
    chunk is reserved, then checked against opt-outs, then sent. A hard kill (OOM, SIGKILL: no
    chance to release) leaves at most one chunk `pending`, of which only the message being sent
    was attempted (it becomes `in_doubt`); `lease` must exceed the time one chunk takes to send,
    retries included. `owner` (the Dagster
    run id; None outside Dagster) lets the run-failure sensor give a dead run's reservations back.
    `dead_owners` (e.g. the failed run this run retries) are finished: their unattempted
    reservations are given back first, so a retry need not wait for the sensor or the lease.
    """
    if max_transient_retries < 0 or chunk_size <= 0:
        raise ValueError("max_transient_retries must be >= 0 and chunk_size > 0")
    loop = _SendLoop(ledger, send, now, max_transient_retries, backoff or exponential_backoff, sleep, DeliveryReport())
    ordered = _unique(messages, loop.report)
    for dead in dict.fromkeys(o for o in dead_owners if o is not None and o != owner):
        released, in_doubt = ledger.release_owner(dead, f"run {dead} ended before confirming", now())
        loop.report.taken_over += released
        loop.report.became_in_doubt += in_doubt
    for start in range(0, len(ordered), chunk_size):
        _send_chunk(ordered[start : start + chunk_size], loop, lease, owner)
    return loop.report


@dataclass(frozen=True)
class _SendLoop:
    """What every message of one `deliver` call is sent with, and the report it adds to."""

    ledger: Ledger
    send: Callable[[OutboundMessage], str]
    now: Callable[[], datetime]
    max_transient_retries: int
    wait: Callable[[int], float]
    sleep: Callable[[float], None]
    report: DeliveryReport


def _unique(messages: Sequence[OutboundMessage], report: DeliveryReport) -> list[OutboundMessage]:
    """The messages in order, each key once; repeats are counted as DUPLICATE_IN_BATCH skips."""
    unique: dict[DeliveryKey, OutboundMessage] = {}
    for message in messages:
        if message.key in unique:
            report.skipped[DUPLICATE_IN_BATCH] += 1
            report._count(message.campaign_id, f"skipped:{DUPLICATE_IN_BATCH}")
        else:
            unique[message.key] = message
    report.attempted = len(unique)
    return list(unique.values())


def _send_chunk(chunk: list[OutboundMessage], loop: _SendLoop, lease: timedelta, owner: str | None) -> None:
    """Reserve the chunk, check it against opt-outs, send what this run was granted; on any abort
    give back the reservations not yet attempted and re-raise."""
    ledger, report, now = loop.ledger, loop.report, loop.now
    reserved_at = now()
    granted = _reserve(chunk, ledger, reserved_at, lease, report, owner)
    position = 0
    try:
        opted = _opted_out(granted, ledger)
        for message in granted:
            position += 1
            if (message.key.channel, message.key.customer_id) in opted:
                ledger.mark_suppressed(message.key, "opted out", now(), message.campaign_id)
                report.skipped[OPTED_OUT] += 1
                report._count(message.campaign_id, f"skipped:{OPTED_OUT}")
                continue
            if not ledger.mark_attempting(message.key, reserved_at, now()):
                report.skipped[RESERVATION_LOST] += 1
                report._count(message.campaign_id, f"skipped:{RESERVATION_LOST}")
                continue
            _send_one(message, loop)
    except BaseException as error:
        # Give back this chunk's untouched reservations so a retry sends them; later chunks
        # were never reserved. If this fails too, they turn in_doubt after the lease: safe.
        rest = [m.key for m in granted[position:]]
        if rest:
            report.released = ledger.release(rest, f"not attempted: run aborted ({_reason(error)})", now())
        raise


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
        reason = SKIP_REASONS.get(row["status"], row["status"])
        report.skipped[reason] += 1
        report._count(by_key[key].campaign_id, f"skipped:{reason}")
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


def _send_one(message: OutboundMessage, loop: _SendLoop) -> None:
    """One message: send with retries, then confirm its outcome in the ledger."""
    key, campaign = message.key, message.campaign_id
    ledger, now, report = loop.ledger, loop.now, loop.report
    attempt = 0
    while True:
        try:
            provider_id = loop.send(message)
        except ChannelUnavailableError as error:
            # Every further message would fail the same way: record this one, stop the campaign.
            reason = f"channel unavailable: {_reason(error)}"
            ledger.mark_failed(key, reason, permanent=False, now=now(), campaign_id=campaign)
            report.failed_transient += 1
            report.failure_reasons[reason] += 1
            report._count(campaign, "failed_transient")
            raise
        except TransientSendError as error:
            if attempt < loop.max_transient_retries:
                attempt += 1
                report.transient_retries += 1
                loop.sleep(loop.wait(attempt))
                continue
            ledger.mark_failed(key, _reason(error), permanent=False, now=now(), campaign_id=campaign)
            report.failed_transient += 1
            report.failure_reasons[_reason(error)] += 1
            report._count(campaign, "failed_transient")
            return
        except PermanentSendError as error:
            ledger.mark_failed(key, _reason(error), permanent=True, now=now(), campaign_id=campaign)
            report.failed_permanent += 1
            report.failure_reasons[_reason(error)] += 1
            report._count(campaign, "failed_permanent")
            return
        except Exception as error:
            # The channel raised before returning an id: treat as not delivered, so a retry sends it.
            ledger.mark_failed(key, f"run aborted: {_reason(error)}", permanent=False, now=now(), campaign_id=campaign)
            report.failed_transient += 1
            report._count(campaign, "failed_transient")
            raise
        except BaseException as error:
            # Interrupted mid-call: the provider may have it. Never resend.
            ledger.mark_in_doubt(key, f"interrupted during the provider call: {_reason(error)}", now())
            raise
        ledger.mark_sent(key, provider_id, now(), campaign)
        report.sent += 1
        report._count(campaign, "sent")
        return
