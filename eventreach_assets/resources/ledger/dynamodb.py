"""The delivery ledger on its own DynamoDB table (layout: `tables.ledger_table_definition`; items
and update requests: `dynamodb_items.py`)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import polars as pl
from botocore.exceptions import ClientError
from pydantic import Field

from eventreach_assets.domain.delivery import DeliveryKey, DeliveryStatus, MessageKind, SentConfirmation
from eventreach_assets.domain.feedback import SUPPRESSION_SCHEMA
from eventreach_assets.resources.dynamodb import DynamoDBClient, is_conditional_failure
from eventreach_assets.resources.ledger import dynamodb_items as layout
from eventreach_assets.resources.ledger.base import DeliveryLedgerResource, ReservationWrite, decide
from eventreach_assets.resources.ledger.dynamodb_items import STATUS_NAMES, WriteAction, string_attr
from eventreach_assets.resources.ledger.keys import stored_key
from eventreach_assets.resources.ledger.records import stored_time, to_utc
from eventreach_assets.resources.ledger.tables import MESSAGE_INDEX, OWNER_INDEX, SENT_INDEX, ledger_table_definition

_BATCH_TRIES = 10
_SETTLE_TRIES = 5
_TRANSACTION_ROUNDS = 4  # then the actions still without an outcome go one by one


class DynamoDBDeliveryLedger(DynamoDBClient, DeliveryLedgerResource):
    """The ledger on its own DynamoDB table (`ledger_table_definition`); conditional writes make
    each reservation atomic per key. botocore's standard retries handle throttling; a
    conditional-check failure is an answer (someone else holds the key), not an error.

    One partition per event holds its deliveries (DynamoDB adapts a hot partition). A reservation
    reads its keys first (BatchGetItem, 100 a request): keys already there are decided from what
    was read, new ones are put conditionally. Conditional writes (new reservations, attempts) and
    confirmations go in TransactWriteItems of up to 100 (`transactions`): one round trip per
    chunk or window instead of one per key; a cancelled transaction's CancellationReasons say
    which items' conditions failed, the others are sent again, so each key's answer is exactly the
    single write's. Without transactions they are single writes spread by `max_parallel_requests`
    threads.
    Feedback, suppression and batched opt-out writes go in BatchWriteItem requests of 25 after
    one BatchGetItem pass finds what already exists, so a replay writes nothing and the counts
    are of new rows. Two ingestions racing on the same address may both write it (the later time
    wins); the ingestion is one run at a time per feed, so this does not happen in practice.
    """

    table_name: str = Field(description="The ledger table (see ledger_table_definition).")
    max_parallel_requests: int = Field(default=8, ge=1, le=64, description="Threads issuing per-key requests.")
    transactions: bool | None = Field(
        default=False,
        description="Batch conditional writes and confirmations in TransactWriteItems (True) or send them as "
        "parallel single writes (False, the default until the transactional path is verified against DynamoDB "
        "under concurrent runs: on moto, whose transactions are not atomic under concurrent requests, two runs "
        "reserving the same keys at once can leave a few keys granted to neither). None: transactions on AWS "
        "itself, single writes on a custom endpoint.",
    )

    _table_definition = staticmethod(ledger_table_definition)

    # ---- requests ----

    def _paged(self, operation: str, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a Query or Scan, page after page."""
        request = dict(request)
        while True:
            response = getattr(self.client(), operation)(TableName=self.table_name, **request)
            yield from response.get("Items", [])
            if "LastEvaluatedKey" not in response:
                return
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _query(self, **request: Any) -> Iterator[dict[str, Any]]:
        return self._paged("query", request)

    def _conditional(self, operation: str, **request: Any) -> bool:
        """A conditional PutItem / UpdateItem; False when its condition refused it."""
        try:
            getattr(self.client(), operation)(TableName=self.table_name, **request)
        except ClientError as error:
            if is_conditional_failure(error):
                return False
            raise
        return True

    def _update(self, key: dict[str, Any], request: dict[str, Any]) -> bool:
        """A conditional UpdateItem of `key` (a `dynamodb_items` request)."""
        return self._conditional("update_item", Key=key, ExpressionAttributeNames=STATUS_NAMES, **request)

    def _batch_get(
        self,
        keys: list[dict[str, Any]],
        attributes: str | None = None,
        failure: str = f"ledger batch read still unprocessed after {_BATCH_TRIES} tries",
    ) -> list[dict[str, Any]]:
        """The items of these keys (BatchGetItem in chunks of 100, unprocessed keys retried)."""
        unique = list({layout.key_id(key): key for key in keys}.values())
        chunks = [unique[start : start + 100] for start in range(0, len(unique), 100)]

        def fetch(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            spec: dict[str, Any] = {"Keys": chunk, "ConsistentRead": True}
            if attributes:
                spec["ProjectionExpression"] = attributes
            request: dict[str, Any] = {self.table_name: spec}
            for _ in range(_BATCH_TRIES):
                response = self.client().batch_get_item(RequestItems=request)
                found += response["Responses"].get(self.table_name, [])
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    return found
                time.sleep(0.05)
            raise RuntimeError(failure)

        return [item for items in self._parallel(fetch, chunks) for item in items]

    def _batch_write(self, items: list[dict[str, Any]]) -> None:
        """Put these items (BatchWriteItem in chunks of 25, unprocessed items retried)."""
        unique = list({layout.key_id(item): item for item in items}.values())
        chunks = [unique[start : start + 25] for start in range(0, len(unique), 25)]

        def write(chunk: list[dict[str, Any]]) -> None:
            request: dict[str, Any] = {self.table_name: [{"PutRequest": {"Item": item}} for item in chunk]}
            for _ in range(_BATCH_TRIES):
                response = self.client().batch_write_item(RequestItems=request)
                request = response.get("UnprocessedItems") or {}
                if not request:
                    return
                time.sleep(0.05)
            raise RuntimeError(f"ledger batch write still unprocessed after {_BATCH_TRIES} tries")

        self._parallel(write, chunks)

    def _write_new(self, items: list[dict[str, Any]]) -> int:
        """Write the items whose key is not in the table yet; returns how many."""
        keys = [{"pk": item["pk"], "sk": item["sk"]} for item in items]
        existing = {layout.key_id(item) for item in self._batch_get(keys, "pk, sk")}
        new = list({layout.key_id(item): item for item in items if layout.key_id(item) not in existing}.values())
        self._batch_write(new)
        return len(new)

    def _use_transactions(self) -> bool:
        return self.transactions if self.transactions is not None else not self.endpoint_url

    def _write_each(self, actions: list[WriteAction]) -> list[bool]:
        """Each action's outcome (True written, False refused by its condition), exactly as if sent
        one by one: in TransactWriteItems (`transactions`), else as parallel single writes."""
        outcomes: list[bool] = [False] * len(actions)
        todo = self._transact_rounds(actions, outcomes) if self._use_transactions() else list(range(len(actions)))
        for index, written in zip(todo, self._parallel(lambda i: self._write_one(actions[i]), todo), strict=True):
            outcomes[index] = written
        return outcomes

    def _write_one(self, action: WriteAction) -> bool:
        kind, request = action
        return self._conditional("put_item" if kind == "Put" else "update_item", **request)

    def _transact_rounds(self, actions: list[WriteAction], outcomes: list[bool]) -> list[int]:
        """Send the actions in transactions of up to 100 until each has its outcome (in `outcomes`) or
        the rounds run out; returns the indexes of the actions still without one."""
        todo = list(range(len(actions)))
        for round_ in range(_TRANSACTION_ROUNDS):
            chunks = [
                todo[start : start + layout.TRANSACTION_LIMIT]
                for start in range(0, len(todo), layout.TRANSACTION_LIMIT)
            ]
            answers = self._parallel(lambda chunk: self._transact([actions[i] for i in chunk]), chunks)
            todo, contended = [], False
            for chunk, codes in zip(chunks, answers, strict=True):
                for index, code in zip(chunk, codes, strict=True):
                    if code in layout.RESEND_REASONS:
                        todo.append(index)
                        contended |= code != "None"
                    elif code in (layout.WRITTEN, layout.REFUSED):
                        outcomes[index] = code == layout.WRITTEN
                    else:
                        raise RuntimeError(f"ledger transaction cancelled: {code}")
            if not todo:
                break
            if contended:  # another writer or a throttle: give it a moment
                time.sleep(0.05 * 2**round_)
        return todo

    def _transact(self, actions: list[WriteAction]) -> list[str]:
        """One TransactWriteItems (botocore adds the idempotency token, so its own retries are safe):
        WRITTEN for each action if it committed, else each action's cancellation reason code."""
        try:
            self.client().transact_write_items(TransactItems=layout.transact_items(self.table_name, actions))
        except ClientError as error:
            reasons = error.response.get("CancellationReasons") or []
            if error.response["Error"]["Code"] != "TransactionCanceledException" or len(reasons) != len(actions):
                raise
            return [reason.get("Code") or "None" for reason in reasons]
        return [layout.WRITTEN] * len(actions)

    # ---- reservations and marks ----

    def _reserve_rows(self, frame: pl.DataFrame, at: str, cutoff: str, owner: str | None) -> list[tuple]:
        """Read the keys (BatchGetItem); put the new ones conditionally, settle the others from what was
        read (a put refused meanwhile is settled from a fresh read)."""
        rows = list(frame.iter_rows())
        keys = [stored_key(row) for row in frame.iter_rows(named=True)]
        items = [layout.delivery_key(key) for key in keys]
        found = {layout.key_id(item): item for item in self._batch_get(items)}
        current = [found.get(layout.key_id(item)) for item in items]
        new = [index for index, item in enumerate(current) if item is None]
        puts = [layout.put_new(layout.new_reservation(rows[i], keys[i], at, owner)) for i in new]
        results: list[tuple | None] = [None] * len(rows)
        for index, written in zip(new, self._write_each(puts), strict=True):
            if written:
                results[index] = (*rows[index], True, DeliveryStatus.PENDING.value, None)
        unsettled = [index for index, result in enumerate(results) if result is None]
        settled = self._parallel(
            lambda i: self._settle_existing(rows[i], keys[i], at, cutoff, owner, current[i]), unsettled
        )
        for index, result in zip(unsettled, settled, strict=True):
            results[index] = result
        return results  # type: ignore[return-value]  # every index settled above

    def _settle_existing(
        self, row: tuple, key: DeliveryKey, at: str, cutoff: str, owner: str | None, known: dict[str, Any] | None
    ) -> tuple:
        """Decide from the row's state (`known`, read just before, or a fresh read) and flip it
        conditionally; re-read if it changed meanwhile."""
        campaign_id = row[-1]
        for _ in range(_SETTLE_TRIES):
            current = known if known is not None else self._read_delivery(key)
            known = None
            previous, reserved_at = string_attr(current, "status"), string_attr(current, "reserved_at")
            if previous is None:  # deleted meanwhile (never happens in normal operation)
                return (*row, False, DeliveryStatus.IN_DOUBT.value, None)
            decision = decide(previous, reserved_at, cutoff, string_attr(current, "attempted_at"))
            if decision.write == ReservationWrite.NONE:
                return (*row, False, decision.status, previous)
            if decision.write == ReservationWrite.EXPIRE:
                request = layout.expire(previous, reserved_at, at)
            else:
                request = layout.take_over(previous, reserved_at, at, campaign_id, owner)
            if self._update(layout.delivery_key(key), request):
                return (*row, decision.granted, decision.status, previous)
        raise RuntimeError(f"could not settle the reservation of {key}: the row keeps changing")

    def _read_delivery(self, key: DeliveryKey) -> dict[str, Any]:
        response = self.client().get_item(TableName=self.table_name, Key=layout.delivery_key(key), ConsistentRead=True)
        return response.get("Item", {})

    def _write_sent(self, key: DeliveryKey, provider_message_id: str, at: str, campaign_id: str | None) -> None:
        request = layout.sent_update(key, provider_message_id, at, campaign_id)
        self.client().update_item(
            TableName=self.table_name, Key=layout.delivery_key(key), ExpressionAttributeNames=STATUS_NAMES, **request
        )

    def _write_status(
        self, key: DeliveryKey, status: DeliveryStatus, reason: str, at: str, campaign_id: str | None
    ) -> bool:
        return self._update(layout.delivery_key(key), layout.status_update(key, status, reason, at, campaign_id))

    def _write_attempt(self, key: DeliveryKey, reserved_at: str, at: str) -> bool:
        return self._update(layout.delivery_key(key), layout.attempt_update(reserved_at, at))

    def _write_attempts(self, keys: list[DeliveryKey], reserved_at: str, at: str) -> set[DeliveryKey]:
        request = layout.attempt_update(reserved_at, at)
        written = self._write_each([layout.update(layout.delivery_key(key), request) for key in keys])
        return {key for key, done in zip(keys, written, strict=True) if done}

    def _write_sent_many(self, confirmations: list[SentConfirmation], at: str) -> None:
        for round_ in layout.distinct_rounds(confirmations, key=lambda confirmation: confirmation.key):
            self._write_each(
                [
                    layout.update(layout.delivery_key(key), layout.sent_update(key, message_id, at, campaign_id))
                    for key, message_id, campaign_id in round_
                ]
            )

    def _owned_pending(self, owner: str) -> list[dict[str, Any]]:
        """Keys of `owner`'s pending rows: from the OWNER index, or a filtered scan on a table made before it."""
        request: dict[str, Any] = {
            "FilterExpression": "#status = :pending",
            "ExpressionAttributeNames": STATUS_NAMES,
            "ExpressionAttributeValues": {":pending": {"S": DeliveryStatus.PENDING.value}, ":owner": {"S": owner}},
        }
        try:
            found = list(self._query(IndexName=OWNER_INDEX, KeyConditionExpression="lease_owner = :owner", **request))
        except ClientError as error:
            if error.response["Error"]["Code"] != "ValidationException":
                raise
            request["FilterExpression"] += " AND lease_owner = :owner"
            found = list(self._paged("scan", request))
        return [{"pk": item["pk"], "sk": item["sk"]} for item in found]

    def _release_owned(self, owner: str, released_reason: str, doubted_reason: str, at: str) -> tuple[int, int]:
        updates = layout.owner_release_updates(owner, released_reason, doubted_reason, at)

        def one(key: dict[str, Any]) -> DeliveryStatus | None:
            return next((status for status, update in updates if self._update(key, update)), None)

        done = Counter(self._parallel(one, self._owned_pending(owner)))
        return done[DeliveryStatus.FAILED_TRANSIENT], done[DeliveryStatus.IN_DOUBT]

    def _release_pending(self, keys: Sequence[DeliveryKey], reason: str, at: str) -> int:
        update = layout.release_update(reason, at)
        return sum(self._parallel(lambda key: int(self._update(layout.delivery_key(key), update)), list(keys)))

    # ---- reads ----

    def _delivery_rows(self, event_id: str, channel: str | None, kind: str | None) -> list[tuple]:
        found = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={
                ":pk": {"S": f"EVENT#{event_id}"},
                ":prefix": {"S": layout.delivery_prefix(channel, kind)},
            },
            ConsistentRead=True,
        )
        return [layout.delivery_row(item) for item in found]

    def _count_sent(self, event_id: str, channel: str | None, kind: str | None) -> int:
        return self.deliveries(event_id, channel, kind).filter(pl.col("status") == DeliveryStatus.SENT.value).height

    def _sent_invitation_rows(self, since: datetime, until: datetime | None) -> list[tuple]:
        end = to_utc(until)  # None: now
        low, high = stored_time(since), stored_time(end)

        def day_rows(day: str) -> list[tuple]:
            found = self._query(
                IndexName=SENT_INDEX,
                KeyConditionExpression="sent_pk = :pk AND sent_sk BETWEEN :low AND :high",
                ExpressionAttributeValues={
                    ":pk": {"S": f"SENT#{MessageKind.INVITATION}#{day}"},
                    ":low": {"S": low},
                    ":high": {"S": high},
                },
            )
            names = ("customer_id", "sent_at", "event_id", "channel")
            return [
                tuple(string_attr(item, name) for name in names)
                for item in found
                if (string_attr(item, "sent_at") or "") < high or until is None
            ]

        return [row for rows in self._parallel(day_rows, layout.sent_days(since, end)) for row in rows]

    # ---- opt-outs ----

    def _insert_opt_out(self, customer_id: str, channel: str, source: str, at: str) -> None:
        item = layout.opt_out_item(customer_id, channel, source, at)
        self._conditional("put_item", Item=item, ConditionExpression="attribute_not_exists(pk)")  # the first wins

    def _insert_opt_outs(self, rows: list[tuple]) -> int:
        return self._write_new([layout.opt_out_item(*row) for row in rows])

    def _opt_out_rows(self, customer_ids: list[str], channels: tuple[str, ...]) -> list[tuple]:
        keys = [layout.opt_out_key(customer_id, channel) for customer_id in customer_ids for channel in channels]
        failure = f"opt-out lookup still unprocessed after {_BATCH_TRIES} tries; refusing to send unchecked"
        return [layout.opt_out_row(item) for item in self._batch_get(keys, failure=failure)]

    # ---- provider feedback ----

    def _message_rows(self, provider_message_ids: list[str]) -> list[tuple]:
        names = ("event_id", "channel", "kind", "customer_id", "campaign_id", "status", "sent_at")

        def one(message_id: str) -> list[tuple]:
            found = self._query(
                IndexName=MESSAGE_INDEX,
                KeyConditionExpression="provider_message_id = :id",
                ExpressionAttributeValues={":id": {"S": message_id}},
            )
            return [
                (message_id, *(string_attr(item, name) for name in names))
                for item in found
                if (string_attr(item, "sk") or "").startswith("DELIVERY#")
            ]

        return [row for rows in self._parallel(one, provider_message_ids) for row in rows]

    def _insert_feedback(self, frame: pl.DataFrame) -> int:
        stored, bounces = [], []
        for row in frame.iter_rows(named=True):
            first, *rest = layout.feedback_items(row)
            stored.append(first)
            bounces += rest
        added = self._write_new(stored)
        self._batch_write(bounces)  # same key, same content: a replay rewrites nothing new
        return added

    def _feedback_rows(self, event_id: str, channel: str | None) -> list[tuple]:
        found = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={
                ":pk": {"S": f"EVENT#{event_id}"},
                ":prefix": {"S": layout.feedback_prefix(channel)},
            },
            ConsistentRead=True,
        )
        return [layout.feedback_row(item) for item in found]

    def _bounce_rows(self, addresses: list[str], since: str) -> list[tuple]:
        def one(address: str) -> list[tuple]:
            found = self._query(
                KeyConditionExpression="pk = :pk AND sk >= :low",
                ExpressionAttributeValues={":pk": {"S": f"BOUNCES#{address}"}, ":low": {"S": since}},
                ConsistentRead=True,
            )
            return [layout.feedback_row(item) for item in found]

        return [row for rows in self._parallel(one, addresses) for row in rows]

    def _insert_suppressions(self, frame: pl.DataFrame) -> int:
        rows = frame.iter_rows(named=True)
        return self._write_new([{**layout.suppression_key(row["address"]), **layout.string_item(row)} for row in rows])

    def _suppression_rows(self, addresses: list[str]) -> list[tuple]:
        found = self._batch_get([layout.suppression_key(address) for address in addresses])
        return [tuple(layout.item_attr(item, name) for name in SUPPRESSION_SCHEMA) for item in found]

    def _insert_rearm(self, event_id: str, channel: str, at: str, by: str) -> None:
        self.client().put_item(TableName=self.table_name, Item=layout.rearm_item(event_id, channel, at, by))

    def _latest_rearm(self, event_id: str, channel: str) -> str | None:
        response = self.client().query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": f"BREAKER#{event_id}"}, ":prefix": {"S": f"REARM#{channel}#"}},
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        found = response.get("Items", [])
        return string_attr(found[0], "rearmed_at") if found else None
