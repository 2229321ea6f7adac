"""The candidates table and score cache: interface (`base`), SQLite (`sqlite`) and DynamoDB
(`dynamodb`, tables in `tables`, command-line tool in `cli`) stores."""

from eventreach_assets.resources.candidate_store.base import (
    CACHE_SCHEMA,
    CandidatePage,
    CandidateStoreResource,
    RegisteredCustomer,
    ServedPage,
    WriteSummary,
)
from eventreach_assets.resources.candidate_store.dynamodb import (
    DynamoDBCandidateStore,
    DynamoDBThrottledError,
    DynamoDBWriteError,
)
from eventreach_assets.resources.candidate_store.sqlite import SqliteCandidateStore
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
