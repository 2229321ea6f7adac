"""The AWS export: the same hive-partitioned Parquet as LocalParquetExport, in S3, registered
in the Glue Data Catalog so Athena (and anything reading Glue) can query it at once.

    s3://{bucket}/{prefix}/program={p}/event={e}/dt={YYYY-MM-DD}/part-0.parquet

The Glue table (created on first export) is an EXTERNAL_TABLE over s3://{bucket}/{prefix}/
with partition keys program, event, dt (strings); each export adds or updates its partition
with that partition's own columns, so a new model probability column (p_*) shows up without
a crawler. Columns new to the table are appended to it; existing ones are never changed.
"""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import boto3
import polars as pl
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.candidate_items import export_frame
from eventreach_assets.resources.export import PART_FILE, CandidateExportResource, ExportResult, partition_path
from eventreach_assets.resources.s3_storage import get_parquet, join_key, list_keys

__all__ = ["PARTITION_KEYS", "S3GlueExport", "hive_type"]

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


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3GlueExport(CandidateExportResource):
    """Exports to S3 through dagster-aws's S3Resource and keeps the Glue catalog current."""

    s3: S3Resource
    bucket: str = Field(description="Bucket of the analyst export.")
    prefix: str = Field(default="eventreach/candidates", description="Dataset root inside the bucket.")
    glue_database: str = Field(description="Existing Glue database holding the export table.")
    glue_table: str = Field(default="event_candidates", description="Glue table; created on first export.")
    region_name: str | None = Field(default=None, description="Region of the Glue catalog.")
    endpoint_url: str | None = Field(default=None, description="Override of the Glue endpoint (tests).")
    _s3_client: Any = PrivateAttr(default=None)
    _glue_client: Any = PrivateAttr(default=None)

    # ---- locations -------------------------------------------------------------------------

    def _root(self) -> str:
        return self.prefix.strip("/")

    def _partition_prefix(self, program_id: str, event_id: str, run_date: date) -> str:
        return join_key(self._root(), partition_path(program_id, event_id, run_date)) + "/"

    def table_location(self) -> str:
        """s3://bucket/prefix/ — the Glue table's LOCATION."""
        root = self._root()
        return f"s3://{self.bucket}/{root}/" if root else f"s3://{self.bucket}/"

    def s3_client(self) -> Any:
        """The S3 client from the S3Resource, built once per resource instance (~0.2 s each)."""
        if self._s3_client is None:
            self._s3_client = self.s3.get_client()
        return self._s3_client

    def glue_client(self) -> Any:
        """Glue client; credentials from the default chain (task role in production)."""
        if self._glue_client is None:
            session = boto3.session.Session()
            self._glue_client = session.client("glue", region_name=self.region_name, endpoint_url=self.endpoint_url)
        return self._glue_client

    # ---- export ----------------------------------------------------------------------------

    def export_event(self, program_id: str, event_id: str, run_date: date, items: pl.DataFrame) -> ExportResult:
        partition_prefix = self._partition_prefix(program_id, event_id, run_date)
        key = partition_prefix + PART_FILE
        body = export_frame(items)
        buffer = io.BytesIO()
        body.write_parquet(buffer, compression="zstd", statistics=True)
        payload = buffer.getvalue()
        s3 = self.s3_client()
        # PutObject replaces the key atomically; then the partition must hold only this file.
        s3.put_object(Bucket=self.bucket, Key=key, Body=payload, ContentType="application/vnd.apache.parquet")
        stale = [other for other in list_keys(s3, self.bucket, partition_prefix) if other != key]
        for start in range(0, len(stale), 1000):  # DeleteObjects takes up to 1000 keys
            response = s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": other} for other in stale[start : start + 1000]], "Quiet": True},
            )
            if response.get("Errors"):  # DeleteObjects reports per-key failures in a 200 response
                failed = [f"{error['Key']}: {error.get('Code')}" for error in response["Errors"][:5]]
                raise RuntimeError(f"could not delete stale export objects under {partition_prefix}: {failed}")
        partition = {"program": program_id, "event": event_id, "dt": run_date.isoformat()}
        self._register(body.schema, partition, f"s3://{self.bucket}/{partition_prefix}")
        return ExportResult(
            uri=f"s3://{self.bucket}/{key}",
            path=key,
            rows=body.height,
            bytes=len(payload),
            columns=body.columns,
            partition=partition,
        )

    def read_event(self, program_id: str, event_id: str, run_date: date) -> pl.DataFrame:
        key = self._partition_prefix(program_id, event_id, run_date) + PART_FILE
        return get_parquet(
            self.s3_client(),
            self.bucket,
            key,
            f"no export for program={program_id} event={event_id} dt={run_date}: s3://{self.bucket}/{key}",
        )

    # ---- Glue ------------------------------------------------------------------------------

    def _storage_descriptor(self, schema: pl.Schema, location: str) -> dict[str, Any]:
        return {
            "Columns": [{"Name": name, "Type": hive_type(dtype)} for name, dtype in schema.items()],
            "Location": location,
            "InputFormat": PARQUET_INPUT_FORMAT,
            "OutputFormat": PARQUET_OUTPUT_FORMAT,
            "Compressed": True,
            "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE, "Parameters": {"serialization.format": "1"}},
        }

    def _register(self, schema: pl.Schema, partition: dict[str, str], location: str) -> None:
        glue = self.glue_client()
        self._ensure_table(glue, schema)
        values = [partition[key] for key in PARTITION_KEYS]
        partition_input = {
            "Values": values,
            "StorageDescriptor": self._storage_descriptor(schema, location),
            "Parameters": {"classification": "parquet"},
        }
        try:
            glue.create_partition(
                DatabaseName=self.glue_database, TableName=self.glue_table, PartitionInput=partition_input
            )
        except ClientError as error:
            if _error_code(error) != "AlreadyExistsException":
                raise
            glue.update_partition(
                DatabaseName=self.glue_database,
                TableName=self.glue_table,
                PartitionValueList=values,
                PartitionInput=partition_input,
            )

    def _table_input(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        return {
            "Name": self.glue_table,
            "Description": "EventReach candidate export (one partition per program, event and run date)",
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE", "parquet.compression": "ZSTD"},
            "StorageDescriptor": descriptor,
            "PartitionKeys": [{"Name": key, "Type": "string"} for key in PARTITION_KEYS],
        }

    def _ensure_table(self, glue: Any, schema: pl.Schema) -> None:
        """Create the table if missing; append columns it lacks (never retype existing ones)."""
        descriptor = self._storage_descriptor(schema, self.table_location())
        try:
            table = glue.get_table(DatabaseName=self.glue_database, Name=self.glue_table)["Table"]
        except ClientError as error:
            if _error_code(error) != "EntityNotFoundException":
                raise
            try:
                glue.create_table(DatabaseName=self.glue_database, TableInput=self._table_input(descriptor))
            except ClientError as create_error:
                if _error_code(create_error) == "EntityNotFoundException":
                    raise RuntimeError(
                        f"Glue database {self.glue_database!r} does not exist: create it (infrastructure) first"
                    ) from create_error
                if _error_code(create_error) != "AlreadyExistsException":  # a concurrent run made it
                    raise
            return
        columns = list(table.get("StorageDescriptor", {}).get("Columns", []))
        known = {column["Name"] for column in columns}
        added = [column for column in descriptor["Columns"] if column["Name"] not in known]
        if not added:
            return
        table_input = self._table_input({**table["StorageDescriptor"], "Columns": columns + added})
        table_input["Parameters"] = {**table.get("Parameters", {}), **table_input["Parameters"]}
        glue.update_table(DatabaseName=self.glue_database, TableInput=table_input)
