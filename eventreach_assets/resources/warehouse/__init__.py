"""The customer data warehouse: DuckDB file locally, Snowflake in production.

The Snowflake names are loaded on first use: dagster-snowflake pulls in Snowpark (seconds of
imports), which the local deployment never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.lazy_exports import lazy_exports
from eventreach_assets.resources.warehouse.base import (
    WarehouseResource,
    WarehouseSchemaError,
    extraction_sql,
    missing_columns,
)
from eventreach_assets.resources.warehouse.duckdb import DuckDBWarehouse

if TYPE_CHECKING:
    from eventreach_assets.resources.warehouse.snowflake import SnowflakeWarehouse, snowflake_resource_from_env
    from eventreach_assets.resources.warehouse.snowflake_load import load_tables

__all__ = [
    "DuckDBWarehouse",
    "SnowflakeWarehouse",
    "WarehouseResource",
    "WarehouseSchemaError",
    "extraction_sql",
    "load_tables",
    "missing_columns",
    "snowflake_resource_from_env",
]


__getattr__ = lazy_exports(
    __name__,
    {"SnowflakeWarehouse": "snowflake", "snowflake_resource_from_env": "snowflake", "load_tables": "snowflake_load"},
)
