"""The candidates table and score cache in one local SQLite file (WAL), the local deployment's store.

Same keys and access patterns as the DynamoDB tables (see `base.py`): a table per DynamoDB
table and an index per GSI, so every read is an index range, never a table scan
(`SqliteCandidateStore.query_plans` shows it). A replace runs in one transaction; it and a score
cache write are bulk writes, checkpointed in the background (`SqliteConnections.bulk_transaction`).

One column DynamoDB does not have: `item_json`, the item as the Serving API sends it
(`domain.served_items`), written with the item and patched (`json_set`) when its status or TTL
changes, so a served page is the stored texts of an index range joined, no frame per request.
A file from before it gets the column, filled, when first opened (`_add_item_json`).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, ClassVar

import polars as pl
from pydantic import Field, PrivateAttr

from eventreach_assets.domain import candidate_items as ci
from eventreach_assets.domain.served_items import ITEM_JSON, item_json_expr, items_from_served_json
from eventreach_assets.resources.candidate_store.base import (
    REGISTERED_ITEM_FIELDS,
    TS_FORMAT,
    CandidateStoreResource,
    RegisteredCustomer,
    ReplacePlanner,
    TopQuery,
    registered_customers,
)
from eventreach_assets.resources.sqlite import SqliteBacked, SqliteConnections

_ITEMS = "candidate_items"
_CACHE = "score_cache"
_GSI1 = "candidate_items_gsi1"
_GSI2 = "candidate_items_gsi2"
_REGISTERED = "candidate_items_registered"
_EXPIRIES = "candidate_item_expiries"

_DDL = f"""
CREATE TABLE IF NOT EXISTS {_ITEMS} (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    gsi1pk TEXT NOT NULL,
    gsi2pk TEXT NOT NULL,
    gsi2sk TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    program_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    score REAL NOT NULL,
    score_band TEXT,
    status TEXT NOT NULL,
    status_at TEXT NOT NULL,
    registered_channel TEXT,
    batch_date TEXT NOT NULL,
    written_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    {", ".join(f"{name} TEXT" for name in ci.EXTRA_ATTRIBUTES)},
    {ITEM_JSON} TEXT,
    PRIMARY KEY (pk, sk)
);
CREATE INDEX IF NOT EXISTS {_GSI1} ON {_ITEMS} (gsi1pk, score DESC, customer_id);
CREATE INDEX IF NOT EXISTS {_GSI2} ON {_ITEMS} (gsi2pk, gsi2sk);
-- GSI2's registered range, covering what a registered-customers page reads: a page is one index
-- range, no row lookups (the API's hot path). Partial: only registered items, a few percent.
CREATE INDEX IF NOT EXISTS {_REGISTERED} ON {_ITEMS}
    (gsi2pk, gsi2sk, {", ".join(REGISTERED_ITEM_FIELDS[1:])}, expires_at, status)
    WHERE status = '{ci.STATUS_REGISTERED}';
-- Every expires_at value items were written with (a handful: one per weekly write), so when the
-- next live item expires (the Serving API's page cache holds until then) is one seek, without an
-- index on the items that every bulk write would pay for.
CREATE TABLE IF NOT EXISTS {_EXPIRIES} (expires_at INTEGER PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {_CACHE} (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    probability REAL NOT NULL,
    cached_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (pk, sk)
);
"""

# One statement for any number of ids: they travel as a JSON array joined to the primary key.
_CACHE_GET_SQL = f"""
    SELECT c.customer_id, c.probability
    FROM json_each(:ids) AS j CROSS JOIN {_CACHE} AS c
    WHERE c.pk = 'CUSTOMER#' || j.value AND c.sk = :sk AND c.expires_at > :now
"""


# A page of an event's live items' served JSON, one line each, in GSI2 order (the index's own),
# and the page's last GSI2 sort key, after which the next page starts (keyset paging: each item
# is read once, where OFFSET read every earlier page's items again). Served JSON escapes newlines
# inside strings, so a line is an item.
_EXPORT_PAGE_SQL = f"""
    SELECT group_concat({ITEM_JSON}, char(10)), max(gsi2sk) FROM (
        SELECT {ITEM_JSON}, gsi2sk FROM {_ITEMS} WHERE gsi2pk = :pk AND gsi2sk > :after AND expires_at > :now
        ORDER BY gsi2sk LIMIT :limit
    )
"""
# The GSI2 sort keys of an event's items; `live` is `_live_filter`'s condition.
_SORT_KEYS_SQL = f"SELECT gsi2sk FROM {_ITEMS} WHERE gsi2pk = :pk{{live}}"
_LIVE = " AND expires_at > :now"
_EXPORT_READ_ROWS = 100_000  # ~55 MB of text a page, far below SQLite's 1 GB limit on one value
_CACHE_WRITE_ROWS = 10_000  # rows per executemany of a score cache write (one transaction whatever the number)


# Earliest registration wins, so a replayed or late event cannot move it. All SET
# expressions read the row as it was before the update.
_KEEP_OLD = f"status = '{ci.STATUS_REGISTERED}' AND status_at <= :at"
_MARK_SQL = f"""
    UPDATE {_ITEMS} SET
        registered_channel = CASE WHEN {_KEEP_OLD} THEN registered_channel ELSE :channel END,
        status_at = CASE WHEN {_KEEP_OLD} THEN status_at ELSE :at END,
        gsi2sk = '{ci.STATUS_REGISTERED}#'
            || substr(CASE WHEN {_KEEP_OLD} THEN status_at ELSE :at END, 1, 10)
            || '#' || customer_id || '#' || channel,
        status = '{ci.STATUS_REGISTERED}',
        {ITEM_JSON} = json_set({ITEM_JSON}, '$.status', '{ci.STATUS_REGISTERED}',
            '$.status_at', CASE WHEN {_KEEP_OLD} THEN status_at ELSE :at END,
            '$.registered_channel', CASE WHEN {_KEEP_OLD} THEN registered_channel ELSE :channel END)
    WHERE pk = :pk AND sk >= :lo AND sk < :hi
"""
_EXTEND_SQL = (
    f"UPDATE {_ITEMS} SET expires_at = max(expires_at, :at), "
    f"{ITEM_JSON} = json_set({ITEM_JSON}, '$.expires_at', max(expires_at, :at)) WHERE pk = :pk AND sk = :sk"
)


class SqliteCandidateStore(SqliteBacked, CandidateStoreResource):
    """Local candidates table: one SQLite file in WAL mode, same keys and access patterns.

    One connection per process and thread, opened on first use and kept: closing the last
    connection of a WAL database checkpoints it (an fsync), which made every small call cost
    ~8 ms. Writers take the lock up front (BEGIN IMMEDIATE) and wait up to the busy timeout,
    so concurrent Dagster step processes serialize instead of failing.
    """

    path: str = Field(description="SQLite file; created with its parent directories on first use.")
    busy_timeout_seconds: float = Field(default=30.0, description="How long a call waits for another writer.")

    _sqlite: SqliteConnections | None = PrivateAttr(default=None)
    _ddl: ClassVar[str] = _DDL

    @classmethod
    def _add_item_json(cls, conn: sqlite3.Connection) -> None:
        """A file from before `item_json`: add the column and fill it from the items (once, locked)."""
        if ITEM_JSON in cls._column_names(conn):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if ITEM_JSON not in cls._column_names(conn):  # another process may have done it meanwhile
                conn.execute(f"ALTER TABLE {_ITEMS} ADD COLUMN {ITEM_JSON} TEXT")
                probabilities = cls._probability_columns(conn)
                columns = ", ".join(f'"{name}"' for name in ("pk", "sk", *ci.item_columns(probabilities)))
                rows = conn.execute(f"SELECT {columns} FROM {_ITEMS}").fetchall()
                items = cls._from_storage([row[2:] for row in rows], probabilities)
                texts = items.select(item_json_expr(items)).to_series().to_list()
                conn.executemany(
                    f"UPDATE {_ITEMS} SET {ITEM_JSON} = ? WHERE pk = ? AND sk = ?",
                    ((text, row[0], row[1]) for text, row in zip(texts, rows, strict=True)),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _record_expiries(conn: sqlite3.Connection, values: list[int]) -> None:
        conn.executemany(f"INSERT OR IGNORE INTO {_EXPIRIES} (expires_at) VALUES (?)", ((v,) for v in values))

    @classmethod
    def _migrate_file(cls, conn: sqlite3.Connection) -> None:
        """A file from before `item_json` or the expiries table: fill them from the items (once)."""
        cls._add_item_json(conn)
        if conn.execute(f"SELECT 1 FROM {_EXPIRIES} LIMIT 1").fetchone() is None:
            with_items = conn.execute(f"SELECT DISTINCT expires_at FROM {_ITEMS}").fetchall()
            if with_items:
                conn.execute("BEGIN IMMEDIATE")
                cls._record_expiries(conn, [row[0] for row in with_items])
                conn.execute("COMMIT")

    _migrate: ClassVar[Any] = _migrate_file

    # -- plumbing (connections: SqliteBacked) --

    @staticmethod
    def _column_names(conn: sqlite3.Connection) -> list[str]:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({_ITEMS})")]

    @classmethod
    def _probability_columns(cls, conn: sqlite3.Connection) -> list[str]:
        return sorted(name for name in cls._column_names(conn) if name.startswith(ci.PROBABILITY_PREFIX))

    @classmethod
    def _ensure_probability_columns(cls, conn: sqlite3.Connection, wanted: list[str]) -> None:
        # DynamoDB items are schemaless; here a new model's p_* column becomes a nullable column.
        for name in sorted(set(wanted) - set(cls._probability_columns(conn))):
            conn.execute(f'ALTER TABLE {_ITEMS} ADD COLUMN "{name}" REAL')

    @classmethod
    def _read_items(cls, conn: sqlite3.Connection, where: str, params: dict[str, object]) -> pl.DataFrame:
        probabilities = cls._probability_columns(conn)
        columns = ci.item_columns(probabilities)
        sql = f"SELECT {', '.join(f'{chr(34)}{c}{chr(34)}' for c in columns)} FROM {_ITEMS} WHERE {where}"
        rows = conn.execute(sql, params).fetchall()
        return ci.drop_empty_probabilities(cls._from_storage(rows, probabilities))

    @staticmethod
    def _from_storage(rows: list[tuple], probabilities: list[str]) -> pl.DataFrame:
        return ci.typed_item_times(pl.DataFrame(rows, schema=ci.text_item_schema(probabilities), orient="row"))

    @staticmethod
    def _to_storage(items: pl.DataFrame) -> pl.DataFrame:
        return ci.text_item_times(items.with_columns(item_json_expr(items)))

    # -- writes --

    def _replace_event_items(
        self, program_id: str, event_id: str, planner: ReplacePlanner, batch_write_size: int
    ) -> tuple[ci.ReplacePlan, int]:
        # One transaction: the state read, the plan and every write see the same rows.
        with self._bulk_transaction() as conn:
            existing_keys, registered = self._event_state(conn, ci.gsi2_pk(program_id, event_id))
            plan = planner(existing_keys, registered)
            return plan, self._apply_plan(conn, plan, batch_write_size)

    def _event_state(self, conn: sqlite3.Connection, gsi2pk: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The event's keys and its registered items, expired ones too: the plan decides."""
        existing_keys = pl.DataFrame(
            conn.execute(f"SELECT pk, sk FROM {_ITEMS} WHERE gsi2pk = ?", (gsi2pk,)).fetchall(),
            schema=ci.KEY_FRAME,
            orient="row",
        )
        where, lo, hi = self._registered_where()
        registered_rows = conn.execute(
            f"SELECT {', '.join(ci.REGISTERED_COLUMNS)} FROM {_ITEMS} WHERE {where}",
            {"pk": gsi2pk, "lo": lo, "hi": hi, "now": 0},
        ).fetchall()
        registered = pl.DataFrame(
            registered_rows, schema={**ci.REGISTERED_COLUMNS, "status_at": pl.String()}, orient="row"
        ).with_columns(pl.col("status_at").str.to_datetime(TS_FORMAT, time_zone="UTC", time_unit="us"))
        return existing_keys, registered

    def _apply_plan(self, conn: sqlite3.Connection, plan: ci.ReplacePlan, batch_write_size: int) -> int:
        """Delete the stale items, upsert the new ones, keep the retained ones; returns the batches."""
        probabilities = ci.probability_columns(plan.items)
        self._ensure_probability_columns(conn, probabilities)
        batches = 0
        for chunk in plan.stale.iter_slices(batch_write_size):
            conn.executemany(f"DELETE FROM {_ITEMS} WHERE pk = ? AND sk = ?", chunk.rows())
            batches += 1
        # Columns of other models are nulled, as a DynamoDB PutItem would drop them.
        stored = self._to_storage(plan.items).with_columns(
            pl.lit(None, dtype=pl.Float64).alias(name)
            for name in self._probability_columns(conn)
            if name not in probabilities
        )
        # Upsert, not INSERT OR REPLACE: a rewrite updates rows in place and leaves index
        # entries whose keys did not change alone (less work when re-materializing).
        updates = ", ".join(f'"{name}" = excluded."{name}"' for name in stored.columns if name not in ("pk", "sk"))
        batches += _insert_rows(
            conn, f"INSERT INTO {_ITEMS}", stored, batch_write_size, f"ON CONFLICT (pk, sk) DO UPDATE SET {updates}"
        )
        written = plan.items["expires_at"].unique().to_list() if plan.items.height else []
        self._record_expiries(conn, [*written, plan.expires_at] if plan.retained.height else written)
        if plan.retained.height:
            conn.executemany(
                _EXTEND_SQL, plan.retained.select(pl.lit(plan.expires_at).alias("at"), "pk", "sk").iter_rows(named=True)
            )
        return batches

    def _mark_registered(self, program_id: str, event_id: str, registrations: pl.DataFrame) -> int:
        """One statement for every row, in one transaction."""
        prefix = ci.event_sk_prefix(event_id)
        params = registrations.select(
            at=pl.col("registered_at").dt.to_string(TS_FORMAT),
            channel="channel",
            pk=pl.concat_str([pl.lit("CUSTOMER#"), pl.col("customer_id"), pl.lit(f"#PROGRAM#{program_id}")]),
            lo=pl.lit(prefix),
            hi=pl.lit(ci.prefix_upper_bound(prefix)),
        )
        with self._transaction() as conn:
            cursor = conn.executemany(_MARK_SQL, params.iter_rows(named=True))
            return max(cursor.rowcount, 0)

    def _purge_expired(self, now_epoch: int) -> int:
        with self._transaction() as conn:
            items = conn.execute(f"DELETE FROM {_ITEMS} WHERE expires_at <= ?", (now_epoch,)).rowcount
            cached = conn.execute(f"DELETE FROM {_CACHE} WHERE expires_at <= ?", (now_epoch,)).rowcount
            conn.execute(f"DELETE FROM {_EXPIRIES} WHERE expires_at <= ?", (now_epoch,))
        return items + cached

    # -- reads --

    @staticmethod
    def _top_sql(exclude_registered: bool, after: bool) -> str:
        where = "gsi1pk = :pk AND score >= :min_score AND expires_at > :now"
        if exclude_registered:
            where += f" AND status <> '{ci.STATUS_REGISTERED}'"
        if after:  # strictly after the last item of the previous page in (score desc, customer_id)
            where += " AND score <= :last_score AND (score < :last_score OR customer_id > :last_customer)"
        return f"{where} ORDER BY score DESC, customer_id LIMIT :limit"

    @staticmethod
    def _registered_where() -> tuple[str, str, str]:
        prefix = ci.gsi2_sk_prefix(ci.STATUS_REGISTERED)
        return (
            "gsi2pk = :pk AND gsi2sk >= :lo AND gsi2sk < :hi AND expires_at > :now",
            prefix,
            ci.prefix_upper_bound(prefix),
        )

    @staticmethod
    def _top_params(query: TopQuery) -> dict[str, object]:
        params: dict[str, object] = {
            "pk": query.gsi1pk,
            "min_score": query.min_score,
            "now": query.now_epoch,
            "limit": query.limit + 1,  # one more tells whether another page exists
        }
        if query.after is not None:
            params["last_score"], params["last_customer"] = query.after
        return params

    def _top_page(self, query: TopQuery) -> tuple[pl.DataFrame, bool]:
        where = self._top_sql(query.exclude_registered, query.after is not None)
        with self._connect() as conn:
            page = self._read_items(conn, where, self._top_params(query))
        return page.head(query.limit), page.height > query.limit

    # The serving reads fetch the stored JSON text and the position only: plain sqlite3 rows,
    # because a polars frame per page cost ~2 ms of CPU, ten times the query itself.

    def _served_top_page(self, query: TopQuery) -> tuple[list[str], tuple[float, str] | None]:
        where = self._top_sql(query.exclude_registered, query.after is not None)
        sql = f"SELECT {ITEM_JSON}, score, customer_id FROM {_ITEMS} WHERE {where}"
        with self._connect() as conn:
            rows = conn.execute(sql, self._top_params(query)).fetchall()
        limit = query.limit
        if len(rows) <= limit:
            return [row[0] for row in rows], None
        return [row[0] for row in rows[:limit]], (rows[limit - 1][1], rows[limit - 1][2])

    @staticmethod
    def _registered_page_where() -> str:
        # `status` as well (implied by the key's prefix) so the partial covering index applies.
        return (
            f"gsi2pk = :pk AND gsi2sk > :after AND gsi2sk < :hi AND status = '{ci.STATUS_REGISTERED}' "
            "AND expires_at > :now"
        )

    @staticmethod
    def _customer_sql(event: bool, after: bool) -> str:
        where = "pk = :pk AND expires_at > :now"
        if event:
            where += " AND event_id = :event"
        if after:  # strictly after the last item of the previous page in (event_id, channel)
            where += " AND (event_id > :last_event OR (event_id = :last_event AND channel > :last_channel))"
        return f"{where} ORDER BY event_id, channel LIMIT :limit"

    def _served_customer_items(
        self, pk: str, event_id: str | None, after: tuple[str, str] | None, limit: int, now_epoch: int
    ) -> tuple[list[str], tuple[str, str] | None]:
        params: dict[str, object] = {"pk": pk, "now": now_epoch, "event": event_id, "limit": limit + 1}
        if after is not None:
            params["last_event"], params["last_channel"] = after
        where = self._customer_sql(event_id is not None, after is not None)
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {ITEM_JSON}, event_id, channel FROM {_ITEMS} WHERE {where}", params).fetchall()
        if len(rows) <= limit:
            return [row[0] for row in rows], None
        return [row[0] for row in rows[:limit]], (rows[limit - 1][1], rows[limit - 1][2])

    def _registered_customers(
        self, gsi2pk: str, after: str | None, limit: int, now_epoch: int
    ) -> tuple[list[RegisteredCustomer], bool]:
        _, lo, hi = self._registered_where()
        sql = (
            f"SELECT {', '.join(REGISTERED_ITEM_FIELDS)} FROM {_ITEMS} "
            f"WHERE {self._registered_page_where()} ORDER BY gsi2sk"
        )
        with self._connect() as conn:
            # Stepped lazily: the read stops one item past the page (no LIMIT: a customer has one
            # item per channel). Closed at once so no read transaction stays open.
            rows = conn.execute(sql, {"pk": gsi2pk, "after": after or lo, "hi": hi, "now": now_epoch})
            try:
                return registered_customers(rows, limit)
            finally:
                rows.close()

    def next_expiry(self, now_epoch: int) -> int | None:
        """The epoch second by which the next item live at `now_epoch` expires (None: none will):
        until then, and while `version_reader()` answers the same, every read answers the same.
        Never later than the true next expiry; earlier only when the items written with a value
        were rewritten since."""
        with self._connect() as conn:
            sql = f"SELECT min(expires_at) FROM {_EXPIRIES} WHERE expires_at > ?"
            return conn.execute(sql, (now_epoch,)).fetchone()[0]

    def _registered_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        where, lo, hi = self._registered_where()
        with self._connect() as conn:
            return self._read_items(conn, where, {"pk": gsi2pk, "lo": lo, "hi": hi, "now": now_epoch})

    def _customer_items(self, pk: str, now_epoch: int) -> pl.DataFrame:
        with self._connect() as conn:
            return self._read_items(conn, "pk = :pk AND expires_at > :now", {"pk": pk, "now": now_epoch})

    def _event_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        with self._connect() as conn:
            return self._read_items(conn, "gsi2pk = :pk AND expires_at > :now", {"pk": gsi2pk, "now": now_epoch})

    def _exported_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        """The stored served JSON of each item, which holds exactly the exported attributes (both
        leave PII out): one text per item instead of 19 values, the texts joined by SQLite into
        one per `_EXPORT_READ_ROWS` items (one read transaction: the pages see the same items),
        each page decoded as it comes (~55 MB of text a page; all pages' text joined and copied at
        once made the export the bare batch's memory peak)."""
        pages: list[pl.DataFrame] = []
        params = {"pk": gsi2pk, "now": now_epoch, "limit": _EXPORT_READ_ROWS, "after": ""}
        with self._read_transaction() as conn:
            probabilities = self._probability_columns(conn)
            while True:  # ends at the first empty page: each page starts after the last one's key
                text, params["after"] = conn.execute(_EXPORT_PAGE_SQL, params).fetchone()
                if text is None:
                    break
                pages.append(items_from_served_json(text.encode(), probabilities))
            stored = self._count_event_items(gsi2pk, now_epoch)  # this thread's connection: the same read
        items = pl.concat(pages) if pages else items_from_served_json(b"", probabilities)
        if items.height != stored:  # group_concat skips a NULL text: never lose an item silently
            raise RuntimeError(f"{gsi2pk}: {stored} live items but {items.height} stored served JSON texts")
        return ci.drop_empty_probabilities(items)

    @staticmethod
    def _live_filter(conn: sqlite3.Connection, now_epoch: int) -> str:
        """The condition keeping an event's live items (`AND expires_at > :now`), or none when no item
        can have expired: every TTL an item is written with is in the expiries table, so when none
        of them has passed, GSI2 alone answers — a covering index range instead of a row look-up
        per item (the batch check's 197,050 keys right after the write: 0.45 -> 0.16 s). Ask it in
        the read that runs the statement."""
        passed = conn.execute(f"SELECT 1 FROM {_EXPIRIES} WHERE expires_at <= ? LIMIT 1", (now_epoch,))
        return _LIVE if passed.fetchone() else ""

    def _event_item_sort_keys(self, gsi2pk: str, now_epoch: int) -> list[str]:
        with self._read_transaction() as conn:
            sql = _SORT_KEYS_SQL.format(live=self._live_filter(conn, now_epoch))
            return [sort_key for (sort_key,) in conn.execute(sql, {"pk": gsi2pk, "now": now_epoch})]

    def _count_event_items(self, gsi2pk: str, now_epoch: int) -> int:
        with self._read_transaction() as conn:
            sql = f"SELECT count(*) FROM {_ITEMS} WHERE gsi2pk = :pk{self._live_filter(conn, now_epoch)}"
            return int(conn.execute(sql, {"pk": gsi2pk, "now": now_epoch}).fetchone()[0])

    def query_plans(self) -> dict[str, str]:
        """EXPLAIN QUERY PLAN of each read access pattern (local diagnostics and tests)."""
        where, lo, hi = self._registered_where()
        probe = {"pk": "x", "lo": lo, "hi": hi, "now": 0, "min_score": 0.0, "limit": 1}
        select = f"SELECT * FROM {_ITEMS} WHERE "
        queries = {
            "top_candidates_for_channel": (select + self._top_sql(True, False), probe),
            "top_candidates_for_channel/next_page": (
                select + self._top_sql(True, True),
                {**probe, "last_score": 0.5, "last_customer": "c"},
            ),
            "registered_candidates": (select + where, probe),
            "registered_customers_page": (
                f"SELECT {', '.join(REGISTERED_ITEM_FIELDS)} FROM {_ITEMS} WHERE {self._registered_page_where()}",
                {**probe, "after": lo},
            ),
            "served_customer_items": (
                select + self._customer_sql(True, True),
                {**probe, "event": "e", "last_event": "e", "last_channel": "c"},
            ),
            "candidates_for_customer": (select + "pk = :pk AND expires_at > :now", probe),
            "event_items": (select + "gsi2pk = :pk AND expires_at > :now", probe),
            "event_item_keys": (_SORT_KEYS_SQL.format(live=""), probe),
            "event_item_keys/some_ttl_passed": (_SORT_KEYS_SQL.format(live=_LIVE), probe),
            "exported_items_page": (_EXPORT_PAGE_SQL, {**probe, "after": ""}),
            "get_cached_scores": (_CACHE_GET_SQL, {"ids": '["a"]', "sk": "x", "now": 0}),
        }
        with self._connect() as conn:
            return {
                name: " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
                for name, (sql, params) in queries.items()
            }

    # -- score cache --

    def _cached_scores(self, sk: str, customer_ids: list[str], now_epoch: int) -> list[tuple[str, float]]:
        params = {"ids": json.dumps(customer_ids), "sk": sk, "now": now_epoch}
        with self._connect() as conn:
            return conn.execute(_CACHE_GET_SQL, params).fetchall()

    def _put_cache_entries(self, entries: pl.DataFrame) -> None:
        """In key order: appends to the key index rather than inserting at random."""
        with self._bulk_transaction() as conn:
            _insert_rows(conn, f"INSERT OR REPLACE INTO {_CACHE}", entries.sort("pk", "sk"), _CACHE_WRITE_ROWS)


def _constant_columns(frame: pl.DataFrame) -> list[str]:
    """Columns that hold one value in every row, to write as SQL literals; never all of them
    (a row needs one bound value for executemany to run it)."""
    if frame.height < 2:
        return []
    first, last = frame.row(0, named=True), frame.row(-1, named=True)
    # Only columns whose first and last values agree are counted (keys and served JSON never are).
    # quote() stops a text at NUL: such a value stays bound (no real program or event has one).
    maybe = [
        name
        for name in frame.columns
        if first[name] == last[name] and not (isinstance(first[name], str) and "\x00" in first[name])
    ]
    counts = frame.select(pl.col(maybe).n_unique()).row(0) if maybe else ()
    constants = [name for name, count in zip(maybe, counts, strict=True) if count == 1]
    return constants[1:] if len(constants) == frame.width else constants


def _insert_rows(conn: sqlite3.Connection, insert: str, frame: pl.DataFrame, batch_size: int, tail: str = "") -> int:
    """`{insert} (columns) VALUES (...) {tail}` for every row of `frame`, `batch_size` rows per
    executemany; returns the batches.

    Python's sqlite3 makes and binds every value of every row (~0.4 us a value, the bulk of a
    write). A column that holds one value in every row (a write's program, event, batch date,
    times and TTL, another model's nulled probabilities: 9 of an item's 26; 6 of a cache entry's
    9) goes into the statement once instead, as the literal SQLite's own `quote()` writes for it
    (exact for text, numbers and NULL), so only the varying values are bound."""
    constants = _constant_columns(frame)
    varying = [name for name in frame.columns if name not in constants]
    literals: tuple[str, ...] = ()
    if constants:
        quoting = f"SELECT {', '.join(['quote(?)'] * len(constants))}"
        literals = conn.execute(quoting, frame.select(constants).row(0)).fetchone()
    columns = ", ".join(f'"{name}"' for name in [*varying, *constants])
    values = ", ".join([*(["?"] * len(varying)), *literals])
    sql = f"{insert} ({columns}) VALUES ({values}) {tail}".rstrip()
    batches = 0
    for chunk in frame.select(varying).iter_slices(batch_size):
        conn.executemany(sql, chunk.rows())
        batches += 1
    return batches
