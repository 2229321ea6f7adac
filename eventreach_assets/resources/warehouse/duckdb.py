"""The local deployment's warehouse: a DuckDB file seeded by `eventreach-demo seed`."""

from __future__ import annotations

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

    def _columns(self, session: Any, table: str) -> set[str]:
        rows = session.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
        return {row[0] for row in rows}
