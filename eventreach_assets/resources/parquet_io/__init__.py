"""IO managers storing polars asset values as Parquet: files locally, S3 objects on AWS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.lazy_exports import lazy_exports
from eventreach_assets.resources.parquet_io.base import PolarsParquetIOManagerBase, value_path
from eventreach_assets.resources.parquet_io.local import PolarsParquetIOManager

if TYPE_CHECKING:
    from eventreach_assets.resources.parquet_io.s3 import S3PolarsParquetIOManager

__all__ = ["PolarsParquetIOManager", "PolarsParquetIOManagerBase", "S3PolarsParquetIOManager", "value_path"]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(__name__, {"S3PolarsParquetIOManager": "s3"})
