"""Storage plumbing shared by the file-like backends (IO managers, decision log, model registry,
metrics): keys that cannot escape their directory or S3 prefix, and local writes that readers
see whole or not at all (write beside the target, then rename over it)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import polars as pl

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._:=-]+$")


def safe_key(value: str) -> str:
    """Refuse partition keys that could escape the data dir."""
    if not _SAFE_KEY.match(value) or value in {".", ".."}:
        raise ValueError(f"unsafe key for a storage path: {value!r}")
    return value


ParquetCodec = Literal["lz4", "snappy", "zstd", "gzip", "brotli", "uncompressed"]
# The zstd level of the Parquet files the batch writes every week (decision log, export, metrics, S3
# objects). Level 1 rather than polars' default 3: at 3M profiles an event's 2.37M filter rejections
# 0.40 -> 0.29 s and 14.0 -> 12.8 MB, its 440K quarantined rows 0.25 -> 0.19 s and 9.4 -> 10.3 MB,
# its 197K exported items 0.09 -> 0.08 s, the same size (docs/speed.md).
ZSTD_LEVEL = 1


def compression_level(compression: ParquetCodec) -> int | None:
    """The level polars writes `compression` at: `ZSTD_LEVEL` for zstd, the codec's own default otherwise."""
    return ZSTD_LEVEL if compression == "zstd" else None


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write, renamed over `path` when the block ends, removed
    if it fails: readers see the old file or the new one, never half of one, and a failed write
    leaves nothing behind. The name has a leading dot and no `.parquet` suffix, so no reader's
    glob takes it for data, and is unique, so concurrent writers of one path do not share it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_parquet_atomically(
    frame: pl.DataFrame,
    path: Path,
    compression: ParquetCodec = "zstd",
    row_group_size: int | None = None,
    statistics: bool = True,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `frame` beside `path` and rename it over `path` (`metadata`: the file's key-value metadata)."""
    with _replacing(path) as temporary:
        frame.write_parquet(
            temporary,
            compression=compression,
            compression_level=compression_level(compression),
            row_group_size=row_group_size,
            statistics=statistics,
            metadata=metadata,
        )


def write_bytes_atomically(data: bytes, path: Path) -> None:
    with _replacing(path) as temporary:
        temporary.write_bytes(data)
