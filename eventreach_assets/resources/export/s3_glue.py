"""The AWS export: the same hive-partitioned Parquet as LocalParquetExport, in S3, registered
in the Glue Data Catalog (`glue_catalog.py`) so Athena (and anything reading Glue) can query it
at once.

    s3://{bucket}/{prefix}/program={p}/event={e}/dt={YYYY-MM-DD}/part-0.parquet
"""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster_aws.s3 import S3Resource
from pydantic import Field

from eventreach_assets.resources.aws import aws_client
from eventreach_assets.resources.export.base import PART_FILE, CandidateExportResource, PublishedFile
from eventreach_assets.resources.export.glue_catalog import ensure_table, upsert_partition
from eventreach_assets.resources.s3_objects import get_parquet, join_key, list_keys, put_parquet, s3_client

DELETE_BATCH = 1000  # DeleteObjects takes up to 1000 keys


class S3GlueExport(CandidateExportResource):
    """Exports to S3 through dagster-aws's S3Resource and keeps the Glue catalog current."""

    s3: S3Resource
    bucket: str = Field(description="Bucket of the analyst export.")
    prefix: str = Field(default="eventreach/candidates", description="Dataset root inside the bucket.")
    glue_database: str = Field(description="Existing Glue database holding the export table.")
    glue_table: str = Field(default="event_candidates", description="Glue table; created on first export.")
    region_name: str | None = Field(default=None, description="Region of the Glue catalog.")
    endpoint_url: str | None = Field(default=None, description="Override of the Glue endpoint (tests).")

    # ---- locations and clients -------------------------------------------------------------

    def _root(self) -> str:
        return self.prefix.strip("/")

    def table_location(self) -> str:
        """s3://bucket/prefix/ — the Glue table's LOCATION."""
        root = self._root()
        return f"s3://{self.bucket}/{root}/" if root else f"s3://{self.bucket}/"

    def s3_client(self) -> Any:
        return s3_client(self.s3)

    def glue_client(self) -> Any:
        """Glue client; credentials from the default chain (task role in production)."""
        return aws_client("glue", region_name=self.region_name, endpoint_url=self.endpoint_url)

    # ---- the backend -----------------------------------------------------------------------

    def _publish(self, directory: str, body: pl.DataFrame, partition: dict[str, str]) -> PublishedFile:
        partition_prefix = join_key(self._root(), directory) + "/"
        key = partition_prefix + PART_FILE
        s3 = self.s3_client()
        # PutObject replaces the key atomically; then the partition must hold only this file.
        size = put_parquet(s3, self.bucket, key, body)
        self._delete_stale(s3, partition_prefix, key)
        glue = self.glue_client()
        ensure_table(glue, self.glue_database, self.glue_table, body.schema, self.table_location())
        upsert_partition(
            glue, self.glue_database, self.glue_table, body.schema, partition, f"s3://{self.bucket}/{partition_prefix}"
        )
        return PublishedFile(uri=f"s3://{self.bucket}/{key}", path=key, bytes=size)

    def _delete_stale(self, s3: Any, partition_prefix: str, key: str) -> None:
        """Every object of the partition but `key` (an earlier export's other files)."""
        stale = [other for other in list_keys(s3, self.bucket, partition_prefix) if other != key]
        for start in range(0, len(stale), DELETE_BATCH):
            response = s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": other} for other in stale[start : start + DELETE_BATCH]], "Quiet": True},
            )
            if response.get("Errors"):  # DeleteObjects reports per-key failures in a 200 response
                failed = [f"{error['Key']}: {error.get('Code')}" for error in response["Errors"][:5]]
                raise RuntimeError(f"could not delete stale export objects under {partition_prefix}: {failed}")

    def _location(self, relative: str) -> str:
        return f"s3://{self.bucket}/{join_key(self._root(), relative)}"

    def _read(self, relative: str, missing: str, columns: list[str] | None) -> pl.DataFrame:
        return get_parquet(self.s3_client(), self.bucket, join_key(self._root(), relative), missing, columns)
