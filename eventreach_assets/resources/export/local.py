"""The local export: the hive-partitioned Parquet dataset under a directory (the stand-in for S3 + Glue)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from pydantic import Field

from eventreach_assets.resources.export.base import PART_FILE, CandidateExportResource, PublishedFile
from eventreach_assets.resources.files import write_parquet_atomically


class LocalParquetExport(CandidateExportResource):
    """Parquet files under a local directory (the local stand-in for S3 + Glue)."""

    base_dir: str = Field(description="Root of the hive-partitioned dataset.")

    def _publish(self, directory: str, body: pl.DataFrame, partition: dict[str, str]) -> PublishedFile:
        folder = Path(self.base_dir) / directory
        target = folder / PART_FILE
        write_parquet_atomically(body, target)  # readers see the old file or the new one, never half
        for leftover in folder.iterdir():  # the partition holds exactly this export
            if leftover.name != PART_FILE and leftover.suffix == ".parquet":
                leftover.unlink()
        return PublishedFile(uri=target.resolve().as_uri(), path=str(target), bytes=target.stat().st_size)

    def _location(self, relative: str) -> str:
        return str(Path(self.base_dir) / relative)

    def _read(self, relative: str, missing: str, columns: list[str] | None) -> pl.DataFrame:
        target = Path(self.base_dir) / relative
        if not target.exists():
            raise FileNotFoundError(missing)
        return pl.read_parquet(target, columns=columns)
