"""The Parquet IO manager hands a value to the steps of the same run without reading it back."""

from __future__ import annotations

import dagster as dg
import polars as pl

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
