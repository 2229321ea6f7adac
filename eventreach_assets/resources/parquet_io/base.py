"""What the Parquet IO managers share: which file an asset value goes to, and refusing values
that are not polars DataFrames. They implement Dagster's own IO manager interface
(`handle_output` / `load_input`); a backend only stores and fetches a frame at a location.

Layout, relative to the backend's root (a directory, an S3 prefix):

    <asset key path>/<partition key>.parquet     partitioned assets
    <asset key path>.parquet                     unpartitioned assets
"""

from __future__ import annotations

import abc
from typing import Any

import dagster as dg
import polars as pl
from pydantic import PrivateAttr

from eventreach_assets.resources.files import safe_key

# Input metadata: an asset that can do without the upstream value (and says so) gets None when
# none is stored, instead of a failed step (raw_candidates falls back to its own extraction).
ALLOW_MISSING = "eventreach/allow_missing"


def value_path(context: dg.OutputContext | dg.InputContext) -> list[str]:
    """The asset value's path segments, each checked so it cannot escape the root."""
    asset_path = [safe_key(part) for part in context.asset_key.path]
    if context.has_asset_partitions:
        return [*asset_path, f"{safe_key(context.asset_partition_key)}.parquet"]
    return [*asset_path[:-1], f"{asset_path[-1]}.parquet"]


def one_row_group(frame: pl.DataFrame) -> int:
    """The row group size that stores `frame` as one row group, as the IO managers write values.

    A step reads a value whole, so row groups buy nothing here, and they cost: polars writes each
    row group from a slice of the column, and a list-of-strings column left by a filter or gather
    (the candidates' `interest_tags`) still shares one large buffer that each slice pays for
    again. The 2.47M-row candidates at 3M profiles: 2.7 s in the default ten row groups, 1.2 s
    in one."""
    return max(frame.height, 1)


def run_of(context: dg.OutputContext | dg.InputContext) -> str | None:
    """The run a step writes or reads in, when Dagster says (not for values loaded outside a run)."""
    try:
        return context.run_id if isinstance(context, dg.OutputContext) else context.step_context.run_id
    except dg.DagsterInvariantViolationError:
        return None


class PolarsParquetIOManagerBase(dg.ConfigurableIOManager, abc.ABC):
    """Stores polars DataFrame asset values as one Parquet file per asset partition.

    Within one run (the jobs run their steps in one process) a value written is also kept in
    memory and handed to the steps and checks downstream as is, instead of each reading the file
    back: at 3M profiles the candidates were read three times. The file is still written, for
    the next run and for re-executions. Only the current run's values are kept."""

    _run_id: str | None = PrivateAttr(default=None)
    _run_values: dict[tuple[str, ...], pl.DataFrame] = PrivateAttr(default_factory=dict)

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, expected polars.DataFrame"
            )
        metadata = self._write(value_path(context), obj)
        if metadata:
            context.add_output_metadata(metadata)
        run_id = run_of(context)
        if run_id != self._run_id:
            self._run_id, self._run_values = run_id, {}
        if run_id is not None:
            self._run_values[tuple(value_path(context))] = obj

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | None:
        path = value_path(context)
        run_id = run_of(context)
        if run_id != self._run_id:  # a new run: an earlier run's values are not kept alive beside this one's
            self._run_id, self._run_values = run_id, {}
        if run_id is not None and run_id == self._run_id and tuple(path) in self._run_values:
            return self._run_values[tuple(path)]
        missing = (
            f"no stored value for {context.asset_key.to_user_string()} at {self._location(path)}: materialize it first"
        )
        try:
            return self._read(path, missing)
        except FileNotFoundError:
            if (context.definition_metadata or {}).get(ALLOW_MISSING):
                return None
            raise

    @abc.abstractmethod
    def _location(self, path: list[str]) -> str:
        """Where the value at `path` is stored, as a message shows it."""

    @abc.abstractmethod
    def _write(self, path: list[str], frame: pl.DataFrame) -> dict[str, Any]:
        """Store `frame` at `path`, replacing it atomically; returns output metadata (may be empty)."""

    @abc.abstractmethod
    def _read(self, path: list[str], missing: str) -> pl.DataFrame:
        """The frame at `path`; FileNotFoundError(`missing`) if there is none."""
