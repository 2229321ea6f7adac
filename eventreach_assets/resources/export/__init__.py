"""The weekly analyst export of an event's candidates: Parquet under a local dir, or S3 + Glue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.domain.candidate_items import EXPORT_EXCLUDED_COLUMNS
from eventreach_assets.resources.export.base import (
    PART_FILE,
    CandidateExportResource,
    ExportResult,
    PublishedFile,
    partition_path,
)
from eventreach_assets.resources.export.local import LocalParquetExport
from eventreach_assets.resources.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from eventreach_assets.resources.export.glue_catalog import PARQUET_SERDE, PARTITION_KEYS, hive_type
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

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(
    __name__,
    {
        "S3GlueExport": "s3_glue",
        "PARQUET_SERDE": "glue_catalog",
        "PARTITION_KEYS": "glue_catalog",
        "hive_type": "glue_catalog",
    },
)
