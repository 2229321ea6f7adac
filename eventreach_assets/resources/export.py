"""The weekly data-warehouse export of an event's candidates (use case: "Scheduled Jobs",
Monday 4:30 AM, "Export candidates to S3 (Parquet), update Glue catalog").

Layout, hive style, one file per partition:

    {base}/program={program_id}/event={event_id}/dt={YYYY-MM-DD}/part-0.parquet

The partition columns `program`, `event`, `dt` live only in the path; the file body keeps
the item attributes `program_id` and `event_id` (strings), so readers that infer partition
types (a numeric-looking event id becomes an integer in DuckDB and pyarrow) still have the
exact ids. Both `duckdb: read_parquet('{base}/**/*.parquet', hive_partitioning=true)` and
`pyarrow.dataset.dataset(base, partitioning='hive')` read it.

What is exported: the candidate item attributes the store holds (customer_id, program_id,
event_id, channel, score, score_band, status, status_at, registered_channel, batch_date,
written_at, expires_at, marketplace, timezone, geographic_region, job_role, p_*), never the
store's keys nor anything the store does not hold, and never EXPORT_EXCLUDED_COLUMNS
(`email`): the export is for analysts.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from eventreach_assets.domain.candidate_items import EXPORT_EXCLUDED_COLUMNS, export_frame

__all__ = [
    "EXPORT_EXCLUDED_COLUMNS",
    "PART_FILE",
    "CandidateExportResource",
    "ExportResult",
    "LocalParquetExport",
    "partition_path",
]

PART_FILE = "part-0.parquet"
# Partition values become path segments (and S3 keys): keep them to characters that need
# no escaping in any reader.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ExportResult:
    """Where one event's export landed; the asset reports it as metadata."""

    uri: str  # file:///... locally, s3://... on AWS
    path: str  # local file path, or the object key on S3
    rows: int
    bytes: int
    columns: list[str]  # the exported columns, in file order
    partition: dict[str, str]  # {"program": ..., "event": ..., "dt": "YYYY-MM-DD"} (Glue partition values)


def partition_path(program_id: str, event_id: str, run_date: date) -> str:
    """Relative hive partition directory; raises on values unsafe as path segments."""
    for kind, value in (("program_id", program_id), ("event_id", event_id)):
        if not _SEGMENT.match(value):
            raise ValueError(f"{kind} {value!r} cannot be a partition value (allowed: {_SEGMENT.pattern})")
    return f"program={program_id}/event={event_id}/dt={run_date.isoformat()}"


class CandidateExportResource(dg.ConfigurableResource):
    """Exports an event's candidate items as one hive partition per (program, event, run date).

    Re-exporting the same partition replaces it, so re-runs are idempotent.
    """

    def export_event(self, program_id: str, event_id: str, run_date: date, items: pl.DataFrame) -> ExportResult:
        """Write `items` (as read from the candidate store) minus excluded columns to the partition."""
        raise NotImplementedError

    def read_event(self, program_id: str, event_id: str, run_date: date) -> pl.DataFrame:
        """The file body of one partition (no partition columns); FileNotFoundError if absent."""
        raise NotImplementedError


class LocalParquetExport(CandidateExportResource):
    """Parquet files under a local directory (the local stand-in for S3 + Glue)."""

    base_dir: str = Field(description="Root of the hive-partitioned dataset.")

    def export_event(self, program_id: str, event_id: str, run_date: date, items: pl.DataFrame) -> ExportResult:
        directory = Path(self.base_dir) / partition_path(program_id, event_id, run_date)
        directory.mkdir(parents=True, exist_ok=True)
        body = export_frame(items)
        target = directory / PART_FILE
        # Write beside the target under a name no reader globs (leading dot, no .parquet
        # suffix), then rename over it: readers see the old file or the new one, never half.
        temp = directory / f".{PART_FILE}.{uuid.uuid4().hex}.tmp"
        try:
            body.write_parquet(temp, compression="zstd", statistics=True)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        for leftover in directory.iterdir():  # the partition holds exactly this export
            if leftover.name != PART_FILE and leftover.suffix == ".parquet":
                leftover.unlink()
        return ExportResult(
            uri=target.resolve().as_uri(),
            path=str(target),
            rows=body.height,
            bytes=target.stat().st_size,
            columns=body.columns,
            partition={"program": program_id, "event": event_id, "dt": run_date.isoformat()},
        )

    def read_event(self, program_id: str, event_id: str, run_date: date) -> pl.DataFrame:
        target = Path(self.base_dir) / partition_path(program_id, event_id, run_date) / PART_FILE
        if not target.exists():
            raise FileNotFoundError(f"no export for program={program_id} event={event_id} dt={run_date}: {target}")
        return pl.read_parquet(target)
