"""The engagement store: what customers did with what we sent, per event.

Registrations (accepted and waitlisted), interactions with tracking links (open, click,
unsubscribe), attendance and survey responses. Every write is idempotent on the record's
natural key, so a feed file read twice, or a registration delivered by both the feed and the
webhook, is stored once, and the first occurrence wins (its timestamps are the true ones).
The daily metrics and campaign report read these records; nothing keeps counters on the side.

Natural keys:
- registration: (event_id, customer_id); status "registered" | "waitlisted" | "cancelled"
- interaction:  (event_id, customer_id, channel, campaign_id, action)
- attendance:   (event_id, customer_id)
- survey:       (event_id, customer_id)

`SqliteEngagementStore` keeps them in the local SQLite file the candidate store and ledger
share; `DynamoDBEngagementStore` in one DynamoDB table keyed PK = EVENT#{event_id},
SK = {record}#{customer_id}[#...] with conditional puts (attribute_not_exists) for idempotency,
so every read of an event is one key query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import dagster as dg
import polars as pl
from botocore.exceptions import ClientError
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.engagement_schemas import (
    ATTENDANCE_SCHEMA,
    CANCELLED,
    INTERACTION_SCHEMA,
    REGISTERED,
    REGISTRATION_SCHEMA,
    SURVEY_SCHEMA,
    WAITLISTED,
)
from eventreach_assets.resources.dynamodb import DynamoDBClient, create_table_if_missing, is_conditional_failure
from eventreach_assets.resources.sqlite import SqliteBacked, SqliteConnections

STATUSES: tuple[str, ...] = (REGISTERED, WAITLISTED, CANCELLED)

# Times are stored as fixed-width UTC text (ordered as text), like the delivery ledger's.
_TS_POLARS = "%Y-%m-%dT%H:%M:%S%.6fZ"
_ID = r"^[^#\s]+$"  # key segments: no separator, no whitespace (DynamoDB sort keys join them with '#')


# ---- shared by both stores: what a record is, validation, storage form ---------------------


@dataclass(frozen=True)
class RecordKind:
    """How one kind of engagement record is keyed and stored; both stores read these."""

    name: str  # for error messages
    schema: dict[str, pl.DataType]
    keys: tuple[str, ...]  # the natural key, event_id first
    time: str  # when it happened: required; reads sort by it, then by the rest of the key
    optional: tuple[str, ...]  # columns the input may lack (stored as null)
    table: str  # SQLite table
    tag: str  # DynamoDB sort-key prefix

    @property
    def order(self) -> list[str]:
        """Deterministic read order: time, customer_id, then the rest of the natural key."""
        return [self.time, *(key for key in self.keys if key != "event_id")]


REGISTRATION = RecordKind(
    "registration",
    REGISTRATION_SCHEMA,
    ("event_id", "customer_id"),
    "registered_at",
    ("channel", "campaign_id"),
    "engagement_registrations",
    "REG",
)
INTERACTION = RecordKind(
    "interaction",
    INTERACTION_SCHEMA,
    ("event_id", "customer_id", "channel", "campaign_id", "action"),
    "occurred_at",
    (),
    "engagement_interactions",
    "INT",
)
ATTENDANCE = RecordKind(
    "attendance", ATTENDANCE_SCHEMA, ("event_id", "customer_id"), "joined_at", (), "engagement_attendance", "ATT"
)
SURVEY = RecordKind(
    "survey response",
    SURVEY_SCHEMA,
    ("event_id", "customer_id"),
    "submitted_at",
    ("comment",),
    "engagement_survey",
    "SRV",
)
RECORD_KINDS: tuple[RecordKind, ...] = (REGISTRATION, INTERACTION, ATTENDANCE, SURVEY)


def naive_utc(moment: datetime) -> datetime:
    """The project's time convention for engagement: naive UTC (aware values are converted)."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def check_status(status: str) -> str:
    """A registration status, or a ValueError naming the allowed ones."""
    if status not in STATUSES:
        raise ValueError(f"registration status must be one of {list(STATUSES)}, got {status!r}")
    return status


def _time_column(frame: pl.DataFrame, kind: RecordKind, name: str) -> pl.Expr:
    dtype = frame.schema[name]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"{kind.name} column {name} must be a datetime column, got {dtype}")
    column = pl.col(name)
    if dtype.time_zone is not None:
        column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return column.dt.cast_time_unit("us")


def prepare_records(frame: pl.DataFrame, kind: RecordKind) -> pl.DataFrame:
    """The rows to store: exactly the schema's columns and dtypes, times naive UTC, one row per
    natural key (the earliest occurrence wins, as it would across calls).

    Input a store cannot key is a caller error, raised with what is wrong: a missing column, a
    value of the wrong type, a null key or time, a key with '#' or whitespace.
    """
    missing = set(kind.schema) - set(kind.optional) - set(frame.columns)
    if missing:
        raise ValueError(f"{kind.name} frame lacks columns {sorted(missing)}")
    columns: list[pl.Expr] = []
    for name, dtype in kind.schema.items():
        if name not in frame.columns:
            columns.append(pl.lit(None, dtype=dtype).alias(name))
        elif isinstance(dtype, pl.Datetime):
            columns.append(_time_column(frame, kind, name))
        else:
            columns.append(pl.col(name).cast(dtype, strict=False))
    rows = frame.select(columns)
    for name in (name for name in kind.schema if name in frame.columns):
        count = frame[name].count() - rows[name].count()  # values a (non-strict) cast turned into nulls
        if count:
            raise ValueError(f"{count} {kind.name} values of {name} are not valid {kind.schema[name]}")
    required = [*kind.keys, kind.time]
    nulls = rows.select(pl.any_horizontal(pl.col(required).is_null()).sum()).item()
    if nulls:
        raise ValueError(f"{nulls} {kind.name} rows lack one of {required}")
    for name in kind.keys:
        bad = rows.select((~pl.col(name).str.contains(_ID)).sum()).item()
        if bad:
            raise ValueError(f"{bad} {kind.name} rows have an empty {name} or one with '#' or whitespace")
    return rows.sort(kind.time, maintain_order=True).unique(list(kind.keys), keep="first", maintain_order=True)


def to_storage(rows: pl.DataFrame, kind: RecordKind) -> pl.DataFrame:
    """Prepared rows with their times as fixed-width UTC text (what both stores keep)."""
    times = [name for name, dtype in kind.schema.items() if isinstance(dtype, pl.Datetime)]
    return rows.with_columns(pl.col(times).dt.to_string(_TS_POLARS))


def from_storage(rows: Sequence[Sequence[Any]], kind: RecordKind) -> pl.DataFrame:
    """Stored rows (tuples in schema order, times as text) as a frame of the schema, in read order."""
    times = [name for name, dtype in kind.schema.items() if isinstance(dtype, pl.Datetime)]
    text_schema = {name: (pl.String() if name in times else dtype) for name, dtype in kind.schema.items()}
    frame = pl.DataFrame(rows, schema=text_schema, orient="row")
    frame = frame.with_columns(pl.col(times).str.to_datetime(_TS_POLARS, time_unit="us"))
    return frame.sort(kind.order, nulls_last=True)


# ---- interface ----------------------------------------------------------------------------


class EngagementStoreResource(dg.ConfigurableResource):
    """Interface; each `record_*` takes a frame with (at least) the columns of its schema and
    returns how many rows were new (already-stored keys are left untouched).

    Input times may be naive (taken as UTC) or aware; reads return the schema's columns and
    dtypes (naive UTC times), empty frames included, sorted by time then customer_id (then the
    rest of the natural key). Validation and storage form are shared (`prepare_records`,
    `to_storage`, `from_storage`); an implementation only writes and reads stored rows.
    """

    def record_registrations(self, registrations: pl.DataFrame, status: str, now: datetime) -> int:
        """Columns of REGISTRATION_SCHEMA minus status/recorded_at (channel and campaign_id may be
        absent: unattributed). Returns the rows new or changed. The only status changes made:

        - waitlisted -> registered (a seat: registration redelivered or waitlist promotion); the
          first registered_at stays;
        - registered | waitlisted -> cancelled (the seat is free again); registered_at stays;
        - cancelled -> registered | waitlisted only for a registration made after the cancelled
          one (a later registered_at, which replaces it): a replay of the old one changes nothing.
        """
        frame = registrations.with_columns(
            status=pl.lit(check_status(status)),
            recorded_at=pl.lit(naive_utc(now), dtype=pl.Datetime("us")),
        )
        return self._record(REGISTRATION, frame)

    def registrations(self, event_id: str, status: str | None = None) -> pl.DataFrame:
        """The event's registrations, all or one status (reminders read `registered`)."""
        return self._read(REGISTRATION, event_id, None if status is None else check_status(status))

    def record_interactions(self, interactions: pl.DataFrame) -> int:
        """Opens, clicks, unsubscribes: one per customer x channel x campaign x action (the first)."""
        return self._record(INTERACTION, interactions)

    def interactions(self, event_id: str) -> pl.DataFrame:
        """The event's interactions (the campaign report's opens and clicks)."""
        return self._read(INTERACTION, event_id, None)

    def record_attendance(self, attendance: pl.DataFrame) -> int:
        """Who joined the event (one row per customer: the first report wins)."""
        return self._record(ATTENDANCE, attendance)

    def attendance(self, event_id: str) -> pl.DataFrame:
        """The event's attendance."""
        return self._read(ATTENDANCE, event_id, None)

    def record_survey_responses(self, responses: pl.DataFrame) -> int:
        """Survey answers (comment may be absent); one per customer, the first wins."""
        return self._record(SURVEY, responses)

    def survey_responses(self, event_id: str) -> pl.DataFrame:
        """The event's survey responses (comments may hold PII: do not log them)."""
        return self._read(SURVEY, event_id, None)

    # -- what an implementation provides --

    def _record(self, kind: RecordKind, frame: pl.DataFrame) -> int:
        rows = prepare_records(frame, kind)
        return self._write(kind, to_storage(rows, kind)) if rows.height else 0

    def _read(self, kind: RecordKind, event_id: str, status: str | None) -> pl.DataFrame:
        return from_storage(self._fetch(kind, event_id, status), kind)

    def _write(self, kind: RecordKind, stored: pl.DataFrame) -> int:
        """Store rows (storage form) unless their key exists (registration: upgrade a waitlisted
        one to registered); returns the rows written."""
        raise NotImplementedError

    def _fetch(self, kind: RecordKind, event_id: str, status: str | None) -> list[tuple]:
        """The event's stored rows of `kind` (tuples in schema order; registrations of `status`)."""
        raise NotImplementedError


# ---- SQLite -------------------------------------------------------------------------------


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
# The one update: waitlisted -> registered (never back), keeping the first registered_at.
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
    """Engagement records in the local SQLite file (WAL) the candidate store and ledger may share,
    one table per record kind keyed by its natural key; `INSERT ... ON CONFLICT` makes every
    write idempotent inside one `BEGIN IMMEDIATE` transaction."""

    path: str = Field(description="SQLite file; may be the candidate store's; created on first use.")
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

    def _fetch(self, kind: RecordKind, event_id: str, status: str | None) -> list[tuple]:
        sql = f"SELECT {', '.join(kind.schema)} FROM {kind.table} WHERE event_id = :event_id"
        if status is not None:
            sql += " AND status = :status"
        with self._connect() as conn:
            return conn.execute(sql, {"event_id": event_id, "status": status}).fetchall()


# ---- DynamoDB -----------------------------------------------------------------------------


def engagement_table_definition(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the engagement table.

    pk = EVENT#{event_id}, sk = {REG|INT|ATT|SRV}#{customer_id}[#{channel}#{campaign_id}#{action}]
    (interactions): every read of an event is one Query on pk with begins_with(sk, tag).
    """
    return {
        "TableName": name,
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"} for key in ("pk", "sk")],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_engagement_table(client: Any, table_name: str) -> bool:
    """Create the engagement table unless it exists and wait until it is active; returns whether created."""
    return create_table_if_missing(client, engagement_table_definition(table_name))


def _event_pk(event_id: str) -> dict[str, str]:
    return {"S": f"EVENT#{event_id}"}


def _item(kind: RecordKind, row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as a DynamoDB item (null attributes left out, as DynamoDB items do)."""
    item: dict[str, Any] = {
        "pk": _event_pk(row["event_id"]),
        "sk": {"S": "#".join([kind.tag, *(row[key] for key in kind.keys[1:])])},
    }
    for name, dtype in kind.schema.items():
        if row[name] is not None:
            item[name] = {"N": str(row[name])} if dtype.is_integer() else {"S": row[name]}
    return item


def _row(kind: RecordKind, item: dict[str, Any]) -> tuple:
    return tuple(
        (int(item[name]["N"]) if dtype.is_integer() else item[name]["S"]) if name in item else None
        for name, dtype in kind.schema.items()
    )


def _transitions(item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The conditional updates that may apply an incoming registration row whose key exists."""
    status = item["status"]["S"]
    if status == CANCELLED:
        return [
            (
                "#status IN (:registered, :waitlisted)",
                {":registered": {"S": REGISTERED}, ":waitlisted": {"S": WAITLISTED}},
            )
        ]
    renew = ("#status = :was_cancelled AND registered_at < :registered_at", {":was_cancelled": {"S": CANCELLED}})
    if status == REGISTERED:
        return [("#status = :waitlisted", {":waitlisted": {"S": WAITLISTED}}), renew]
    return [renew]


class DynamoDBEngagementStore(DynamoDBClient, EngagementStoreResource):
    """Engagement records in one DynamoDB table (`engagement_table_definition`). Each row is a
    conditional PutItem (attribute_not_exists(pk)): a failed condition means the key is stored
    already (the first occurrence stays), so replays and concurrent writers store each key once.
    """

    table_name: str = Field(description="The engagement table (see engagement_table_definition).")
    max_parallel_requests: int = Field(default=8, ge=1, le=64, description="Threads issuing per-row requests.")

    _table_definition = staticmethod(engagement_table_definition)

    def _put(self, kind: RecordKind, row: dict[str, Any]) -> int:
        item = _item(kind, row)
        try:
            self.client().put_item(TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)")
            return 1
        except ClientError as error:
            if not is_conditional_failure(error):
                raise
        if kind is not REGISTRATION:
            return 0
        return int(any(self._change_status(item, condition, values) for condition, values in _transitions(item)))

    def _change_status(self, item: dict[str, Any], condition: str, values: dict[str, Any]) -> bool:
        """One conditional status change of a stored registration (see record_registrations)."""
        update = "SET #status = :status, recorded_at = :at"
        values = {":status": item["status"], ":at": item["recorded_at"], **values}
        if ":was_cancelled" in values:  # a new registration replacing a cancelled one takes its fields
            values[":registered_at"] = item["registered_at"]
            fields = ("registration_id", "channel", "campaign_id")
            update += ", registered_at = :registered_at" + "".join(
                f", {name} = :{name}" for name in fields if name in item
            )
            values |= {f":{name}": item[name] for name in fields if name in item}
            absent = [name for name in fields if name not in item]
            update += f" REMOVE {', '.join(absent)}" if absent else ""
        names = {"#status": "status"}
        try:
            self.client().update_item(
                TableName=self.table_name,
                Key={"pk": item["pk"], "sk": item["sk"]},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if is_conditional_failure(error):
                return False
            raise
        return True

    def _write(self, kind: RecordKind, stored: pl.DataFrame) -> int:
        return sum(self._parallel(lambda row: self._put(kind, row), list(stored.iter_rows(named=True))))

    def _fetch(self, kind: RecordKind, event_id: str, status: str | None) -> list[tuple]:
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": _event_pk(event_id), ":prefix": {"S": f"{kind.tag}#"}},
            "ConsistentRead": True,
        }
        if status is not None:
            request["FilterExpression"] = "#status = :status"
            request["ExpressionAttributeNames"] = {"#status": "status"}
            request["ExpressionAttributeValues"][":status"] = {"S": status}
        rows: list[tuple] = []
        while True:
            response = self.client().query(**request)
            rows += [_row(kind, item) for item in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                return rows
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
