"""IO managers storing polars asset values as Parquet: files locally, S3 objects on AWS."""

from eventreach_assets.resources.parquet_io.base import PolarsParquetIOManagerBase, value_path
from eventreach_assets.resources.parquet_io.local import PolarsParquetIOManager
from eventreach_assets.resources.parquet_io.s3 import S3PolarsParquetIOManager

__all__ = ["PolarsParquetIOManager", "PolarsParquetIOManagerBase", "S3PolarsParquetIOManager", "value_path"]
