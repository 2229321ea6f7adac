"""Asset values as Parquet files under the deployment's data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from eventreach_assets.resources.files import write_parquet_atomically
from eventreach_assets.resources.parquet_io.base import PolarsParquetIOManagerBase


class PolarsParquetIOManager(PolarsParquetIOManagerBase):
    """Stores polars DataFrame asset values as Parquet: `<base_dir>/<asset>/<partition>.parquet`."""

    base_dir: str

    def _location(self, path: list[str]) -> str:
        return str(Path(self.base_dir, *path))

    def _write(self, path: list[str], frame: pl.DataFrame) -> dict[str, Any]:
        write_parquet_atomically(frame, Path(self.base_dir, *path))
        return {}

    def _read(self, path: list[str], missing: str) -> pl.DataFrame:
        file = Path(self.base_dir, *path)
        if not file.exists():
            raise FileNotFoundError(missing)
        return pl.read_parquet(file)
