"""WAL-mode SQLite files of the local resources (the candidate store's; the ledger's and engagement store's).

One connection per process and thread, opened on first use and kept: closing the last
connection of a WAL database checkpoints it (an fsync), which made every small call cost
~8 ms. Writers take the lock up front (BEGIN IMMEDIATE) and wait up to the busy timeout, so
concurrent Dagster step processes serialize instead of failing. A file deleted or replaced
meanwhile (a reset data dir) gets a fresh connection. A bulk write (`bulk_transaction`: an
event's candidate items, a score cache write) commits without its checkpoint, which a background
thread of the process makes while the next steps run. `SqliteBacked` gives a resource the
connections to its file; a resource whose writes are bulk ones makes its file with larger pages
(`SqliteBacked.file_page_size`). The helpers at the end move tables between files and repack a
file's pages, for a change of the local deployment's file layout (`deployments.py`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import dagster as dg

_LOG = logging.getLogger(__name__)

_OPEN_LOCK = threading.Lock()  # first opens in one process: one at a time
_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default


class _Checkpointer(threading.Thread):
    """The thread of a background checkpoint (`SqliteConnections.bulk_transaction`)."""


def running_checkpoints() -> list[threading.Thread]:
    """The background checkpoints (`bulk_transaction`) running in this process now."""
    return [thread for thread in threading.enumerate() if isinstance(thread, _Checkpointer)]


def wait_for_checkpoints(timeout_seconds: float = 600.0) -> None:
    """Until every background checkpoint of this process has ended (`bulk_transaction`): what a
    measurement waits for so that the data it timed is on disk as a plain commit leaves it."""
    deadline = time.monotonic() + timeout_seconds
    for thread in running_checkpoints():
        thread.join(max(0.0, deadline - time.monotonic()))


class SqliteConnections:
    """Per-(process, thread) connections to one SQLite file whose schema is `ddl`."""

    def __init__(
        self,
        path: str,
        busy_timeout_seconds: float,
        ddl: str,
        cache_mib: int = 64,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
        page_size: int | None = None,
    ) -> None:
        self.path = path
        self.busy_timeout_seconds = busy_timeout_seconds
        self.ddl = ddl
        self.migrate = migrate  # run after `ddl` on each open: brings a file of an older schema up to date
        self.cache_mib = cache_mib
        self.page_size = page_size  # a new file's (None: SQLite's 4 KiB); a file's own once made
        # (pid, thread) -> (connection, identity of the file it opened)
        self._connections: dict[tuple[int, int], tuple[sqlite3.Connection, tuple[int, int]]] = {}
        # The background checkpoint of bulk writes (`bulk_transaction`): one thread per process at a
        # time, its process's id here while it runs (a forked child starts its own).
        self._checkpoint_state = threading.Lock()
        self._checkpoint_requested = False
        self._checkpointer_pid: int | None = None

    def _file_identity(self) -> tuple[int, int]:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return (-1, -1)
        return (stat.st_dev, stat.st_ino)

    def _connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_seconds, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_seconds * 1000)}")
        return conn

    def _open(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = self._connection()
        # Switching to WAL does not wait on the busy handler: first opens racing each other (threads
        # here, step processes elsewhere) retry for up to the busy timeout.
        deadline = time.monotonic() + self.busy_timeout_seconds
        with _OPEN_LOCK:
            while True:
                try:
                    if self.page_size is not None:  # takes only on a new, empty file: before WAL writes its header
                        conn.execute(f"PRAGMA page_size = {int(self.page_size)}")
                    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL, much faster commits
                    conn.execute(f"PRAGMA cache_size = -{self.cache_mib * 1024}")
                    conn.executescript(self.ddl)
                    if self.migrate is not None:
                        self.migrate(conn)
                    return conn, self._file_identity()
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) or time.monotonic() > deadline:
                        conn.close()
                        raise
                    time.sleep(0.05)

    def _current(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """This thread's connection (opened, or reopened when the file was replaced) and the file's identity."""
        # Keyed by pid too: a forked step process must not share its parent's connection. A
        # thread id is only reused once its thread has ended, so a connection is never shared.
        key = (os.getpid(), threading.get_ident())
        cached = self._connections.get(key)
        if cached is not None and cached[1] != self._file_identity():
            self._connections.pop(key)[0].close()
            cached = None
        if cached is None:
            cached = self._connections[key] = self._open()
        return cached

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        yield self._current()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def bulk_transaction(self) -> Iterator[sqlite3.Connection]:
        """`transaction` for a write of many pages (an event's items: ~245 MB of WAL), whose
        checkpoint runs in a background thread instead of inside the commit.

        In WAL mode at `synchronous = NORMAL` a commit writes the WAL without syncing; the
        checkpoint that follows it (automatic past 1,000 pages) syncs the WAL, copies it into the
        database file and syncs that: for an event's items 1.5-1.6 s on this disk, 0.3 s of it
        copying. Durability is the checkpoint's either way; moved off the writer's thread, the next
        steps (the checks' reads, the export) run while the disk syncs. The thread holds its own
        connection, opened here, so closing this thread's connection (Dagster does after each
        step) is never the file's last close, which would checkpoint inline. A process waits for
        its checkpoint at exit (a non-daemon thread)."""
        with self.connect() as conn:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            try:
                with self.transaction() as same:
                    yield same
            finally:
                conn.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_PAGES}")
        self._checkpoint_in_background()

    def _checkpoint_in_background(self) -> None:
        """Ask this process's checkpointer of the file for a checkpoint, starting one when none
        runs. It checkpoints until no request came in during its last checkpoint, then ends."""
        with self._checkpoint_state:
            self._checkpoint_requested = True
            if self._checkpointer_pid == os.getpid():
                return  # the running one takes the request
            conn = self._connection()
            self._checkpointer_pid = os.getpid()
            _Checkpointer(
                target=self._checkpoint_while_requested, args=(conn,), name=f"sqlite-checkpoint {self.path}"
            ).start()

    def _next_checkpoint_wanted(self) -> bool:
        """Take the pending request; with none, the checkpointer ends (decided under the lock, so a
        request made meanwhile starts the next one)."""
        with self._checkpoint_state:
            wanted, self._checkpoint_requested = self._checkpoint_requested, False
            if not wanted:
                self._checkpointer_pid = None
            return wanted

    def _checkpoint_while_requested(self, conn: sqlite3.Connection) -> None:
        try:
            while self._next_checkpoint_wanted():
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as error:  # left to the next automatic or closing checkpoint
                    _LOG.warning("background checkpoint of %s failed: %s", self.path, error)
        finally:
            conn.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside one read transaction, so statements run in it see the
        same committed state; inside a read or write already open, that one."""
        with self.connect() as conn:
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def read_version(self) -> tuple[int, ...]:
        """A token equal between two calls exactly when no write was committed to the file in
        between, by any connection or process (`PRAGMA data_version` of this thread's connection,
        which moves on another connection's commit, plus the connection's own changes): what a
        cache of reads is valid for."""
        conn, file_identity = self._current()  # a replaced file: another identity
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        return (*file_identity, id(conn), data_version, conn.total_changes)

    def close(self) -> None:
        """Close this process's connections (safe to call twice)."""
        for key in [key for key in self._connections if key[0] == os.getpid()]:
            self._connections.pop(key)[0].close()


class SqliteBacked:
    """Connection plumbing of a resource kept in one SQLite file; list it before the resource's interface.

    Methods only: the resource declares the fields `path` and `busy_timeout_seconds` (their
    descriptions are its own), `_sqlite: SqliteConnections | None = PrivateAttr(default=None)` and
    its schema as `_ddl: ClassVar[str]` (and, when an older file needs more than `CREATE ... IF NOT
    EXISTS`, a static `_migrate(conn)`). Connections open on first use and stay open until
    `close` (Dagster calls it after each step).
    """

    if TYPE_CHECKING:
        path: str
        busy_timeout_seconds: float
        _sqlite: SqliteConnections | None

    _ddl: ClassVar[str]
    _migrate: ClassVar[Callable[[sqlite3.Connection], None] | None] = None
    # The page size the resource's file is made with (None: SQLite's 4 KiB); a file keeps the size
    # it was made with (`repack` changes it).
    file_page_size: ClassVar[int | None] = None

    @classmethod
    def declared_tables(cls) -> set[str]:
        """The tables the resource's schema makes (run on an empty in-memory database): what
        belongs to it in a file."""
        with closing(sqlite3.connect(":memory:")) as conn:
            conn.executescript(cls._ddl)
            return table_names(conn)

    def _db(self) -> SqliteConnections:
        if self._sqlite is None:
            self._sqlite = SqliteConnections(
                self.path, self.busy_timeout_seconds, self._ddl, migrate=self._migrate, page_size=self.file_page_size
            )
        return self._sqlite

    # This thread's connection; a write transaction; a bulk one; a read transaction (`SqliteConnections`).
    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db().connect()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db().transaction()

    def _bulk_transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db().bulk_transaction()

    def _read_transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db().read()

    def version_reader(self) -> Callable[[], tuple[int, ...]]:
        """The file's `SqliteConnections.read_version`, equal between two calls exactly when nothing
        was committed in between (the Serving API keeps its pages while it holds); bound once, as
        a resource's private state costs microseconds per access."""
        return self._db().read_version

    def close(self) -> None:
        """Close this process's connections (Dagster calls it after the step; safe to call twice)."""
        if self._sqlite is not None:
            self._sqlite.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()


# -- moving tables between files (a change of the local layout) --


def page_size_of(path: str | Path) -> int | None:
    """The page size in a SQLite file's header; None when the file is absent or has no header yet
    (made, not yet written). Read from the file's first bytes, so it opens no connection."""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
    except FileNotFoundError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None
    size = int.from_bytes(header[16:18], "big")
    return 65_536 if size == 1 else size  # the header's 2 bytes write 65,536 as 1


def table_names(conn: sqlite3.Connection) -> set[str]:
    """The tables of the database `conn` opened."""
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def tables_in(path: str | Path, tables: Iterable[str]) -> list[str]:
    """Which of `tables` the SQLite file at `path` holds (sorted)."""
    with closing(sqlite3.connect(path)) as conn:
        return sorted(table_names(conn).intersection(tables))


def copy_tables_to_new_file(source: str | Path, target: str | Path, tables: Iterable[str]) -> None:
    """`tables` of `source`, their rows and indexes, as a new file `target`: made under a temporary
    name in one transaction over one read of `source`, then renamed, so `target` is there whole or
    not at all. `target` must not exist."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} exists: tables are copied into a new file only")
    partial = target.with_name(f"{target.name}.partial")
    partial.unlink(missing_ok=True)  # left by a copy that did not finish
    with closing(sqlite3.connect(partial, isolation_level=None)) as conn:
        conn.execute("ATTACH DATABASE ? AS source", (str(source),))
        conn.execute("BEGIN")
        schema = conn.execute(
            "SELECT type, name, sql FROM source.sqlite_master WHERE tbl_name IN (SELECT value FROM json_each(?)) "
            "AND sql IS NOT NULL ORDER BY type = 'index'",  # tables first, their indexes once the rows are in
            (json.dumps(sorted(tables)),),
        ).fetchall()
        for kind, name, sql in schema:
            conn.execute(sql)  # unqualified: made in the new file
            if kind == "table":
                conn.execute(f'INSERT INTO main."{name}" SELECT * FROM source."{name}"')
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE source")
    os.replace(partial, target)


def drop_tables(path: str | Path, tables: Iterable[str], busy_timeout_seconds: float = 30.0) -> None:
    """Drop `tables` (those there, with their indexes) from the SQLite file at `path` in one write."""
    with closing(sqlite3.connect(path, timeout=busy_timeout_seconds, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        for table in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.execute("COMMIT")


def repack(path: str | Path, page_size: int) -> bool:
    """Rewrite a WAL-mode SQLite file with pages of `page_size` (a VACUUM, which can change the page
    size only outside WAL); False, the file unchanged, when another connection has it open (leaving
    WAL needs every other connection closed)."""
    with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as conn:
        try:
            mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        except sqlite3.OperationalError as error:
            if "locked" in str(error):
                return False
            raise
        if mode != "delete":
            return False
        try:
            conn.execute(f"PRAGMA page_size = {int(page_size)}")
            conn.execute("VACUUM")
        finally:
            conn.execute("PRAGMA journal_mode = WAL")
    return page_size_of(path) == page_size
