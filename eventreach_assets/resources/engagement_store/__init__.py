"""The engagement store: interface (`base`), SQLite (`sqlite`) and DynamoDB (`dynamodb`, table in
`tables`) stores of registrations, interactions, attendance and survey responses."""

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
from eventreach_assets.resources.engagement_store.dynamodb import DynamoDBEngagementStore
from eventreach_assets.resources.engagement_store.sqlite import SqliteEngagementStore
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
