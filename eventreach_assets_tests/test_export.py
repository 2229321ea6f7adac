"""The Parquet export: hive layout read by DuckDB and pyarrow, atomic replace, no PII."""

from __future__ import annotations

from datetime import UTC, date, datetime

import duckdb
import polars as pl
import pyarrow.dataset as pads
import pytest
from polars.testing import assert_frame_equal

from eventreach_assets.domain.candidate_items import EXPORT_EXCLUDED_COLUMNS, export_frame
from eventreach_assets.resources.candidate_store import SqliteCandidateStore
from eventreach_assets.resources.export import CandidateExportResource, ExportResult, LocalParquetExport

PROGRAM = "event-invitations"
NOW = datetime(2025, 1, 6, 4, 30, tzinfo=UTC)
RUN_DATE = date(2025, 1, 6)


def stored_items(tmp_path, event_id: str, customers: int, channels: list[str] | None = None) -> pl.DataFrame:
    store = SqliteCandidateStore(path=str(tmp_path / f"store-{event_id}.sqlite"))
    scored = pl.DataFrame({"customer_id": [f"c{i:04d}" for i in range(customers)]}).with_columns(
        score=(pl.int_range(customers) % 100) / 100,
        score_band=pl.lit("medium"),
        p_event_attendance_v3=pl.lit(0.5),
        marketplace=pl.lit("US"),
        email=pl.format("{}@example.test", pl.col("customer_id")),
    )
    store.replace_event_candidates(PROGRAM, event_id, scored, channels or ["email", "in-app"], NOW, 14, 25)
    return store.event_items(PROGRAM, event_id, now=NOW)


@pytest.fixture
def exporter(tmp_path) -> LocalParquetExport:
    return LocalParquetExport(base_dir=str(tmp_path / "export"))


def test_export_layout_and_result(tmp_path, exporter):
    items = stored_items(tmp_path, "evt-1", 50)
    result = exporter.export_event(PROGRAM, "evt-1", RUN_DATE, items)
    assert isinstance(result, ExportResult)
    expected = tmp_path / "export" / "program=event-invitations" / "event=evt-1" / "dt=2025-01-06" / "part-0.parquet"
    assert result.path == str(expected) and expected.exists()
    assert result.uri.startswith("file://") and result.uri.endswith("/dt%3D2025-01-06/part-0.parquet")
    assert result.rows == 100 and result.bytes == expected.stat().st_size > 0
    assert result.partition == {"program": PROGRAM, "event": "evt-1", "dt": "2025-01-06"}
    assert sorted(p.name for p in expected.parent.iterdir()) == ["part-0.parquet"]  # no temp file left


def test_export_leaves_out_email_keys_and_unknown_columns(tmp_path, exporter):
    items = stored_items(tmp_path, "evt-1", 5).with_columns(
        pk=pl.lit("CUSTOMER#x"), phone=pl.lit("+1 555"), interest_tags=pl.lit("devops")
    )
    assert "email" in items.columns
    result = exporter.export_event(PROGRAM, "evt-1", RUN_DATE, items)
    body = exporter.read_event(PROGRAM, "evt-1", RUN_DATE)
    assert EXPORT_EXCLUDED_COLUMNS == ("email",)
    for column in ("email", "pk", "phone", "interest_tags", "program", "event", "dt"):
        assert column not in body.columns and column not in result.columns
    assert {"customer_id", "program_id", "event_id", "channel", "score", "status", "p_event_attendance_v3"} <= set(
        body.columns
    )
    assert_frame_equal(body, export_frame(items))


def test_duckdb_and_pyarrow_read_the_hive_dataset(tmp_path, exporter):
    first = stored_items(tmp_path, "evt-1", 40)
    second = stored_items(tmp_path, "evt-2", 25, channels=["email"])
    exporter.export_event(PROGRAM, "evt-1", RUN_DATE, first)
    exporter.export_event(PROGRAM, "evt-2", RUN_DATE, second)
    base = tmp_path / "export"

    by_duckdb = pl.from_arrow(
        duckdb.sql(
            f"SELECT * FROM read_parquet('{base}/**/*.parquet', hive_partitioning=true) "
            "ORDER BY event, customer_id, channel"
        ).arrow()
    )
    by_pyarrow = pl.from_arrow(pads.dataset(str(base), partitioning="hive").to_table()).sort(
        "event", "customer_id", "channel"
    )
    expected = pl.concat([first, second]).sort("event_id", "customer_id", "channel")
    for frame in (by_duckdb, by_pyarrow):
        assert frame.height == expected.height == 105
        assert {"program", "event", "dt"} <= set(frame.columns)
        assert (
            frame.select("customer_id", "channel", "event_id").rows()
            == expected.select("customer_id", "channel", "event_id").rows()
        )
        assert (frame["event"].cast(pl.String) == frame["event_id"]).all()
        assert set(frame["program"].cast(pl.String)) == {PROGRAM}
        assert set(frame["dt"].cast(pl.String)) == {"2025-01-06"}
        assert frame["score"].to_list() == expected["score"].to_list()
        assert "email" not in frame.columns


def test_reexport_same_day_replaces_and_other_days_stay(tmp_path, exporter):
    exporter.export_event(PROGRAM, "evt-1", RUN_DATE, stored_items(tmp_path, "evt-1", 30))
    exporter.export_event(PROGRAM, "evt-1", date(2025, 1, 13), stored_items(tmp_path, "evt-1", 3))
    smaller = stored_items(tmp_path, "evt-1", 10, channels=["email"])
    result = exporter.export_event(PROGRAM, "evt-1", RUN_DATE, smaller)
    assert result.rows == 10
    assert exporter.read_event(PROGRAM, "evt-1", RUN_DATE)["customer_id"].to_list() == smaller["customer_id"].to_list()
    assert exporter.read_event(PROGRAM, "evt-1", date(2025, 1, 13)).height == 6
    compared = exporter.read_event(PROGRAM, "evt-1", RUN_DATE, columns=["channel", "customer_id"])
    assert compared.rows() == smaller.select("channel", "customer_id").rows()  # only those, as asked
    files = sorted(p.relative_to(tmp_path / "export").as_posix() for p in (tmp_path / "export").rglob("*"))
    assert [f for f in files if f.endswith(".parquet") or ".tmp" in f] == [
        "program=event-invitations/event=evt-1/dt=2025-01-06/part-0.parquet",
        "program=event-invitations/event=evt-1/dt=2025-01-13/part-0.parquet",
    ]
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/export/**/*.parquet', hive_partitioning=true)")
    assert count.fetchall() == [(16,)]


def test_a_failed_export_keeps_the_previous_file(tmp_path, exporter, monkeypatch):
    items = stored_items(tmp_path, "evt-1", 20)
    exporter.export_event(PROGRAM, "evt-1", RUN_DATE, items)

    def half_written(self: pl.DataFrame, path, **kwargs) -> None:
        with open(path, "wb") as handle:
            handle.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_written)
    with pytest.raises(OSError, match="disk full"):
        exporter.export_event(PROGRAM, "evt-1", RUN_DATE, items.head(3))
    monkeypatch.undo()
    assert exporter.read_event(PROGRAM, "evt-1", RUN_DATE).height == 40
    partition = tmp_path / "export" / "program=event-invitations" / "event=evt-1" / "dt=2025-01-06"
    assert [p.name for p in partition.iterdir()] == ["part-0.parquet"]


def test_empty_event_exports_a_readable_empty_partition(tmp_path, exporter):
    items = stored_items(tmp_path, "evt-1", 0)
    assert exporter.export_event(PROGRAM, "evt-1", RUN_DATE, items).rows == 0
    assert exporter.read_event(PROGRAM, "evt-1", RUN_DATE).height == 0
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/export/**/*.parquet', hive_partitioning=true)")
    assert count.fetchall() == [(0,)]


@pytest.mark.parametrize("event_id", ["../evil", "a/b", "a=b", "", "with space"])
def test_unsafe_partition_values_are_refused(tmp_path, exporter, event_id):
    with pytest.raises(ValueError, match="partition value"):
        exporter.export_event(PROGRAM, event_id, RUN_DATE, stored_items(tmp_path, "evt-1", 1))


def test_missing_partition_and_interface(exporter):
    with pytest.raises(FileNotFoundError, match="no export"):
        exporter.read_event(PROGRAM, "evt-404", RUN_DATE)
    with pytest.raises(TypeError, match="abstract"):  # the interface stores nothing itself
        CandidateExportResource()
