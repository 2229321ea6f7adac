"""Asset values as Parquet objects under an S3 prefix (the AWS deployment's IO manager)."""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster_aws.s3 import S3Resource
from pydantic import Field

from eventreach_assets.resources.parquet_io.base import PolarsParquetIOManagerBase, one_row_group
from eventreach_assets.resources.s3_objects import (
    get_parquet_and_metadata,
    join_key,
    put_parquet,
    s3_client,
    safe_prefix,
)


class S3PolarsParquetIOManager(PolarsParquetIOManagerBase):
    """Polars asset values in S3: `s3://<bucket>/<prefix>/<asset path>/<partition>.parquet`
    (unpartitioned: `<prefix>/<asset path>.parquet`), like PolarsParquetIOManager."""

    s3: S3Resource
    bucket: str = Field(description="Bucket of the asset values.")
    prefix: str = Field(default="assets", description="Key prefix, e.g. 'eventreach/assets'.")

    def client(self) -> Any:
        return s3_client(self.s3)

    def _key(self, path: list[str]) -> str:
        return join_key(safe_prefix(self.prefix), *path)

    def _location(self, path: list[str]) -> str:
        return f"s3://{self.bucket}/{self._key(path)}"

    def _write(self, path: list[str], frame: pl.DataFrame, metadata: dict[str, str]) -> dict[str, Any]:
        size = put_parquet(self.client(), self.bucket, self._key(path), frame, one_row_group(frame), metadata)
        return {"stored_at": self._location(path), "stored_bytes": size}

    def _read(self, path: list[str], missing: str) -> tuple[pl.DataFrame, dict[str, str]]:
        return get_parquet_and_metadata(self.client(), self.bucket, self._key(path), missing)
