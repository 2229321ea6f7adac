"""The candidates table (use case step 4, "Store Lambda") and the score cache.

Item design (keys built in `domain/candidate_items.py`): one item per customer x event x
invitation channel ("email", "in-app": the program's invitation channels, passed in by the
asset).

    PK     = CUSTOMER#{customer_id}#PROGRAM#{program_id}   SK = EVENT#{event_id}#CHANNEL#{channel}
    GSI1   = PROGRAM#{program_id}#CHANNEL#{channel}#EVENT#{event_id} / score (number)
    GSI2   = PROGRAM#{program_id}#EVENT#{event_id} / {status}#{YYYY-MM-DD}#{customer_id}#{channel}
    TTL    = expires_at, epoch seconds (candidateTTLDays after the write)

Attributes: customer_id, program_id, event_id, channel, score, score_band, status
(candidate | registered), status_at, registered_channel, batch_date, written_at, expires_at,
the declared extras (marketplace, timezone, geographic_region, email, job_role; null when the
scored frame lacks them) and the model probability columns p_*.

Access patterns, each a key query, never a scan:
- top-N for a channel, score >= min, score desc  -> GSI1 (`top_candidates_for_channel`)
- registered customers of an event               -> GSI2, begins_with(GSI2SK, "registered#")
- all items of an event (export, checks)         -> GSI2PK
- one customer's items                           -> PK

`CandidateStoreResource` is the interface (DynamoDB semantics: items, GSIs, lazy TTL so reads
filter `expires_at`, batch writes); `SqliteCandidateStore` mirrors it in one SQLite file
(WAL) with a table per DynamoDB table and an index per GSI.

The score cache (use case: "Score Cache Repository, TTL 14 days") is keyed
PK = CUSTOMER#{customer_id}, SK = SCORE#EVENT#{event_id}#MODEL#{model_id}#VERSION#{version}.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

import dagster as dg
import polars as pl
from pydantic import Field, PrivateAttr

from eventreach_assets.domain import candidate_items as ci
from eventreach_assets.resources.sqlite import SqliteBacked, SqliteConnections

# ---- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteSummary:
    """What `replace_event_candidates` did; the asset reports it as metadata."""

    program_id: str
    event_id: str
    customers: int  # distinct customers in the scored set
    items_written: int  # customers x channels, all upserted
    items_deleted: int  # stale items of the event removed
    registered_preserved: int  # customers of the new set whose registration was carried over
    registered_retained: int  # registered items absent from the new set, kept for reminders
    batches: int  # write batches of `batch_write_size` items (deletes + puts)
    expires_at: datetime  # TTL of the written items
    seconds: float


@dataclass(frozen=True)
class CandidatePage:
    """One page of a GSI1 query; pass `next_cursor` back to continue, None means done."""

    items: pl.DataFrame
    next_cursor: str | None

    @property
    def count(self) -> int:
        return self.items.height


CACHE_SCHEMA: dict[str, pl.DataType] = {"customer_id": pl.String(), "probability": pl.Float64()}


# ---- interface ----------------------------------------------------------------------------


class CandidateStoreResource(dg.ConfigurableResource):
    """The candidates table and score cache; implementations differ only in where items live.

    Times may be naive (taken as UTC) or aware. `now=None` means the current time. Reads
    return polars frames with the attribute columns of `domain.candidate_items.item_columns`
    (keys left out), never expired items.
    """

    def replace_event_candidates(
        self,
        program_id: str,
        event_id: str,
        scored: pl.DataFrame,
        channels: list[str],
        now: datetime,
        ttl_days: int,
        batch_write_size: int,
    ) -> WriteSummary:
        """Make the event's items exactly `scored` x `channels` (idempotent re-materialization).

        Stale items of the event are deleted; customers registered before keep their
        registration; registered items absent from the new set are kept (reminders need
        them) with their TTL raised. Writes go in batches of `batch_write_size` items.
        `scored` needs customer_id (unique), score (0..1) and score_band; p_* and the
        declared extra columns are stored when present.
        """
        raise NotImplementedError

    def top_candidates_for_channel(
        self,
        program_id: str,
        event_id: str,
        channel: str,
        min_score: float,
        limit: int,
        exclude_registered: bool = True,
        cursor: str | None = None,
        now: datetime | None = None,
    ) -> CandidatePage:
        """GSI1: live items of the channel with score >= min_score, score desc then customer_id,
        at most `limit` per page; `next_cursor` is opaque and tied to this query."""
        raise NotImplementedError

    def registered_candidates(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        """GSI2 prefix "registered#": registered items of the event (one per customer x channel)."""
        raise NotImplementedError

    def candidates_for_customer(self, program_id: str, customer_id: str, now: datetime | None = None) -> pl.DataFrame:
        """PK: one customer's live items across the program's events (support, status updates)."""
        raise NotImplementedError

    def event_items(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        """GSI2PK: every live item of the event, sorted by customer_id, channel (export, checks)."""
        raise NotImplementedError

    def count_event_items(self, program_id: str, event_id: str, now: datetime | None = None) -> int:
        """Number of live items of the event (GSI2PK, keys only)."""
        raise NotImplementedError

    def mark_registered(
        self, program_id: str, event_id: str, customer_id: str, registered_at: datetime, channel: str | None
    ) -> int:
        """Set status `registered` on all the customer's items for the event; returns how many.

        Replays are harmless: the earliest registration time (and its channel) wins.
        0 means the customer is not a candidate of the event.
        """
        raise NotImplementedError

    def mark_registered_many(self, program_id: str, event_id: str, registrations: pl.DataFrame) -> int:
        """`mark_registered` for a frame of customer_id, registered_at[, channel]; returns items updated.

        The default calls `mark_registered` per row (DynamoDB has no batch update either);
        the SQLite store overrides it with one statement in one transaction.
        """
        frame = registration_frame(registrations)
        return sum(
            self.mark_registered(program_id, event_id, row["customer_id"], row["registered_at"], row["channel"])
            for row in frame.iter_rows(named=True)
        )

    def purge_expired(self, now: datetime) -> int:
        """Delete expired items and cache entries (what DynamoDB TTL does by itself); returns how many."""
        raise NotImplementedError

    def get_cached_scores(
        self, event_id: str, model_id: str, model_version: str, customer_ids: pl.Series, now: datetime
    ) -> pl.DataFrame:
        """Cached probabilities (customer_id, probability) of live entries; misses are absent."""
        raise NotImplementedError

    def put_cached_scores(
        self, event_id: str, model_id: str, model_version: str, scores: pl.DataFrame, now: datetime, ttl_days: int
    ) -> int:
        """Upsert `scores` (customer_id, probability) with a TTL of `ttl_days`; returns entries written."""
        raise NotImplementedError


# ---- SQLite -------------------------------------------------------------------------------

_ITEMS = "candidate_items"
_CACHE = "score_cache"
_GSI1 = "candidate_items_gsi1"
_GSI2 = "candidate_items_gsi2"
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"  # fixed width: strings compare in time order

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


def registration_frame(registrations: pl.DataFrame) -> pl.DataFrame:
    """customer_id, registered_at (aware UTC; naive taken as UTC), channel (null when absent)."""
    missing = {"customer_id", "registered_at"} - set(registrations.columns)
    if missing:
        raise ValueError(f"registrations lacks columns {sorted(missing)}")
    if not isinstance(registrations.schema["registered_at"], pl.Datetime):
        raise ValueError(f"registered_at must be a datetime column, got {registrations.schema['registered_at']}")
    at = pl.col("registered_at")
    at = at.dt.replace_time_zone("UTC") if registrations.schema["registered_at"].time_zone is None else at
    return registrations.select(
        pl.col("customer_id").cast(pl.String),
        at.dt.convert_time_zone("UTC").dt.cast_time_unit("us"),
        (pl.col("channel") if "channel" in registrations.columns else pl.lit(None)).cast(pl.String).alias("channel"),
    )


def resolve_now(now: datetime | None) -> datetime:
    return ci.as_utc(now) if now is not None else datetime.now(UTC)


def encode_cursor(query_key: str, score: float, customer_id: str) -> str:
    raw = json.dumps({"k": query_key, "s": score, "c": customer_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str, query_key: str) -> tuple[float, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        key, score, customer_id = data["k"], float(data["s"]), str(data["c"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a candidate page cursor: {cursor!r}") from error
    if key != query_key:
        raise ValueError(
            "cursor belongs to a different query (program, event, channel, min_score or exclude_registered changed)"
        )
    return score, customer_id


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

    def replace_event_candidates(
        self,
        program_id: str,
        event_id: str,
        scored: pl.DataFrame,
        channels: list[str],
        now: datetime,
        ttl_days: int,
        batch_write_size: int,
    ) -> WriteSummary:
        started = time.perf_counter()
        if batch_write_size <= 0:
            raise ValueError(f"batch_write_size must be positive, got {batch_write_size}")
        items = ci.build_candidate_items(program_id, event_id, scored, channels, now, ttl_days)
        probabilities = ci.probability_columns(items)
        with self._transaction() as conn:
            gsi2pk = ci.gsi2_pk(program_id, event_id)
            existing_keys = pl.DataFrame(
                conn.execute(f"SELECT pk, sk FROM {_ITEMS} WHERE gsi2pk = ?", (gsi2pk,)).fetchall(),
                schema=ci.KEY_FRAME,
                orient="row",
            )
            where, lo, hi = self._registered_where()
            registered_rows = conn.execute(
                f"SELECT {', '.join(ci.REGISTERED_COLUMNS)} FROM {_ITEMS} WHERE {where}",
                {"pk": gsi2pk, "lo": lo, "hi": hi, "now": 0},  # expired ones too: the plan decides
            ).fetchall()
            registered = pl.DataFrame(
                registered_rows, schema={**ci.REGISTERED_COLUMNS, "status_at": pl.String()}, orient="row"
            ).with_columns(pl.col("status_at").str.to_datetime(TS_FORMAT, time_zone="UTC", time_unit="us"))
            plan = ci.plan_replace(items, existing_keys, registered, now)
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
        return WriteSummary(
            program_id=program_id,
            event_id=event_id,
            customers=scored.height,
            items_written=plan.items.height,
            items_deleted=plan.stale.height,
            registered_preserved=plan.registered_preserved,
            registered_retained=plan.retained.height,
            batches=batches,
            expires_at=datetime.fromtimestamp(ci.expires_at(now, ttl_days), UTC),
            seconds=round(time.perf_counter() - started, 3),
        )

    def mark_registered(
        self, program_id: str, event_id: str, customer_id: str, registered_at: datetime, channel: str | None
    ) -> int:
        frame = pl.DataFrame(
            {"customer_id": [customer_id], "registered_at": [ci.as_utc(registered_at)], "channel": [channel]},
            schema={"customer_id": pl.String, "registered_at": pl.Datetime("us", "UTC"), "channel": pl.String},
        )
        return self.mark_registered_many(program_id, event_id, frame)

    def mark_registered_many(self, program_id: str, event_id: str, registrations: pl.DataFrame) -> int:
        frame = registration_frame(registrations)
        bad = frame.filter(pl.col("customer_id").is_null() | pl.col("registered_at").is_null())
        if bad.height:
            raise ValueError(f"{bad.height} registrations lack customer_id or registered_at")
        prefix = ci.event_sk_prefix(ci.check_id("event_id", event_id))
        params = frame.select(
            at=pl.col("registered_at").dt.to_string(TS_FORMAT),
            channel="channel",
            pk=pl.concat_str([pl.lit("CUSTOMER#"), pl.col("customer_id"), pl.lit(f"#PROGRAM#{program_id}")]),
            lo=pl.lit(prefix),
            hi=pl.lit(ci.prefix_upper_bound(prefix)),
        )
        with self._transaction() as conn:
            cursor = conn.executemany(_MARK_SQL, params.iter_rows(named=True))
            return max(cursor.rowcount, 0)

    def purge_expired(self, now: datetime) -> int:
        cutoff = ci.epoch_seconds(now)
        with self._transaction() as conn:
            items = conn.execute(f"DELETE FROM {_ITEMS} WHERE expires_at <= ?", (cutoff,)).rowcount
            cached = conn.execute(f"DELETE FROM {_CACHE} WHERE expires_at <= ?", (cutoff,)).rowcount
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

    def top_candidates_for_channel(
        self,
        program_id: str,
        event_id: str,
        channel: str,
        min_score: float,
        limit: int,
        exclude_registered: bool = True,
        cursor: str | None = None,
        now: datetime | None = None,
    ) -> CandidatePage:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        pk = ci.gsi1_pk(program_id, channel, event_id)
        query_key = f"{pk}|{float(min_score)!r}|{exclude_registered}"
        params: dict[str, object] = {
            "pk": pk,
            "min_score": float(min_score),
            "now": ci.epoch_seconds(resolve_now(now)),
            "limit": limit + 1,  # one more tells whether another page exists
        }
        if cursor is not None:
            params["last_score"], params["last_customer"] = decode_cursor(cursor, query_key)
        with self._connect() as conn:
            page = self._read_items(conn, self._top_sql(exclude_registered, cursor is not None), params)
        if page.height <= limit:
            return CandidatePage(items=page, next_cursor=None)
        page = page.head(limit)
        last = page.row(limit - 1, named=True)
        return CandidatePage(items=page, next_cursor=encode_cursor(query_key, last["score"], last["customer_id"]))

    def registered_candidates(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        where, lo, hi = self._registered_where()
        params = {"pk": ci.gsi2_pk(program_id, event_id), "lo": lo, "hi": hi, "now": ci.epoch_seconds(resolve_now(now))}
        with self._connect() as conn:
            return self._read_items(conn, where, params).sort("customer_id", "channel")

    def candidates_for_customer(self, program_id: str, customer_id: str, now: datetime | None = None) -> pl.DataFrame:
        params = {"pk": ci.customer_pk(customer_id, program_id), "now": ci.epoch_seconds(resolve_now(now))}
        with self._connect() as conn:
            return self._read_items(conn, "pk = :pk AND expires_at > :now", params).sort("event_id", "channel")

    def event_items(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        params = {"pk": ci.gsi2_pk(program_id, event_id), "now": ci.epoch_seconds(resolve_now(now))}
        with self._connect() as conn:
            return self._read_items(conn, "gsi2pk = :pk AND expires_at > :now", params).sort("customer_id", "channel")

    def count_event_items(self, program_id: str, event_id: str, now: datetime | None = None) -> int:
        params = {"pk": ci.gsi2_pk(program_id, event_id), "now": ci.epoch_seconds(resolve_now(now))}
        with self._connect() as conn:
            sql = f"SELECT count(*) FROM {_ITEMS} WHERE gsi2pk = :pk AND expires_at > :now"
            return int(conn.execute(sql, params).fetchone()[0])

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

    def get_cached_scores(
        self, event_id: str, model_id: str, model_version: str, customer_ids: pl.Series, now: datetime
    ) -> pl.DataFrame:
        keys = customer_ids.cast(pl.String).drop_nulls().unique()
        if keys.is_empty():
            return pl.DataFrame(schema=CACHE_SCHEMA)
        params = {
            "ids": json.dumps(keys.to_list()),
            "sk": ci.score_cache_sk(event_id, model_id, model_version),
            "now": ci.epoch_seconds(now),
        }
        with self._connect() as conn:
            rows = conn.execute(_CACHE_GET_SQL, params).fetchall()
        return pl.DataFrame(rows, schema=CACHE_SCHEMA, orient="row")

    def put_cached_scores(
        self, event_id: str, model_id: str, model_version: str, scores: pl.DataFrame, now: datetime, ttl_days: int
    ) -> int:
        missing = {"customer_id", "probability"} - set(scores.columns)
        if missing:
            raise ValueError(f"scores lacks columns {sorted(missing)}")
        rows = (
            scores.select(pl.col("customer_id").cast(pl.String), pl.col("probability").cast(pl.Float64))
            .filter(pl.col("customer_id").is_not_null() & pl.col("probability").is_not_null())
            .unique("customer_id", keep="last", maintain_order=True)
            .select(
                pk=pl.concat_str([pl.lit("CUSTOMER#"), pl.col("customer_id")]),
                sk=pl.lit(ci.score_cache_sk(event_id, model_id, model_version)),
                customer_id="customer_id",
                event_id=pl.lit(event_id),
                model_id=pl.lit(model_id),
                model_version=pl.lit(model_version),
                probability="probability",
                cached_at=pl.lit(ci.as_utc(now).strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
                expires_at=pl.lit(ci.expires_at(now, ttl_days)),
            )
        )
        with self._transaction() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO {_CACHE} ({', '.join(rows.columns)}) VALUES ({', '.join('?' * rows.width)})",
                rows.iter_rows(),
            )
        return rows.height
