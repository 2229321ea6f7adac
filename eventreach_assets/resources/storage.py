"""File-backed storage the assets share: asset values (IO manager) and the decision log.

Both write Parquet under the deployment's data dir, one file per asset partition, replaced
atomically so a crashed run never leaves half a file behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import dagster as dg
import polars as pl


def write_parquet_atomically(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.write_parquet(temporary)
    os.replace(temporary, path)


_SAFE_KEY = re.compile(r"^[A-Za-z0-9._:=-]+$")


def safe_key(value: str) -> str:
    """Refuse partition keys that could escape the data dir."""
    if not _SAFE_KEY.match(value) or value in {".", ".."}:
        raise ValueError(f"unsafe key for a storage path: {value!r}")
    return value


class PolarsParquetIOManager(dg.ConfigurableIOManager):
    """Stores polars DataFrame asset values as Parquet: `<base_dir>/<asset>/<partition>.parquet`."""

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        asset_dir = Path(self.base_dir, *context.asset_key.path)
        if context.has_asset_partitions:
            return asset_dir / f"{safe_key(context.asset_partition_key)}.parquet"
        return asset_dir.with_suffix(".parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, expected polars.DataFrame"
            )
        write_parquet_atomically(obj, self._path(context))

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        path = self._path(context)
        if not path.exists():
            raise FileNotFoundError(
                f"no stored value for {context.asset_key.to_user_string()} at {path}: materialize it first"
            )
        return pl.read_parquet(path)


class DecisionLogResource(dg.ConfigurableResource):
    """Why rows left the pipeline: quarantined warehouse rows and filter rejections, per event."""

    def write(self, stage: str, event_id: str, frame: pl.DataFrame) -> str:
        raise NotImplementedError

    def write_file(self, stage: str, event_id: str, name: str, data: bytes) -> str:
        """Keep one file next to the event's decisions (e.g. a rendered sample message); returns its URI."""
        raise NotImplementedError

    def read(self, stage: str, event_id: str | None = None) -> pl.LazyFrame:
        raise NotImplementedError


class LocalDecisionLog(DecisionLogResource):
    """Parquet under `<base_dir>/<stage>/event=<id>/part-0.parquet`, queryable with DuckDB or polars."""

    base_dir: str

    def _path(self, stage: str, event_id: str) -> Path:
        return Path(self.base_dir, safe_key(stage), f"event={safe_key(event_id)}", "part-0.parquet")

    def write(self, stage: str, event_id: str, frame: pl.DataFrame) -> str:
        path = self._path(stage, event_id)
        write_parquet_atomically(frame, path)
        return str(path)

    def write_file(self, stage: str, event_id: str, name: str, data: bytes) -> str:
        path = Path(self.base_dir, safe_key(stage), f"event={safe_key(event_id)}", safe_key(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        return str(path)

    def read(self, stage: str, event_id: str | None = None) -> pl.LazyFrame:
        if event_id is not None:
            path = self._path(stage, event_id)
            if not path.exists():
                raise FileNotFoundError(f"no {stage} decisions recorded for event {event_id!r}")
            return pl.scan_parquet(path).with_columns(event_id=pl.lit(event_id))
        pattern = Path(self.base_dir, safe_key(stage), "event=*", "*.parquet")
        if not list(pattern.parent.parent.glob("event=*/*.parquet")):
            raise FileNotFoundError(f"no {stage} decisions recorded yet under {pattern.parent.parent}")
        return pl.scan_parquet(pattern, hive_partitioning=True).rename({"event": "event_id"})
