"""The DynamoDB ledger's items: keys, attribute values and update requests (layout in
`tables.ledger_table_definition`). Pure: `dynamodb.py` sends what these build."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from eventreach_assets.domain.delivery import DeliveryKey, DeliveryStatus, encode_kind
from eventreach_assets.domain.feedback import FEEDBACK_SCHEMA
from eventreach_assets.resources.ledger.base import LEASE_EXPIRED_REASON, NOT_ATTEMPTED
from eventreach_assets.resources.ledger.records import FEEDBACK_COLUMNS

Item = dict[str, dict[str, str]]
T = TypeVar("T")
STATUS_NAMES = {"#status": "status"}  # a reserved word: every expression names it #status
_KEY_SET = "customer_id = :customer_id, event_id = :event_id, channel = :channel, kind = :kind"
_UNMATCHED = "FEEDBACK#UNMATCHED"
_PENDING = {"S": DeliveryStatus.PENDING.value}

# ---- attributes ------------------------------------------------------------------------------


def string_attr(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value.get("S") if value else None


def number_attr(item: dict[str, Any], name: str) -> int:
    value = item.get(name)
    return int(value["N"]) if value and "N" in value else 0


def string_item(values: dict[str, Any]) -> Item:
    """A DynamoDB item of string attributes (nulls left out). `provider_message_id` is stored as
    `message_id`: only delivery rows may carry the MESSAGE index's key."""
    renamed = {("message_id" if name == "provider_message_id" else name): value for name, value in values.items()}
    return {name: {"S": str(value)} for name, value in renamed.items() if value is not None}


def item_attr(item: dict[str, Any], name: str) -> str | None:
    """A `string_item` attribute by its column name."""
    return string_attr(item, "message_id" if name == "provider_message_id" else name)


def key_id(key: dict[str, Any]) -> tuple[str, str]:
    return key["pk"]["S"], key["sk"]["S"]


# ---- delivery rows ---------------------------------------------------------------------------


def delivery_key(key: DeliveryKey) -> Item:
    return {
        "pk": {"S": f"EVENT#{key.event_id}"},
        "sk": {"S": f"DELIVERY#{key.channel}#{encode_kind(key.kind, key.occurrence)}#{key.customer_id}"},
    }


def delivery_prefix(channel: str | None, kind: str | None) -> str:
    """The sort-key prefix of an event's deliveries, optionally of one channel (and base kind: the
    prefix also matches its `kind@occurrence` rows, and kinds that merely start with it)."""
    if channel is None:
        return "DELIVERY#"
    return f"DELIVERY#{channel}#" + (kind if kind is not None else "")


def delivery_row(item: dict[str, Any]) -> tuple:
    """A delivery item as a stored row (STORED_DELIVERY order)."""
    return (
        *(string_attr(item, name) for name in ("customer_id", "event_id", "channel", "kind", "campaign_id")),
        *(string_attr(item, name) for name in ("status", "reason", "provider_message_id")),
        number_attr(item, "attempts"),
        number_attr(item, "sends"),
        *(string_attr(item, name) for name in ("reserved_at", "updated_at", "sent_at")),
    )


def _key_values(key: DeliveryKey) -> Item:
    """The key's attributes as expression values (`_KEY_SET`)."""
    return {
        ":customer_id": {"S": key.customer_id},
        ":event_id": {"S": key.event_id},
        ":channel": {"S": key.channel},
        ":kind": {"S": encode_kind(key.kind, key.occurrence)},
    }


def _with_campaign(update: str, values: dict[str, Any], campaign_id: str | None) -> str:
    """`update` also setting campaign_id, when one is given (None keeps the stored one)."""
    if campaign_id is None:
        return update
    values[":campaign"] = {"S": campaign_id}
    return update + ", campaign_id = :campaign"


def new_reservation(row: tuple, key: DeliveryKey, at: str, owner: str | None) -> dict[str, Any]:
    """The pending item of a stored-form key (`key_frame` row) reserved for the first time."""
    customer_id, event_id, channel, kind, campaign_id = row  # kind as stored
    item = {
        **delivery_key(key),
        **string_item({"customer_id": customer_id, "event_id": event_id, "channel": channel, "kind": kind}),
        "status": _PENDING,
        "attempts": {"N": "1"},
        "sends": {"N": "0"},
        "reserved_at": {"S": at},
        "updated_at": {"S": at},
        "attempted_at": {"S": NOT_ATTEMPTED},
    }
    if campaign_id is not None:
        item["campaign_id"] = {"S": campaign_id}
    if owner is not None:
        item["lease_owner"] = {"S": owner}
    return item


def take_over(
    previous: str, reserved_at: str | None, at: str, campaign_id: str | None, owner: str | None
) -> dict[str, Any]:
    """The conditional update making an existing row pending again for this reservation."""
    update = "SET #status = :status, reserved_at = :at, updated_at = :at, attempts = attempts + :one"
    update += ", attempted_at = :not_attempted"
    values: dict[str, Any] = {
        ":previous": {"S": previous},
        ":status": _PENDING,
        ":at": {"S": at},
        ":one": {"N": "1"},
        ":not_attempted": {"S": NOT_ATTEMPTED},
    }
    update = _with_campaign(update, values, campaign_id)
    if owner is not None:
        update += ", lease_owner = :owner REMOVE reason"
        values[":owner"] = {"S": owner}
    else:
        update += " REMOVE reason, lease_owner"
    condition = "#status = :previous"
    if previous == DeliveryStatus.PENDING:  # taking over a dead run's unattempted row
        condition += " AND reserved_at = :reserved AND attempted_at = :not_attempted"
        values[":reserved"] = {"S": reserved_at or ""}
    return {"UpdateExpression": update, "ConditionExpression": condition, "ExpressionAttributeValues": values}


def expire(previous: str, reserved_at: str | None, at: str) -> dict[str, Any]:
    """The conditional update putting a dead run's attempted reservation in doubt."""
    return {
        "UpdateExpression": "SET #status = :status, reason = :reason, updated_at = :at",
        "ConditionExpression": "#status = :previous AND reserved_at = :reserved",
        "ExpressionAttributeValues": {
            ":previous": {"S": previous},
            ":status": {"S": DeliveryStatus.IN_DOUBT.value},
            ":at": {"S": at},
            ":reason": {"S": LEASE_EXPIRED_REASON},
            ":reserved": {"S": reserved_at or ""},
        },
    }


def sent_update(key: DeliveryKey, provider_message_id: str, at: str, campaign_id: str | None) -> dict[str, Any]:
    """The (unconditional) update confirming a send: sends + 1, and the SENT index's keys."""
    update = (
        f"SET #status = :sent, provider_message_id = :pid, updated_at = :at, sent_at = :at, {_KEY_SET}, "
        "sends = if_not_exists(sends, :zero) + :one, sent_pk = :sent_pk, sent_sk = :sent_sk"
    )
    values = {
        **_key_values(key),
        ":sent": {"S": DeliveryStatus.SENT.value},
        ":pid": {"S": provider_message_id},
        ":at": {"S": at},
        ":zero": {"N": "0"},
        ":one": {"N": "1"},
        ":sent_pk": {"S": f"SENT#{key.kind}#{at[:10]}"},
        ":sent_sk": {"S": f"{at}#{key.event_id}#{key.channel}#{key.customer_id}"},
    }
    update = _with_campaign(update, values, campaign_id)
    return {"UpdateExpression": update + " REMOVE reason", "ExpressionAttributeValues": values}


def status_update(
    key: DeliveryKey, status: DeliveryStatus, reason: str, at: str, campaign_id: str | None
) -> dict[str, Any]:
    """The upsert of a final status, refused on a sent row."""
    update = f"SET #status = :status, reason = :reason, updated_at = :at, {_KEY_SET}"
    update += ", attempts = if_not_exists(attempts, :zero), sends = if_not_exists(sends, :zero)"
    values = {
        **_key_values(key),
        ":status": {"S": status.value},
        ":reason": {"S": reason},
        ":at": {"S": at},
        ":sent": {"S": DeliveryStatus.SENT.value},
        ":zero": {"N": "0"},
    }
    update = _with_campaign(update, values, campaign_id)
    condition = "attribute_not_exists(pk) OR #status <> :sent"
    return {"UpdateExpression": update, "ConditionExpression": condition, "ExpressionAttributeValues": values}


def attempt_update(reserved_at: str, at: str) -> dict[str, Any]:
    """Marks the attempt, only while the reservation made at `reserved_at` holds the row."""
    return {
        "UpdateExpression": "SET attempted_at = :at, updated_at = :at",
        "ConditionExpression": "#status = :pending AND attempted_at = :not_attempted AND reserved_at = :reserved",
        "ExpressionAttributeValues": {
            ":at": {"S": at},
            ":pending": _PENDING,
            ":not_attempted": {"S": NOT_ATTEMPTED},
            ":reserved": {"S": reserved_at},
        },
    }


def release_update(reason: str, at: str) -> dict[str, Any]:
    """A still-pending row back to failed_transient."""
    return {
        "UpdateExpression": "SET #status = :failed, reason = :reason, updated_at = :at",
        "ConditionExpression": "#status = :pending",
        "ExpressionAttributeValues": {
            ":failed": {"S": DeliveryStatus.FAILED_TRANSIENT.value},
            ":pending": _PENDING,
            ":reason": {"S": reason},
            ":at": {"S": at},
        },
    }


def owner_release_updates(owner: str, released_reason: str, doubted_reason: str, at: str) -> list[tuple]:
    """(status, update) to try in turn on a dead owner's pending row: unattempted ones are released,
    attempted (or unknown) ones put in doubt."""
    outcomes = (
        (DeliveryStatus.FAILED_TRANSIENT, released_reason, " AND attempted_at = :not_attempted"),
        (DeliveryStatus.IN_DOUBT, doubted_reason, ""),
    )
    updates = []
    for status, why, extra in outcomes:
        values = {":status": {"S": status.value}, ":reason": {"S": why}, ":at": {"S": at}}
        values |= {":pending": _PENDING, ":owner": {"S": owner}}
        if extra:
            values[":not_attempted"] = {"S": NOT_ATTEMPTED}
        update = {
            "UpdateExpression": "SET #status = :status, reason = :reason, updated_at = :at",
            "ConditionExpression": "#status = :pending AND lease_owner = :owner" + extra,
            "ExpressionAttributeValues": values,
        }
        updates.append((status, update))
    return updates


def sent_days(start: datetime, end: datetime) -> list[str]:
    """The UTC dates (YYYY-MM-DD) from `start` to `end`: the SENT index partitions to query."""
    days = [(start + timedelta(days=offset)).strftime("%Y-%m-%d") for offset in range((end - start).days + 2)]
    return sorted({day for day in days if day <= end.strftime("%Y-%m-%d")})


# ---- batched writes: one action per item, sent in TransactWriteItems or one by one -------------

WriteAction = tuple[str, dict[str, Any]]  # ("Put" | "Update", the request without TableName)
TRANSACTION_LIMIT = 100  # actions per TransactWriteItems
WRITTEN = "Written"  # our outcome code of an action in a committed transaction
REFUSED = "ConditionalCheckFailed"  # the cancellation reason of an action whose condition failed
# Cancellation reasons after which the action is sent again: it did not cause the cancellation
# ("None": a cancelled transaction writes nothing), or it met another writer or a throttle.
RESEND_REASONS = frozenset(
    {"None", "TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)


def put_new(item: dict[str, Any]) -> WriteAction:
    """Put `item` only if its key has no item yet (a first reservation)."""
    return "Put", {"Item": item, "ConditionExpression": "attribute_not_exists(pk)"}


def update(key: Item, request: dict[str, Any]) -> WriteAction:
    """An UpdateItem of `key` with a request built here (`attempt_update`, `sent_update`, ...)."""
    return "Update", {"Key": key, "ExpressionAttributeNames": STATUS_NAMES, **request}


def transact_items(table_name: str, actions: Sequence[WriteAction]) -> list[dict[str, Any]]:
    """The TransactItems of a TransactWriteItems request doing `actions` on the table."""
    return [{kind: {"TableName": table_name, **request}} for kind, request in actions]


def distinct_rounds(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    """`items` in rounds that never repeat a key (a transaction touches an item at most once, and
    concurrent writes of one item have no order); a repeated key's items follow in later rounds."""
    rounds: list[list[T]] = []
    seen: Counter[Hashable] = Counter()
    for item in items:
        index = seen[key(item)]
        seen[key(item)] += 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
    return rounds


# ---- opt-outs, feedback, suppressions, re-arms -----------------------------------------------


def opt_out_key(customer_id: str, channel: str) -> Item:
    return {"pk": {"S": f"OPTOUT#{customer_id}"}, "sk": {"S": f"CHANNEL#{channel}"}}


def opt_out_item(customer_id: str, channel: str, source: str, at: str) -> Item:
    values = string_item({"customer_id": customer_id, "source": source, "opted_out_at": at})
    return {**opt_out_key(customer_id, channel), **values}


def opt_out_row(item: dict[str, Any]) -> tuple:
    """An opt-out item as a stored row (OPT_OUT_SCHEMA order)."""
    channel = (string_attr(item, "sk") or "")[len("CHANNEL#") :]
    return string_attr(item, "customer_id"), channel, string_attr(item, "source"), string_attr(item, "opted_out_at")


def _feedback_key(row: dict[str, Any]) -> Item:
    pk = f"EVENT#{row['event_id']}" if row.get("event_id") else _UNMATCHED
    parts = (row.get("channel") or "-", row["provider_message_id"], row["recipient"], row["feedback"],
             row["bounce_type"] or "", row["occurred_at"])  # fmt: skip
    return {"pk": {"S": pk}, "sk": {"S": "FEEDBACK#" + "#".join(parts)}}


def feedback_items(row: dict[str, Any]) -> list[Item]:
    """A stored feedback row's items: under its event, and a bounce also under its address."""
    items = [{**_feedback_key(row), **string_item({**row, "bounce_type": row["bounce_type"] or None})}]
    if row["feedback"] == "bounced":
        bounce_key = {
            "pk": {"S": f"BOUNCES#{row['recipient']}"},
            "sk": {"S": f"{row['occurred_at']}#{row['provider_message_id']}#{row['bounce_type']}"},
        }
        items.append({**bounce_key, **string_item({name: row[name] for name in FEEDBACK_SCHEMA})})
    return items


def feedback_prefix(channel: str | None) -> str:
    """The sort-key prefix of an event's feedback, optionally of one channel."""
    return "FEEDBACK#" + (f"{channel}#" if channel is not None else "")


def feedback_row(item: dict[str, Any]) -> tuple:
    """A feedback item as a stored row (FEEDBACK_COLUMNS; bounce_type '' for none)."""
    return tuple(item_attr(item, name) or ("" if name == "bounce_type" else None) for name in FEEDBACK_COLUMNS)


def suppression_key(address: str) -> Item:
    return {"pk": {"S": f"SUPPRESSED#{address}"}, "sk": {"S": "EMAIL"}}


def rearm_item(event_id: str, channel: str, at: str, by: str) -> Item:
    key = {"pk": {"S": f"BREAKER#{event_id}"}, "sk": {"S": f"REARM#{channel}#{at}"}}
    return {**key, **string_item({"event_id": event_id, "channel": channel, "rearmed_at": at, "rearmed_by": by})}
