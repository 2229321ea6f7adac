"""The Parquet IO manager hands a value to the steps of the same run without reading it back, and
stores a value drawn from another as row numbers."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from eventreach_assets.resources.parquet_io.base import (
    ALLOW_MISSING,
    REBUILD,
    ROWS_OF,
    ROWS_OF_VALUE_ID,
    SOURCE_ROW,
    RowsOf,
    rebuild_name,
    register_rebuilder,
)
from eventreach_assets.resources.parquet_io.local import PolarsParquetIOManager

SEEN: list[pl.DataFrame] = []


@dg.asset
def upstream() -> pl.DataFrame:
    frame = pl.DataFrame({"customer_id": ["A", "B"]})
    SEEN.append(frame)
    return frame


@dg.asset
def downstream(upstream: pl.DataFrame) -> pl.DataFrame:
    SEEN.append(upstream)
    return upstream.head(1)


def test_a_value_written_in_a_run_reaches_its_downstream_steps_as_is_and_is_still_stored(tmp_path):
    SEEN.clear()
    io_manager = PolarsParquetIOManager(base_dir=str(tmp_path))
    assert dg.materialize([upstream, downstream], resources={"io_manager": io_manager}).success
    written, received = SEEN
    assert received is written  # the same frame: no file read in between
    assert pl.read_parquet(tmp_path / "upstream.parquet").equals(written)

    SEEN.clear()  # a later run reads the stored file
    later = dg.materialize([upstream, downstream], selection=[downstream], resources={"io_manager": io_manager})
    assert later.success
    [read_back] = SEEN
    assert read_back is not written and read_back.equals(written)


@dg.asset(ins={"upstream": dg.AssetIn(metadata={ALLOW_MISSING: True})})
def tolerant(upstream: pl.DataFrame | None) -> pl.DataFrame:
    return pl.DataFrame({"had_upstream": [upstream is not None]})


def test_an_input_that_allows_a_missing_value_gets_none_and_any_other_fails_naming_it(tmp_path):
    io_manager = PolarsParquetIOManager(base_dir=str(tmp_path))
    assert dg.materialize([upstream, tolerant], selection=[tolerant], resources={"io_manager": io_manager}).success
    assert pl.read_parquet(tmp_path / "tolerant.parquet")["had_upstream"].to_list() == [False]
    strict = dg.materialize(
        [upstream, downstream], selection=[downstream], resources={"io_manager": io_manager}, raise_on_error=False
    )
    assert not strict.success
    assert "no stored value for upstream" in str(strict.all_events) and "materialize it first" in str(strict.all_events)


def _codecs(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    return {metadata.row_group(0).column(index).compression for index in range(metadata.num_columns)}


def test_values_are_stored_with_lz4_unless_the_deployment_says_otherwise(tmp_path):
    assert dg.materialize([upstream], resources={"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))}).success
    assert _codecs(tmp_path / "upstream.parquet") == {"LZ4"}
    zstd = PolarsParquetIOManager(base_dir=str(tmp_path / "zstd"), compression="zstd")
    assert dg.materialize([upstream], resources={"io_manager": zstd}).success
    assert _codecs(tmp_path / "zstd" / "upstream.parquet") == {"ZSTD"}


@dg.asset
def wide_candidates() -> pl.DataFrame:
    # Larger than polars' default row group (512² rows), with a tags list left sharing one buffer
    # by a filter: the shape whose row-group slices made the 3M candidates' write twice as slow.
    tags = pl.DataFrame({"customer_id": [f"C{i:07d}" for i in range(300_000)]}).with_columns(
        interest_tags=pl.concat_str(pl.lit("cloud,ai,"), pl.col("customer_id")).str.split(",")
    )
    return tags.filter(pl.col("customer_id").str.ends_with("7").not_())


def test_values_are_stored_as_one_row_group_without_statistics_and_read_back_whole(tmp_path):
    import pyarrow.parquet as pq

    io_manager = PolarsParquetIOManager(base_dir=str(tmp_path))
    assert dg.materialize([wide_candidates], resources={"io_manager": io_manager}).success
    stored = tmp_path / "wide_candidates.parquet"
    metadata = pq.ParquetFile(stored).metadata
    assert metadata.num_row_groups == 1
    # No column statistics: in one row group read whole they could skip nothing, and cost the write.
    assert not any(metadata.row_group(0).column(i).is_stats_set for i in range(metadata.num_columns))
    expected = wide_candidates()
    assert expected.height > 512**2 and pl.read_parquet(stored).equals(expected)


# A value stored as rows of another: the source (unpartitioned), and a value drawn from it.
DRAWN: list[pl.DataFrame] = []


@register_rebuilder
def doubled_at(rows: pl.DataFrame, own: pl.DataFrame) -> pl.DataFrame:
    return rows.select("customer_id", doubled=pl.col("n") * 2).with_columns(own.get_columns())


@dg.asset
def profiles() -> pl.DataFrame:
    return pl.DataFrame({"customer_id": ["A", "B", "C", "D"], "n": [1, 2, 3, 4]})


def _drawn(profiles: pl.DataFrame, rebuild) -> RowsOf:
    rows = pl.Series([3, 1], dtype=pl.UInt32)  # D then B
    value = doubled_at(profiles[rows], pl.DataFrame({"flag": [True, False]}))
    return RowsOf(value, dg.AssetKey("profiles"), rows, value.select("flag"), rebuild)


@dg.asset
def drawn(profiles: pl.DataFrame) -> RowsOf:
    return _drawn(profiles, doubled_at)


@dg.asset
def reads_drawn(drawn: pl.DataFrame) -> pl.DataFrame:
    DRAWN.append(drawn)
    return drawn.head(1)


def test_a_value_drawn_from_another_is_stored_as_row_numbers_and_rebuilt_in_a_later_run(tmp_path):
    DRAWN.clear()
    io_manager = PolarsParquetIOManager(base_dir=str(tmp_path))
    graph, resources = [profiles, drawn, reads_drawn], {"io_manager": io_manager}
    first = dg.materialize(graph, resources=resources)
    assert first.success
    [in_run] = DRAWN
    assert in_run.to_dicts() == [{"customer_id": "D", "doubled": 8, "flag": True},
                                 {"customer_id": "B", "doubled": 4, "flag": False}]  # fmt: skip
    stored = tmp_path / "drawn.parquet"
    assert pl.read_parquet(stored).to_dicts() == [{"flag": True, SOURCE_ROW: 3}, {"flag": False, SOURCE_ROW: 1}]
    assert pl.read_parquet_metadata(stored)[ROWS_OF] == "profiles.parquet"
    [materialization] = first.asset_materializations_for_node("drawn")
    assert materialization.metadata["stored_as"].value == "row numbers in profiles.parquet (2)"

    DRAWN.clear()  # a later run reads the numbers and the source's stored rows
    assert dg.materialize(graph, selection=[reads_drawn], resources=resources).success
    [rebuilt] = DRAWN
    assert rebuilt is not in_run and rebuilt.equals(in_run)

    # The source written again (even with equal rows): its rows are not the ones numbered.
    assert dg.materialize(graph, selection=[profiles], resources=resources).success
    stale = dg.materialize(graph, selection=[reads_drawn], resources=resources, raise_on_error=False)
    assert not stale.success
    assert (
        "drawn is stored as row numbers in profiles.parquet, which has been written again since (they would index "
        "other rows): materialize drawn again"
    ) in str(stale.all_events)


@dg.asset
def drawn_by_a_stranger(profiles: pl.DataFrame) -> RowsOf:
    return _drawn(profiles, lambda rows, own: rows)


@dg.asset
def drawn_without_the_source() -> RowsOf:
    return _drawn(profiles(), doubled_at)


def test_a_value_drawn_from_another_needs_a_registered_rebuild_and_a_source_this_run_saw(tmp_path):
    io_manager = PolarsParquetIOManager(base_dir=str(tmp_path))
    resources = {"io_manager": io_manager}
    unregistered = dg.materialize([profiles, drawn_by_a_stranger], resources=resources, raise_on_error=False)
    assert not unregistered.success
    assert "<lambda> rebuilds a stored value but is not registered (register_rebuilder)" in str(unregistered.all_events)
    # Its source not loaded in this run: no id to check a later load against, so stored whole.
    result = dg.materialize([drawn_without_the_source], resources=resources)
    [materialization] = result.asset_materializations_for_node("drawn_without_the_source")
    assert materialization.metadata["stored_as"].value == "whole: profiles.parquet has no value id in this run"
    stored = tmp_path / "drawn_without_the_source.parquet"
    assert pl.read_parquet(stored).columns == ["customer_id", "doubled", "flag"]
    assert ROWS_OF not in pl.read_parquet_metadata(stored)


def test_a_stored_value_cannot_send_its_load_outside_the_root(tmp_path):
    io_manager = PolarsParquetIOManager(base_dir=str(tmp_path / "assets"))
    pl.DataFrame({"customer_id": ["A"], "n": [1]}).write_parquet(tmp_path / "outside.parquet")
    (tmp_path / "assets").mkdir()
    pl.DataFrame({SOURCE_ROW: [0]}).write_parquet(
        tmp_path / "assets" / "drawn.parquet",
        metadata={ROWS_OF: "../outside.parquet", ROWS_OF_VALUE_ID: "x", REBUILD: rebuild_name(doubled_at)},
    )
    with pytest.raises(ValueError, match=r"unsafe key for a storage path: '\.\.'"):
        io_manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("drawn")))
