"""Engagement records in one DynamoDB table (`tables.engagement_table_definition`).

pk = EVENT#{event_id}, sk = {record tag}#{customer_id}[#...]: every read of an event is one key
query. Each row is a conditional PutItem (attribute_not_exists(pk)), so replays and concurrent
writers store each key once; a registration whose key exists may then take one of the status
changes the interface lists, each a conditional UpdateItem.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl
from botocore.exceptions import ClientError
from pydantic import Field

from eventreach_assets.domain.engagement_schemas import CANCELLED, REGISTERED, WAITLISTED
from eventreach_assets.resources.dynamodb import DynamoDBClient, is_conditional_failure
from eventreach_assets.resources.engagement_store.base import REGISTRATION, EngagementStoreResource, RecordKind
from eventreach_assets.resources.engagement_store.tables import engagement_table_definition


def _event_pk(event_id: str) -> dict[str, str]:
    return {"S": f"EVENT#{event_id}"}


def _item(kind: RecordKind, row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as a DynamoDB item (null attributes left out, as DynamoDB items do)."""
    item: dict[str, Any] = {
        "pk": _event_pk(row["event_id"]),
        "sk": {"S": "#".join([kind.tag, *(row[key] for key in kind.keys[1:])])},
    }
    for name, dtype in kind.schema.items():
        if row[name] is not None:
            item[name] = {"N": str(row[name])} if dtype.is_integer() else {"S": row[name]}
    return item


def _row(kind: RecordKind, item: dict[str, Any]) -> tuple:
    return tuple(
        (int(item[name]["N"]) if dtype.is_integer() else item[name]["S"]) if name in item else None
        for name, dtype in kind.schema.items()
    )


def _transitions(item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The conditional updates that may apply an incoming registration row whose key exists."""
    status = item["status"]["S"]
    if status == CANCELLED:
        return [
            (
                "#status IN (:registered, :waitlisted)",
                {":registered": {"S": REGISTERED}, ":waitlisted": {"S": WAITLISTED}},
            )
        ]
    renew = ("#status = :was_cancelled AND registered_at < :registered_at", {":was_cancelled": {"S": CANCELLED}})
    if status == REGISTERED:
        return [("#status = :waitlisted", {":waitlisted": {"S": WAITLISTED}}), renew]
    return [renew]


class DynamoDBEngagementStore(DynamoDBClient, EngagementStoreResource):
    """Engagement records in one DynamoDB table (`engagement_table_definition`). Each row is a
    conditional PutItem (attribute_not_exists(pk)): a failed condition means the key is stored
    already (the first occurrence stays), so replays and concurrent writers store each key once.
    """

    table_name: str = Field(description="The engagement table (see engagement_table_definition).")
    max_parallel_requests: int = Field(default=8, ge=1, le=64, description="Threads issuing per-row requests.")

    _table_definition = staticmethod(engagement_table_definition)

    def _put(self, kind: RecordKind, row: dict[str, Any]) -> int:
        item = _item(kind, row)
        try:
            self.client().put_item(TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)")
            return 1
        except ClientError as error:
            if not is_conditional_failure(error):
                raise
        if kind is not REGISTRATION:
            return 0
        return int(any(self._change_status(item, condition, values) for condition, values in _transitions(item)))

    def _change_status(self, item: dict[str, Any], condition: str, values: dict[str, Any]) -> bool:
        """One conditional status change of a stored registration (see record_registrations)."""
        update = "SET #status = :status, recorded_at = :at"
        values = {":status": item["status"], ":at": item["recorded_at"], **values}
        if ":was_cancelled" in values:  # a new registration replacing a cancelled one takes its fields
            values[":registered_at"] = item["registered_at"]
            fields = ("registration_id", "channel", "campaign_id")
            update += ", registered_at = :registered_at" + "".join(
                f", {name} = :{name}" for name in fields if name in item
            )
            values |= {f":{name}": item[name] for name in fields if name in item}
            absent = [name for name in fields if name not in item]
            update += f" REMOVE {', '.join(absent)}" if absent else ""
        names = {"#status": "status"}
        try:
            self.client().update_item(
                TableName=self.table_name,
                Key={"pk": item["pk"], "sk": item["sk"]},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if is_conditional_failure(error):
                return False
            raise
        return True

    def _write(self, kind: RecordKind, stored: pl.DataFrame) -> int:
        return sum(self._parallel(lambda row: self._put(kind, row), list(stored.iter_rows(named=True))))

    def _fetch_page(self, event_id: str, status: str, after: str | None, count: int) -> list[tuple]:
        """sk = REG#{customer_id}: the sort key's order is the customer's; a status filter means a
        Query page may hold fewer than asked, so pages follow until `count` rows or the end."""
        tag = f"{REGISTRATION.tag}#"
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "FilterExpression": "#status = :status",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                ":pk": _event_pk(event_id),
                ":lo": {"S": tag + (after or "")},
                ":hi": {"S": tag[:-1] + chr(ord(tag[-1]) + 1)},
                ":status": {"S": status},
            },
            "ConsistentRead": True,
            "Limit": count + 1,  # +1: BETWEEN includes `after` itself
        }
        rows: list[tuple] = []
        while len(rows) < count:
            response = self.client().query(**request)
            rows += [
                _row(REGISTRATION, item) for item in response.get("Items", []) if item["customer_id"]["S"] != after
            ]
            if "LastEvaluatedKey" not in response:
                break
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return rows[:count]

    def _cancelled_among(self, event_id: str, customer_ids: list[str]) -> set[str]:
        """BatchGetItem by key, 100 keys a request, resending UnprocessedKeys."""
        cancelled: set[str] = set()
        for start in range(0, len(customer_ids), 100):
            keys = [
                {"pk": _event_pk(event_id), "sk": {"S": f"{REGISTRATION.tag}#{customer}"}}
                for customer in customer_ids[start : start + 100]
            ]
            request = {self.table_name: {"Keys": keys, "ProjectionExpression": "customer_id, #status",
                                         "ExpressionAttributeNames": {"#status": "status"}}}  # fmt: skip
            while request:
                response = self.client().batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table_name, []):
                    if item["status"]["S"] == CANCELLED:
                        cancelled.add(item["customer_id"]["S"])
                request = response.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(0.05)  # throttled keys: a short pause before resending them
        return cancelled

    def _fetch(self, kind: RecordKind, event_id: str, status: str | None) -> list[tuple]:
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": _event_pk(event_id), ":prefix": {"S": f"{kind.tag}#"}},
            "ConsistentRead": True,
        }
        if status is not None:
            request["FilterExpression"] = "#status = :status"
            request["ExpressionAttributeNames"] = {"#status": "status"}
            request["ExpressionAttributeValues"][":status"] = {"S": status}
        rows: list[tuple] = []
        while True:
            response = self.client().query(**request)
            rows += [_row(kind, item) for item in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                return rows
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
