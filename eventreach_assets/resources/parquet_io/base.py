"""What the Parquet IO managers share: which file an asset value goes to, and refusing values
that are not polars DataFrames. They implement Dagster's own IO manager interface
(`handle_output` / `load_input`); a backend only stores and fetches a frame at a location.

Layout, relative to the backend's root (a directory, an S3 prefix):

    <asset key path>/<partition key>.parquet     partitioned assets
    <asset key path>.parquet                     unpartitioned assets

Every file carries a fresh id in its key-value metadata (`VALUE_ID`), so a value stored as rows of
another (`RowsOf`) can tell whether that other value is still the one its rows index.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl
from pydantic import PrivateAttr

from eventreach_assets.resources.files import safe_key

# Input metadata: an asset that can do without the upstream value (and says so) gets None when
# none is stored, instead of a failed step (raw_candidates falls back to its own extraction).
ALLOW_MISSING = "eventreach/allow_missing"


# Key-value metadata of the stored files.
VALUE_ID = "eventreach.value_id"  # every value: a new id each time it is written
ROWS_OF = "eventreach.rows_of"  # a value stored as rows of another: that value's path
ROWS_OF_VALUE_ID = "eventreach.rows_of_value_id"  # ... the id of the value its row numbers index
REBUILD = "eventreach.rebuild"  # ... and the registered function that rebuilds it
SOURCE_ROW = "_source_row"  # the row numbers' column in such a file

# (the source's rows at the stored row numbers, in that order; the value's own columns) -> the value
Rebuild = Callable[[pl.DataFrame, pl.DataFrame], pl.DataFrame]
REBUILDERS: dict[str, Rebuild] = {}


def rebuild_name(rebuild: Rebuild) -> str:
    return f"{rebuild.__module__}.{rebuild.__qualname__}"


def register_rebuilder(rebuild: Rebuild) -> Rebuild:
    """Let `RowsOf` values name `rebuild`: a later process rebuilds them by that name, so the
    module defining the asset registers it when it is imported (as the code location is)."""
    REBUILDERS[rebuild_name(rebuild)] = rebuild
    return rebuild


@dataclass(frozen=True)
class RowsOf:
    """An asset value that is rows of another asset's stored value, stored as their row numbers
    and the value's own columns instead of as a copy.

    An event's candidates are 2.47M of the week's 2.94M snapshot rows at 3M profiles: written whole
    they took 1.2-2.0 s an event (107 MB); their row numbers take a few hundredths. The run's own
    steps get `value` as is; a later run's load reads `source` and returns
    `rebuild(source rows at row_numbers, own_columns)`, and fails, naming both, if `source` was
    written again since (the numbers would index other rows)."""

    value: pl.DataFrame
    source: dg.AssetKey  # unpartitioned, stored by the same IO manager and loaded in this run
    row_numbers: pl.Series  # each row of `value`: its row in `source` as loaded
    own_columns: pl.DataFrame  # what `rebuild` needs besides the source's rows, one row per row of `value`
    rebuild: Rebuild  # registered (`register_rebuilder`)


def asset_value_path(asset_key: dg.AssetKey, partition_key: str | None = None) -> list[str]:
    """An asset value's path segments, each checked so it cannot escape the root."""
    asset_path = [safe_key(part) for part in asset_key.path]
    if partition_key is not None:
        return [*asset_path, f"{safe_key(partition_key)}.parquet"]
    return [*asset_path[:-1], f"{asset_path[-1]}.parquet"]


def value_path(context: dg.OutputContext | dg.InputContext) -> list[str]:
    """The path of the value a step writes or reads."""
    return asset_value_path(context.asset_key, context.asset_partition_key if context.has_asset_partitions else None)


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
    the next run and for re-executions. Only the current run's values are kept, and the ids of
    the values it wrote or read (what a `RowsOf` value records of its source)."""

    _run_id: str | None = PrivateAttr(default=None)
    _run_values: dict[tuple[str, ...], pl.DataFrame] = PrivateAttr(default_factory=dict)
    _value_ids: dict[tuple[str, ...], str | None] = PrivateAttr(default_factory=dict)

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | RowsOf | None) -> None:
        if obj is None:
            return
        value = obj.value if isinstance(obj, RowsOf) else obj
        if not isinstance(value, pl.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, expected polars.DataFrame"
            )
        path, run_id = value_path(context), self._enter_run(run_of(context))
        stored, rows_of, stored_as = self._stored_form(obj)
        value_id = uuid.uuid4().hex
        metadata = self._write(path, stored, {VALUE_ID: value_id, **rows_of})
        if stored_as:
            metadata = {**metadata, "stored_as": stored_as}
        if metadata:
            context.add_output_metadata(metadata)
        self._value_ids[tuple(path)] = value_id
        if run_id is not None:
            self._run_values[tuple(path)] = value

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | None:
        path, run_id = value_path(context), self._enter_run(run_of(context))
        if run_id is not None and tuple(path) in self._run_values:
            return self._run_values[tuple(path)]
        name = context.asset_key.to_user_string()
        if context.has_asset_partitions:
            name = f"{name} ({context.asset_partition_key})"
        try:
            frame, metadata = self._read(
                path, f"no stored value for {name} at {self._location(path)}: materialize it first"
            )
        except FileNotFoundError:
            if (context.definition_metadata or {}).get(ALLOW_MISSING):
                return None
            raise
        self._value_ids[tuple(path)] = metadata.get(VALUE_ID)
        return self._rebuilt(name, frame, metadata) if ROWS_OF in metadata else frame

    def _enter_run(self, run_id: str | None) -> str | None:
        """Forget an earlier run's values (they are not kept alive beside this one's); `run_id`."""
        if run_id != self._run_id:
            self._run_id, self._run_values, self._value_ids = run_id, {}, {}
        return run_id

    def _stored_form(self, obj: pl.DataFrame | RowsOf) -> tuple[pl.DataFrame, dict[str, str], str | None]:
        """What is written for `obj`, the file metadata saying it is rows of another value, and
        `stored_as` for the output's metadata. A `RowsOf` whose source this run did not load or
        write (or read from a file written before files had ids) is stored whole: only slower."""
        if not isinstance(obj, RowsOf):
            return obj, {}, None
        name = rebuild_name(obj.rebuild)
        if REBUILDERS.get(name) is not obj.rebuild:
            raise ValueError(f"{name} rebuilds a stored value but is not registered (register_rebuilder)")
        source = asset_value_path(obj.source)
        source_id = self._value_ids.get(tuple(source))
        if source_id is None:
            return obj.value, {}, f"whole: {'/'.join(source)} has no value id in this run"
        stored = obj.own_columns.with_columns(obj.row_numbers.alias(SOURCE_ROW))
        rows_of = {ROWS_OF: "/".join(source), ROWS_OF_VALUE_ID: source_id, REBUILD: name}
        return stored, rows_of, f"row numbers in {'/'.join(source)} ({stored.height:,})"

    def _rebuilt(self, name: str, stored: pl.DataFrame, metadata: dict[str, str]) -> pl.DataFrame:
        """A `RowsOf` value from its row numbers and the source they index, if that is still the same."""
        source = [safe_key(part) for part in metadata[ROWS_OF].split("/")]  # a file's word: kept inside the root
        origin = f"{name} is stored as row numbers in {metadata[ROWS_OF]}"
        rows, source_metadata = self._read(source, f"{origin}, which is not stored at {self._location(source)}")
        if source_metadata.get(VALUE_ID) != metadata[ROWS_OF_VALUE_ID]:
            raise ValueError(
                f"{origin}, which has been written again since (they would index other rows): materialize {name} again"
            )
        rebuild = REBUILDERS.get(metadata[REBUILD])
        if rebuild is None:
            raise ValueError(f"{origin}; its rebuild function {metadata[REBUILD]} is not registered in this code")
        return rebuild(rows[stored.get_column(SOURCE_ROW)], stored.drop(SOURCE_ROW))

    @abc.abstractmethod
    def _location(self, path: list[str]) -> str:
        """Where the value at `path` is stored, as a message shows it."""

    @abc.abstractmethod
    def _write(self, path: list[str], frame: pl.DataFrame, metadata: dict[str, str]) -> dict[str, Any]:
        """Store `frame` at `path` with key-value `metadata`, replacing it atomically; returns output
        metadata (may be empty)."""

    @abc.abstractmethod
    def _read(self, path: list[str], missing: str) -> tuple[pl.DataFrame, dict[str, str]]:
        """The frame at `path` and its key-value metadata; FileNotFoundError(`missing`) if there is none."""
