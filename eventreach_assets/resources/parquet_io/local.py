"""Asset values as Parquet files under the deployment's data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from eventreach_assets.resources.files import ParquetCodec, write_parquet_atomically
from eventreach_assets.resources.parquet_io.base import PolarsParquetIOManagerBase, one_row_group

VALUE_CODEC: ParquetCodec = "lz4"


def write_value(
    frame: pl.DataFrame, path: Path, compression: ParquetCodec = VALUE_CODEC, metadata: dict[str, str] | None = None
) -> None:
    """An asset value's file, as the IO manager writes it (the bench's bare path too): one row
    group and no column statistics, which could skip nothing in one row group read whole (the
    2.47M candidates at 3M profiles: 1.4 -> 1.2 s)."""
    write_parquet_atomically(frame, path, compression, one_row_group(frame), statistics=False, metadata=metadata)


class PolarsParquetIOManager(PolarsParquetIOManagerBase):
    """Stores polars DataFrame asset values as Parquet: `<base_dir>/<asset>/<partition>.parquet`."""

    base_dir: str
    compression: ParquetCodec = Field(
        default=VALUE_CODEC,
        description="Parquet codec of the values: lz4 writes a 1M-row extract in 0.40 s and reads it in 0.09 s "
        "(zstd: 0.65 s and 0.15 s, files two thirds the size); values are rewritten every week, so speed wins.",
    )

    def _location(self, path: list[str]) -> str:
        return str(Path(self.base_dir, *path))

    def _write(self, path: list[str], frame: pl.DataFrame, metadata: dict[str, str]) -> dict[str, Any]:
        write_value(frame, Path(self.base_dir, *path), self.compression, metadata)
        return {}

    def _read(self, path: list[str], missing: str) -> tuple[pl.DataFrame, dict[str, str]]:
        file = Path(self.base_dir, *path)
        if not file.exists():
            raise FileNotFoundError(missing)
        return pl.read_parquet(file), pl.read_parquet_metadata(file)
