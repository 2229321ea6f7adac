"""The production warehouse: Snowflake through dagster-snowflake's `SnowflakeResource`.

It runs the same SQL as `DuckDBWarehouse` (see `base.py`): the event's topics travel as
`?` bind parameters (server-side binding, paramstyle `qmark`), never formatted into the
statement. Results are streamed as Arrow batches and normalised once, in
`arrow_batches_to_polars`, to what the DuckDB warehouse returns: lower-case column names
(Snowflake upper-cases unquoted identifiers), the contract's dtypes (INTEGER -> Int32, DOUBLE ->
Float64, BOOLEAN -> Boolean, TIMESTAMP -> naive UTC Datetime("us")), whatever narrow integer or
decimal type an individual batch happened to arrive in.

Environment variables (`snowflake_resource_from_env` reads each through `dg.EnvVar`, so the
values are resolved at run time and never stored in config):

    SNOWFLAKE_ACCOUNT      account identifier, e.g. "myorg-myaccount"
    SNOWFLAKE_USER         login name
    SNOWFLAKE_PASSWORD     password auth, or else key-pair auth with one of
    SNOWFLAKE_PRIVATE_KEY       the PEM key itself (optionally base64-encoded), or
    SNOWFLAKE_PRIVATE_KEY_PATH  a path to the PEM key file,
    SNOWFLAKE_PRIVATE_KEY_PASSWORD  (optional) passphrase of an encrypted key
    SNOWFLAKE_WAREHOUSE    virtual warehouse that runs the queries
    SNOWFLAKE_ROLE         role with SELECT on the four tables
    SNOWFLAKE_DATABASE     database holding the contract's tables
    SNOWFLAKE_SCHEMA       schema holding the contract's tables

The tables must use unquoted (case-insensitive) identifiers, as the SQL does: a column created
as a quoted lower-case name ("engagement_score") is a different identifier in Snowflake.
`snowflake_load.py` creates such tables and loads rows into them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
import polars as pl
import pyarrow as pa
from dagster_snowflake import SnowflakeResource
from pydantic import field_validator

from eventreach_assets.domain.schema import WAREHOUSE_TABLES
from eventreach_assets.resources.warehouse.base import WarehouseResource

# ---- configuration ----------------------------------------------------------------------

REQUIRED_ENV_VARS: tuple[str, ...] = (
    "SNOWFLAKE_ACCOUNT",
    "SNOWFLAKE_USER",
    "SNOWFLAKE_WAREHOUSE",
    "SNOWFLAKE_ROLE",
    "SNOWFLAKE_DATABASE",
    "SNOWFLAKE_SCHEMA",
)
# Exactly one of these authenticates (first one set wins, in this order).
AUTH_ENV_VARS: tuple[str, ...] = ("SNOWFLAKE_PASSWORD", "SNOWFLAKE_PRIVATE_KEY", "SNOWFLAKE_PRIVATE_KEY_PATH")
PRIVATE_KEY_PASSWORD_ENV_VAR = "SNOWFLAKE_PRIVATE_KEY_PASSWORD"

# Server-side binding: the only paramstyle in which `?` values never become SQL text.
PARAMSTYLE = "qmark"


def snowflake_resource_from_env(environ: Mapping[str, str] | None = None) -> SnowflakeResource:
    """A `SnowflakeResource` whose every setting is a `dg.EnvVar` (secrets never enter config).

    `environ` is only consulted to choose the authentication method (password or key pair),
    since dagster-snowflake rejects a resource configured with both; values are resolved by
    Dagster when a run starts.
    """
    environ = os.environ if environ is None else environ
    auth = next((name for name in AUTH_ENV_VARS if environ.get(name)), None)
    if auth is None:
        raise ValueError(f"Snowflake authentication is not configured: set one of {', '.join(AUTH_ENV_VARS)}")
    credentials: dict[str, Any] = {auth.removeprefix("SNOWFLAKE_").lower(): dg.EnvVar(auth)}
    if auth != "SNOWFLAKE_PASSWORD" and environ.get(PRIVATE_KEY_PASSWORD_ENV_VAR):
        credentials["private_key_password"] = dg.EnvVar(PRIVATE_KEY_PASSWORD_ENV_VAR)
    # SNOWFLAKE_ACCOUNT -> account=EnvVar("SNOWFLAKE_ACCOUNT"), ..., SNOWFLAKE_SCHEMA -> schema=...
    settings = {name.removeprefix("SNOWFLAKE_").lower(): dg.EnvVar(name) for name in REQUIRED_ENV_VARS}
    return SnowflakeResource(**settings, **credentials, paramstyle=PARAMSTYLE)


# ---- result normalisation ---------------------------------------------------------------

_CONTRACT_POLARS: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(),
    "INTEGER": pl.Int32(),
    "DOUBLE": pl.Float64(),
    "BOOLEAN": pl.Boolean(),
    "TIMESTAMP": pl.Datetime("us"),
}
# A column name means the same thing in every contract table (customer_id is always VARCHAR).
CONTRACT_DTYPES: dict[str, pl.DataType] = {
    column: _CONTRACT_POLARS[sql_type] for columns in WAREHOUSE_TABLES.values() for column, sql_type in columns.items()
}


def _described_dtype(type_name: str, scale: int | None) -> pl.DataType | None:
    """The dtype DuckDB would give a non-contract column (a count, an expression)."""
    if type_name == "FIXED":
        return pl.Int64() if not scale else pl.Float64()
    if type_name.startswith("TIMESTAMP"):
        return pl.Datetime("us")
    return {
        "REAL": pl.Float64(),
        "TEXT": pl.String(),
        "BOOLEAN": pl.Boolean(),
        "DATE": pl.Date(),
    }.get(type_name)


def result_schema(description: Iterable[Any]) -> dict[str, pl.DataType | None]:
    """Lower-case column name -> target dtype, from a cursor's description.

    The description (not the batches) decides the dtypes, because Snowflake sends each Arrow
    batch of a NUMBER column in the narrowest integer type that fits that batch, and an empty
    result has no batch at all.
    """
    from snowflake.connector.constants import FIELD_ID_TO_NAME

    schema: dict[str, pl.DataType | None] = {}
    for field in description:
        name = field.name.lower()
        schema[name] = CONTRACT_DTYPES.get(name) or _described_dtype(FIELD_ID_TO_NAME[field.type_code], field.scale)
    return schema


def _normalise(frame: pl.DataFrame, schema: Mapping[str, pl.DataType | None]) -> pl.DataFrame:
    frame = frame.rename({name: name.lower() for name in frame.columns})
    columns = []
    for name, dtype in frame.schema.items():
        column = pl.col(name)
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            # TIMESTAMP_TZ / _LTZ: the warehouse contract is naive UTC.
            column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        target = schema.get(name)
        columns.append(column.cast(target) if target is not None else column)
    return frame.select(columns)


def arrow_batches_to_polars(
    batches: Iterable[pa.Table | pa.RecordBatch], schema: Mapping[str, pl.DataType | None]
) -> pl.DataFrame:
    """One polars frame from a stream of Arrow batches, each normalised as it arrives.

    This is the single place where Snowflake's result shape becomes the DuckDB warehouse's.
    """
    frames = [_normalise(pl.DataFrame(pl.from_arrow(batch)), schema) for batch in batches]
    if not frames:  # Snowflake sends no batch at all for an empty result
        return pl.DataFrame(schema={name: dtype or pl.String() for name, dtype in schema.items()})
    return pl.concat(frames, how="vertical", rechunk=False)


# ---- the resource -----------------------------------------------------------------------


class SnowflakeWarehouse(WarehouseResource):
    """The production deployment's warehouse: the contract's four tables in a Snowflake schema."""

    snowflake: SnowflakeResource

    @field_validator("snowflake")
    @classmethod
    def _binds_server_side(cls, snowflake: SnowflakeResource) -> SnowflakeResource:
        # Under the connector's default (pyformat) the client formats values into the SQL
        # text; qmark sends them as bind values, which is the contract of this module.
        if isinstance(snowflake, SnowflakeResource) and snowflake.paramstyle != PARAMSTYLE:
            raise ValueError(
                f"SnowflakeWarehouse needs SnowflakeResource(paramstyle={PARAMSTYLE!r}) so that topics are "
                f"bound server-side, never formatted into SQL; got paramstyle={snowflake.paramstyle!r}"
            )
        return snowflake

    @contextmanager
    def _session(self) -> Iterator[Any]:
        with self.snowflake.get_connection() as connection:
            try:
                yield connection
            except BaseException:
                # dagster-snowflake closes the connection only on success; don't leak a session.
                connection.close()
                raise

    def _query(self, session: Any, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        with session.cursor() as cursor:
            cursor.execute(sql, params or None)
            schema = result_schema(cursor.description)
            return arrow_batches_to_polars(cursor.fetch_arrow_batches(force_microsecond_precision=True), schema)

    def _columns(self, session: Any, table: str) -> set[str]:
        # Unquoted identifiers are stored upper-case; compare that way, report lower-case.
        with session.cursor() as cursor:
            cursor.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = CURRENT_SCHEMA() AND table_name = ?",
                [table.upper()],
            )
            return {str(row[0]).lower() for row in cursor.fetchall()}
