"""The send loop against real ledgers (SQLite file, DynamoDB on moto): sent once, whatever happens."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta

import polars as pl
import pytest

from eventreach_assets.domain.delivery import (
    DeliveryKey,
    MessageKind,
    OutboundMessage,
    PermanentSendError,
    TransientSendError,
)
from eventreach_assets.domain.sending import deliver
from eventreach_assets.resources.ledger import DeliveryLedgerResource, SqliteDeliveryLedger

NOW = datetime(2026, 11, 23, 10, 0)
EVENT = "evt-1"


class Clock:
    def __init__(self, start: datetime = NOW) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        return self.moment


class FakeChannel:
    """Counts provider calls per key; scripted failures by customer id or after N sends."""

    def __init__(self, die_after: int | None = None) -> None:
        self.calls: Counter[DeliveryKey] = Counter()
        self.accepted: Counter[DeliveryKey] = Counter()
        self.die_after = die_after
        self.transient: dict[str, int] = {}  # customer -> failures before success
        self.permanent: dict[str, str] = {}  # customer -> reason
        self.on_send = None

    def __call__(self, message: OutboundMessage) -> str:
        key = message.key
        self.calls[key] += 1
        if self.on_send is not None:
            self.on_send(message)
        if self.die_after is not None and sum(self.accepted.values()) >= self.die_after:
            raise ConnectionResetError("the process is going down")
        if self.transient.get(key.customer_id, 0) > 0:
            self.transient[key.customer_id] -= 1
            raise TransientSendError("503 try later")
        if key.customer_id in self.permanent:
            raise PermanentSendError(self.permanent[key.customer_id])
        self.accepted[key] += 1
        return f"provider-{key.customer_id}-{self.calls[key]}"


def messages(n: int, channel: str = "email", campaign: str = "camp-1", start: int = 0) -> list[OutboundMessage]:
    return [
        OutboundMessage(
            key=DeliveryKey(f"c{i:03d}", EVENT, channel, MessageKind.INVITATION),
            campaign_id=campaign,
            recipient=f"c{i:03d}@example.com",
        )
        for i in range(start, start + n)
    ]


def run(batch, ledger, channel, clock=None, **kwargs):
    return deliver(batch, ledger=ledger, send=channel, now=clock or Clock(), backoff=lambda attempt: 0.0, **kwargs)


def test_a_run_that_dies_half_way_is_retried_without_duplicates(ledger):
    batch = messages(20)
    channel = FakeChannel(die_after=7)
    with pytest.raises(ConnectionResetError):
        run(batch, ledger, channel)
    assert sum(channel.accepted.values()) == 7
    assert ledger.sent_count(EVENT) == 7
    statuses = Counter(ledger.deliveries(EVENT)["status"])
    assert statuses == {"sent": 7, "failed_transient": 13}  # the 8th failed, the other 12 were released

    channel.die_after = None  # the retry of the run
    report = run(batch, ledger, channel)
    assert report.sent == 13
    assert report.skipped == {"already_sent": 7}
    assert set(channel.accepted.values()) == {1}
    assert len(channel.accepted) == 20
    assert ledger.sent_count(EVENT) == 20
    assert ledger.duplicates(EVENT).is_empty()

    again = run(batch, ledger, channel)  # re-materializing a completed campaign sends nothing
    assert again.sent == 0
    assert again.skipped == {"already_sent": 20}
    assert sum(channel.accepted.values()) == 20


def test_transient_errors_are_retried_with_backoff_then_succeed_or_wait_for_the_next_run(ledger):
    channel = FakeChannel()
    channel.transient = {"c000": 2, "c001": 5}
    waits: list[int] = []
    slept: list[float] = []
    report = deliver(
        messages(3),
        ledger=ledger,
        send=channel,
        now=Clock(),
        max_transient_retries=3,
        backoff=lambda attempt: waits.append(attempt) or 0.25 * attempt,
        sleep=slept.append,
    )
    assert report.sent == 2
    assert report.failed_transient == 1
    assert report.transient_retries == 2 + 3
    assert waits == [1, 2, 1, 2, 3]
    assert slept == [0.25, 0.5, 0.25, 0.5, 0.75]
    assert channel.calls[messages(3)[1].key] == 4  # 1 + max_transient_retries
    failed = ledger.deliveries(EVENT).filter(pl.col("status") == "failed_transient")
    assert failed["customer_id"].to_list() == ["c001"]
    assert failed["reason"].to_list() == ["TransientSendError: 503 try later"]

    later = run(messages(3), ledger, channel)  # the next run retries only the transient failure
    assert later.sent == 1
    assert later.skipped == {"already_sent": 2}
    assert ledger.deliveries(EVENT).filter(pl.col("customer_id") == "c001")["attempts"].item() == 2


def test_permanent_failures_are_recorded_with_their_reason_and_never_retried(ledger):
    channel = FakeChannel()
    channel.permanent = {"c001": "550 mailbox does not exist"}
    report = run(messages(3), ledger, channel)
    assert (report.sent, report.failed_permanent) == (2, 1)
    assert report.failure_reasons == {"PermanentSendError: 550 mailbox does not exist": 1}
    row = ledger.deliveries(EVENT).filter(pl.col("customer_id") == "c001").row(0, named=True)
    assert row["status"] == "failed_permanent"
    assert row["reason"] == "PermanentSendError: 550 mailbox does not exist"
    again = run(messages(3), ledger, channel)
    assert again.skipped == {"already_sent": 2, "permanent_failure_earlier": 1}
    assert channel.calls[messages(3)[1].key] == 1


def test_an_opt_out_recorded_after_reservation_suppresses_the_send(ledger):
    batch = messages(6)
    ledger.record_opt_out("c000", "email", "list-unsubscribe", NOW - timedelta(days=1))  # after the weekly batch
    ledger.record_opt_out("c001", "push", "app-settings", NOW - timedelta(days=1))  # another channel: still sent
    channel = FakeChannel()

    def unsubscribe_during_the_campaign(message: OutboundMessage) -> None:
        if message.key.customer_id == "c002":
            ledger.record_opt_out("c004", None, "one-click", NOW)

    channel.on_send = unsubscribe_during_the_campaign
    report = run(batch, ledger, channel, chunk_size=1)
    assert report.sent == 4
    assert report.skipped == {"suppressed": 2}
    assert {k.customer_id for k in channel.calls} == {"c001", "c002", "c003", "c005"}
    suppressed = ledger.deliveries(EVENT).filter(pl.col("status") == "suppressed")
    assert suppressed["customer_id"].to_list() == ["c000", "c004"]
    assert set(suppressed["reason"]) == {"opted out"}
    assert run(batch, ledger, channel).skipped == {"already_sent": 4, "suppressed": 2}


def test_a_stale_pending_row_becomes_in_doubt_and_is_not_resent(ledger):
    batch = messages(3)
    clock = Clock()
    ledger.reserve(
        pl.DataFrame(
            {
                "customer_id": ["c001"],
                "event_id": [EVENT],
                "channel": ["email"],
                "kind": ["invitation"],
                "campaign_id": ["camp-0"],
            }
        ),
        now=clock.moment,
    )  # a run reserved c001, called the provider, and died before confirming
    assert ledger.mark_attempting(batch[1].key, clock.moment, clock.moment)
    channel = FakeChannel()
    soon = run(batch, ledger, channel, clock)  # within the lease: someone may still be sending it
    assert soon.skipped == {"in_progress": 1}
    clock.moment = NOW + timedelta(hours=3)
    later = run(batch, ledger, channel, clock)
    assert later.skipped == {"already_sent": 2, "in_doubt": 1}
    assert later.became_in_doubt == 1
    assert batch[1].key not in channel.calls
    assert ledger.deliveries(EVENT).filter(pl.col("customer_id") == "c001")["status"].item() == "in_doubt"


def test_an_interrupt_during_the_provider_call_leaves_that_message_in_doubt(ledger):
    channel = FakeChannel()

    def interrupt(message: OutboundMessage) -> None:
        if message.key.customer_id == "c001":
            raise KeyboardInterrupt

    channel.on_send = interrupt
    with pytest.raises(KeyboardInterrupt):
        run(messages(3), ledger, channel)
    statuses = dict(ledger.deliveries(EVENT).select("customer_id", "status").iter_rows())
    assert statuses == {"c000": "sent", "c001": "in_doubt", "c002": "failed_transient"}
    channel.on_send = None
    report = run(messages(3), ledger, channel)
    assert report.sent == 1
    assert report.skipped == {"already_sent": 1, "in_doubt": 1}


def test_report_counts_per_campaign_and_duplicates_in_the_batch(ledger):
    batch = messages(3, campaign="camp-eu") + messages(2, campaign="camp-us", start=3) + messages(1)
    ledger.mark_held_out(batch[4].key, NOW, "camp-us")
    channel = FakeChannel()
    channel.permanent = {"c002": "rejected"}
    report = run(batch, ledger, channel)
    assert report.attempted == 5
    assert report.skipped == {"duplicate_in_batch": 1, "held_out": 1}
    assert report.per_campaign == {
        "camp-eu": {"sent": 2, "failed_permanent": 1},
        "camp-1": {"skipped:duplicate_in_batch": 1},
        "camp-us": {"sent": 1, "skipped:held_out": 1},
    }
    metadata = report.as_metadata()
    assert metadata["sent"] == 3
    assert metadata["skipped"] == 2
    assert metadata["skipped_by_reason"] == {"duplicate_in_batch": 1, "held_out": 1}
    assert metadata["per_campaign"]["camp-us"] == {"sent": 1, "skipped:held_out": 1}


def test_messages_of_several_channels_and_kinds_are_separate_keys(ledger):
    email = messages(2)
    push = [
        OutboundMessage(
            key=DeliveryKey(m.key.customer_id, EVENT, "push", MessageKind.REMINDER),
            campaign_id="r",
            recipient=m.key.customer_id,
        )
        for m in email
    ]
    ledger.record_opt_out("c000", "push", "app-settings", NOW)
    report = run(email + push, ledger, FakeChannel())
    assert report.sent == 3
    assert report.skipped == {"suppressed": 1}
    assert ledger.sent_count(EVENT, "email", MessageKind.INVITATION) == 2
    assert ledger.sent_count(EVENT, "push") == 1
    assert ledger.invitations_since(NOW - timedelta(days=1), NOW + timedelta(minutes=1)).height == 2


def test_nothing_to_send_touches_nothing(ledger):
    report = run([], ledger, FakeChannel())
    assert report.as_metadata()["attempted"] == 0
    assert ledger.deliveries(EVENT).is_empty()


class NoRelease:
    """A ledger whose release fails too: what a hard kill (OOM, SIGKILL) leaves behind."""

    def __init__(self, ledger: DeliveryLedgerResource) -> None:
        self._ledger = ledger

    def __getattr__(self, name: str):
        return getattr(self._ledger, name)

    def release(self, *args, **kwargs) -> int:
        raise RuntimeError("killed")


def test_unattempted_reservations_of_a_dead_run_are_sent_by_the_next_run_after_the_lease(ledger):
    batch = messages(20)
    channel = FakeChannel(die_after=7)
    with pytest.raises(RuntimeError, match="killed"):
        run(batch, NoRelease(ledger), channel, chunk_size=5)
    clock = Clock(NOW + timedelta(hours=2))  # past the lease
    channel.die_after = None
    report = run(batch, ledger, channel, clock, chunk_size=5)
    assert report.skipped == {"already_sent": 7}  # the 2 reserved-but-never-attempted rows are not in doubt
    assert report.sent == 13  # those 2, the message that raised (failed_transient) and the 10 never reserved
    assert max(channel.accepted.values()) == 1
    assert len(channel.accepted) == 20
    assert ledger.duplicates(EVENT).is_empty()


class Killed(BaseException):
    """SIGKILL: nothing runs after it, not even an except clause's ledger write."""


class KillableLedger:
    """Every ledger call fails once the process is 'dead'."""

    def __init__(self, ledger: DeliveryLedgerResource) -> None:
        self._ledger = ledger
        self.dead = False

    def __getattr__(self, name: str):
        attribute = getattr(self._ledger, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            if self.dead:
                raise Killed
            return attribute(*args, **kwargs)

        return call


def hard_kill_mid_call(ledger, batch, owner: str) -> FakeChannel:
    """Run `batch` and 'SIGKILL' the process while the provider has the 8th message."""
    dying = KillableLedger(ledger)
    channel = FakeChannel()

    def kill(message: OutboundMessage) -> None:
        if sum(channel.accepted.values()) == 7:
            channel.accepted[message.key] += 1  # the provider got it, the process never heard back
            dying.dead = True
            raise Killed

    channel.on_send = kill
    with pytest.raises(Killed):
        deliver(batch, ledger=dying, send=channel, now=Clock(), chunk_size=5, owner=owner)
    channel.on_send = None
    return channel


def test_after_a_hard_kill_only_the_message_in_the_providers_hands_is_in_doubt(ledger):
    batch = messages(20)
    channel = hard_kill_mid_call(ledger, batch, owner="run-killed")
    statuses = Counter(ledger.deliveries(EVENT)["status"])
    # What SIGKILL leaves: c007 attempted; c008-c009 and the chunk reserved ahead (c010-c014) not.
    assert statuses == {"sent": 7, "pending": 8}
    # The run-failure sensor's call for the dead run:
    assert ledger.release_owner("run-killed", "run failed", NOW) == (7, 1)
    report = run(batch, ledger, channel, Clock(NOW + timedelta(minutes=5)), chunk_size=5, owner="run-retry")
    assert report.skipped == {"already_sent": 7, "in_doubt": 1}
    assert report.sent == 12
    assert len(channel.accepted) == 20 and max(channel.accepted.values()) == 1  # everyone once, c007 included
    assert ledger.duplicates(EVENT).is_empty()
    in_doubt = ledger.deliveries(EVENT).filter(pl.col("status") == "in_doubt")
    assert in_doubt["customer_id"].to_list() == ["c007"]


def test_without_the_sensor_the_lease_gives_the_same_outcome(ledger):
    batch = messages(20)
    channel = hard_kill_mid_call(ledger, batch, owner=None)
    within = run(batch, ledger, channel, Clock(NOW + timedelta(minutes=5)), chunk_size=5)
    assert within.skipped == {"already_sent": 7, "in_progress": 8}  # the dead run's lease still holds them
    assert within.sent == 5  # the chunk it never reserved
    report = run(batch, ledger, channel, Clock(NOW + timedelta(hours=2)), chunk_size=5)
    assert report.skipped == {"already_sent": 12, "in_doubt": 1}
    assert report.sent == 7  # the dead run's never-attempted reservations, taken over after the lease
    assert report.became_in_doubt == 1
    assert len(channel.accepted) == 20 and max(channel.accepted.values()) == 1


def test_a_run_whose_lease_was_taken_over_does_not_send_those_rows(ledger):
    batch = messages(3)
    clock = Clock()
    channel = FakeChannel()

    def slow(message: OutboundMessage) -> None:  # the first run stalls past the lease on its first message
        if message.key.customer_id == "c000" and clock.moment == NOW:
            clock.moment = NOW + timedelta(hours=2)
            assert run(batch, ledger, FakeChannel(), clock, owner="run-2").sent == 2  # takes c001, c002 over

    channel.on_send = slow
    report = run(batch, ledger, channel, clock, owner="run-1")
    assert report.sent == 1
    assert report.skipped == {"reservation_lost": 2}
    assert ledger.sent_count(EVENT) == 3 and ledger.duplicates(EVENT).is_empty()


def test_skipped_frame_is_a_table_of_reasons():
    from eventreach_assets.domain.sending import DeliveryReport

    report = DeliveryReport()
    report.skipped.update({"already_sent": 3, "suppressed": 5, "in_doubt": 3})
    assert report.skipped_frame().rows() == [("suppressed", 5), ("already_sent", 3), ("in_doubt", 3)]
    assert DeliveryReport().skipped_frame().schema == {"reason": pl.String(), "count": pl.Int64()}


def test_an_unavailable_channel_stops_the_campaign_after_one_message(tmp_path):
    from datetime import datetime

    from eventreach_assets.domain.delivery import ChannelUnavailableError, DeliveryKey, MessageKind, OutboundMessage
    from eventreach_assets.domain.sending import deliver

    ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
    batch = [
        OutboundMessage(DeliveryKey(f"c{i}", "ev", "email", MessageKind.INVITATION), "camp", f"c{i}@example.com")
        for i in range(5)
    ]
    calls: list[str] = []

    def send(message: OutboundMessage) -> str:
        calls.append(message.key.customer_id)
        raise ChannelUnavailableError("SMTP login refused (535)")

    with pytest.raises(ChannelUnavailableError):
        deliver(batch, ledger=ledger, send=send, now=lambda: datetime(2026, 11, 23, 10), sleep=lambda _: None)
    assert calls == ["c0"]  # not retried, and the other four were not tried at all
    rows = ledger.deliveries("ev").sort("customer_id")
    assert rows.filter(pl.col("customer_id") == "c0")["status"].item() == "failed_transient"
    assert rows.filter(pl.col("status") == "sent").height == 0


# ---- many sends in flight ------------------------------------------------------------------------


class ConcurrentChannel:
    """A provider that takes `latency` seconds per message from any number of threads; records the
    most calls it had at once and how many messages had been generated when each call began."""

    def __init__(self, latency: float = 0.002) -> None:
        import threading

        self.latency = latency
        self.lock = threading.Lock()
        self.now_in_flight = 0
        self.most_in_flight = 0
        self.accepted: Counter[DeliveryKey] = Counter()
        self.kill_at: int | None = None  # the call that 'SIGKILLs' the process (the provider got it)
        self.dying: KillableLedger | None = None

    def __call__(self, message: OutboundMessage) -> str:
        import time

        with self.lock:
            self.now_in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.now_in_flight)
            self.accepted[message.key] += 1
            calls = sum(self.accepted.values())
        try:
            time.sleep(self.latency)
            if self.kill_at is not None and calls >= self.kill_at and self.dying is not None:
                self.dying.dead = True
                raise Killed
            return f"provider-{message.key.customer_id}"
        finally:
            with self.lock:
                self.now_in_flight -= 1


class CountingLedger:
    """Counts the ledger calls the loop makes, by method."""

    def __init__(self, ledger: DeliveryLedgerResource) -> None:
        self._ledger = ledger
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str):
        attribute = getattr(self._ledger, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return call


def test_many_in_flight_each_message_once_with_attempts_and_confirmations_in_batches(ledger):
    channel, counting = ConcurrentChannel(), CountingLedger(ledger)
    report = run(messages(300), counting, channel, concurrency=16, chunk_size=100)
    assert report.sent == 300 and ledger.sent_count(EVENT) == 300 and ledger.duplicates(EVENT).is_empty()
    assert set(channel.accepted.values()) == {1} and len(channel.accepted) == 300
    assert 1 < channel.most_in_flight <= 16 and report.peak_in_flight <= 16
    assert counting.calls["reserve"] == 3  # one per chunk
    # A batch per refill (a quarter of the window at least), not one round trip per message.
    assert counting.calls["mark_attempting_many"] <= 300 // 4 + 3
    assert counting.calls["mark_sent_many"] <= 300 // 4 + 3
    assert "mark_attempting" not in counting.calls and "mark_sent" not in counting.calls
    assert report.as_metadata()["messages_per_second"] > 0 and report.concurrency == 16


def test_messages_stream_one_chunk_at_a_time(ledger):
    generated = 0

    def rendered():
        nonlocal generated
        for message in messages(250):
            generated += 1
            yield message

    ahead: list[int] = []
    channel = FakeChannel()
    channel.on_send = lambda message: ahead.append(generated - sum(channel.accepted.values()))
    report = run(rendered(), ledger, channel, concurrency=1, chunk_size=50)
    assert report.sent == 250
    # Rendered and not yet sent: the chunk sending and the one reserved ahead, never all 250.
    assert 50 <= max(ahead) <= 2 * 50


def test_a_hard_kill_with_many_in_flight_leaves_only_those_in_doubt(ledger):
    batch = messages(120)
    dying = KillableLedger(ledger)
    channel = ConcurrentChannel()
    channel.kill_at, channel.dying = 50, dying
    with pytest.raises(Killed):
        run(batch, dying, channel, concurrency=8, chunk_size=40, owner="run-killed")
    before = Counter(ledger.deliveries(EVENT)["status"])
    released, in_doubt = ledger.release_owner("run-killed", "run failed", NOW)
    assert 1 <= in_doubt <= 8  # attempted, not confirmed: at most the window
    assert set(before) == {"sent", "pending"} and before["pending"] == released + in_doubt
    channel.kill_at = channel.dying = None
    report = run(batch, ledger, channel, Clock(NOW + timedelta(minutes=5)), concurrency=8, chunk_size=40)
    assert report.skipped == {"already_sent": before["sent"], "in_doubt": in_doubt}
    assert report.sent == 120 - before["sent"] - in_doubt
    assert max(channel.accepted.values()) == 1  # the provider never got anyone twice
    assert len(channel.accepted) >= 120 - in_doubt and ledger.duplicates(EVENT).is_empty()


class BatchChannel(FakeChannel):
    """A FakeChannel that also takes batches (`send_many`), recording each batch's size."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def send_many(self, batch: list[OutboundMessage]) -> list[str | BaseException]:
        with self._lock:
            self.batches.append(len(batch))
            answers: list[str | BaseException] = []
            for message in batch:
                try:
                    answers.append(self(message))
                except Exception as error:
                    answers.append(error)
            return answers


def test_a_batching_channel_gets_batches_and_every_message_once_retries_and_refusals_included(ledger):
    channel, counting = BatchChannel(), CountingLedger(ledger)
    channel.transient = {"c005": 1, "c070": 9}  # c005 gets through on its retry, c070 never does
    channel.permanent = {"c010": "550 no such user"}
    report = run(messages(200), counting, channel, concurrency=16, chunk_size=100, send_many=channel.send_many,
                 batch_size=8, max_transient_retries=2)  # fmt: skip
    assert report.sent == 198 and report.failed_permanent == 1 and report.failed_transient == 1
    assert max(channel.accepted.values()) == 1 and len(channel.accepted) == 198 and ledger.duplicates(EVENT).is_empty()
    assert max(channel.batches) == 8 and sum(channel.batches) == 200  # retries go one by one through `send`
    assert channel.calls[messages(200)[70].key] == 3 and report.transient_retries == 1 + 2
    assert report.peak_in_flight <= 16 and counting.calls["mark_sent_many"] <= 200 // 8 + 3
    statuses = Counter(ledger.deliveries(EVENT)["status"])
    assert statuses == {"sent": 198, "failed_permanent": 1, "failed_transient": 1}


def test_a_batch_interrupted_in_the_provider_call_is_in_doubt_the_rest_given_back(ledger):
    channel = BatchChannel()

    def interrupted(batch: list[OutboundMessage]) -> list[str | BaseException]:
        raise KeyboardInterrupt  # e.g. Dagster's run termination, mid-batch: the provider may have them

    with pytest.raises(KeyboardInterrupt):
        run(messages(40), ledger, channel, concurrency=8, chunk_size=40, send_many=interrupted, batch_size=8)
    statuses = Counter(ledger.deliveries(EVENT)["status"])
    assert statuses == {"in_doubt": 8, "failed_transient": 32}  # the batch in flight; the rest never attempted
