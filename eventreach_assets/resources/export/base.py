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

The layout, the file body and the result live here; a backend only publishes one partition's
file (and catalogs it) and reads it back.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from datetime import date

import dagster as dg
import polars as pl

from eventreach_assets.domain.candidate_items import export_frame

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


@dataclass(frozen=True)
class PublishedFile:
    """What a backend reports about the file it wrote."""

    uri: str
    path: str
    bytes: int


def partition_path(program_id: str, event_id: str, run_date: date) -> str:
    """Relative hive partition directory; raises on values unsafe as path segments."""
    for kind, value in (("program_id", program_id), ("event_id", event_id)):
        if not _SEGMENT.match(value):
            raise ValueError(f"{kind} {value!r} cannot be a partition value (allowed: {_SEGMENT.pattern})")
    return f"program={program_id}/event={event_id}/dt={run_date.isoformat()}"


class CandidateExportResource(dg.ConfigurableResource, abc.ABC):
    """Exports an event's candidate items as one hive partition per (program, event, run date).

    Re-exporting the same partition replaces it, so re-runs are idempotent.
    """

    def export_event(self, program_id: str, event_id: str, run_date: date, items: pl.DataFrame) -> ExportResult:
        """Write `items` (as read from the candidate store) minus excluded columns to the partition."""
        directory = partition_path(program_id, event_id, run_date)
        body = export_frame(items)
        partition = {"program": program_id, "event": event_id, "dt": run_date.isoformat()}
        published = self._publish(directory, body, partition)
        return ExportResult(
            uri=published.uri,
            path=published.path,
            rows=body.height,
            bytes=published.bytes,
            columns=body.columns,
            partition=partition,
        )

    def read_event(
        self, program_id: str, event_id: str, run_date: date, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """The file body of one partition (no partition columns), only `columns` if given (what a
        check compares, not the whole file); FileNotFoundError if absent."""
        relative = f"{partition_path(program_id, event_id, run_date)}/{PART_FILE}"
        missing = f"no export for program={program_id} event={event_id} dt={run_date}: {self._location(relative)}"
        return self._read(relative, missing, columns)

    @abc.abstractmethod
    def _publish(self, directory: str, body: pl.DataFrame, partition: dict[str, str]) -> PublishedFile:
        """Make `body` the only file of the partition at `directory` (relative to the dataset root)."""

    @abc.abstractmethod
    def _location(self, relative: str) -> str:
        """Where the file at `relative` is, as a message shows it."""

    @abc.abstractmethod
    def _read(self, relative: str, missing: str, columns: list[str] | None) -> pl.DataFrame:
        """The file at `relative` (`columns` of it, or all); FileNotFoundError(`missing`) if there is none."""
