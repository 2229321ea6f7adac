"""The delivery ledger in one SQLite file: the ledger, opt-out and provider-feedback tables."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar

import polars as pl
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.delivery import DeliveryKey, DeliveryStatus, MessageKind, SentConfirmation, encode_kind
from eventreach_assets.resources.ledger.base import (
    LEASE_EXPIRED_REASON,
    DeliveryLedgerResource,
    ReservationWrite,
    decide,
)
from eventreach_assets.resources.ledger.records import FEEDBACK_COLUMNS, STORED_DELIVERY, stored_time
from eventreach_assets.resources.sqlite import SqliteBacked, SqliteConnections

_LEDGER = "delivery_ledger"
_OPT_OUTS = "delivery_opt_outs"
_DDL = f"""
CREATE TABLE IF NOT EXISTS {_LEDGER} (
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    campaign_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    provider_message_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    sends INTEGER NOT NULL DEFAULT 0,
    reserved_at TEXT,
    updated_at TEXT NOT NULL,
    sent_at TEXT,
    owner TEXT,
    attempted_at TEXT,
    PRIMARY KEY (event_id, channel, kind, customer_id)
);
CREATE INDEX IF NOT EXISTS {_LEDGER}_sent ON {_LEDGER} (kind, sent_at) WHERE status = 'sent';
CREATE TABLE IF NOT EXISTS {_OPT_OUTS} (
    customer_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    source TEXT NOT NULL,
    opted_out_at TEXT NOT NULL,
    PRIMARY KEY (customer_id, channel)
);
"""
_ADDED_COLUMNS = {"owner": "TEXT", "attempted_at": "TEXT"}  # added to ledgers created before them

# Provider feedback tables (added, not changed: the ledger table itself is untouched). Feedback
# is its own table keyed by what the provider reported, not columns on the delivery row: one
# message gets several reports (delivered, then a complaint), a report may arrive for a message
# the ledger does not know (sent by hand, or in doubt), and a replayed file must change nothing.
_FEEDBACK = "delivery_feedback"
_SUPPRESSIONS = "email_suppressions"
_REARMS = "breaker_rearms"
_FEEDBACK_DDL = f"""
CREATE INDEX IF NOT EXISTS {_LEDGER}_provider_message ON {_LEDGER} (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS {_FEEDBACK} (
    provider_message_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    feedback TEXT NOT NULL,
    bounce_type TEXT NOT NULL,  -- '' when not a bounce (NULLs are distinct in a key)
    occurred_at TEXT NOT NULL,
    bounce_subtype TEXT,
    source TEXT,
    event_id TEXT,
    channel TEXT,
    kind TEXT,
    customer_id TEXT,
    campaign_id TEXT,
    PRIMARY KEY (provider_message_id, recipient, feedback, bounce_type, occurred_at)
);
CREATE INDEX IF NOT EXISTS {_FEEDBACK}_event ON {_FEEDBACK} (event_id, channel);
CREATE INDEX IF NOT EXISTS {_FEEDBACK}_bounces ON {_FEEDBACK} (recipient, occurred_at) WHERE feedback = 'bounced';
CREATE TABLE IF NOT EXISTS {_SUPPRESSIONS} (
    address TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    suppressed_at TEXT NOT NULL,
    provider_message_id TEXT
);
CREATE TABLE IF NOT EXISTS {_REARMS} (
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    rearmed_at TEXT NOT NULL,
    rearmed_by TEXT,
    PRIMARY KEY (event_id, channel, rearmed_at)
);
"""

_COLUMNS = ", ".join(STORED_DELIVERY)
# A base-kind filter matches the kind and every occurrence of it.
_KIND_FILTER = "(:kind IS NULL OR kind = :kind OR substr(kind, 1, length(:kind) + 1) = :kind || '@')"
_EVENT_ROWS = f"WHERE event_id = :event_id AND (:channel IS NULL OR channel = :channel) AND {_KIND_FILTER}"
_PK = "(event_id, channel, kind, customer_id)"
_KEY_WHERE = "event_id = :event_id AND channel = :channel AND kind = :kind AND customer_id = :customer_id"

# The reservation's writes, parameters (campaign_id, at, event_id, channel, kind, customer_id, owner).
_INSERT_RESERVED = (
    f"INSERT INTO {_LEDGER} (campaign_id, reserved_at, event_id, channel, kind, customer_id, owner, "
    "status, attempts, sends, updated_at, attempted_at) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 1, 0, ?2, '') ON CONFLICT DO NOTHING"
)
_TAKE_OVER = (
    f"UPDATE {_LEDGER} SET status = 'pending', reason = NULL, attempts = attempts + 1, "
    "campaign_id = ?1, reserved_at = ?2, updated_at = ?2, owner = ?7, attempted_at = '' "
    "WHERE event_id = ?3 AND channel = ?4 AND kind = ?5 AND customer_id = ?6 "
    "AND (status = 'failed_transient' OR (status = 'pending' AND attempted_at = ''))"
)
# parameters (at, event_id, channel, kind, customer_id)
_EXPIRE = (
    f"UPDATE {_LEDGER} SET status = 'in_doubt', reason = '{LEASE_EXPIRED_REASON}', updated_at = ?1 "
    "WHERE event_id = ?2 AND channel = ?3 AND kind = ?4 AND customer_id = ?5 AND status = 'pending'"
)
# The send marks, by name (:event_id, :channel, :kind, :customer_id + the named values).
_ATTEMPT = (
    f"UPDATE {_LEDGER} SET attempted_at = :at, updated_at = :at WHERE {_KEY_WHERE} "
    "AND status = 'pending' AND attempted_at = '' AND reserved_at = :reserved"
)
_SENT = (
    f"INSERT INTO {_LEDGER} (event_id, channel, kind, customer_id, campaign_id, status, "
    "provider_message_id, sends, updated_at, sent_at) "
    "VALUES (:event_id, :channel, :kind, :customer_id, :campaign_id, 'sent', :pid, 1, :at, :at) "
    f"ON CONFLICT {_PK} DO UPDATE SET status = 'sent', reason = NULL, provider_message_id = :pid, "
    "sends = sends + 1, updated_at = :at, sent_at = :at, "
    "campaign_id = coalesce(:campaign_id, campaign_id)"
)


def _params(key: DeliveryKey, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": key.event_id,
        "channel": key.channel,
        "kind": encode_kind(key.kind, key.occurrence),
        "customer_id": key.customer_id,
        **extra,
    }


def _existing_rows(conn: sqlite3.Connection, frame: pl.DataFrame) -> dict[tuple, tuple]:
    """(status, reserved_at, attempted_at) of the keys of `frame` that have a row, by stored key."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS reserve_keys "
        "(customer_id TEXT, event_id TEXT, channel TEXT, kind TEXT, campaign_id TEXT)"
    )
    conn.execute("DELETE FROM temp.reserve_keys")
    conn.executemany("INSERT INTO temp.reserve_keys VALUES (?, ?, ?, ?, ?)", frame.iter_rows())
    return {
        (customer_id, event_id, channel, kind): (status, reserved_at, attempted_at)
        for customer_id, event_id, channel, kind, status, reserved_at, attempted_at in conn.execute(
            f"SELECT r.customer_id, r.event_id, r.channel, r.kind, l.status, l.reserved_at, l.attempted_at "
            f"FROM temp.reserve_keys AS r JOIN {_LEDGER} AS l USING (event_id, channel, kind, customer_id)"
        )
    }


def _write_reservations(conn: sqlite3.Connection, writes: dict[ReservationWrite, list[tuple]]) -> None:
    """The rows `decide` changes: new keys inserted, taken-over keys pending again, expired ones in doubt."""
    inserts = writes[ReservationWrite.INSERT]
    inserted = conn.executemany(_INSERT_RESERVED, inserts).rowcount
    if inserts and inserted != len(inserts):  # impossible under the lock; fail loudly, never send twice
        raise RuntimeError(f"reserved {inserted} of {len(inserts)} new keys: the ledger changed under the lock")
    conn.executemany(_TAKE_OVER, writes[ReservationWrite.TAKE_OVER])
    conn.executemany(_EXPIRE, writes[ReservationWrite.EXPIRE])


class SqliteDeliveryLedger(SqliteBacked, DeliveryLedgerResource):
    """The ledger in one SQLite file (WAL), like `SqliteCandidateStore`: one kept connection per
    process and thread, writers take the lock up front (BEGIN IMMEDIATE) and wait up to the busy
    timeout, so concurrent step processes serialize instead of failing or double-reserving."""

    path: str = Field(description="SQLite file; may be the engagement store's; created on first use.")
    busy_timeout_seconds: float = Field(default=30.0, description="How long a call waits for another writer.")

    _sqlite: SqliteConnections | None = PrivateAttr(default=None)
    _ddl: ClassVar[str] = _DDL + _FEEDBACK_DDL

    def _db(self) -> SqliteConnections:
        fresh = self._sqlite is None
        db = super()._db()
        if fresh:  # a ledger file from before the lease columns: add them (NULL attempted_at = maybe attempted)
            with db.transaction() as conn:
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({_LEDGER})")}
                for name, kind in _ADDED_COLUMNS.items():
                    if name not in present:
                        conn.execute(f"ALTER TABLE {_LEDGER} ADD COLUMN {name} {kind}")
        return db

    def _fetch(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[tuple]:
        with self._connect() as conn:
            return conn.execute(sql, params).fetchall()

    def _write(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> int:
        """One statement in a write transaction; the rows it changed."""
        with self._transaction() as conn:
            return conn.execute(sql, params).rowcount

    def _insert_new(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """An `INSERT ... ON CONFLICT DO NOTHING` over `rows`; how many were new."""
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(sql, rows)
            return conn.total_changes - before

    # ---- reservations and marks ----

    def _reserve_rows(self, frame: pl.DataFrame, at: str, cutoff: str, owner: str | None) -> list[tuple]:
        rows: list[tuple] = []
        writes: dict[ReservationWrite, list[tuple]] = {write: [] for write in ReservationWrite}
        with self._transaction() as conn:  # the write lock is held from here: read-decide-write is atomic
            existing = _existing_rows(conn, frame)
            for customer_id, event_id, channel, kind, campaign_id in frame.iter_rows():
                previous, reserved_at, attempted_at = existing.get(
                    (customer_id, event_id, channel, kind), (None, None, None)
                )
                decision = decide(previous, reserved_at, cutoff, attempted_at)
                rows.append(
                    (customer_id, event_id, channel, kind, campaign_id, decision.granted, decision.status, previous)
                )
                if decision.write == ReservationWrite.EXPIRE:
                    writes[decision.write].append((at, event_id, channel, kind, customer_id))
                elif decision.write != ReservationWrite.NONE:
                    writes[decision.write].append((campaign_id, at, event_id, channel, kind, customer_id, owner))
            _write_reservations(conn, writes)
        return rows

    def _write_sent(self, key: DeliveryKey, provider_message_id: str, at: str, campaign_id: str | None) -> None:
        self._write_sent_many([SentConfirmation(key, provider_message_id, campaign_id)], at)

    def _write_sent_many(self, confirmations: list[SentConfirmation], at: str) -> None:
        with self._transaction() as conn:  # one commit for the window
            conn.executemany(
                _SENT,
                [_params(key, campaign_id=campaign_id, pid=pid, at=at) for key, pid, campaign_id in confirmations],
            )

    def _write_status(
        self, key: DeliveryKey, status: DeliveryStatus, reason: str, at: str, campaign_id: str | None
    ) -> bool:
        written = self._write(
            f"INSERT INTO {_LEDGER} (event_id, channel, kind, customer_id, campaign_id, status, reason, updated_at) "
            "VALUES (:event_id, :channel, :kind, :customer_id, :campaign_id, :status, :reason, :at) "
            f"ON CONFLICT {_PK} DO UPDATE SET status = :status, reason = :reason, updated_at = :at, "
            "campaign_id = coalesce(:campaign_id, campaign_id) WHERE status <> 'sent'",
            _params(key, campaign_id=campaign_id, status=status.value, reason=reason, at=at),
        )
        return written > 0

    def _write_attempt(self, key: DeliveryKey, reserved_at: str, at: str) -> bool:
        return bool(self._write_attempts([key], reserved_at, at))

    def _write_attempts(self, keys: list[DeliveryKey], reserved_at: str, at: str) -> set[DeliveryKey]:
        # One transaction, one UPDATE per key: executemany would only report the total rows changed.
        with self._transaction() as conn:
            return {key for key in keys if conn.execute(_ATTEMPT, _params(key, at=at, reserved=reserved_at)).rowcount}

    def _release_owned(self, owner: str, released_reason: str, doubted_reason: str, at: str) -> tuple[int, int]:
        params = {"owner": owner, "at": at, "reason": released_reason}
        with self._transaction() as conn:
            released = conn.execute(
                f"UPDATE {_LEDGER} SET status = 'failed_transient', reason = :reason, updated_at = :at "
                "WHERE owner = :owner AND status = 'pending' AND attempted_at = ''",
                params,
            ).rowcount
            doubted = conn.execute(
                f"UPDATE {_LEDGER} SET status = 'in_doubt', reason = :reason, updated_at = :at "
                "WHERE owner = :owner AND status = 'pending'",
                params | {"reason": doubted_reason},
            ).rowcount
        return released, doubted

    def _release_pending(self, keys: Sequence[DeliveryKey], reason: str, at: str) -> int:
        with self._transaction() as conn:
            cursor = conn.executemany(
                f"UPDATE {_LEDGER} SET status = 'failed_transient', reason = :reason, updated_at = :at "
                f"WHERE {_KEY_WHERE} AND status = 'pending'",
                [_params(key, reason=reason, at=at) for key in keys],
            )
            return max(cursor.rowcount, 0)

    # ---- reads ----

    def _delivery_rows(self, event_id: str, channel: str | None, kind: str | None) -> list[tuple]:
        params = {"event_id": event_id, "channel": channel, "kind": kind}
        return self._fetch(f"SELECT {_COLUMNS} FROM {_LEDGER} {_EVENT_ROWS}", params)

    def _count_sent(self, event_id: str, channel: str | None, kind: str | None) -> int:
        params = {"event_id": event_id, "channel": channel, "kind": kind}
        return int(self._fetch(f"SELECT count(*) FROM {_LEDGER} {_EVENT_ROWS} AND status = 'sent'", params)[0][0])

    def _sent_invitation_rows(self, since: datetime, until: datetime | None) -> list[tuple]:
        upper = stored_time(until) if until is not None else "9999"
        return self._fetch(
            f"SELECT customer_id, sent_at, event_id, channel FROM {_LEDGER} "
            "WHERE kind = ? AND status = 'sent' AND sent_at >= ? AND sent_at < ?",
            (MessageKind.INVITATION.value, stored_time(since), upper),
        )

    # ---- opt-outs ----

    def _insert_opt_out(self, customer_id: str, channel: str, source: str, at: str) -> None:
        self._insert_opt_outs([(customer_id, channel, source, at)])

    def _insert_opt_outs(self, rows: list[tuple]) -> int:
        return self._insert_new(f"INSERT INTO {_OPT_OUTS} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)

    def _opt_out_rows(self, customer_ids: list[str], channels: tuple[str, ...]) -> list[tuple]:
        return self._fetch(
            f"SELECT o.customer_id, o.channel, o.source, o.opted_out_at FROM json_each(?) AS j JOIN {_OPT_OUTS} AS o "
            "ON o.customer_id = j.value WHERE o.channel IN (SELECT value FROM json_each(?))",
            (json.dumps(customer_ids), json.dumps(channels)),
        )

    # ---- provider feedback ----

    def _message_rows(self, provider_message_ids: list[str]) -> list[tuple]:
        return self._fetch(
            "SELECT l.provider_message_id, l.event_id, l.channel, l.kind, l.customer_id, l.campaign_id, "
            f"l.status, l.sent_at FROM json_each(?) AS j JOIN {_LEDGER} AS l ON l.provider_message_id = j.value",
            (json.dumps(provider_message_ids),),
        )

    def _insert_feedback(self, frame: pl.DataFrame) -> int:
        placeholders = ", ".join("?" for _ in FEEDBACK_COLUMNS)
        return self._insert_new(
            f"INSERT INTO {_FEEDBACK} ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({placeholders}) ON CONFLICT DO NOTHING",
            frame.iter_rows(),
        )

    def _feedback_rows(self, event_id: str, channel: str | None) -> list[tuple]:
        return self._fetch(
            f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM {_FEEDBACK} WHERE event_id = ? AND (? IS NULL OR channel = ?)",
            (event_id, channel, channel),
        )

    def _bounce_rows(self, addresses: list[str], since: str) -> list[tuple]:
        return self._fetch(
            f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM json_each(?) AS j JOIN {_FEEDBACK} AS f "
            "ON f.recipient = j.value WHERE f.feedback = 'bounced' AND f.occurred_at >= ?",
            (json.dumps(addresses), since),
        )

    def _insert_suppressions(self, frame: pl.DataFrame) -> int:
        sql = f"INSERT INTO {_SUPPRESSIONS} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
        return self._insert_new(sql, frame.iter_rows())

    def _suppression_rows(self, addresses: list[str]) -> list[tuple]:
        return self._fetch(
            "SELECT s.address, s.reason, s.suppressed_at, s.provider_message_id "
            f"FROM json_each(?) AS j JOIN {_SUPPRESSIONS} AS s ON s.address = j.value",
            (json.dumps(addresses),),
        )

    def _insert_rearm(self, event_id: str, channel: str, at: str, by: str) -> None:
        sql = f"INSERT INTO {_REARMS} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
        self._insert_new(sql, [(event_id, channel, at, by)])

    def _latest_rearm(self, event_id: str, channel: str) -> str | None:
        sql = f"SELECT max(rearmed_at) FROM {_REARMS} WHERE event_id = ? AND channel = ?"
        return self._fetch(sql, (event_id, channel))[0][0]
