"""Turning domain results into the metadata analysts read in the Dagster UI."""

from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any

import dagster as dg
import polars as pl

# Metadata keys the event-date sensor reads from the runs it launches (waves, attendance polling).
NEXT_DUE_AT = "next_due_at"  # when the stage should run next (naive UTC ISO)
PLANNED_AT = "planned_at"  # the run's own clock when it planned

_TABLE_TYPES: dict[type[pl.DataType], str] = {
    pl.Int8: "int", pl.Int16: "int", pl.Int32: "int", pl.Int64: "int",
    pl.UInt8: "int", pl.UInt16: "int", pl.UInt32: "int", pl.UInt64: "int",
    pl.Float32: "float", pl.Float64: "float", pl.Boolean: "bool",
}  # fmt: skip


def table(frame: pl.DataFrame) -> dg.TableMetadataValue:
    """A small frame (a funnel, a distribution) as a UI table; times are shown as ISO strings."""
    frame = frame.with_columns(pl.col(pl.Datetime, pl.Date, pl.Time, pl.Duration).cast(pl.String))
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, _TABLE_TYPES.get(type(dtype), "string")) for name, dtype in frame.schema.items()]
    )
    return dg.MetadataValue.table(records=[dg.TableRecord(row) for row in frame.to_dicts()], schema=schema)


def counts_table(counts: dict[str, int], key: str, total: int | None = None) -> dg.TableMetadataValue:
    frame = pl.DataFrame(
        {key: list(counts), "count": list(counts.values())}, schema={key: pl.String, "count": pl.Int64}
    )
    if total:
        frame = frame.with_columns(pct=(pl.col("count") * 100.0 / total).round(2))
    return table(frame)


class Stopwatch:
    """Wall time of an asset body, reported as `duration_s` (and throughput when rows are known)."""

    def __init__(self) -> None:
        self.started = perf_counter()
        self.seconds = 0.0

    def stop(self) -> float:
        self.seconds = perf_counter() - self.started
        return self.seconds

    def metadata(self, rows: int | None = None) -> dict[str, Any]:
        seconds = self.seconds or self.stop()
        result: dict[str, Any] = {"duration_s": round(seconds, 3)}
        if rows is not None and seconds > 0:
            result["rows_per_minute"] = int(rows * 60 / seconds)
        return result


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    yield watch
    watch.stop()
