"""The decision log interface: why rows left the pipeline (quarantined warehouse rows, filter
rejections), one Parquet part per stage and event, plus files kept beside them.

Every backend uses the same hive layout, relative to its root (a directory, an S3 prefix):

    <stage>/event=<event id>/part-0.parquet
    <stage>/event=<event id>/<file name>

so DuckDB, Athena or polars read a stage across events. The layout and the key checks live
here; a backend only stores and fetches what it is handed.
"""

from __future__ import annotations

import abc

import dagster as dg
import polars as pl

from eventreach_assets.resources.files import safe_key

PART_FILE = "part-0.parquet"


def event_dir(stage: str, event_id: str) -> str:
    """`<stage>/event=<id>`, each part checked so it cannot escape the log's root."""
    return f"{safe_key(stage)}/event={safe_key(event_id)}"


class DecisionLogResource(dg.ConfigurableResource, abc.ABC):
    """Why rows left the pipeline: quarantined warehouse rows and filter rejections, per event."""

    def write(self, stage: str, event_id: str, frame: pl.DataFrame) -> str:
        """Replace the event's decisions of this stage; returns where they are."""
        return self._write_frame(f"{event_dir(stage, event_id)}/{PART_FILE}", frame)

    def write_file(self, stage: str, event_id: str, name: str, data: bytes) -> str:
        """Keep one file next to the event's decisions (e.g. a rendered sample message); returns its URI."""
        return self._write_bytes(f"{event_dir(stage, event_id)}/{safe_key(name)}", data)

    def read(self, stage: str, event_id: str | None = None) -> pl.LazyFrame:
        """One event's decisions (or every event's), with an `event_id` column."""
        if event_id is None:
            return self._read_stage(safe_key(stage))
        frame = self._read_frame(
            f"{event_dir(stage, event_id)}/{PART_FILE}", f"no {stage} decisions recorded for event {event_id!r}"
        )
        return frame.with_columns(event_id=pl.lit(event_id, dtype=pl.String))

    @abc.abstractmethod
    def _write_frame(self, relative: str, frame: pl.DataFrame) -> str:
        """Store `frame` as Parquet at `relative`, replacing it atomically; returns its location."""

    @abc.abstractmethod
    def _write_bytes(self, relative: str, data: bytes) -> str:
        """Store `data` at `relative`, replacing it atomically; returns its location."""

    @abc.abstractmethod
    def _read_frame(self, relative: str, missing: str) -> pl.LazyFrame:
        """The Parquet part at `relative`; FileNotFoundError(`missing`) if there is none."""

    @abc.abstractmethod
    def _read_stage(self, stage: str) -> pl.LazyFrame:
        """Every event's part of `stage` with an `event_id` column; FileNotFoundError if none."""
