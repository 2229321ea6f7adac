"""The local deployment's warehouse: a DuckDB file seeded by `eventreach-demo seed`."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from eventreach_assets.resources.warehouse.base import WarehouseResource, WarehouseSchemaError


class DuckDBWarehouse(WarehouseResource):
    """The local deployment's warehouse: a DuckDB file seeded by `eventreach-demo seed`."""

    path: str

    @contextmanager
    def _session(self) -> Iterator[Any]:
        import duckdb

        if not Path(self.path).exists():
            raise WarehouseSchemaError(
                f"warehouse file {self.path} does not exist; seed it with `eventreach-demo seed --profiles N`"
            )
        connection = duckdb.connect(self.path, read_only=True)
        try:
            yield connection
        finally:
            connection.close()

    def _query(self, session: Any, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        return session.sql(sql, params=params or None).pl()

    def _query_compact(self, session: Any, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Through a Parquet file DuckDB writes and polars reads (a temporary one, gone on return).
        A frame from DuckDB's Arrow result keeps all its text columns' bytes (the result's batches)
        until the last of them is dropped: an event's candidates, gathered from the extract, kept
        every profile column's text through the run. Read from Parquet, each column owns its own.
        At 3M profiles one event's peak 2,014-2,126 -> 1,685-1,943 MiB (seven runs each), the read
        ~1 s longer (docs/speed.md)."""
        import duckdb

        try:
            with tempfile.TemporaryDirectory(prefix="eventreach-extract-") as directory:
                path = Path(directory) / "rows.parquet"
                quoted = str(path).replace("'", "''")
                copy = f"COPY ({sql}) TO '{quoted}' (FORMAT parquet, COMPRESSION uncompressed)"
                session.execute(copy, params or None).fetchall()
                return pl.read_parquet(path)
        except (OSError, duckdb.IOException) as error:
            raise RuntimeError(
                f"the extraction's temporary Parquet file could not be written under {tempfile.gettempdir()} "
                f"({error}); it takes ~55 bytes a profile row, and TMPDIR chooses the directory"
            ) from error

    def _columns(self, session: Any, table: str) -> set[str]:
        rows = session.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
        return {row[0] for row in rows}
