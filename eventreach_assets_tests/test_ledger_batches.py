"""The ledger's batch marks (`mark_attempting_many`, `mark_sent_many`) and batched reservations:
the same rows and answers as the single-key calls, on SQLite and on DynamoDB (moto server over
HTTP) both as parallel single writes and in TransactWriteItems, with the requests counted."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from eventreach_assets.domain.delivery import DeliveryKey, MessageKind, SentConfirmation
from eventreach_assets.resources.ledger import DynamoDBDeliveryLedger, SqliteDeliveryLedger, keys_frame
from eventreach_assets.resources.ledger.dynamodb_items import distinct_rounds
from eventreach_assets_tests.stand_ins import REGION

NOW = datetime(2026, 11, 23, 10, 0)
TAKEN_OVER = NOW + timedelta(hours=2)  # past the lease: a never-attempted reservation goes to the next run
LATER = TAKEN_OVER + timedelta(minutes=1)


@pytest.fixture(params=["sqlite", "dynamodb", "dynamodb-transactions"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Both backends; DynamoDB once with parallel single writes (the default on a custom endpoint)
    and once with TransactWriteItems (the default on AWS)."""
    if request.param == "sqlite":
        store = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
        yield store
        store.close()
        return
    endpoint = request.getfixturevalue("aws_endpoint")
    transactions = request.param == "dynamodb-transactions"
    store = DynamoDBDeliveryLedger(
        table_name="eventreach-ledger", region_name=REGION, endpoint_url=endpoint, transactions=transactions
    )
    store.create_table()
    yield store


class Requests:
    """The DynamoDB requests a ledger's client sends, by operation, counted as they leave (botocore's
    before-call event); empty for SQLite."""

    def __init__(self, ledger: Any) -> None:
        self.sent: list[str] = []
        self._events = ledger.client().meta.events if isinstance(ledger, DynamoDBDeliveryLedger) else None

    def _count(self, model: Any, **_: Any) -> None:
        self.sent.append(model.name)  # list.append: safe from the ledger's worker threads

    def __enter__(self) -> Requests:
        if self._events is not None:
            self._events.register("before-call.dynamodb", self._count, unique_id="count-requests")
        return self

    def __exit__(self, *_: object) -> None:
        if self._events is not None:
            self._events.unregister("before-call.dynamodb", unique_id="count-requests")

    def counts(self) -> Counter[str]:
        return Counter(self.sent)


def transactions(ledger: Any) -> bool:
    return isinstance(ledger, DynamoDBDeliveryLedger) and bool(ledger.transactions)


def key(customer: str, event: str = "evt-1") -> DeliveryKey:
    return DeliveryKey(customer, event, "email", MessageKind.INVITATION)


def names(keys: set[DeliveryKey] | list[DeliveryKey]) -> set[str]:
    return {k.customer_id for k in keys}


def _prepare(ledger: Any, event: str) -> dict[str, DeliveryKey]:
    """An event's rows before a window's marks: a, b, c reserved at NOW by run-1 and never attempted;
    `taken` reserved with them but taken over by run-2 after the lease; `sent` already confirmed."""
    keys = {name: key(name, event) for name in ("a", "b", "c", "taken", "sent", "unknown")}
    ledger.reserve(keys_frame([keys[n] for n in ("a", "b", "c", "taken", "sent")], "camp-1"), now=NOW, owner="run-1")
    assert ledger.reserve(keys_frame([keys["taken"]], "camp-1"), now=TAKEN_OVER, owner="run-2")["granted"].all()
    assert ledger.mark_attempting(keys["sent"], NOW, NOW)
    ledger.mark_sent(keys["sent"], f"sent@{event}", NOW, "camp-1")
    return keys


def _rows(ledger: Any, event: str) -> pl.DataFrame:
    """The event's rows as the other event's would read (no event id in them)."""
    return (
        ledger.deliveries(event)
        .drop("event_id")
        .with_columns(pl.col("provider_message_id").str.replace(f"@{event}", ""))
    )


def test_window_marks_leave_the_rows_and_answers_single_marks_leave(ledger):
    one, many = _prepare(ledger, "evt-single"), _prepare(ledger, "evt-batch")
    window = ["a", "taken", "b", "sent", "unknown", "a", "c"]  # "a" twice: its first attempt counts
    attempted_one = {name for name in window if ledger.mark_attempting(one[name], NOW, LATER)}
    attempted_many = names(ledger.mark_attempting_many([many[name] for name in window], NOW, LATER))
    assert attempted_one == attempted_many == {"a", "b", "c"}
    # run-2 still holds "taken": its own attempt goes through, on both
    assert ledger.mark_attempting(one["taken"], TAKEN_OVER, LATER)
    assert ledger.mark_attempting_many([many["taken"]], TAKEN_OVER, LATER) == {many["taken"]}

    confirmations = [("a", "camp-2"), ("b", None), ("a", "camp-2"), ("unknown", "camp-u"), ("taken", None)]
    for name, campaign in confirmations:
        ledger.mark_sent(one[name], f"{name}-{campaign}@evt-single", LATER, campaign)
    ledger.mark_sent_many(
        [SentConfirmation(many[name], f"{name}-{campaign}@evt-batch", campaign) for name, campaign in confirmations],
        LATER,
    )
    assert _rows(ledger, "evt-batch").equals(_rows(ledger, "evt-single"))
    rows = {row["customer_id"]: row for row in _rows(ledger, "evt-batch").iter_rows(named=True)}
    assert rows["a"]["sends"] == 2  # confirmed twice: the duplicate shows
    assert rows["b"]["campaign_id"] == "camp-1"  # None keeps the reservation's campaign
    assert rows["unknown"]["status"] == "sent" and rows["unknown"]["campaign_id"] == "camp-u"
    assert rows["c"]["status"] == "pending"  # attempted, never confirmed
    # the SENT and MESSAGE index attributes: found by send time and by provider message id
    sent_since = ledger.invitations_since(LATER - timedelta(seconds=1))
    by_event = {
        event: set(sent_since.filter(pl.col("event_id") == event)["customer_id"])
        for event in ("evt-single", "evt-batch")
    }
    assert by_event["evt-batch"] == by_event["evt-single"] == {"a", "b", "unknown", "taken"}
    found = ledger.messages_by_provider_id(pl.Series(["b-None@evt-batch", "unknown-camp-u@evt-batch"]))
    assert found["customer_id"].to_list() == ["b", "unknown"]
    assert set(found["event_id"]) == {"evt-batch"}


def test_a_key_held_by_another_reservation_inside_a_batch_of_100_gets_its_own_answer(ledger):
    keys = [key(f"c{i:03d}") for i in range(100)]
    ledger.reserve(keys_frame(keys, "camp-1"), now=NOW, owner="run-1")
    held = keys[37]
    assert ledger.reserve(keys_frame([held], "camp-1"), now=TAKEN_OVER, owner="run-2")["granted"].all()
    with Requests(ledger) as requests:
        attempted = ledger.mark_attempting_many(keys, NOW, LATER)
    assert attempted == set(keys) - {held}
    if transactions(ledger):  # cancelled by key 37's condition, then the 99 others sent again
        assert requests.counts() == {"TransactWriteItems": 2}
    elif isinstance(ledger, DynamoDBDeliveryLedger):
        assert requests.counts() == {"UpdateItem": 100}
    # What was written: the 99 are attempted (no second attempt), key 37 is still run-2's to attempt.
    assert ledger.mark_attempting_many(keys, NOW, LATER) == set()
    assert ledger.mark_attempting_many([held], TAKEN_OVER, LATER) == {held}
    assert ledger.release_owner("run-1", "run-1 died", LATER) == (0, 99)  # attempted, unconfirmed: in doubt


def test_batches_over_100_keys(ledger):
    keys = [key(f"c{i:03d}") for i in range(120)]  # a chunk of 100 and one of 20
    with Requests(ledger) as requests:
        reservation = ledger.reserve(keys_frame(keys, "camp-1"), now=NOW, owner="run-1")
        assert reservation["granted"].all() and reservation.height == 120
        assert ledger.mark_attempting_many(keys, NOW, NOW) == set(keys)
        ledger.mark_sent_many([SentConfirmation(k, f"m-{k.customer_id}", "camp-1") for k in keys], NOW)
    rows = ledger.deliveries("evt-1")
    assert rows.height == 120
    assert set(rows["status"]) == {"sent"} and set(rows["sends"]) == {1}
    assert rows["provider_message_id"].to_list() == [f"m-{k.customer_id}" for k in keys]
    if transactions(ledger):  # 2 reads (100 + 20); 2 transactions each for the puts, attempts and confirmations
        assert requests.counts() == {"BatchGetItem": 2, "TransactWriteItems": 6}
    elif isinstance(ledger, DynamoDBDeliveryLedger):
        assert requests.counts() == {"BatchGetItem": 2, "PutItem": 120, "UpdateItem": 240}
    again = ledger.reserve(keys_frame(keys, "camp-1"), now=LATER, owner="run-2")
    assert not again["granted"].any() and set(again["status"]) == {"sent"}


def test_a_reservation_batch_with_a_key_another_run_reserved_meanwhile(ledger):
    """Another run reserves one of the keys between this reservation's read and its writes: the
    conditional put of that key fails (in a transaction: cancels it, writing nothing), the other
    keys are written all the same and the contested key goes to the run that wrote it first."""
    if not isinstance(ledger, DynamoDBDeliveryLedger):
        pytest.skip("SQLite reads and writes a reservation under one lock: nothing can come between")
    keys = [key(f"c{i:03d}") for i in range(100)]
    contested = keys[61]
    events = ledger.client().meta.events
    raced = threading.Event()

    def other_run_reserves(**_: Any) -> None:
        if not raced.is_set():
            raced.set()
            other = DynamoDBDeliveryLedger(  # other settings: its own client, whose requests are not counted
                table_name=ledger.table_name,
                region_name=REGION,
                endpoint_url=ledger.endpoint_url,
                max_parallel_requests=1,
            )
            assert other.reserve(keys_frame([contested], "camp-9"), now=NOW, owner="run-other")["granted"].all()

    events.register("after-call.dynamodb.BatchGetItem", other_run_reserves, unique_id="race")
    try:
        with Requests(ledger) as requests:
            reservation = ledger.reserve(keys_frame(keys, "camp-1"), now=NOW, owner="run-1")
    finally:
        events.unregister("after-call.dynamodb.BatchGetItem", unique_id="race")
    by_customer = {row["customer_id"]: row for row in reservation.iter_rows(named=True)}
    assert {name for name, row in by_customer.items() if not row["granted"]} == {contested.customer_id}
    assert by_customer[contested.customer_id]["status"] == "pending"  # held by the other, live run
    rows = ledger.deliveries("evt-1")
    assert rows.height == 100 and set(rows["status"]) == {"pending"}
    assert set(rows.filter(pl.col("customer_id") == contested.customer_id)["campaign_id"]) == {"camp-9"}
    assert ledger.release_owner("run-1", "run-1 died", NOW) == (99, 0)  # the 99 were written as run-1's
    if transactions(ledger):  # the cancelled transaction, the 99 sent again, one read to settle key 61
        assert requests.counts()["TransactWriteItems"] == 2
    else:
        assert requests.counts()["PutItem"] == 100
    assert requests.counts()["GetItem"] == 1


def test_two_runs_reserving_the_same_batch_at_once_each_key_goes_to_one(ledger):
    keys = keys_frame([key(f"c{i:03d}") for i in range(150)], "camp-1")
    results: list[pl.DataFrame] = []
    barrier = threading.Barrier(2)

    def run(owner: str) -> None:
        barrier.wait()
        results.append(ledger.reserve(keys, now=NOW, owner=owner))

    threads = [threading.Thread(target=run, args=(f"run-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    first, second = (set(result.filter("granted")["customer_id"]) for result in results)
    assert not first & second  # never both: nobody is messaged twice
    if not transactions(ledger):
        assert first | second == set(keys["customer_id"])
    # With transactions on moto (not atomic under concurrent requests) a few keys may go to neither run;
    # their rows stay pending unattempted and the next run takes them over after the lease. That is why
    # `transactions` is off by default; the completeness of that path is left to verify on DynamoDB.


def test_a_window_of_nothing_asks_nothing(ledger):
    with Requests(ledger) as requests:
        assert ledger.mark_attempting_many([], NOW) == set()
        ledger.mark_sent_many([], NOW)
    assert requests.counts() == {}


def test_distinct_rounds_never_repeat_a_key_within_a_round_and_keep_each_keys_order():
    items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3), ("b", 2)]
    rounds = distinct_rounds(items, key=lambda item: item[0])
    assert rounds == [[("a", 1), ("b", 1), ("c", 1)], [("a", 2), ("b", 2)], [("a", 3)]]
