"""The local export: the hive-partitioned Parquet dataset under a directory (the stand-in for S3 + Glue)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import polars as pl
from pydantic import Field

from eventreach_assets.resources.export.base import PART_FILE, CandidateExportResource, PublishedFile
from eventreach_assets.resources.files import ZSTD_LEVEL


class LocalParquetExport(CandidateExportResource):
    """Parquet files under a local directory (the local stand-in for S3 + Glue)."""

    base_dir: str = Field(description="Root of the hive-partitioned dataset.")

    def _publish(self, directory: str, body: pl.DataFrame, partition: dict[str, str]) -> PublishedFile:
        folder = Path(self.base_dir) / directory
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / PART_FILE
        # Write beside the target under a name no reader globs (leading dot, no .parquet
        # suffix), then rename over it: readers see the old file or the new one, never half.
        temp = folder / f".{PART_FILE}.{uuid.uuid4().hex}.tmp"
        try:
            body.write_parquet(temp, compression="zstd", compression_level=ZSTD_LEVEL, statistics=True)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        for leftover in folder.iterdir():  # the partition holds exactly this export
            if leftover.name != PART_FILE and leftover.suffix == ".parquet":
                leftover.unlink()
        return PublishedFile(uri=target.resolve().as_uri(), path=str(target), bytes=target.stat().st_size)

    def _location(self, relative: str) -> str:
        return str(Path(self.base_dir) / relative)

    def _read(self, relative: str, missing: str) -> pl.DataFrame:
        target = Path(self.base_dir) / relative
        if not target.exists():
            raise FileNotFoundError(missing)
        return pl.read_parquet(target)
