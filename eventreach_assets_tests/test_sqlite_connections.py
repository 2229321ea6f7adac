"""The SQLite plumbing's bulk writes (`SqliteConnections.bulk_transaction`): committed without the
checkpoint, which a background thread of the process then makes.

What tells a checkpoint ran is the database file itself: in WAL mode committed pages stay in the
`-wal` file until a checkpoint copies them into the database file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventreach_assets.resources.sqlite import SqliteConnections, running_checkpoints, wait_for_checkpoints

DDL = "CREATE TABLE IF NOT EXISTS t (x BLOB);"
ROWS, ROW_BYTES = 1500, 4000  # ~1,500 pages: past the 1,000 at which a commit checkpoints itself
WRITTEN = ROWS * ROW_BYTES


def write_rows(conn: sqlite3.Connection) -> None:
    conn.executemany("INSERT INTO t (x) VALUES (randomblob(?))", [(ROW_BYTES,)] * ROWS)


def database_bytes(path: Path) -> int:
    return path.stat().st_size


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteConnections]:
    connections = SqliteConnections(str(tmp_path / "f.sqlite"), 5.0, DDL)
    yield connections
    connections.close()


def test_a_plain_transaction_checkpoints_inside_its_commit(db: SqliteConnections):
    """The contrast that makes the next test mean something: past 1,000 pages the commit itself
    copies the WAL into the database file."""
    with db.transaction() as conn:
        write_rows(conn)
    assert database_bytes(Path(db.path)) > WRITTEN


def test_a_bulk_write_commits_before_its_checkpoint_which_a_thread_then_makes(
    db: SqliteConnections, held_checkpoints: threading.Event
):
    path = Path(db.path)
    with db.bulk_transaction() as conn:
        write_rows(conn)
    assert database_bytes(path) < WRITTEN / 10  # committed into the WAL only
    assert Path(f"{db.path}-wal").stat().st_size > WRITTEN
    with db.read() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)
    other = sqlite3.connect(db.path)  # another connection reads the commit too
    assert other.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)
    other.close()
    assert len(running_checkpoints()) == 1
    with db.connect() as conn:  # this connection checkpoints its small commits itself again
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)

    held_checkpoints.set()
    wait_for_checkpoints()
    assert database_bytes(path) > WRITTEN
    assert running_checkpoints() == []
    db.close()  # the last connection: the checkpointer closed its own
    assert not Path(f"{db.path}-wal").exists()


def test_bulk_writes_during_a_checkpoint_are_checkpointed_by_the_same_thread(
    db: SqliteConnections, held_checkpoints: threading.Event
):
    for _ in range(3):
        with db.bulk_transaction() as conn:
            write_rows(conn)
    assert len(running_checkpoints()) == 1
    assert database_bytes(Path(db.path)) < WRITTEN / 10
    held_checkpoints.set()
    wait_for_checkpoints()
    assert database_bytes(Path(db.path)) > 3 * WRITTEN  # the requests made while it ran, too
    assert db._checkpointer_pid is None

    with db.bulk_transaction() as conn:  # and the next write starts a new checkpointer
        write_rows(conn)
    wait_for_checkpoints()
    assert database_bytes(Path(db.path)) > 4 * WRITTEN


def test_a_failed_bulk_write_rolls_back_and_asks_for_no_checkpoint(db: SqliteConnections):
    with pytest.raises(RuntimeError, match="midway"), db.bulk_transaction() as conn:
        write_rows(conn)
        raise RuntimeError("midway")
    assert running_checkpoints() == []
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
