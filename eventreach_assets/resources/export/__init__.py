"""The weekly analyst export of an event's candidates: Parquet under a local dir, or S3 + Glue."""

from eventreach_assets.domain.candidate_items import EXPORT_EXCLUDED_COLUMNS
from eventreach_assets.resources.export.base import (
    PART_FILE,
    CandidateExportResource,
    ExportResult,
    PublishedFile,
    partition_path,
)
from eventreach_assets.resources.export.glue_catalog import PARQUET_SERDE, PARTITION_KEYS, hive_type
from eventreach_assets.resources.export.local import LocalParquetExport
from eventreach_assets.resources.export.s3_glue import S3GlueExport

__all__ = [
    "EXPORT_EXCLUDED_COLUMNS",
    "PARQUET_SERDE",
    "PARTITION_KEYS",
    "PART_FILE",
    "CandidateExportResource",
    "ExportResult",
    "LocalParquetExport",
    "PublishedFile",
    "S3GlueExport",
    "hive_type",
    "partition_path",
]
