"""The local atomic writes every file-like backend uses (IO manager values, decision log, metrics,
export, model pointers): a reader sees the old file or the new one, and a failed write leaves the
old file and nothing else."""

from pathlib import Path

import polars as pl
import pytest

from eventreach_assets.resources.files import write_bytes_atomically, write_parquet_atomically


def test_a_parquet_write_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "value.parquet"
    write_parquet_atomically(pl.DataFrame({"x": [1, 2, 3]}), target)
    write_parquet_atomically(pl.DataFrame({"x": [4]}), target, compression="lz4", metadata={"k": "v"})
    assert pl.read_parquet(target)["x"].to_list() == [4]
    assert pl.read_parquet_metadata(target)["k"] == "v"
    assert [p.name for p in target.parent.iterdir()] == ["value.parquet"]


def test_a_failed_parquet_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "value.parquet"
    write_parquet_atomically(pl.DataFrame({"x": [1, 2]}), target)
    written: list[Path] = []

    def half_written(self: pl.DataFrame, path: Path, **kwargs: object) -> None:
        written.append(Path(path))
        Path(path).write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomically(pl.DataFrame({"x": [3]}), target)
    monkeypatch.undo()
    assert written and written[0].parent == tmp_path and written[0] != target  # written beside, not over
    assert [p.name for p in tmp_path.iterdir()] == ["value.parquet"]
    assert pl.read_parquet(target)["x"].to_list() == [1, 2]


def test_a_failed_bytes_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "CURRENT"
    write_bytes_atomically(b"v1", target)
    original = Path.write_bytes

    def half_written(self: Path, data: bytes) -> int:
        original(self, data[:1])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomically(b"v2", target)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["CURRENT"]
    assert target.read_bytes() == b"v1"


def test_two_writes_of_one_path_use_their_own_temporaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers of one path (threads of one process) must not write into each other's file."""
    used: list[Path] = []
    original = pl.DataFrame.write_parquet

    def recording(self: pl.DataFrame, path: Path, **kwargs: object) -> None:
        used.append(Path(path))
        original(self, path, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", recording)
    for value in (1, 2):
        write_parquet_atomically(pl.DataFrame({"x": [value]}), tmp_path / "value.parquet")
    assert len(set(used)) == 2 and all(p.name.startswith(".") and p.suffix == ".tmp" for p in used)
