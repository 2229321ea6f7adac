"""Metrics as a local Parquet dataset, partitioned by day."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import polars as pl
from pydantic import Field

from eventreach_assets.domain.metrics import METRICS_SCHEMA
from eventreach_assets.resources.files import write_parquet_atomically
from eventreach_assets.resources.metrics_sink.base import MetricsSinkResource


class LocalMetricsSink(MetricsSinkResource):
    """Appends each publish as a Parquet file `<base_dir>/dt=<UTC date>/<uuid>.parquet`.

    One new file per publish (and date) instead of rewriting a table: publishes never
    contend, and the directory is a hive dataset DuckDB reads with hive_partitioning=true.
    """

    base_dir: str = Field(description="Directory of the metrics dataset, e.g. $EVENTREACH_HOME/metrics.")

    def _write(self, frame: pl.DataFrame) -> int:
        dated = frame.with_columns(_dt=pl.col("timestamp").dt.date())
        for (day,), part in dated.group_by("_dt", maintain_order=True):
            path = Path(self.base_dir, f"dt={day.isoformat()}", f"{uuid.uuid4().hex}.parquet")
            write_parquet_atomically(part.drop("_dt"), path)
        return frame.height

    def read(self, start: date | None = None, end: date | None = None) -> pl.DataFrame:
        """All datums published with a timestamp date in [start, end] (inclusive), oldest first."""
        files = sorted(Path(self.base_dir).glob("dt=*/*.parquet"))
        days = [(date.fromisoformat(path.parent.name.removeprefix("dt=")), path) for path in files]
        chosen = [str(path) for day, path in days if (start is None or day >= start) and (end is None or day <= end)]
        if not chosen:
            return pl.DataFrame(schema=METRICS_SCHEMA)
        frame = pl.read_parquet(chosen, hive_partitioning=False)
        return frame.select(list(METRICS_SCHEMA)).sort("timestamp", "name", maintain_order=True)
