"""The candidates table and score cache in one local SQLite file (WAL), the local deployment's store.

Same keys and access patterns as the DynamoDB tables (see `base.py`): a table per DynamoDB
table and an index per GSI, so every read is an index range, never a table scan
(`SqliteCandidateStore.query_plans` shows it). A replace runs in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from typing import ClassVar

import polars as pl
from pydantic import Field, PrivateAttr

from eventreach_assets.domain import candidate_items as ci
from eventreach_assets.resources.candidate_store.base import TS_FORMAT, CandidateStoreResource, ReplacePlanner
from eventreach_assets.resources.sqlite import SqliteBacked, SqliteConnections

_ITEMS = "candidate_items"
_CACHE = "score_cache"
_GSI1 = "candidate_items_gsi1"
_GSI2 = "candidate_items_gsi2"

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
    PRIMARY KEY (pk, sk)
);
CREATE INDEX IF NOT EXISTS {_GSI1} ON {_ITEMS} (gsi1pk, score DESC, customer_id);
CREATE INDEX IF NOT EXISTS {_GSI2} ON {_ITEMS} (gsi2pk, gsi2sk);
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
        status = '{ci.STATUS_REGISTERED}'
    WHERE pk = :pk AND sk >= :lo AND sk < :hi
"""


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

    # -- plumbing (connections: SqliteBacked) --

    @staticmethod
    def _probability_columns(conn: sqlite3.Connection) -> list[str]:
        names = [row[1] for row in conn.execute(f"PRAGMA table_info({_ITEMS})")]
        return sorted(name for name in names if name.startswith(ci.PROBABILITY_PREFIX))

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
        schema = {name: pl.String() for name in ci.item_columns(probabilities)}
        schema.update({"score": pl.Float64(), "expires_at": pl.Int64()})
        schema.update({name: pl.Float64() for name in probabilities})
        frame = pl.DataFrame(rows, schema=schema, orient="row")
        return frame.with_columns(
            pl.col("status_at", "written_at").str.to_datetime(TS_FORMAT, time_zone="UTC", time_unit="us"),
            pl.col("batch_date").str.to_date("%Y-%m-%d"),
        )

    @staticmethod
    def _to_storage(items: pl.DataFrame) -> pl.DataFrame:
        return items.with_columns(
            pl.col("status_at", "written_at").dt.to_string(TS_FORMAT),
            pl.col("batch_date").dt.to_string("%Y-%m-%d"),
        )

    # -- writes --

    def _replace_event_items(
        self, program_id: str, event_id: str, planner: ReplacePlanner, batch_write_size: int
    ) -> tuple[ci.ReplacePlan, int]:
        # One transaction: the state read, the plan and every write see the same rows.
        with self._transaction() as conn:
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
        columns = ", ".join(f'"{name}"' for name in stored.columns)
        # Upsert, not INSERT OR REPLACE: a rewrite updates rows in place and leaves index
        # entries whose keys did not change alone (less work when re-materializing).
        updates = ", ".join(f'"{name}" = excluded."{name}"' for name in stored.columns if name not in ("pk", "sk"))
        insert = (
            f"INSERT INTO {_ITEMS} ({columns}) VALUES ({', '.join('?' * stored.width)}) "
            f"ON CONFLICT (pk, sk) DO UPDATE SET {updates}"
        )
        for chunk in stored.iter_slices(batch_write_size):
            conn.executemany(insert, chunk.rows())
            batches += 1
        if plan.retained.height:
            conn.executemany(
                f"UPDATE {_ITEMS} SET expires_at = max(expires_at, ?) WHERE pk = ? AND sk = ?",
                plan.retained.select(pl.lit(plan.expires_at), "pk", "sk").rows(),
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

    def _top_page(
        self,
        gsi1pk: str,
        min_score: float,
        exclude_registered: bool,
        after: tuple[float, str] | None,
        now_epoch: int,
        limit: int,
    ) -> tuple[pl.DataFrame, bool]:
        params: dict[str, object] = {
            "pk": gsi1pk,
            "min_score": min_score,
            "now": now_epoch,
            "limit": limit + 1,  # one more tells whether another page exists
        }
        if after is not None:
            params["last_score"], params["last_customer"] = after
        with self._connect() as conn:
            page = self._read_items(conn, self._top_sql(exclude_registered, after is not None), params)
        return page.head(limit), page.height > limit

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

    def _count_event_items(self, gsi2pk: str, now_epoch: int) -> int:
        with self._connect() as conn:
            sql = f"SELECT count(*) FROM {_ITEMS} WHERE gsi2pk = :pk AND expires_at > :now"
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
            "candidates_for_customer": (select + "pk = :pk AND expires_at > :now", probe),
            "event_items": (select + "gsi2pk = :pk AND expires_at > :now", probe),
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
        with self._transaction() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO {_CACHE} ({', '.join(entries.columns)}) "
                f"VALUES ({', '.join('?' * entries.width)})",
                entries.iter_rows(),
            )
