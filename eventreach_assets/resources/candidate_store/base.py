"""The candidates table (use case step 4, "Store Lambda") and the score cache: the interface.

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
filter `expires_at`, batch writes). Its public methods hold what every store shares (input
checks, keys, the replace plan, the write summary, page cursors, cache entries); a store
(`SqliteCandidateStore`, `DynamoDBCandidateStore`) only reads and writes by key.

The score cache (use case: "Score Cache Repository, TTL 14 days") is keyed
PK = CUSTOMER#{customer_id}, SK = SCORE#EVENT#{event_id}#MODEL#{model_id}#VERSION#{version}.
"""

from __future__ import annotations

import abc
import base64
import heapq
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter
from typing import ClassVar, NamedTuple

import dagster as dg
import polars as pl

from eventreach_assets.domain import candidate_items as ci

TS_FORMAT = ci.TIME_TEXT_FORMAT  # fixed width: strings compare in time order
CACHE_SCHEMA: dict[str, pl.DataType] = {"customer_id": pl.String(), "probability": pl.Float64()}

# Given the event's stored keys (expired ones too) and its registered items, what to write.
ReplacePlanner = Callable[[pl.DataFrame, pl.DataFrame], ci.ReplacePlan]

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


@dataclass(frozen=True)
class ServedPage:
    """One page as the Serving API sends it: each item's JSON object text (`domain.served_items`),
    in order, and the position to continue from (None: this is the last page)."""

    items: list[str]
    next_position: list[str] | None


class RegisteredCustomer(NamedTuple):
    """One registered customer of an event (their items, one per channel, taken together) and
    `position`, the GSI2 sort key of their last item: the next page starts after it. (A tuple:
    a page builds a hundred per request.)"""

    customer_id: str
    registered_at: str  # the earliest registration of their items, as the stores' time text
    channel: str | None  # the channel the registration is attributed to
    score: float  # the best score over their items
    score_band: str | None
    marketplace: str | None
    timezone: str | None
    position: str


# What `event_item_keys` returns per item: all of it in the item's GSI2 sort key.
EVENT_ITEM_KEYS: tuple[str, ...] = ("customer_id", "channel", "status")

# What a registered-customers read fetches per item, in GSI2 order.
REGISTERED_ITEM_FIELDS = (
    "gsi2sk", "customer_id", "status_at", "registered_channel", "score", "score_band", "marketplace", "timezone",
)  # fmt: skip


def registered_customer(rows: list[tuple]) -> RegisteredCustomer:
    """One customer's registered items (REGISTERED_ITEM_FIELDS tuples, GSI2 order) as one row:
    the earliest registration, the first known channel, marketplace and timezone, the best score
    and its band (the first of equal ones). A loop, not a frame: a page makes a hundred."""
    _sk, customer_id, at, channel, score, band, marketplace, timezone = rows[0]
    for row in rows[1:]:
        at = min(at, row[2])  # fixed-width UTC text: compares in time order
        channel = row[3] if channel is None else channel
        if row[4] > score:
            score, band = row[4], row[5]
        marketplace = row[6] if marketplace is None else marketplace
        timezone = row[7] if timezone is None else timezone
    return RegisteredCustomer(customer_id, at, channel, float(score), band, marketplace, timezone, rows[-1][0])


def registered_customers(rows: Iterable[tuple], limit: int) -> tuple[list[RegisteredCustomer], bool]:
    """The first `limit` customers of registered items in GSI2 order (a customer's items are
    adjacent: the key is status, date, customer, channel), and whether another customer follows.
    Reads `rows` lazily: one item past the page at most."""
    customers: list[RegisteredCustomer] = []
    for _, items in groupby(rows, key=itemgetter(1)):
        if len(customers) == limit:
            return customers, True  # the first item of the next customer: more follow
        customers.append(registered_customer(list(items)))
    return customers, False


def check_registered_position(position: str | None) -> None:
    """A registered page's position is a GSI2 sort key of a registered item, nothing else."""
    if position is not None and not position.startswith(ci.gsi2_sk_prefix(ci.STATUS_REGISTERED)):
        raise ValueError("not a registered-candidates position")


def merged_in_order(streams: Iterable[Iterator[tuple]]) -> Iterator[tuple]:
    """Streams each sorted by their first field, merged in that order (the shards of one index)."""
    return heapq.merge(*streams, key=lambda row: row[0])


# ---- shared helpers -----------------------------------------------------------------------


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


@dataclass(frozen=True)
class TopQuery:
    """One page of a channel's top-N on GSI1: live items with score >= min_score in (score desc,
    customer_id) order, strictly after `after` (a score, customer_id position), at most `limit`."""

    gsi1pk: str
    gsi2pk: str  # the event, and the channel: how a store without GSI1 finds the same range
    channel: str
    min_score: float
    exclude_registered: bool
    after: tuple[float, str] | None
    now_epoch: int
    limit: int


def _top_query(
    program_id: str,
    event_id: str,
    channel: str,
    min_score: float,
    limit: int,
    exclude_registered: bool,
    cursor: str | None,
    now: datetime | None,
) -> tuple[TopQuery, str]:
    """A top-N page's query and its cursor binding (the frame and the served reads page the same query)."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    gsi1pk = ci.gsi1_pk(program_id, channel, event_id)
    query_key = f"{gsi1pk}|{float(min_score)!r}|{exclude_registered}"
    after = decode_cursor(cursor, query_key) if cursor is not None else None
    now_epoch = ci.epoch_seconds(resolve_now(now))
    gsi2pk = ci.gsi2_pk(program_id, event_id)
    query = TopQuery(gsi1pk, gsi2pk, channel, float(min_score), exclude_registered, after, now_epoch, limit)
    return query, query_key


def cache_entries(
    event_id: str, model_id: str, model_version: str, scores: pl.DataFrame, now: datetime, ttl_days: int
) -> pl.DataFrame:
    """Score cache entries (keys and attributes) for `scores`: one per customer, the last wins,
    rows without a customer or probability left out."""
    missing = {"customer_id", "probability"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores lacks columns {sorted(missing)}")
    return (
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


# ---- interface ----------------------------------------------------------------------------


class CandidateStoreResource(dg.ConfigurableResource, abc.ABC):
    """The candidates table and score cache; implementations differ only in where items live.

    Times may be naive (taken as UTC) or aware. `now=None` means the current time. Reads
    return polars frames with the attribute columns of `domain.candidate_items.item_columns`
    (keys left out), never expired items.
    """

    # Largest write batch the backend accepts (DynamoDB: 25); None: any positive size.
    _max_batch_write: ClassVar[int | None] = None

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
        """Make the event's items exactly `scored` x `channels` (idempotent re-materialization).

        Stale items of the event are deleted; customers registered before keep their
        registration; registered items absent from the new set are kept (reminders need
        them) with their TTL raised. Writes go in batches of `batch_write_size` items.
        `scored` needs customer_id (unique), score (0..1) and score_band; p_* and the
        declared extra columns are stored when present. Invalid input raises before any write.
        """
        started = time.perf_counter()
        self._check_batch_write_size(batch_write_size)
        items = ci.build_candidate_items(program_id, event_id, scored, channels, now, ttl_days)

        def planner(existing_keys: pl.DataFrame, registered: pl.DataFrame) -> ci.ReplacePlan:
            return ci.plan_replace(items, existing_keys, registered, now)

        plan, batches = self._replace_event_items(program_id, event_id, planner, batch_write_size)
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

    def _check_batch_write_size(self, batch_write_size: int) -> None:
        limit = self._max_batch_write
        if limit is None and batch_write_size <= 0:
            raise ValueError(f"batch_write_size must be positive, got {batch_write_size}")
        if limit is not None and not 0 < batch_write_size <= limit:
            raise ValueError(f"batch_write_size must be 1..{limit}, got {batch_write_size}")

    def mark_registered(
        self, program_id: str, event_id: str, customer_id: str, registered_at: datetime, channel: str | None
    ) -> int:
        """Set status `registered` on all the customer's items for the event; returns how many.

        Replays are harmless: the earliest registration time (and its channel) wins.
        0 means the customer is not a candidate of the event.
        """
        frame = pl.DataFrame(
            {"customer_id": [customer_id], "registered_at": [ci.as_utc(registered_at)], "channel": [channel]},
            schema={"customer_id": pl.String, "registered_at": pl.Datetime("us", "UTC"), "channel": pl.String},
        )
        return self.mark_registered_many(program_id, event_id, frame)

    def mark_registered_many(self, program_id: str, event_id: str, registrations: pl.DataFrame) -> int:
        """`mark_registered` for a frame of customer_id, registered_at[, channel]; returns items updated."""
        frame = registration_frame(registrations)
        bad = frame.filter(pl.col("customer_id").is_null() | pl.col("registered_at").is_null())
        if bad.height:
            raise ValueError(f"{bad.height} registrations lack customer_id or registered_at")
        ci.check_id("event_id", event_id)
        return self._mark_registered(program_id, event_id, frame)

    def purge_expired(self, now: datetime) -> int:
        """Delete expired items and cache entries (what DynamoDB TTL does by itself); returns how many."""
        return self._purge_expired(ci.epoch_seconds(now))

    # -- reads --

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
        query, query_key = _top_query(program_id, event_id, channel, min_score, limit, exclude_registered, cursor, now)
        page, more = self._top_page(query)
        if not more:
            return CandidatePage(items=page, next_cursor=None)
        last = page.row(limit - 1, named=True)
        return CandidatePage(items=page, next_cursor=encode_cursor(query_key, last["score"], last["customer_id"]))

    def registered_candidates(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        """GSI2 prefix "registered#": registered items of the event (one per customer x channel)."""
        now_epoch = ci.epoch_seconds(resolve_now(now))
        return self._registered_items(ci.gsi2_pk(program_id, event_id), now_epoch).sort("customer_id", "channel")

    def candidates_for_customer(self, program_id: str, customer_id: str, now: datetime | None = None) -> pl.DataFrame:
        """PK: one customer's live items across the program's events (support, status updates)."""
        now_epoch = ci.epoch_seconds(resolve_now(now))
        return self._customer_items(ci.customer_pk(customer_id, program_id), now_epoch).sort("event_id", "channel")

    # -- serving reads: the Serving API's pages, as JSON text (no frame per request) --

    def served_top_candidates(
        self,
        program_id: str,
        event_id: str,
        channel: str,
        min_score: float,
        limit: int,
        exclude_registered: bool = True,
        cursor: str | None = None,
        now: datetime | None = None,
    ) -> ServedPage:
        """`top_candidates_for_channel` as served JSON; the position is its cursor (one string)."""
        query, query_key = _top_query(program_id, event_id, channel, min_score, limit, exclude_registered, cursor, now)
        items, last = self._served_top_page(query)
        return ServedPage(items, None if last is None else [encode_cursor(query_key, *last)])

    def served_customer_items(
        self,
        program_id: str,
        customer_id: str,
        event_id: str | None,
        limit: int,
        after: tuple[str, str] | None = None,
        now: datetime | None = None,
    ) -> ServedPage:
        """One customer's live items (of one event, or all) by event then channel, as served JSON,
        strictly after the (event_id, channel) `after`; the position is the last item's pair."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        now_epoch = ci.epoch_seconds(resolve_now(now))
        pk = ci.customer_pk(customer_id, program_id)
        items, last = self._served_customer_items(pk, event_id, after, limit, now_epoch)
        return ServedPage(items, None if last is None else list(last))

    def registered_customers_page(
        self, program_id: str, event_id: str, limit: int, after: str | None = None, now: datetime | None = None
    ) -> tuple[list[RegisteredCustomer], bool]:
        """GSI2 "registered#", paged by its own key: up to `limit` registered customers (one row
        each) by registration date, then customer_id, strictly after the position `after`, and
        whether more follow. Reads one page of the index, never the whole list."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        check_registered_position(after)
        now_epoch = ci.epoch_seconds(resolve_now(now))
        return self._registered_customers(ci.gsi2_pk(program_id, event_id), after, limit, now_epoch)

    def event_items(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        """GSI2PK: every live item of the event, sorted by customer_id, channel (export, checks)."""
        now_epoch = ci.epoch_seconds(resolve_now(now))
        return self._event_items(ci.gsi2_pk(program_id, event_id), now_epoch).sort("customer_id", "channel")

    def exported_items(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        """`event_items` as the analysts' export holds them (`ci.export_frame`: no PII), same order."""
        now_epoch = ci.epoch_seconds(resolve_now(now))
        return self._exported_items(ci.gsi2_pk(program_id, event_id), now_epoch).sort("customer_id", "channel")

    def event_item_keys(self, program_id: str, event_id: str, now: datetime | None = None) -> pl.DataFrame:
        """`event_items`' customer_id, channel and status only, same order: what the batch's checks
        compare. Read as the live items' GSI2 sort keys (`status#date#customer#channel`): one value
        an item where the attributes were four, and a store's own GSI2 holds them."""
        now_epoch = ci.epoch_seconds(resolve_now(now))
        parts = ci.gsi2_sk_parts(self._event_item_sort_keys(ci.gsi2_pk(program_id, event_id), now_epoch))
        return parts.select(EVENT_ITEM_KEYS).sort("customer_id", "channel")

    def count_event_items(self, program_id: str, event_id: str, now: datetime | None = None) -> int:
        """Number of live items of the event (GSI2PK, keys only)."""
        return self._count_event_items(ci.gsi2_pk(program_id, event_id), ci.epoch_seconds(resolve_now(now)))

    # -- score cache --

    def get_cached_scores(
        self, event_id: str, model_id: str, model_version: str, customer_ids: pl.Series, now: datetime
    ) -> pl.DataFrame:
        """Cached probabilities (customer_id, probability) of live entries; misses are absent."""
        keys = customer_ids.cast(pl.String).drop_nulls().unique()
        if keys.is_empty():
            return pl.DataFrame(schema=CACHE_SCHEMA)
        sk = ci.score_cache_sk(event_id, model_id, model_version)
        rows = self._cached_scores(sk, keys.to_list(), ci.epoch_seconds(now))
        return pl.DataFrame(rows, schema=CACHE_SCHEMA, orient="row")

    def put_cached_scores(
        self, event_id: str, model_id: str, model_version: str, scores: pl.DataFrame, now: datetime, ttl_days: int
    ) -> int:
        """Upsert `scores` (customer_id, probability) with a TTL of `ttl_days`; returns entries written."""
        entries = cache_entries(event_id, model_id, model_version, scores, now, ttl_days)
        self._put_cache_entries(entries)
        return entries.height

    # -- what a store provides: I/O by key --

    @abc.abstractmethod
    def _replace_event_items(
        self, program_id: str, event_id: str, planner: ReplacePlanner, batch_write_size: int
    ) -> tuple[ci.ReplacePlan, int]:
        """Read the event's keys (expired ones too) and registered items (`ci.REGISTERED_COLUMNS`),
        get the plan from `planner`, then upsert `plan.items`, delete `plan.stale` and raise the
        TTL of `plan.retained` to `plan.expires_at`; returns the plan and the write batches sent."""

    @abc.abstractmethod
    def _mark_registered(self, program_id: str, event_id: str, registrations: pl.DataFrame) -> int:
        """Mark the items of checked `registrations` (see `registration_frame`, no nulls) registered,
        the earliest registration winning; returns the items updated."""

    @abc.abstractmethod
    def _purge_expired(self, now_epoch: int) -> int:
        """Delete items and cache entries expired at `now_epoch`; returns how many."""

    @abc.abstractmethod
    def _top_page(self, query: TopQuery) -> tuple[pl.DataFrame, bool]:
        """The query's page (see TopQuery) and whether more follow."""

    @abc.abstractmethod
    def _registered_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        """Live items of the event (GSI2PK) whose GSI2 sort key starts "registered#"."""

    @abc.abstractmethod
    def _served_top_page(self, query: TopQuery) -> tuple[list[str], tuple[float, str] | None]:
        """`_top_page` as served JSON texts, and the (score, customer_id) of the last one when more follow."""

    @abc.abstractmethod
    def _served_customer_items(
        self, pk: str, event_id: str | None, after: tuple[str, str] | None, limit: int, now_epoch: int
    ) -> tuple[list[str], tuple[str, str] | None]:
        """Up to `limit` live items under PK (of `event_id` when given) by (event_id, channel) after
        `after`, as served JSON texts, and the last one's (event_id, channel) when more follow."""

    @abc.abstractmethod
    def _registered_customers(
        self, gsi2pk: str, after: str | None, limit: int, now_epoch: int
    ) -> tuple[list[RegisteredCustomer], bool]:
        """`registered_customers` over the live registered items of GSI2PK in GSI2 order after `after`."""

    @abc.abstractmethod
    def _customer_items(self, pk: str, now_epoch: int) -> pl.DataFrame:
        """Live items under one customer key (PK)."""

    @abc.abstractmethod
    def _event_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        """Live items of the event (GSI2PK)."""

    @abc.abstractmethod
    def _event_item_sort_keys(self, gsi2pk: str, now_epoch: int) -> pl.Series:
        """GSI2SK of the event's live items (GSI2PK), any order (a String series)."""

    def _exported_items(self, gsi2pk: str, now_epoch: int) -> pl.DataFrame:
        """Live items of the event (GSI2PK) without PII; a store may read them its own faster way."""
        return ci.export_frame(self._event_items(gsi2pk, now_epoch))

    @abc.abstractmethod
    def _count_event_items(self, gsi2pk: str, now_epoch: int) -> int:
        """How many live items the event (GSI2PK) has."""

    @abc.abstractmethod
    def _cached_scores(self, sk: str, customer_ids: list[str], now_epoch: int) -> list[tuple[str, float]]:
        """(customer_id, probability) of the live cache entries of `customer_ids` under `sk`."""

    @abc.abstractmethod
    def _put_cache_entries(self, entries: pl.DataFrame) -> None:
        """Upsert cache entries (the columns `cache_entries` builds)."""
