"""Items of the candidates table: keys, attributes, TTL, and what a replace must change.

One item per customer x event x invitation channel, shaped for DynamoDB (the SQLite store
holds the same items a row per customer x event, and derives these keys) so every access pattern
of the use case is a key query:

    PK     = CUSTOMER#{customer_id}#PROGRAM#{program_id}          one customer's rows
    SK     = EVENT#{event_id}#CHANNEL#{channel}
    GSI1PK = PROGRAM#{program_id}#CHANNEL#{channel}#EVENT#{event_id}
    GSI1SK = the numeric `score` attribute itself                 top-N for a channel
    GSI2PK = PROGRAM#{program_id}#EVENT#{event_id}                 all rows of an event
    GSI2SK = {status}#{status date}#{customer_id}#{channel}       "registered" is a prefix
    expires_at = epoch seconds (the table's TTL attribute)

GSI1 is scoped to the event because campaigns are per event. GSI1SK is the `score`
attribute rather than a copy so the two can never disagree. Nothing here imports Dagster;
the stores (resources/candidate_store/) call these functions and only do I/O.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

STATUS_CANDIDATE = "candidate"
STATUS_REGISTERED = "registered"
STATUSES = (STATUS_CANDIDATE, STATUS_REGISTERED)

PROBABILITY_PREFIX = "p_"  # model probability columns, e.g. p_event_attendance
# Extra attributes copied from the scored frame when present (null otherwise). `email` is
# PII: it is stored because the email channel needs it, and never exported.
EXTRA_ATTRIBUTES: tuple[str, ...] = ("marketplace", "timezone", "geographic_region", "email", "job_role")
# Columns the analyst export never contains (see resources/export/base.py).
EXPORT_EXCLUDED_COLUMNS: tuple[str, ...] = ("email",)

KEY_COLUMNS: tuple[str, ...] = ("pk", "sk", "gsi1pk", "gsi2pk", "gsi2sk")
TIME_TEXT_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"  # times as the stores write them: fixed width, compare in time order
DATE_TEXT_FORMAT = "%Y-%m-%d"
GSI1_SORT_KEY = "score"

# Attributes every item has, in the order reads return them (then extras, then p_*).
BASE_ATTRIBUTES: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "program_id": pl.String(),
    "event_id": pl.String(),
    "channel": pl.String(),
    "score": pl.Float64(),
    "score_band": pl.String(),
    "status": pl.String(),  # candidate | registered
    "status_at": pl.Datetime("us", "UTC"),  # when the status was set (write time or registration time)
    "registered_channel": pl.String(),  # channel the customer registered through, if known
    "batch_date": pl.Date(),  # UTC date of the batch that wrote the item
    "written_at": pl.Datetime("us", "UTC"),
    "expires_at": pl.Int64(),  # TTL, epoch seconds
}
ITEM_SCHEMA: dict[str, pl.DataType] = {
    **{name: pl.String() for name in KEY_COLUMNS},
    **BASE_ATTRIBUTES,
    **{name: pl.String() for name in EXTRA_ATTRIBUTES},
}
REQUIRED_SCORED_COLUMNS: tuple[str, ...] = ("customer_id", "score", "score_band")

# Ids become key segments: no separator, no whitespace. A character class, for polars and `re`.
KEY_UNSAFE_CHARACTERS = r"#\s"
_ID = re.compile(rf"^[^{KEY_UNSAFE_CHARACTERS}]+$")
_PROBABILITY_COLUMN = re.compile(r"^p_[a-z0-9_]+$")


# ---- time / TTL ---------------------------------------------------------------------------


def as_utc(moment: datetime) -> datetime:
    """Aware UTC datetime; naive values are taken as UTC (the project's convention)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def epoch_seconds(moment: datetime) -> int:
    """Epoch seconds, the unit DynamoDB TTL attributes use."""
    return int(as_utc(moment).timestamp())


def expires_at(now: datetime, ttl_days: int) -> int:
    """TTL attribute for an item written at `now` that should live `ttl_days` days."""
    if ttl_days <= 0:
        raise ValueError(f"ttl_days must be positive, got {ttl_days}")
    return epoch_seconds(as_utc(now) + timedelta(days=ttl_days))


def live(now_epoch: int) -> pl.Expr:
    """Items whose TTL has not passed; DynamoDB deletes lazily, so reads must filter too."""
    return pl.col("expires_at") > now_epoch


# ---- keys ---------------------------------------------------------------------------------


def check_id(kind: str, value: str) -> str:
    """Ids are key segments, so '#' or whitespace would make keys ambiguous."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{kind} must be a non-empty string without '#' or whitespace, got {value!r}")
    return value


def customer_pk(customer_id: str, program_id: str) -> str:
    return f"CUSTOMER#{customer_id}#PROGRAM#{program_id}"


def event_channel_sk(event_id: str, channel: str) -> str:
    return f"{event_sk_prefix(event_id)}{channel}"


def event_sk_prefix(event_id: str) -> str:
    """begins_with(SK, ...) selects all of one customer's items for one event."""
    return f"EVENT#{event_id}#CHANNEL#"


def gsi1_pk(program_id: str, channel: str, event_id: str) -> str:
    return f"PROGRAM#{program_id}#CHANNEL#{channel}#EVENT#{event_id}"


def gsi2_pk(program_id: str, event_id: str) -> str:
    return f"PROGRAM#{program_id}#EVENT#{event_id}"


def gsi2_sk_prefix(status: str, at: datetime | None = None) -> str:
    """begins_with(GSI2SK, ...): a status, or a status on one UTC date."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    return f"{status}#" if at is None else f"{status}#{as_utc(at).date().isoformat()}#"


def gsi2_sk(status: str, at: datetime, customer_id: str, channel: str) -> str:
    return f"{gsi2_sk_prefix(status, at)}{customer_id}#{channel}"


GSI2_SK_PARTS: tuple[str, ...] = ("status", "status_date", "customer_id", "channel")


def gsi2_sk_parts(sort_keys: pl.Series) -> pl.DataFrame:
    """The parts of GSI2 sort keys (`gsi2_sk`), one column each: every part is a checked id, a
    status or a date, none holds the separator."""
    return (
        sort_keys.cast(pl.String)
        .str.split_exact("#", len(GSI2_SK_PARTS) - 1)
        .struct.rename_fields(list(GSI2_SK_PARTS))
        .struct.unnest()
    )


def store_vs_scored(item_keys: pl.DataFrame, scored_ids: pl.Series, channels: int) -> dict[str, int]:
    """How an event's live items (customer_id, channel, status) differ from the scored set the
    batch wrote: scored customers with no item, customers with other than one item per invitation
    channel, and customers in the store not scored (registered ones stay on purpose: their
    reminders need them). All zero is a store that matches."""
    per_customer = item_keys.group_by("customer_id").agg(
        channels=pl.len(), registered=(pl.col("status") == STATUS_REGISTERED).any()
    )
    scored = scored_ids.to_frame("customer_id")
    return {
        "scored_missing_from_store": scored.join(per_customer, on="customer_id", how="anti").height,
        "customers_with_wrong_channel_count": per_customer.join(scored, on="customer_id", how="semi")
        .filter(pl.col("channels") != channels)
        .height,
        "unexpected_customers": per_customer.join(scored, on="customer_id", how="anti")
        .filter(~pl.col("registered"))
        .height,
    }


def prefix_upper_bound(prefix: str) -> str:
    """Smallest string greater than every string starting with `prefix` (begins_with as a range)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def score_cache_pk(customer_id: str) -> str:
    return f"CUSTOMER#{customer_id}"


def score_cache_sk(event_id: str, model_id: str, model_version: str) -> str:
    return f"SCORE#EVENT#{event_id}#MODEL#{model_id}#VERSION#{model_version}"


def _gsi2_sk_expr() -> pl.Expr:
    return pl.concat_str(
        [
            pl.col("status"),
            pl.col("status_at").dt.date().dt.to_string("%Y-%m-%d"),
            pl.col("customer_id"),
            pl.col("channel"),
        ],
        separator="#",
    )


# ---- index write sharding (the DynamoDB store) -------------------------------------------

SHARD_SEPARATOR = "#SHARD#"
SHARDED_KEYS: tuple[str, ...] = ("gsi1pk", "gsi2pk")  # every item of a batch shares these per event


def index_shard(customer_id: str, shards: int) -> int:
    """A customer's index shard: crc32, so every process and release agrees (unlike hash())."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return zlib.crc32(customer_id.encode()) % shards


def shard_keys(key: str, shards: int) -> list[str]:
    """Every sharded form of an index partition key a read must query; one shard is `key` itself."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return [key] if shards == 1 else [f"{key}{SHARD_SEPARATOR}{shard}" for shard in range(shards)]


def sharded_key(key: str, customer_id: str, shards: int) -> str:
    """The form of index partition key `key` that carries this customer's items."""
    return shard_keys(key, shards)[index_shard(customer_id, shards)]


def with_index_shards(items: pl.DataFrame, shards: int) -> pl.DataFrame:
    """`items` with gsi1pk and gsi2pk suffixed by each customer's shard (unchanged for one shard)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    if shards == 1 or items.height == 0:
        return items
    shard = pl.Series([index_shard(customer_id, shards) for customer_id in items["customer_id"].to_list()])
    suffix = pl.lit(SHARD_SEPARATOR) + shard.cast(pl.String)
    return items.with_columns(pl.concat_str([pl.col(name), suffix]).alias(name) for name in SHARDED_KEYS)


def channel_of_sk(sk: str, event_id: str) -> str:
    """The channel segment of an SK built by `event_channel_sk`."""
    prefix = event_sk_prefix(event_id)
    if not sk.startswith(prefix):
        raise ValueError(f"{sk!r} is not a key of event {event_id!r}")
    return sk[len(prefix) :]


# ---- building items -----------------------------------------------------------------------


def probability_columns(frame: pl.DataFrame) -> list[str]:
    """Model probability columns (p_*) of a frame, sorted so item layouts are stable."""
    return sorted(name for name in frame.columns if name.startswith(PROBABILITY_PREFIX))


def _validate_scored(scored: pl.DataFrame, channels: list[str]) -> list[str]:
    missing = [name for name in REQUIRED_SCORED_COLUMNS if name not in scored.columns]
    if missing:
        raise ValueError(f"scored frame lacks required columns {missing}")
    bad_p = [name for name in probability_columns(scored) if not _PROBABILITY_COLUMN.match(name)]
    if bad_p:
        raise ValueError(f"probability columns must match {_PROBABILITY_COLUMN.pattern}, got {bad_p}")
    unique_channels = list(dict.fromkeys(check_id("channel", channel) for channel in channels))
    if not unique_channels:
        raise ValueError("at least one channel is required")
    customer_id = pl.col("customer_id").cast(pl.String)
    problems = scored.select(
        null_ids=customer_id.is_null().sum(),
        bad_ids=(~customer_id.str.contains(r"^[^#\s]+$")).sum(),
        duplicate_ids=pl.col("customer_id").is_duplicated().sum(),
        bad_scores=(
            pl.col("score").is_null() | pl.col("score").is_nan() | (pl.col("score") < 0) | (pl.col("score") > 1)
        ).sum(),
    ).row(0, named=True)
    problems = {name: count for name, count in problems.items() if count}
    if problems:
        raise ValueError(f"scored frame is not a valid candidate set (row counts): {problems}")
    return unique_channels


def build_candidate_items(
    program_id: str, event_id: str, scored: pl.DataFrame, channels: list[str], now: datetime, ttl_days: int
) -> pl.DataFrame:
    """One item per scored customer x channel, keys included, status `candidate`.

    Rejects (rather than silently fixes) duplicate or null customer ids and scores outside
    0..1: the store must be an exact image of the scored set.
    """
    check_id("program_id", program_id)
    check_id("event_id", event_id)
    unique_channels = _validate_scored(scored, channels)
    now_utc = as_utc(now)
    probabilities = probability_columns(scored)
    extras = [
        (pl.col(name) if name in scored.columns else pl.lit(None)).cast(pl.String).alias(name)
        for name in EXTRA_ATTRIBUTES
    ]
    base = scored.select(
        pl.col("customer_id").cast(pl.String),
        pl.col("score").cast(pl.Float64),
        pl.col("score_band").cast(pl.String),
        *extras,
        *[pl.col(name).cast(pl.Float64) for name in probabilities],
    )
    items = base.join(pl.DataFrame({"channel": unique_channels}, schema={"channel": pl.String}), how="cross")
    items = items.with_columns(
        program_id=pl.lit(program_id),
        event_id=pl.lit(event_id),
        status=pl.lit(STATUS_CANDIDATE),
        status_at=pl.lit(now_utc, dtype=pl.Datetime("us", "UTC")),
        registered_channel=pl.lit(None, dtype=pl.String),
        batch_date=pl.lit(now_utc.date(), dtype=pl.Date),
        written_at=pl.lit(now_utc, dtype=pl.Datetime("us", "UTC")),
        expires_at=pl.lit(expires_at(now_utc, ttl_days), dtype=pl.Int64),
    ).with_columns(
        pk=pl.concat_str([pl.lit("CUSTOMER#"), pl.col("customer_id"), pl.lit(f"#PROGRAM#{program_id}")]),
        sk=pl.concat_str([pl.lit(event_sk_prefix(event_id)), pl.col("channel")]),
        gsi1pk=pl.concat_str(
            [pl.lit(f"PROGRAM#{program_id}#CHANNEL#"), pl.col("channel"), pl.lit(f"#EVENT#{event_id}")]
        ),
        gsi2pk=pl.lit(gsi2_pk(program_id, event_id)),
        gsi2sk=_gsi2_sk_expr(),
    )
    return items.select(*ITEM_SCHEMA, *probabilities).sort("customer_id", "channel")


# ---- replacing an event's item set --------------------------------------------------------


@dataclass(frozen=True)
class ReplacePlan:
    """What a store must do so an event's items become the new set.

    `items` are upserted (status of already-registered customers carried over); `stale`
    keys are deleted; `retained` keys are registered items absent from the new set, kept
    (their TTL raised to the new one) because reminders must still reach the registrant
    after the eligibility filter removes them from later batches.
    """

    items: pl.DataFrame
    stale: pl.DataFrame  # pk, sk
    retained: pl.DataFrame  # pk, sk
    registered_preserved: int  # customers of the new set whose registration was carried over
    expires_at: int


KEY_FRAME: dict[str, pl.DataType] = {"pk": pl.String(), "sk": pl.String()}
# What a store reads of the event's registered items (GSI2 prefix "registered#") to plan a replace.
REGISTERED_COLUMNS: dict[str, pl.DataType] = {
    **KEY_FRAME,
    "customer_id": pl.String(),
    "status_at": pl.Datetime("us", "UTC"),
    "registered_channel": pl.String(),
    "expires_at": pl.Int64(),
}


def plan_replace(
    items: pl.DataFrame, existing_keys: pl.DataFrame, registered: pl.DataFrame, now: datetime
) -> ReplacePlan:
    """Diff the event's current items against the new `items`.

    `existing_keys` (pk, sk) are all the event's items, expired ones included (GSI2PK, keys
    only); `registered` (REGISTERED_COLUMNS) its items with status registered. Registration
    is per customer and event: a customer registered on any live item keeps `registered`,
    its time and channel on all of their new items. Expired items count as gone (deleted,
    registration not carried over).
    """
    now_epoch = epoch_seconds(now)
    existing_keys = existing_keys.select([pl.col(name).cast(dtype) for name, dtype in KEY_FRAME.items()])
    registered = registered.select([pl.col(name).cast(dtype) for name, dtype in REGISTERED_COLUMNS.items()])
    registered = registered.filter(live(now_epoch))
    registrations = registered.group_by("customer_id").agg(
        pl.col("status_at").min().alias("_reg_at"),
        pl.col("registered_channel").sort_by("status_at").drop_nulls().first().alias("_reg_channel"),
    )
    merged = items.join(registrations, on="customer_id", how="left").with_columns(
        status=pl.when(pl.col("_reg_at").is_not_null()).then(pl.lit(STATUS_REGISTERED)).otherwise("status"),
        status_at=pl.coalesce("_reg_at", "status_at"),
        registered_channel=pl.when(pl.col("_reg_at").is_not_null())
        .then(pl.col("_reg_channel"))
        .otherwise("registered_channel"),
    )
    merged = merged.with_columns(gsi2sk=_gsi2_sk_expr()).drop("_reg_at", "_reg_channel").select(items.columns)
    gone = existing_keys.join(items.select("pk", "sk"), on=["pk", "sk"], how="anti")
    retained = gone.join(registered.select("pk", "sk"), on=["pk", "sk"], how="semi")
    new_expiry = int(items["expires_at"].max()) if items.height else 0
    return ReplacePlan(
        items=merged,
        stale=gone.join(retained, on=["pk", "sk"], how="anti").sort("pk", "sk"),
        retained=retained.sort("pk", "sk"),
        registered_preserved=items.join(registrations, on="customer_id", how="semi")["customer_id"].n_unique(),
        expires_at=new_expiry,
    )


# ---- reading back -------------------------------------------------------------------------


def item_columns(probabilities: list[str]) -> list[str]:
    """Attribute columns a read returns, in order (keys are a storage detail and left out)."""
    return [*BASE_ATTRIBUTES, *EXTRA_ATTRIBUTES, *sorted(probabilities)]


def empty_items(probabilities: list[str] | None = None) -> pl.DataFrame:
    schema = {**BASE_ATTRIBUTES, **{name: pl.String() for name in EXTRA_ATTRIBUTES}}
    schema.update({name: pl.Float64() for name in sorted(probabilities or [])})
    return pl.DataFrame(schema=schema)


def text_item_schema(probabilities: list[str] | None = None) -> dict[str, pl.DataType]:
    """`empty_items`' schema with times and dates as text: how the stores hold and return them."""
    return {
        name: pl.String() if isinstance(dtype, pl.Datetime | pl.Date) else dtype
        for name, dtype in empty_items(probabilities).schema.items()
    }


def time_text(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A time (in UTC, `TIME_TEXT_FORMAT`) or date (YYYY-MM-DD) column as the stores write it;
    any other column as it is."""
    if isinstance(dtype, pl.Datetime):
        column = column.dt.convert_time_zone("UTC") if dtype.time_zone is not None else column
        return column.dt.to_string(TIME_TEXT_FORMAT)
    if isinstance(dtype, pl.Date):
        return column.dt.to_string(DATE_TEXT_FORMAT)
    return column


def text_item_times(frame: pl.DataFrame) -> pl.DataFrame:
    """An item frame's times and dates as the stores' text: the inverse of `typed_item_times`."""
    times = {name: dtype for name, dtype in frame.schema.items() if isinstance(dtype, pl.Datetime | pl.Date)}
    return frame.with_columns(time_text(pl.col(name), dtype) for name, dtype in times.items())


def typed_item_times(frame: pl.DataFrame) -> pl.DataFrame:
    """An item frame's times and dates from their stored text (`TIME_TEXT_FORMAT`, YYYY-MM-DD)."""
    times = [
        name for name, dtype in BASE_ATTRIBUTES.items() if isinstance(dtype, pl.Datetime) and name in frame.columns
    ]
    dates = [name for name, dtype in BASE_ATTRIBUTES.items() if isinstance(dtype, pl.Date) and name in frame.columns]
    return frame.with_columns(
        *(pl.col(name).str.to_datetime(TIME_TEXT_FORMAT, time_zone="UTC", time_unit="us") for name in times),
        *(pl.col(name).str.to_date(DATE_TEXT_FORMAT) for name in dates),
    )


def drop_empty_probabilities(items: pl.DataFrame) -> pl.DataFrame:
    """p_* columns are per program's models; a read shows only those some returned item has."""
    empty = [name for name in probability_columns(items) if items[name].null_count() == items.height]
    return items.drop(empty)


# ---- export -------------------------------------------------------------------------------


def export_frame(items: pl.DataFrame) -> pl.DataFrame:
    """The analyst export: item attributes only (no keys, nothing the store does not hold),
    minus EXPORT_EXCLUDED_COLUMNS."""
    allowed = [
        name
        for name in items.columns
        if (name in BASE_ATTRIBUTES or name in EXTRA_ATTRIBUTES or _PROBABILITY_COLUMN.match(name))
        and name not in EXPORT_EXCLUDED_COLUMNS
    ]
    return items.select(allowed)
