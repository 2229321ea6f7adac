"""The delivery ledger: the interface (`base.py`, with the send protocol and its batch marks,
`SentConfirmation` for `mark_sent_many`), its SQLite and DynamoDB backends, the stored key and row
forms, and the DynamoDB table definition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.domain.delivery import OCCURRENCE_SEPARATOR, SentConfirmation, encode_kind
from eventreach_assets.resources.lazy_exports import lazy_exports
from eventreach_assets.resources.ledger.base import (
    IN_DOUBT_AFTER_DEATH,
    LEASE_EXPIRED_REASON,
    NOT_ATTEMPTED,
    SENDABLE_FROM,
    DeliveryLedgerResource,
    ReservationDecision,
    ReservationWrite,
    decide,
)
from eventreach_assets.resources.ledger.keys import KEY_COLUMNS, decode_kind, key_frame, keys_frame
from eventreach_assets.resources.ledger.records import (
    ALL_CHANNELS,
    DELIVERY_SCHEMA,
    INVITATIONS_SCHEMA,
    MESSAGE_LOOKUP_SCHEMA,
    OPT_OUT_SCHEMA,
    RESERVATION_SCHEMA,
)
from eventreach_assets.resources.ledger.sqlite import SqliteDeliveryLedger

if TYPE_CHECKING:
    from eventreach_assets.resources.ledger.dynamodb import DynamoDBDeliveryLedger
    from eventreach_assets.resources.ledger.tables import (
        MESSAGE_INDEX,
        MESSAGE_INDEX_DEFINITION,
        OWNER_INDEX,
        SENT_INDEX,
        add_message_index,
        create_ledger_table,
        ledger_table_definition,
    )

__all__ = [
    "ALL_CHANNELS",
    "DELIVERY_SCHEMA",
    "INVITATIONS_SCHEMA",
    "IN_DOUBT_AFTER_DEATH",
    "KEY_COLUMNS",
    "LEASE_EXPIRED_REASON",
    "MESSAGE_INDEX",
    "MESSAGE_INDEX_DEFINITION",
    "MESSAGE_LOOKUP_SCHEMA",
    "NOT_ATTEMPTED",
    "OCCURRENCE_SEPARATOR",
    "OPT_OUT_SCHEMA",
    "OWNER_INDEX",
    "RESERVATION_SCHEMA",
    "SENDABLE_FROM",
    "SENT_INDEX",
    "DeliveryLedgerResource",
    "DynamoDBDeliveryLedger",
    "ReservationDecision",
    "ReservationWrite",
    "SentConfirmation",
    "SqliteDeliveryLedger",
    "add_message_index",
    "create_ledger_table",
    "decide",
    "decode_kind",
    "encode_kind",
    "key_frame",
    "keys_frame",
    "ledger_table_definition",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(
    __name__,
    {
        "DynamoDBDeliveryLedger": "dynamodb",
        "MESSAGE_INDEX": "tables",
        "MESSAGE_INDEX_DEFINITION": "tables",
        "OWNER_INDEX": "tables",
        "SENT_INDEX": "tables",
        "add_message_index": "tables",
        "create_ledger_table": "tables",
        "ledger_table_definition": "tables",
    },
)
