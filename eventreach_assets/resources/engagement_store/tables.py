"""The engagement store's DynamoDB table as code: its `CreateTable` request and creation."""

from __future__ import annotations

from typing import Any

from eventreach_assets.resources.dynamodb import create_table_if_missing


def engagement_table_definition(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the engagement table.

    pk = EVENT#{event_id}, sk = {REG|INT|ATT|SRV}#{customer_id}[#{channel}#{campaign_id}#{action}]
    (interactions): every read of an event is one Query on pk with begins_with(sk, tag).
    """
    return {
        "TableName": name,
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"} for key in ("pk", "sk")],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_engagement_table(client: Any, table_name: str) -> bool:
    """Create the engagement table unless it exists and wait until it is active; returns whether created."""
    return create_table_if_missing(client, engagement_table_definition(table_name))
