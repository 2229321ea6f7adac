"""The Glue Data Catalog table of the export: an EXTERNAL_TABLE over the dataset root with
partition keys program, event, dt (strings).

The table is created on first export; each export adds or updates its partition with that
partition's own columns, so a new model probability column (p_*) shows up without a crawler.
Columns new to the table are appended to it; existing ones are never changed.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from botocore.exceptions import ClientError

from eventreach_assets.resources.s3_objects import error_code

PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
PARTITION_KEYS: tuple[str, ...] = ("program", "event", "dt")

_SIMPLE_HIVE_TYPES: dict[type[pl.DataType], str] = {
    pl.String: "string", pl.Categorical: "string", pl.Enum: "string", pl.Null: "string",
    pl.Boolean: "boolean",
    pl.Int8: "tinyint", pl.Int16: "smallint", pl.Int32: "int", pl.Int64: "bigint",
    pl.UInt8: "smallint", pl.UInt16: "int", pl.UInt32: "bigint", pl.UInt64: "bigint",
    pl.Float32: "float", pl.Float64: "double",
    pl.Date: "date", pl.Datetime: "timestamp", pl.Binary: "binary",
}  # fmt: skip


def hive_type(dtype: pl.DataType) -> str:
    """The Hive/Glue type Athena reads a polars-written Parquet column as."""
    if isinstance(dtype, type):  # polars accepts bare classes, e.g. pl.List(pl.String)
        dtype = dtype()
    if isinstance(dtype, pl.Decimal):
        return f"decimal({dtype.precision},{dtype.scale})"
    if isinstance(dtype, pl.List | pl.Array):
        return f"array<{hive_type(dtype.inner)}>"
    if isinstance(dtype, pl.Struct):
        return "struct<" + ",".join(f"{field.name}:{hive_type(field.dtype)}" for field in dtype.fields) + ">"
    simple = _SIMPLE_HIVE_TYPES.get(type(dtype))
    if simple is None:
        raise ValueError(f"no Glue type for polars {dtype}")
    return simple


def storage_descriptor(schema: pl.Schema, location: str) -> dict[str, Any]:
    """Parquet files at `location` with these columns."""
    return {
        "Columns": [{"Name": name, "Type": hive_type(dtype)} for name, dtype in schema.items()],
        "Location": location,
        "InputFormat": PARQUET_INPUT_FORMAT,
        "OutputFormat": PARQUET_OUTPUT_FORMAT,
        "Compressed": True,
        "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE, "Parameters": {"serialization.format": "1"}},
    }


def table_input(table: str, descriptor: dict[str, Any]) -> dict[str, Any]:
    return {
        "Name": table,
        "Description": "EventReach candidate export (one partition per program, event and run date)",
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE", "parquet.compression": "ZSTD"},
        "StorageDescriptor": descriptor,
        "PartitionKeys": [{"Name": key, "Type": "string"} for key in PARTITION_KEYS],
    }


def ensure_table(glue: Any, database: str, table: str, schema: pl.Schema, location: str) -> None:
    """Create the table if missing; append columns it lacks (never retype existing ones)."""
    descriptor = storage_descriptor(schema, location)
    try:
        current = glue.get_table(DatabaseName=database, Name=table)["Table"]
    except ClientError as error:
        if error_code(error) != "EntityNotFoundException":
            raise
        try:
            glue.create_table(DatabaseName=database, TableInput=table_input(table, descriptor))
        except ClientError as create_error:
            if error_code(create_error) == "EntityNotFoundException":
                raise RuntimeError(
                    f"Glue database {database!r} does not exist: create it (infrastructure) first"
                ) from create_error
            if error_code(create_error) != "AlreadyExistsException":  # a concurrent run made it
                raise
        return
    columns = list(current.get("StorageDescriptor", {}).get("Columns", []))
    known = {column["Name"] for column in columns}
    added = [column for column in descriptor["Columns"] if column["Name"] not in known]
    if not added:
        return
    updated = table_input(table, {**current["StorageDescriptor"], "Columns": columns + added})
    updated["Parameters"] = {**current.get("Parameters", {}), **updated["Parameters"]}
    glue.update_table(DatabaseName=database, TableInput=updated)


def upsert_partition(
    glue: Any, database: str, table: str, schema: pl.Schema, partition: dict[str, str], location: str
) -> None:
    """Add the partition, or point an existing one at this export's columns and location."""
    values = [partition[key] for key in PARTITION_KEYS]
    partition_input = {
        "Values": values,
        "StorageDescriptor": storage_descriptor(schema, location),
        "Parameters": {"classification": "parquet"},
    }
    try:
        glue.create_partition(DatabaseName=database, TableName=table, PartitionInput=partition_input)
    except ClientError as error:
        if error_code(error) != "AlreadyExistsException":
            raise
        glue.update_partition(
            DatabaseName=database, TableName=table, PartitionValueList=values, PartitionInput=partition_input
        )
