"""The engagement store: interface (`base`), SQLite (`sqlite`) and DynamoDB (`dynamodb`, table in
`tables`) stores of registrations, interactions, attendance and survey responses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.engagement_store.base import (
    ATTENDANCE,
    INTERACTION,
    RECORD_KINDS,
    REGISTRATION,
    STATUSES,
    SURVEY,
    EngagementStoreResource,
    RecordKind,
)
from eventreach_assets.resources.engagement_store.sqlite import SqliteEngagementStore
from eventreach_assets.resources.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from eventreach_assets.resources.engagement_store.dynamodb import DynamoDBEngagementStore
    from eventreach_assets.resources.engagement_store.tables import create_engagement_table, engagement_table_definition

__all__ = [
    "ATTENDANCE",
    "INTERACTION",
    "RECORD_KINDS",
    "REGISTRATION",
    "STATUSES",
    "SURVEY",
    "DynamoDBEngagementStore",
    "EngagementStoreResource",
    "RecordKind",
    "SqliteEngagementStore",
    "create_engagement_table",
    "engagement_table_definition",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(
    __name__,
    {
        "DynamoDBEngagementStore": "dynamodb",
        "create_engagement_table": "tables",
        "engagement_table_definition": "tables",
    },
)
