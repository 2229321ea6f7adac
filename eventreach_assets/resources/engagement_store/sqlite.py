"""Engagement records in a local SQLite file (WAL), which the delivery ledger may share.

One table per record kind keyed by its natural key; `INSERT ... ON CONFLICT` makes every write
idempotent, and `_UPGRADE` makes the registration status changes the interface lists.
"""

from __future__ import annotations

import json
from typing import ClassVar

import polars as pl
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.engagement_schemas import CANCELLED, REGISTERED, WAITLISTED
from eventreach_assets.resources.engagement_store.base import (
    RECORD_KINDS,
    REGISTRATION,
    EngagementStoreResource,
    RecordKind,
)
from eventreach_assets.resources.sqlite import SqliteBacked, SqliteConnections


def _sqlite_table(kind: RecordKind) -> str:
    required = {*kind.keys, kind.time}
    columns = [
        f"{name} {'INTEGER' if dtype.is_integer() else 'TEXT'}{' NOT NULL' if name in required else ''}"
        for name, dtype in kind.schema.items()
    ]
    return (
        f"CREATE TABLE IF NOT EXISTS {kind.table} (\n    "
        + ",\n    ".join([*columns, f"PRIMARY KEY ({', '.join(kind.keys)})"])
        + "\n);"
    )


_DDL = "\n".join(_sqlite_table(kind) for kind in RECORD_KINDS)
# The status changes `record_registrations` lists; a renewal (cancelled, then a later registration) takes its fields.
_OLD = REGISTRATION.table
_RENEWED = f"({_OLD}.status = '{CANCELLED}' AND excluded.registered_at > {_OLD}.registered_at)"
_UPGRADE = (
    "ON CONFLICT (event_id, customer_id) DO UPDATE SET status = excluded.status, recorded_at = excluded.recorded_at, "
    + ", ".join(
        f"{name} = CASE WHEN {_RENEWED} THEN excluded.{name} ELSE {_OLD}.{name} END"
        for name in ("registered_at", "registration_id", "channel", "campaign_id")
    )
    + f" WHERE ({_OLD}.status = '{WAITLISTED}' AND excluded.status = '{REGISTERED}')"
    f" OR ({_OLD}.status IN ('{REGISTERED}', '{WAITLISTED}') AND excluded.status = '{CANCELLED}')"
    f" OR ({_RENEWED} AND excluded.status IN ('{REGISTERED}', '{WAITLISTED}'))"
)


class SqliteEngagementStore(SqliteBacked, EngagementStoreResource):
    """Engagement records in a local SQLite file (WAL), which the delivery ledger may share,
    one table per record kind keyed by its natural key; `INSERT ... ON CONFLICT` makes every
    write idempotent inside one `BEGIN IMMEDIATE` transaction."""

    path: str = Field(description="SQLite file; may be the ledger's; created on first use.")
    busy_timeout_seconds: float = Field(default=30.0, description="How long a call waits for another writer.")

    _sqlite: SqliteConnections | None = PrivateAttr(default=None)
    _ddl: ClassVar[str] = _DDL

    def _write(self, kind: RecordKind, stored: pl.DataFrame) -> int:
        conflict = _UPGRADE if kind is REGISTRATION else "ON CONFLICT DO NOTHING"
        sql = (
            f"INSERT INTO {kind.table} ({', '.join(stored.columns)}) "
            f"VALUES ({', '.join('?' * stored.width)}) {conflict}"
        )
        with self._transaction() as conn:
            return max(conn.executemany(sql, stored.iter_rows()).rowcount, 0)

    def _fetch_page(self, event_id: str, status: str, after: str | None, count: int) -> list[tuple]:
        # The primary key (event_id, customer_id) is the order: an index range, no sort.
        sql = (
            f"SELECT {', '.join(REGISTRATION.schema)} FROM {REGISTRATION.table} WHERE event_id = :event_id "
            "AND customer_id > :after AND status = :status ORDER BY customer_id LIMIT :count"
        )
        params = {"event_id": event_id, "after": after or "", "status": status, "count": count}
        with self._connect() as conn:
            return conn.execute(sql, params).fetchall()

    def _cancelled_among(self, event_id: str, customer_ids: list[str]) -> set[str]:
        sql = (
            f"SELECT r.customer_id FROM json_each(:ids) AS j JOIN {REGISTRATION.table} AS r "
            f"ON r.event_id = :event_id AND r.customer_id = j.value WHERE r.status = '{CANCELLED}'"
        )
        with self._connect() as conn:
            return {row[0] for row in conn.execute(sql, {"ids": json.dumps(customer_ids), "event_id": event_id})}

    def _fetch(self, kind: RecordKind, event_id: str, status: str | None) -> list[tuple]:
        sql = f"SELECT {', '.join(kind.schema)} FROM {kind.table} WHERE event_id = :event_id"
        if status is not None:
            sql += " AND status = :status"
        with self._connect() as conn:
            return conn.execute(sql, {"event_id": event_id, "status": status}).fetchall()
