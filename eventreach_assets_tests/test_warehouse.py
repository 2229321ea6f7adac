import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from polars.testing import assert_frame_equal

from eventreach_assets.domain.schema import INVITATION_HISTORY_COLUMNS
from eventreach_assets.resources.warehouse import (
    DuckDBWarehouse,
    WarehouseResource,
    WarehouseSchemaError,
    extraction_sql,
)
from eventreach_assets_tests.conftest import assert_writable


def test_extraction_sql_binds_topics_never_formats_them():
    sql = extraction_sql(2)
    assert sql.count("CONTAINS(interest_tags, ?)") == 2
    assert "event_attendance_history > 0" in sql
    with pytest.raises(ValueError, match="at least one topic"):
        extraction_sql(0)


def test_topics_are_pushed_down(small_warehouse):
    path, _ = small_warehouse
    warehouse = DuckDBWarehouse(path=str(path))
    rows = warehouse.extract_candidates(["devops"])
    total = duckdb.connect(str(path), read_only=True).execute("select count(*) from customer_profiles").fetchone()[0]
    assert 0 < rows.height < total
    matched = rows.filter(~rows["interest_tags"].fill_null("").str.contains("devops"))
    assert (matched["event_attendance_history"] > 0).all()
    # A hostile "topic" is data, not SQL.
    assert warehouse.extract_candidates(["x') OR 1=1 --"]).height <= rows.height


def test_the_invitation_history_reads_only_the_columns_asked_for(small_warehouse, monkeypatch: pytest.MonkeyPatch):
    """The statement sent names the asked columns only; the rows are the full read's, projected."""
    path, _ = small_warehouse
    warehouse = DuckDBWarehouse(path=str(path))
    sent: list[str] = []
    query = DuckDBWarehouse._query

    def recorded(self: DuckDBWarehouse, session: Any, sql: str, params: list[Any] | None = None) -> Any:
        sent.append(sql)
        return query(self, session, sql, params)

    monkeypatch.setattr(DuckDBWarehouse, "_query", recorded)
    keys = warehouse.invitation_history(columns=["invited_at", "customer_id"])
    assert sent == ["SELECT invited_at, customer_id FROM invitation_history "]
    full = warehouse.invitation_history()
    assert full.width == len(INVITATION_HISTORY_COLUMNS) and keys.height == full.height > 0
    assert_frame_equal(keys, full.select("invited_at", "customer_id"))
    with pytest.raises(ValueError, match=r"no column\(s\) opened_at, email \(it has customer_id, event_id"):
        warehouse.invitation_history(columns=["customer_id", "opened_at", "email"])
    with pytest.raises(ValueError, match=r"was asked for no column \(it has customer_id, event_id"):
        warehouse.invitation_history(columns=[])


def test_a_compact_extraction_is_the_same_rows_and_leaves_no_file(
    small_warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The compact read (through a temporary Parquet file on DuckDB) gives the frame the Arrow read
    gives: the same columns, types, rows and order, a hostile topic still data; the file is gone after."""
    path, _ = small_warehouse
    warehouse = DuckDBWarehouse(path=str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    held: list[list[str]] = []  # what each temporary directory held when it was cleaned up

    class Recorded(tempfile.TemporaryDirectory):
        def __exit__(self, *exc: object) -> None:
            held.append(sorted(file.name for file in Path(self.name).iterdir()))
            super().__exit__(*exc)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Recorded)
    topic_sets = (["devops"], ["cloud", "security"], ["x') OR 1=1 --"])
    for topics in topic_sets:
        compact = warehouse.extract_candidates(topics, compact=True)
        assert_frame_equal(compact, warehouse.extract_candidates(topics))
    assert compact.height > 0  # attendance alone selects rows
    assert held == [["rows.parquet"]] * len(topic_sets)  # each compact read went through its file, the Arrow reads not
    assert list(tmp_path.iterdir()) == []


def test_a_compact_extraction_without_a_usable_temporary_directory_says_which(
    small_warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Python cannot make the directory (TMPDIR is a file), or DuckDB cannot write into it (gone
    by then): either way the error names the directory and the setting."""
    path, _ = small_warehouse
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_directory))
    expected = rf"temporary Parquet file could not be written under {re.escape(str(not_a_directory))}.*TMPDIR"
    with pytest.raises(RuntimeError, match=expected):
        DuckDBWarehouse(path=str(path)).extract_candidates(["devops"], compact=True)

    @contextmanager
    def vanished(prefix: str) -> Iterator[str]:
        yield str(tmp_path / f"{prefix}gone")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tempfile, "TemporaryDirectory", vanished)
    with pytest.raises(RuntimeError, match=rf"could not be written under {re.escape(str(tmp_path))} \(.*gone"):
        DuckDBWarehouse(path=str(path)).extract_candidates(["devops"], compact=True)


def _broken_warehouse(tmp_path: Path, drop: str) -> DuckDBWarehouse:
    path = tmp_path / "broken.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            f"create table customer_profiles as select 'C1' as customer_id, 'devops' as interest_tags, "
            f"1 as event_attendance_history, 0.5 as {drop}_renamed"
        )
    return DuckDBWarehouse(path=str(path))


def test_missing_column_is_named(tmp_path: Path):
    warehouse = _broken_warehouse(tmp_path, "engagement_score")
    with pytest.raises(WarehouseSchemaError, match=r"customer_profiles.*missing column.*engagement_score"):
        warehouse.extract_candidates(["devops"])


def test_missing_table_is_named(tmp_path: Path):
    warehouse = _broken_warehouse(tmp_path, "engagement_score")
    with pytest.raises(WarehouseSchemaError, match="no table 'events'"):
        warehouse.events()


def test_missing_file_says_how_to_seed(tmp_path: Path):
    with pytest.raises(WarehouseSchemaError, match="eventreach-demo seed"):
        DuckDBWarehouse(path=str(tmp_path / "nope.duckdb")).events()


def one_read_of_each_kind(warehouse: WarehouseResource) -> int:
    """The catalog, an extraction, contacts in three chunks, the training set (two tables checked):
    how many reads that was. Shared with the Snowflake backend's test."""
    assert warehouse.events().height > 0
    customers = warehouse.extract_candidates(["devops"])["customer_id"].drop_nulls().unique().sort().to_list()
    assert warehouse.contacts([*customers[:1_000], "C-nobody"], chunk=500).height == min(len(customers), 1_000)
    assert warehouse.training_profiles().height > 0
    return 4


def test_a_read_opens_one_connection_for_its_column_checks_and_its_queries(
    small_warehouse, warehouse_connections: list[tuple]
):
    """Opening the DuckDB file costs ~30 ms and sensors read the events catalog every tick: a read's
    column checks and statements share one connection, closed after (the file can be written again)."""
    path, _ = small_warehouse
    reads = one_read_of_each_kind(DuckDBWarehouse(path=str(path)))
    assert len(warehouse_connections) == reads
    assert_writable(path)


def test_reads_in_a_reading_block_share_one_connection_and_check_each_table_once(
    small_warehouse, warehouse_connections: list[tuple], monkeypatch: pytest.MonkeyPatch
):
    """A step's reads (the event, its registrations, past invitations) in one session: one
    connection, each table's columns checked once, closed when the block ends; an inner block uses
    it, another resource opens its own."""
    path, _ = small_warehouse
    warehouse = DuckDBWarehouse(path=str(path))
    checked: list[str] = []
    columns = DuckDBWarehouse._columns

    def counted(self: DuckDBWarehouse, session: Any, table: str) -> set[str]:
        checked.append(table)
        return columns(self, session, table)

    monkeypatch.setattr(DuckDBWarehouse, "_columns", counted)
    with warehouse.reading():
        one_read_of_each_kind(warehouse)
        with warehouse.reading():
            assert warehouse.events().height > 0
        assert len(warehouse_connections) == 1
        assert DuckDBWarehouse(path=str(path)).events().height > 0  # another resource: its own session
        assert len(warehouse_connections) == 2
    assert sorted(checked) == ["customer_profiles", "events", "events", "invitation_history"]
    assert_writable(path)
    assert warehouse.events().height > 0  # after the block, a read of its own again
    assert len(warehouse_connections) == 3


def test_a_failing_read_in_a_reading_block_closes_its_session(tmp_path: Path, warehouse_connections: list[tuple]):
    """The block's session is closed (the file opens read-write) and forgotten: the next read opens its own."""
    warehouse = _broken_warehouse(tmp_path, "engagement_score")
    with duckdb.connect(str(tmp_path / "broken.duckdb")) as connection:  # one table a read can answer from
        columns = ", ".join(f"{name} {kind}" for name, kind in INVITATION_HISTORY_COLUMNS.items())
        connection.execute(f"create table invitation_history ({columns})")
    with pytest.raises(WarehouseSchemaError, match="no table 'events'"), warehouse.reading():
        assert warehouse.invitation_history().height == 0  # the block's session, then a read failing in it
        warehouse.events()
    assert_writable(tmp_path / "broken.duckdb")
    with pytest.raises(WarehouseSchemaError, match=r"customer_profiles.*missing column.*engagement_score"):
        warehouse.extract_candidates(["devops"])  # not the closed session: a new one
    assert len(warehouse_connections) == 2
