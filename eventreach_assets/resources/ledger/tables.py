"""The DynamoDB ledger table: its `CreateTable` request, index names and the one index migration."""

from __future__ import annotations

from typing import Any

from eventreach_assets.resources.dynamodb import create_table_if_missing

SENT_INDEX = "SENT"
OWNER_INDEX = "OWNER"
MESSAGE_INDEX = "MESSAGE"
MESSAGE_INDEX_DEFINITION: dict[str, Any] = {
    "IndexName": MESSAGE_INDEX,
    "KeySchema": [{"AttributeName": "provider_message_id", "KeyType": "HASH"}],
    "Projection": {
        "ProjectionType": "INCLUDE",
        "NonKeyAttributes": ["customer_id", "event_id", "channel", "kind", "campaign_id", "status", "sent_at"],
    },
}


def ledger_table_definition(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the ledger table.

    pk = EVENT#{event_id}, sk = DELIVERY#{channel}#{encode_kind(kind, occurrence)}#{customer_id} (an event's deliveries
    are one Query); opt-outs share the table as pk = OPTOUT#{customer_id}, sk = CHANNEL#{channel|*}.
    Sparse GSI SENT: only sent rows carry sent_pk = SENT#{kind}#{YYYY-MM-DD} and
    sent_sk = {sent_at}#{event_id}#{channel}#{customer_id}, so `invitations_since` queries one
    partition per day (keys only + the attributes it reads).
    Sparse GSI MESSAGE on provider_message_id (rows the provider accepted): provider feedback
    finds its message. Feedback items: pk = EVENT#{event_id} (FEEDBACK#UNMATCHED when no ledger
    row), sk = FEEDBACK#{channel}#{message}#{recipient}#{feedback}#{bounce type}#{time}; bounces
    also as pk = BOUNCES#{address}, sk = {time}#{message}; suppressions pk = SUPPRESSED#{address},
    sk = EMAIL; breaker re-arms pk = BREAKER#{event_id}, sk = REARM#{channel}#{time}. A table
    created before the MESSAGE index needs it added once (`add_message_index`).
    Sparse GSI OWNER: rows reserved by a known run carry lease_owner = its run id, so
    `release_owner` finds a dead run's reservations in one query (status and attempted_at included).
    """
    return {
        "TableName": name,
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "AttributeDefinitions": [
            {"AttributeName": name_, "AttributeType": "S"}
            for name_ in ("pk", "sk", "sent_pk", "sent_sk", "provider_message_id", "lease_owner")
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": SENT_INDEX,
                "KeySchema": [
                    {"AttributeName": "sent_pk", "KeyType": "HASH"},
                    {"AttributeName": "sent_sk", "KeyType": "RANGE"},
                ],
                "Projection": {
                    "ProjectionType": "INCLUDE",
                    "NonKeyAttributes": ["customer_id", "event_id", "channel", "sent_at"],
                },
            },
            MESSAGE_INDEX_DEFINITION,
            {
                "IndexName": OWNER_INDEX,
                "KeySchema": [{"AttributeName": "lease_owner", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["status", "attempted_at"]},
            },
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_ledger_table(client: Any, table_name: str) -> bool:
    """Create the ledger table unless it exists and wait until it is active; returns whether created."""
    return create_table_if_missing(client, ledger_table_definition(table_name))


def add_message_index(client: Any, table_name: str) -> bool:
    """Add the MESSAGE index to a ledger table created without it; returns whether it was added."""
    indexes = client.describe_table(TableName=table_name)["Table"].get("GlobalSecondaryIndexes", [])
    if any(index["IndexName"] == MESSAGE_INDEX for index in indexes):
        return False
    client.update_table(
        TableName=table_name,
        AttributeDefinitions=[{"AttributeName": "provider_message_id", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[{"Create": MESSAGE_INDEX_DEFINITION}],
    )
    return True
