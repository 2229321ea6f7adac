"""Loading the warehouse contract's tables into a Snowflake schema.

`load_tables` writes the synthetic generator's tables (or any frames in the contract's shape)
into a Snowflake schema, for tests against fakesnow and for a demo account. Identifiers are
unquoted, as `SnowflakeWarehouse`'s SQL expects.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
from dagster_snowflake import SnowflakeResource

from eventreach_assets.domain.schema import WAREHOUSE_TABLES

# The contract's SQL types in Snowflake. TIMESTAMP is spelled out: its meaning depends on the
# account's TIMESTAMP_TYPE_MAPPING, and the contract is naive UTC.
SNOWFLAKE_TYPES: dict[str, str] = {
    "VARCHAR": "VARCHAR",
    "INTEGER": "INTEGER",
    "DOUBLE": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMP_NTZ",
}
# Rows per INSERT: one JSON document per statement, well under Snowflake's 16 MB value limit.
LOAD_CHUNK_ROWS = 10_000


def create_table_sql(table: str) -> str:
    columns = ", ".join(f"{name} {SNOWFLAKE_TYPES[sql_type]}" for name, sql_type in WAREHOUSE_TABLES[table].items())
    return f"CREATE OR REPLACE TABLE {table} ({columns})"


def insert_json_sql(table: str) -> str:
    """INSERT of a chunk of rows sent as one JSON array in one bind parameter.

    A single statement per chunk (not a statement per row) is what makes loading fast on both
    Snowflake and fakesnow, and needs neither pandas nor a stage.
    """
    columns = WAREHOUSE_TABLES[table]
    values = ", ".join(f'value:"{name}"::{SNOWFLAKE_TYPES[sql_type]}' for name, sql_type in columns.items())
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))"


def _json_ready(frame: pl.DataFrame, columns: Mapping[str, str]) -> pl.DataFrame:
    """Encode the values JSON cannot carry exactly as strings Snowflake casts back."""
    encoded = []
    for name, sql_type in columns.items():
        column = pl.col(name)
        if sql_type == "TIMESTAMP":
            dtype = frame.schema[name]
            if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
                column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            column = column.dt.strftime("%Y-%m-%d %H:%M:%S%.6f")
        elif sql_type == "DOUBLE":
            # Shortest round-trip text; NaN / inf / -inf survive (JSON numbers cannot hold them).
            column = column.cast(pl.Float64).cast(pl.String)
        encoded.append(column.alias(name))
    return frame.select(encoded)


def load_tables(
    snowflake: SnowflakeResource, tables: Mapping[str, pl.DataFrame], chunk_rows: int = LOAD_CHUNK_ROWS
) -> dict[str, int]:
    """(Re)create the contract's tables in the resource's schema and insert the frames' rows.

    `tables` is `generate_warehouse(...)`'s output or any frames with the contract's columns.
    Returns the rows inserted per table.
    """
    unknown = sorted(set(tables) - set(WAREHOUSE_TABLES))
    if unknown:
        raise ValueError(f"not warehouse tables: {', '.join(unknown)}")
    inserted: dict[str, int] = {}
    with snowflake.get_connection() as connection:
        cursor = connection.cursor()
        try:
            for table, frame in tables.items():
                columns = WAREHOUSE_TABLES[table]
                missing = [name for name in columns if name not in frame.columns]
                if missing:
                    raise ValueError(f"frame for {table!r} lacks column(s): {', '.join(missing)}")
                cursor.execute(create_table_sql(table))
                rows = _json_ready(frame, columns)
                for offset in range(0, rows.height, chunk_rows):
                    chunk = rows.slice(offset, chunk_rows).write_ndjson().splitlines()
                    cursor.execute(insert_json_sql(table), [f"[{','.join(chunk)}]"])
                inserted[table] = rows.height
        finally:
            cursor.close()
    return inserted
