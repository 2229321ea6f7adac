"""The candidates table and score cache in one local SQLite file (WAL, 32 KiB pages), the local deployment's store.

The same items, keys and access patterns as the DynamoDB tables (see `base.py`), stored one row
per customer x event rather than one per channel: a customer's items of an event differ only in
their channel (a replace writes every channel of a customer from one scored row, a registration
marks all of them), so a row holds the item once with `channels`, the JSON array of its channels
(sorted), and reads expand it into one item per channel. That halves what a weekly write puts
into SQLite's B-trees (four entries a row instead of four an item: the write was those entries).
A customer's items of an event that do differ (a channel dropped from the program while the
customer's registered item of it is kept for reminders) are two rows: a row is a group of
channels whose items are equal but for the channel, and a channel is in one row of its customer
and event at most.

Row keys and indexes, each item's DynamoDB key derived from them:

    PRIMARY KEY (pk, event_id, channels)        pk = CUSTOMER#{customer_id}#PROGRAM#{program_id}
    gsi2pk = PROGRAM#{program_id}#EVENT#{event_id}
    gsi2sk = {status}#{status date}#{customer_id}   an item's GSI2SK is this + "#{channel}"
    by score:   (gsi2pk, score DESC, customer_id)  GSI1 (a channel's top-N) is this range, the
                                                   rows holding the channel
    GSI2:       (gsi2pk, gsi2sk, channels)         an event's items, status prefixes, in order
    registered: GSI2's registered range, partial and covering (the Serving API's pages)

One column DynamoDB does not have: `item_json`, the item as the Serving API sends it
(`domain.served_items`) with `"channel":""`, which a read fills with the item's channel; written
with the row and patched (`json_set`) when its status or TTL changes, so a served page is the
stored texts of an index range joined, no frame per request.

Every read is an index range, never a table scan (`SqliteCandidateStore.query_plans` shows it).
A replace runs in one transaction; it and a score cache write are bulk writes, checkpointed in
the background (`SqliteConnections.bulk_transaction`). A file of an earlier release (one row per
item, `candidate_items`) is rebuilt into rows when first opened (`_rows_from_items`),
registrations and TTLs kept.

The score cache is one `WITHOUT ROWID` table keyed `(sk, customer_id)` (the entry's DynamoDB key
is `(CUSTOMER#{customer_id}, sk)`; sk names event, model and version): a write is one event's
model, so its entries append one key range, one B-tree. A file of an earlier release (`score_cache`,
keyed `(pk, sk)` beside a rowid table: two B-trees, the write twice as long) has its entries copied
over when first opened (`_cache_from_legacy`).

The TTLs each table was written with are kept in a small table beside it (`candidate_item_expiries`,
`score_cache_expiries`): the purge every batch runs scans a table only once one has passed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
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
from eventreach_assets.resources.sqlite import SqliteBacked, SqliteConnections, table_names

_ROWS = "candidate_rows"
_CACHE = "score_cache_entries"
_CACHE_EXPIRIES = "score_cache_expiries"
_LEGACY_CACHE = "score_cache"  # keyed (pk, sk) beside a rowid table: the cache of releases before 2026-12-04
_BY_SCORE = "candidate_rows_by_score"
_GSI2 = "candidate_rows_gsi2"
_REGISTERED = "candidate_rows_registered"
_EXPIRIES = "candidate_item_expiries"
_LEGACY_ITEMS = "candidate_items"  # one row per item: the table of releases before rows

# What a row holds of the item besides its keys and channels (the item's attributes but the channel).
_ROW_ATTRIBUTES: tuple[str, ...] = tuple(name for name in ci.BASE_ATTRIBUTES if name not in ("event_id", "channel"))
# The registered index's columns after its keys: what a registered-customers page reads.
_REGISTERED_COLUMNS = (
    "customer_id",
    "status_at",
    "registered_channel",
    "score",
    "score_band",
    "marketplace",
    "timezone",
)

_DDL = f"""
CREATE TABLE IF NOT EXISTS {_ROWS} (
    pk TEXT NOT NULL,
    event_id TEXT NOT NULL,
    channels TEXT NOT NULL,
    gsi2pk TEXT NOT NULL,
    gsi2sk TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    program_id TEXT NOT NULL,
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
    PRIMARY KEY (pk, event_id, channels)
);
CREATE INDEX IF NOT EXISTS {_BY_SCORE} ON {_ROWS} (gsi2pk, score DESC, customer_id);
CREATE INDEX IF NOT EXISTS {_GSI2} ON {_ROWS} (gsi2pk, gsi2sk, channels);
-- GSI2's registered range, covering what a registered-customers page reads: a page is one index
-- range, no row lookups (the API's hot path). Partial: only registered rows, a few percent.
CREATE INDEX IF NOT EXISTS {_REGISTERED} ON {_ROWS}
    (gsi2pk, gsi2sk, channels, {", ".join(_REGISTERED_COLUMNS)}, expires_at, status)
    WHERE status = '{ci.STATUS_REGISTERED}';
-- Every expires_at value items were written with (a handful: one per weekly write), so when the
-- next live item expires (the Serving API's page cache holds until then) is one seek, without an
-- index on the items that every bulk write would pay for.
CREATE TABLE IF NOT EXISTS {_EXPIRIES} (expires_at INTEGER PRIMARY KEY) WITHOUT ROWID;
-- The score cache: an entry's DynamoDB key is (CUSTOMER#customer_id, sk); here one B-tree keyed
-- by (sk, customer_id), so a write of one event's model (one sk) appends a range in customer order
-- and a look-up is a seek in it. Event, model and version are in the sk.
CREATE TABLE IF NOT EXISTS {_CACHE} (
    sk TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    probability REAL NOT NULL,
    cached_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (sk, customer_id)
) WITHOUT ROWID;
-- Every expires_at value cache entries were written with (one per write): a purge with none passed
-- reads nothing, as the items' expiries table lets it skip the items.
CREATE TABLE IF NOT EXISTS {_CACHE_EXPIRIES} (expires_at INTEGER PRIMARY KEY) WITHOUT ROWID;
"""

# A row's items: the row `r` joined with each of its channels `c` (`c.value`, in array order).
_ITEMS_FROM = f"{_ROWS} AS r, json_each(r.channels) AS c"
# An item's served JSON: the row's, with the item's channel.
_ITEM_JSON_SQL = f"""replace(r.{ITEM_JSON}, '"channel":""', '"channel":' || json_quote(c.value))"""
_ITEM_GSI2SK_SQL = "r.gsi2sk || '#' || c.value"

# One statement for any number of ids: they travel as a JSON array joined to the primary key.
_CACHE_GET_SQL = f"""
    SELECT c.customer_id, c.probability
    FROM json_each(:ids) AS j CROSS JOIN {_CACHE} AS c
    WHERE c.sk = :sk AND c.customer_id = j.value AND c.expires_at > :now
"""

# The export reads an event's live rows a page at a time in GSI2 order, each page all rows up to
# a GSI2 sort key (`_EXPORT_PAGE_END_SQL`: the key `:limit` rows on, so two rows of one customer
# sharing a key stay in one page) after the previous page's, each row as its served JSON with the
# row's channel list for the channel, one line each (served JSON escapes newlines inside strings,
# so a line is a row). Each row is read once, where OFFSET would read every earlier page's rows again.
_EXPORT_PAGE_END_SQL = f"""
    SELECT gsi2sk FROM {_ROWS} WHERE gsi2pk = :pk AND gsi2sk > :after ORDER BY gsi2sk LIMIT 1 OFFSET :offset
"""
_EXPORT_PAGE_SQL = f"""
    SELECT group_concat(replace(r.{ITEM_JSON}, '"channel":""', '"channel":' || r.channels), char(10))
    FROM {_ROWS} AS r WHERE r.gsi2pk = :pk AND r.gsi2sk > :after{{end}} AND r.expires_at > :now
"""
_EXPORT_PAGE_UP_TO = " AND r.gsi2sk <= :end"
# An event's rows, what its items' GSI2 sort keys are made of (`_event_item_sort_keys`); `live` is
# `_live_filter`'s condition.
_SORT_KEYS_SQL = f"SELECT r.gsi2sk, r.channels FROM {_ROWS} AS r WHERE r.gsi2pk = :pk{{live}}"
_COUNT_SQL = f"SELECT coalesce(sum(json_array_length(r.channels)), 0) FROM {_ROWS} AS r WHERE r.gsi2pk = :pk{{live}}"
_LIVE = " AND r.expires_at > :now"
_EXPORT_READ_ROWS = 50_000  # rows (~100,000 items, ~28 MB of text) a page, far below SQLite's 1 GB limit on one value
_CACHE_COLUMNS = ("sk", "customer_id", "probability", "cached_at", "expires_at")
_CACHE_WRITE_ROWS = 10_000  # rows per executemany of a score cache write (one transaction whatever the number)


# Earliest registration wins, so a replayed or late event cannot move it. All SET
# expressions read the row as it was before the update.
_KEEP_OLD = f"status = '{ci.STATUS_REGISTERED}' AND status_at <= :at"
_MARK_SQL = f"""
    UPDATE {_ROWS} SET
        registered_channel = CASE WHEN {_KEEP_OLD} THEN registered_channel ELSE :channel END,
        status_at = CASE WHEN {_KEEP_OLD} THEN status_at ELSE :at END,
        gsi2sk = '{ci.STATUS_REGISTERED}#'
            || substr(CASE WHEN {_KEEP_OLD} THEN status_at ELSE :at END, 1, 10) || '#' || customer_id,
        status = '{ci.STATUS_REGISTERED}',
        {ITEM_JSON} = json_set({ITEM_JSON}, '$.status', '{ci.STATUS_REGISTERED}',
            '$.status_at', CASE WHEN {_KEEP_OLD} THEN status_at ELSE :at END,
            '$.registered_channel', CASE WHEN {_KEEP_OLD} THEN registered_channel ELSE :channel END)
    WHERE pk = :pk AND event_id = :event
"""
# How many items `_MARK_SQL` updates for each of the customer keys `:pks` (a JSON array, a key
# once per registration, as each runs the update once).
_MARK_COUNT_SQL = f"""
    SELECT coalesce(sum(json_array_length(r.channels)), 0)
    FROM json_each(:pks) AS j CROSS JOIN {_ROWS} AS r WHERE r.pk = j.value AND r.event_id = :event
"""
_EXTEND_SQL = (
    f"UPDATE {_ROWS} SET expires_at = max(expires_at, :at), "
    f"{ITEM_JSON} = json_set({ITEM_JSON}, '$.expires_at', max(expires_at, :at)) WHERE rowid = :rowid"
)


def _items_of_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` (with their `channels` text) as items: each row once per channel, in `channel`."""
    return rows.with_columns(pl.col("channels").str.json_decode(pl.List(pl.String)).alias("channel")).explode("channel")


def channels_text(channels: list[str]) -> str:
    """A row's `channels`: the JSON array of its channels, sorted (one text per set: part of the key)."""
    return json.dumps(sorted(channels), ensure_ascii=False, separators=(",", ":"))


def _with_channels_text(frame: pl.DataFrame, lists: str, column: str = "channels") -> pl.DataFrame:
    """`frame` with `column`, the `channels_text` of its list column `lists` (a handful of distinct
    sets: each made once). Channels hold no whitespace (`ci.check_id`), so a unit separator joins them."""
    joined = pl.col(lists).list.sort().list.join("\x1f")
    distinct = frame.select(joined.unique()).to_series().to_list()
    texts = {key: channels_text(key.split("\x1f")) for key in distinct}
    return frame.with_columns(joined.replace_strict(texts, return_dtype=pl.String).alias(column))


def _row_gsi2sk() -> pl.Expr:
    """A row's GSI2 sort key (its items' without the channel), from status, status_at text and customer."""
    return pl.concat_str([pl.col("status"), pl.col("status_at").str.slice(0, 10), pl.col("customer_id")], separator="#")


class SqliteCandidateStore(SqliteBacked, CandidateStoreResource):
    """Local candidates table: one SQLite file in WAL mode, the same items and access patterns.

    One connection per process and thread, opened on first use and kept: closing the last
    connection of a WAL database checkpoints it (an fsync), which made every small call cost
    ~8 ms. Writers take the lock up front (BEGIN IMMEDIATE) and wait up to the busy timeout,
    so concurrent Dagster step processes serialize instead of failing.
    """

    path: str = Field(description="SQLite file; created with its parent directories on first use.")
    busy_timeout_seconds: float = Field(default=30.0, description="How long a call waits for another writer.")

    _sqlite: SqliteConnections | None = PrivateAttr(default=None)
    _ddl: ClassVar[str] = _DDL
    # Its writes are bulk ones (an event's rows, a model's cache entries: ~0.25 GB of pages at 3M
    # profiles): with 32 KiB pages an event's replace takes 1.50-1.76 -> 1.22-1.35 s, the Serving
    # API's uncached pages as long or a tenth longer (64 KiB: no faster replace, pages up to 80%
    # longer; docs/speed.md, nineteenth session). A file of small commits (the ledger) wants
    # SQLite's 4 KiB, so the local deployment keeps them apart.
    file_page_size: ClassVar[int | None] = 32_768

    # -- files of earlier releases --

    @classmethod
    def _rows_from_items(cls, conn: sqlite3.Connection) -> None:
        """A file with one row per item (`candidate_items`): its items become rows, each group of a
        customer's items of an event that are equal but for the channel one row (so registrations,
        TTLs and a retained item's own attributes carry over). Its served JSON is made again from
        the attributes (a file from before it had none)."""
        legacy = [row[1] for row in conn.execute(f"PRAGMA table_info({_LEGACY_ITEMS})")]
        probabilities = sorted(name for name in legacy if name.startswith(ci.PROBABILITY_PREFIX))
        columns = ", ".join(f'"{name}"' for name in ("pk", *ci.item_columns(probabilities)))
        rows = conn.execute(f"SELECT {columns} FROM {_LEGACY_ITEMS}").fetchall()
        schema = {"pk": pl.String(), **ci.text_item_schema(probabilities)}
        items = pl.DataFrame(rows, schema=schema, orient="row")
        if items.height:
            cls._ensure_probability_columns(conn, probabilities)
            grouped = items.group_by([name for name in items.columns if name != "channel"]).agg("channel")
            cls._insert_new_rows(conn, _with_channels_text(grouped, "channel"), 10_000)
            cls._record_expiries(conn, items["expires_at"].unique().to_list())

    @classmethod
    def _cache_from_legacy(cls, conn: sqlite3.Connection) -> None:
        """A score cache keyed (pk, sk) beside a rowid table: its entries copied into the
        (sk, customer_id) table, which holds the same columns but the derived ones, their TTLs
        recorded."""
        columns = ", ".join(_CACHE_COLUMNS)
        conn.execute(f"INSERT OR REPLACE INTO {_CACHE} ({columns}) SELECT {columns} FROM {_LEGACY_CACHE}")
        written = conn.execute(f"SELECT DISTINCT expires_at FROM {_LEGACY_CACHE}").fetchall()
        cls._record_expiries(conn, [row[0] for row in written], _CACHE_EXPIRIES)

    @classmethod
    def _rebuild_once(
        cls, conn: sqlite3.Connection, legacy_table: str, rebuild: Callable[[sqlite3.Connection], None]
    ) -> None:
        """`rebuild` a table of an earlier release into today's, then drop it: once, locked (another
        process opening the file meanwhile finds it done), all or nothing."""
        if legacy_table not in table_names(conn):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if legacy_table in table_names(conn):
                rebuild(conn)
                conn.execute(f"DROP TABLE {legacy_table}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _record_expiries(conn: sqlite3.Connection, values: list[int], table: str = _EXPIRIES) -> None:
        conn.executemany(f"INSERT OR IGNORE INTO {table} (expires_at) VALUES (?)", ((v,) for v in values))

    @staticmethod
    def _any_expired(conn: sqlite3.Connection, now_epoch: int, table: str = _EXPIRIES) -> bool:
        """Whether a TTL recorded in expiries `table` has passed at `now_epoch` (one seek)."""
        passed = conn.execute(f"SELECT 1 FROM {table} WHERE expires_at <= ? LIMIT 1", (now_epoch,))
        return passed.fetchone() is not None

    @classmethod
    def _migrate_file(cls, conn: sqlite3.Connection) -> None:
        """A file of one row per item, of the older score cache, or from before the expiries
        tables: rebuilt and filled (once)."""
        cls._rebuild_once(conn, _LEGACY_ITEMS, cls._rows_from_items)
        cls._rebuild_once(conn, _LEGACY_CACHE, cls._cache_from_legacy)
        for expiries, table in ((_EXPIRIES, _ROWS), (_CACHE_EXPIRIES, _CACHE)):
            if conn.execute(f"SELECT 1 FROM {expiries} LIMIT 1").fetchone() is None:
                written = conn.execute(f"SELECT DISTINCT expires_at FROM {table}").fetchall()
                if written:
                    conn.execute("BEGIN IMMEDIATE")
                    cls._record_expiries(conn, [row[0] for row in written], expiries)
                    conn.execute("COMMIT")

    _migrate: ClassVar[Any] = _migrate_file

    # -- plumbing (connections: SqliteBacked) --

    @staticmethod
    def _column_names(conn: sqlite3.Connection) -> list[str]:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({_ROWS})")]

    @classmethod
    def _probability_columns(cls, conn: sqlite3.Connection) -> list[str]:
        return sorted(name for name in cls._column_names(conn) if name.startswith(ci.PROBABILITY_PREFIX))

    @classmethod
    def _ensure_probability_columns(cls, conn: sqlite3.Connection, wanted: list[str]) -> None:
        # DynamoDB items are schemaless; here a new model's p_* column becomes a nullable column.
        for name in sorted(set(wanted) - set(cls._probability_columns(conn))):
            conn.execute(f'ALTER TABLE {_ROWS} ADD COLUMN "{name}" REAL')

    @staticmethod
    def _item_select(columns: list[str], channel: str = "c.value") -> str:
        """The select list of items `columns` from `_ITEMS_FROM` (the channel: `channel`)."""
        return ", ".join(channel if name == "channel" else f'r."{name}"' for name in columns)

    @classmethod
    def _read_items(cls, conn: sqlite3.Connection, where: str, params: dict[str, object]) -> pl.DataFrame:
        """The items of the rows `where` (on `r`), one per channel."""
        probabilities = cls._probability_columns(conn)
        select = cls._item_select(ci.item_columns(probabilities))
        rows = conn.execute(f"SELECT {select} FROM {_ITEMS_FROM} WHERE {where}", params).fetchall()
        return ci.drop_empty_probabilities(cls._from_storage(rows, probabilities))

    @staticmethod
    def _from_storage(rows: list[tuple], probabilities: list[str]) -> pl.DataFrame:
        return ci.typed_item_times(pl.DataFrame(rows, schema=ci.text_item_schema(probabilities), orient="row"))

    # -- writes --

    def _replace_event_items(
        self, program_id: str, event_id: str, planner: ReplacePlanner, batch_write_size: int
    ) -> tuple[ci.ReplacePlan, int]:
        # One transaction: the state read, the plan and every write see the same rows.
        with self._bulk_transaction() as conn:
            existing = self._event_rows(conn, ci.gsi2_pk(program_id, event_id), event_id)
            registered = existing.filter(pl.col("status") == ci.STATUS_REGISTERED).with_columns(
                pl.col("status_at").str.to_datetime(TS_FORMAT, time_zone="UTC", time_unit="us")
            )
            plan = planner(existing.select(list(ci.KEY_FRAME)), registered.select(list(ci.REGISTERED_COLUMNS)))
            return plan, self._apply_plan(conn, plan, existing, batch_write_size)

    @staticmethod
    def _event_rows(conn: sqlite3.Connection, gsi2pk: str, event_id: str) -> pl.DataFrame:
        """The event's items as its rows hold them (expired ones too: the plan decides): each item's
        key (pk, sk), channel, row (rowid) and what the plan reads of a registered one."""
        names = ("rowid", "pk", "channels", "customer_id", "status", "status_at", "registered_channel", "expires_at")
        schema = {name: pl.Int64() if name in ("rowid", "expires_at") else pl.String() for name in names}
        rows = conn.execute(f"SELECT {', '.join(names)} FROM {_ROWS} WHERE gsi2pk = ?", (gsi2pk,)).fetchall()
        items = _items_of_rows(pl.DataFrame(rows, schema=schema, orient="row"))
        return items.with_columns(sk=pl.lit(ci.event_sk_prefix(event_id)) + pl.col("channel"))

    def _apply_plan(
        self, conn: sqlite3.Connection, plan: ci.ReplacePlan, existing: pl.DataFrame, batch_size: int
    ) -> int:
        """Make the event's rows hold the plan's items: rows of the new items written (one per
        customer), stale items taken out of their rows, retained ones kept with their TTL raised.
        Returns the write batches of `batch_size` items the plan's deletes and puts make (the
        interface's count, the same for every store)."""
        probabilities = ci.probability_columns(plan.items)
        self._ensure_probability_columns(conn, probabilities)
        new_rows = self._rows_of_items(plan.items)
        self._fold_existing_rows(conn, plan, existing, new_rows)
        # Columns of other models are nulled, as a DynamoDB PutItem would drop them.
        stored = new_rows.with_columns(
            pl.lit(None, dtype=pl.Float64).alias(name)
            for name in self._probability_columns(conn)
            if name not in probabilities
        )
        self._insert_new_rows(conn, stored, batch_size)
        written = plan.items["expires_at"].unique().to_list() if plan.items.height else []
        self._record_expiries(conn, [*written, plan.expires_at] if plan.retained.height else written)
        return -(-plan.stale.height // batch_size) + -(-plan.items.height // batch_size)

    @staticmethod
    def _rows_of_items(items: pl.DataFrame) -> pl.DataFrame:
        """The rows of a replace's new items: one per customer, holding every channel (a replace
        writes each customer's items from one scored row and one registration: equal but for the
        channel), the times as text."""
        channels = items["channel"].unique().sort().to_list()
        rows = items.filter(pl.col("channel") == channels[0]) if channels else items
        if rows.height * len(channels) != items.height:
            raise RuntimeError(
                f"a replace's items must be each customer's {len(channels)} channels, got {items.height}"
            )
        return ci.text_item_times(rows).with_columns(channels=pl.lit(channels_text(channels)))

    @classmethod
    def _insert_new_rows(cls, conn: sqlite3.Connection, rows: pl.DataFrame, batch_size: int) -> None:
        """Upsert rows (item attributes, `channels`): keys and served JSON made here. Upsert, not
        INSERT OR REPLACE: a rewrite updates rows in place and leaves index entries whose keys did
        not change alone (less work when re-materializing)."""
        probabilities = ci.probability_columns(rows)
        stored = rows.with_columns(
            gsi2pk=pl.concat_str([pl.lit("PROGRAM#"), pl.col("program_id"), pl.lit("#EVENT#"), pl.col("event_id")]),
            gsi2sk=_row_gsi2sk(),
            channel=pl.lit(""),  # the served JSON's: a read fills in each item's
        )
        stored = stored.with_columns(item_json_expr(stored)).select(
            "pk",
            "event_id",
            "channels",
            "gsi2pk",
            "gsi2sk",
            *_ROW_ATTRIBUTES,
            *ci.EXTRA_ATTRIBUTES,
            ITEM_JSON,
            *probabilities,
        )
        keys = ("pk", "event_id", "channels")
        updates = ", ".join(f'"{name}" = excluded."{name}"' for name in stored.columns if name not in keys)
        _insert_rows(
            conn, f"INSERT INTO {_ROWS}", stored, batch_size, f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        )

    @staticmethod
    def _fold_existing_rows(
        conn: sqlite3.Connection, plan: ci.ReplacePlan, existing: pl.DataFrame, new_rows: pl.DataFrame
    ) -> None:
        """Take the plan's new and stale items out of the rows holding them (a row left empty is
        deleted, unless the new row of its customer takes its place: that one is upserted) and raise
        the TTL of the rows holding retained items."""
        if not existing.height:
            return
        taken = pl.concat([plan.items.select("pk", "sk"), plan.stale.select("pk", "sk")]).with_columns(taken=True)
        rows = (
            existing.join(taken, on=["pk", "sk"], how="left")
            .group_by("rowid")
            .agg(
                pl.col("pk").first(),
                pl.col("channels").first(),
                kept=pl.col("channel").filter(pl.col("taken").is_null()),
                count=pl.len(),
            )
            .join(new_rows.select("pk", new_channels="channels"), on="pk", how="left")
        )
        emptied = rows.filter(pl.col("kept").list.len() == 0)
        gone = emptied.filter(pl.col("channels") != pl.col("new_channels").fill_null(""))
        conn.executemany(f"DELETE FROM {_ROWS} WHERE rowid = ?", gone.select("rowid").rows())
        shrunk = rows.filter(pl.col("kept").list.len().is_between(1, pl.col("count") - 1))
        if shrunk.height:
            shrunk = _with_channels_text(shrunk, "kept", "kept_text")
            conn.executemany(
                f"UPDATE {_ROWS} SET channels = ? WHERE rowid = ?", shrunk.select("kept_text", "rowid").rows()
            )
        if plan.retained.height:
            holding = existing.join(plan.retained.select("pk", "sk"), on=["pk", "sk"], how="semi")
            params = holding.select(pl.lit(plan.expires_at).alias("at"), "rowid").unique("rowid")
            conn.executemany(_EXTEND_SQL, params.iter_rows(named=True))

    def _mark_registered(self, program_id: str, event_id: str, registrations: pl.DataFrame) -> int:
        """One statement for every row, in one transaction."""
        params = registrations.select(
            at=pl.col("registered_at").dt.to_string(TS_FORMAT),
            channel="channel",
            pk=pl.concat_str([pl.lit("CUSTOMER#"), pl.col("customer_id"), pl.lit(f"#PROGRAM#{program_id}")]),
            event=pl.lit(event_id),
        )
        with self._transaction() as conn:
            pks = json.dumps(params["pk"].to_list())
            items = int(conn.execute(_MARK_COUNT_SQL, {"pks": pks, "event": event_id}).fetchone()[0])
            conn.executemany(_MARK_SQL, params.iter_rows(named=True))
            return items

    def _purge_expired(self, now_epoch: int) -> int:
        """Each table scanned only when a TTL it was written with has passed (most batches: none)."""
        items = cached = 0
        with self._transaction() as conn:
            if self._any_expired(conn, now_epoch):
                sql = f"DELETE FROM {_ROWS} WHERE expires_at <= ? RETURNING json_array_length(channels)"
                items = sum(count for (count,) in conn.execute(sql, (now_epoch,)).fetchall())
                conn.execute(f"DELETE FROM {_EXPIRIES} WHERE expires_at <= ?", (now_epoch,))
            if self._any_expired(conn, now_epoch, _CACHE_EXPIRIES):
                cached = conn.execute(f"DELETE FROM {_CACHE} WHERE expires_at <= ?", (now_epoch,)).rowcount
                conn.execute(f"DELETE FROM {_CACHE_EXPIRIES} WHERE expires_at <= ?", (now_epoch,))
        return items + cached

    # -- reads --

    @staticmethod
    def _top_sql(exclude_registered: bool, after: bool) -> str:
        """A channel's top-N: the event's rows by score holding the channel (every row, normally)."""
        where = (
            "r.gsi2pk = :pk AND r.score >= :min_score AND r.expires_at > :now "
            "AND EXISTS (SELECT 1 FROM json_each(r.channels) AS held WHERE held.value = :channel)"
        )
        if exclude_registered:
            where += f" AND r.status <> '{ci.STATUS_REGISTERED}'"
        if after:  # strictly after the last item of the previous page in (score desc, customer_id)
            where += " AND r.score <= :last_score AND (r.score < :last_score OR r.customer_id > :last_customer)"
        return f"{where} ORDER BY r.score DESC, r.customer_id LIMIT :limit"

    @staticmethod
    def _top_params(query: TopQuery) -> dict[str, object]:
        params: dict[str, object] = {
            "pk": query.gsi2pk,
            "channel": query.channel,
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
            probabilities = self._probability_columns(conn)
            select = self._item_select(ci.item_columns(probabilities), ":channel")
            rows = conn.execute(f"SELECT {select} FROM {_ROWS} AS r WHERE {where}", self._top_params(query)).fetchall()
        page = ci.drop_empty_probabilities(self._from_storage(rows, probabilities))
        return page.head(query.limit), page.height > query.limit

    # The serving reads fetch the stored JSON text and the position only: plain sqlite3 rows,
    # because a polars frame per page cost ~2 ms of CPU, ten times the query itself.

    def _served_top_page(self, query: TopQuery) -> tuple[list[str], tuple[float, str] | None]:
        where = self._top_sql(query.exclude_registered, query.after is not None)
        text = f"""replace(r.{ITEM_JSON}, '"channel":""', '"channel":' || json_quote(:channel))"""
        sql = f"SELECT {text}, r.score, r.customer_id FROM {_ROWS} AS r WHERE {where}"
        with self._connect() as conn:
            rows = conn.execute(sql, self._top_params(query)).fetchall()
        limit = query.limit
        if len(rows) <= limit:
            return [row[0] for row in rows], None
        return [row[0] for row in rows[:limit]], (rows[limit - 1][1], rows[limit - 1][2])

    @staticmethod
    def _registered_where() -> tuple[str, str, str]:
        """The registered rows of an event (`r`), and the GSI2 range they are in."""
        prefix = ci.gsi2_sk_prefix(ci.STATUS_REGISTERED)
        return (
            f"r.gsi2pk = :pk AND r.gsi2sk >= :lo AND r.gsi2sk < :hi AND r.status = '{ci.STATUS_REGISTERED}' "
            "AND r.expires_at > :now",
            prefix,
            ci.prefix_upper_bound(prefix),
        )

    @staticmethod
    def _customer_sql(event: bool, after: bool) -> str:
        where = "r.pk = :pk AND r.expires_at > :now"
        if event:
            where += " AND r.event_id = :event"
        if after:  # strictly after the last item of the previous page in (event_id, channel)
            where += " AND (r.event_id > :last_event OR (r.event_id = :last_event AND c.value > :last_channel))"
        return f"{where} ORDER BY r.event_id, c.value LIMIT :limit"

    def _served_customer_items(
        self, pk: str, event_id: str | None, after: tuple[str, str] | None, limit: int, now_epoch: int
    ) -> tuple[list[str], tuple[str, str] | None]:
        params: dict[str, object] = {"pk": pk, "now": now_epoch, "event": event_id, "limit": limit + 1}
        if after is not None:
            params["last_event"], params["last_channel"] = after
        where = self._customer_sql(event_id is not None, after is not None)
        sql = f"SELECT {_ITEM_JSON_SQL}, r.event_id, c.value FROM {_ITEMS_FROM} WHERE {where}"
        with self._connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        if len(rows) <= limit:
            return [row[0] for row in rows], None
        return [row[0] for row in rows[:limit]], (rows[limit - 1][1], rows[limit - 1][2])

    @classmethod
    def _registered_page_sql(cls) -> str:
        """A registered-customers page's items in GSI2 order after the position's customer (whose
        items a page never splits: `registered_customers` reads whole customers)."""
        where, _, _ = cls._registered_where()
        fields = [_ITEM_GSI2SK_SQL, *(f"r.{name}" for name in REGISTERED_ITEM_FIELDS[1:])]
        where = where.replace("r.gsi2sk >= :lo", "r.gsi2sk > :after")  # after the position's row key
        return f"SELECT {', '.join(fields)} FROM {_ITEMS_FROM} WHERE {where} ORDER BY r.gsi2sk, c.value"

    def _registered_customers(
        self, gsi2pk: str, after: str | None, limit: int, now_epoch: int
    ) -> tuple[list[RegisteredCustomer], bool]:
        _, lo, hi = self._registered_where()
        # The position is the last item's GSI2 sort key: its row's key and the channel.
        after_row = lo if after is None else after.rpartition("#")[0]
        with self._connect() as conn:
            # Stepped lazily: the read stops one item past the page (no LIMIT: a customer has one
            # item per channel). Closed at once so no read transaction stays open.
            params = {"pk": gsi2pk, "after": after_row, "hi": hi, "now": now_epoch}
            rows = conn.execute(self._registered_page_sql(), params)
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
            return self._read_items(conn, "r.pk = :pk AND r.expires_at > :now", {"pk": pk, "now": now_epoch})

    def _event_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        with self._connect() as conn:
            return self._read_items(conn, "r.gsi2pk = :pk AND r.expires_at > :now", {"pk": gsi2pk, "now": now_epoch})

    def _exported_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        """The stored served JSON of each row, which holds exactly the exported attributes (both
        leave PII out): one text per row instead of 19 values an item, its channel the row's
        channel list (an item per channel when decoded), the texts joined by SQLite into one per
        page of `_EXPORT_READ_ROWS` rows (one read transaction: the pages see the same items),
        each page decoded as it comes (~28 MB of text a page; all pages' text joined and copied
        at once made the export the bare batch's memory peak)."""
        pages: list[pl.DataFrame] = []
        params = {"pk": gsi2pk, "now": now_epoch, "offset": _EXPORT_READ_ROWS - 1, "after": ""}
        with self._read_transaction() as conn:
            probabilities = self._probability_columns(conn)
            while True:  # ends after the last page: each starts after the last one's end, the last has none
                end = conn.execute(_EXPORT_PAGE_END_SQL, params).fetchone()
                params["end"] = end[0] if end else None
                (text,) = conn.execute(
                    _EXPORT_PAGE_SQL.format(end=_EXPORT_PAGE_UP_TO if end else ""), params
                ).fetchone()
                if text is not None:
                    pages.append(items_from_served_json(text.encode(), probabilities, channel_lists=True))
                if end is None:
                    break
                params["after"] = end[0]
            stored = self._count_event_items(gsi2pk, now_epoch)  # this thread's connection: the same read
        items = pl.concat(pages) if pages else items_from_served_json(b"", probabilities)
        if items.height != stored:  # group_concat skips a NULL text: never lose an item silently
            raise RuntimeError(f"{gsi2pk}: {stored} live items but {items.height} stored served JSON texts")
        return ci.drop_empty_probabilities(items)

    @classmethod
    def _live_filter(cls, conn: sqlite3.Connection, now_epoch: int) -> str:
        """The condition keeping an event's live items (`AND expires_at > :now`), or none when no item
        can have expired: every TTL an item is written with is in the expiries table, so when none
        of them has passed, GSI2 alone answers — a covering index range instead of a row look-up
        per row (the batch check's keys right after the write). Ask it in the read that runs the
        statement."""
        return _LIVE if cls._any_expired(conn, now_epoch) else ""

    def _event_item_sort_keys(self, gsi2pk: str, now_epoch: int) -> pl.Series:
        """Read as the event's rows (a customer's items once, their channels a JSON array) and made
        items here: Python's sqlite3 builds an object per value, so a row per customer, not per
        item, and no key concatenated in SQL. Both store checks of the batch read them: at 3M
        profiles (197,050 items) their steps 0.49 + 0.41 -> 0.34 + 0.30 s (medians of four)."""
        with self._read_transaction() as conn:
            sql = _SORT_KEYS_SQL.format(live=self._live_filter(conn, now_epoch))
            rows = conn.execute(sql, {"pk": gsi2pk, "now": now_epoch}).fetchall()
        schema = {"gsi2sk": pl.String(), "channels": pl.String()}
        items = _items_of_rows(pl.DataFrame(rows, schema=schema, orient="row"))
        return items.select(pl.concat_str("gsi2sk", pl.lit("#"), "channel")).to_series()

    def _count_event_items(self, gsi2pk: str, now_epoch: int) -> int:
        with self._read_transaction() as conn:
            sql = _COUNT_SQL.format(live=self._live_filter(conn, now_epoch))
            return int(conn.execute(sql, {"pk": gsi2pk, "now": now_epoch}).fetchone()[0])

    def query_plans(self) -> dict[str, str]:
        """EXPLAIN QUERY PLAN of each read access pattern (local diagnostics and tests)."""
        where, lo, hi = self._registered_where()
        probe = {"pk": "x", "lo": lo, "hi": hi, "now": 0, "min_score": 0.0, "limit": 1, "channel": "email"}
        select = f"SELECT r.* FROM {_ITEMS_FROM} WHERE "
        top = f"SELECT r.* FROM {_ROWS} AS r WHERE "
        queries = {
            "top_candidates_for_channel": (top + self._top_sql(True, False), probe),
            "top_candidates_for_channel/next_page": (
                top + self._top_sql(True, True),
                {**probe, "last_score": 0.5, "last_customer": "c"},
            ),
            "registered_candidates": (select + where, probe),
            "registered_customers_page": (self._registered_page_sql(), {**probe, "after": lo}),
            "served_customer_items": (
                select + self._customer_sql(True, True),
                {**probe, "event": "e", "last_event": "e", "last_channel": "c"},
            ),
            "candidates_for_customer": (select + "r.pk = :pk AND r.expires_at > :now", probe),
            "event_items": (select + "r.gsi2pk = :pk AND r.expires_at > :now", probe),
            "event_item_keys": (_SORT_KEYS_SQL.format(live=""), probe),
            "event_item_keys/some_ttl_passed": (_SORT_KEYS_SQL.format(live=_LIVE), probe),
            "exported_items_page_end": (_EXPORT_PAGE_END_SQL, {**probe, "after": "", "offset": 1}),
            "exported_items_page": (
                _EXPORT_PAGE_SQL.format(end=_EXPORT_PAGE_UP_TO),
                {**probe, "after": "", "end": "z"},
            ),
            "count_event_items": (_COUNT_SQL.format(live=""), probe),
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
        """In key order: a write's entries share one sk, so they append one range of the key."""
        rows = entries.select(_CACHE_COLUMNS).sort("sk", "customer_id")
        with self._bulk_transaction() as conn:
            _insert_rows(conn, f"INSERT OR REPLACE INTO {_CACHE}", rows, _CACHE_WRITE_ROWS)
            self._record_expiries(conn, rows["expires_at"].unique().to_list(), _CACHE_EXPIRIES)


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
