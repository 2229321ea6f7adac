"""The candidates table and score cache: interface (`base`), SQLite (`sqlite`) and DynamoDB
(`dynamodb`, tables in `tables`, command-line tool in `cli`) stores."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.candidate_store.base import (
    CACHE_SCHEMA,
    CandidatePage,
    CandidateStoreResource,
    RegisteredCustomer,
    ServedPage,
    WriteSummary,
)
from eventreach_assets.resources.candidate_store.sqlite import SqliteCandidateStore
from eventreach_assets.resources.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from eventreach_assets.resources.candidate_store.dynamodb import (
        DynamoDBCandidateStore,
        DynamoDBThrottledError,
        DynamoDBWriteError,
    )
    from eventreach_assets.resources.candidate_store.tables import (
        GSI1,
        GSI2,
        TableShapeError,
        candidate_table_definition,
        check_candidate_tables,
        create_candidate_tables,
        score_cache_table_definition,
    )

__all__ = [
    "CACHE_SCHEMA",
    "GSI1",
    "GSI2",
    "CandidatePage",
    "CandidateStoreResource",
    "DynamoDBCandidateStore",
    "DynamoDBThrottledError",
    "DynamoDBWriteError",
    "RegisteredCustomer",
    "ServedPage",
    "SqliteCandidateStore",
    "TableShapeError",
    "WriteSummary",
    "candidate_table_definition",
    "check_candidate_tables",
    "create_candidate_tables",
    "score_cache_table_definition",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(
    __name__,
    {
        "DynamoDBCandidateStore": "dynamodb",
        "DynamoDBThrottledError": "dynamodb",
        "DynamoDBWriteError": "dynamodb",
        "GSI1": "tables",
        "GSI2": "tables",
        "TableShapeError": "tables",
        "candidate_table_definition": "tables",
        "check_candidate_tables": "tables",
        "create_candidate_tables": "tables",
        "score_cache_table_definition": "tables",
    },
)
