"""The local decision log: Parquet under the deployment's data dir."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from eventreach_assets.resources.decision_log.base import DecisionLogResource
from eventreach_assets.resources.files import write_bytes_atomically, write_parquet_atomically


class LocalDecisionLog(DecisionLogResource):
    """Parquet under `<base_dir>/<stage>/event=<id>/part-0.parquet`, queryable with DuckDB or polars."""

    base_dir: str

    def _write_frame(self, relative: str, frame: pl.DataFrame) -> str:
        path = Path(self.base_dir, relative)
        write_parquet_atomically(frame, path)
        return str(path)

    def _write_bytes(self, relative: str, data: bytes) -> str:
        path = Path(self.base_dir, relative)
        write_bytes_atomically(data, path)
        return str(path)

    def _read_frame(self, relative: str, missing: str) -> pl.LazyFrame:
        path = Path(self.base_dir, relative)
        if not path.exists():
            raise FileNotFoundError(missing)
        return pl.scan_parquet(path)

    def _read_stage(self, stage: str) -> pl.LazyFrame:
        stage_dir = Path(self.base_dir, stage)
        if not list(stage_dir.glob("event=*/*.parquet")):
            raise FileNotFoundError(f"no {stage} decisions recorded yet under {stage_dir}")
        return pl.scan_parquet(stage_dir / "event=*" / "*.parquet", hive_partitioning=True).rename(
            {"event": "event_id"}
        )
