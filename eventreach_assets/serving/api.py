"""The Serving API: the use case's read queries and the registration webhook over HTTP (ASGI).

Routes (JSON in and out; every GET needs an API key, the webhook a signed body):

* `GET /v1/candidates?program=&event=&channel=&minScore=&limit=&excludeRegistered=&cursor=` —
  GetCandidatesForChannel: the event's live candidates on an invitation channel with
  score >= minScore, score descending (ties by customer_id), registered customers left out
  unless `excludeRegistered=false`.
* `GET /v1/registered-candidates?program=&event=&status=&limit=&cursor=` —
  GetRegisteredCandidates: one row per customer, by customer_id; `registered` (the default)
  from the candidate store, `waitlisted` from the engagement store.
* `GET /v1/customers/{customer}/candidates?program=[&event=][&limit=&cursor=]` — one customer's
  live candidate items (support), by event then channel.
* `POST /v1/webhooks/registrations` — the event platform's registrations, validated and stored
  by the same `ingest_registrations` the registrations feed uses (idempotent: a replayed
  delivery is stored once). A record with `"action": "cancel"` (event_id, customer_id,
  cancelled_at, optional registration_id) cancels a registration or waitlist place; a record
  with an unknown action, or a cancellation lacking a field or with a bad one, refuses the
  whole delivery with a 400 naming it (`registrations[<index>].<field>`), nothing stored.
* `GET /health` — liveness, no key, no data.

Every answer is at most one page (`limit` 1..100, default 100) with an opaque `nextCursor`
(null on the last page). A bad parameter is a 400 naming it (`{"error": ..., "parameter": ...}`);
an unknown parameter is a bad one (a typo must not silently widen a query). A missing or wrong
API key is a 401, an unknown program a 404. The `email` attribute (PII) is never returned, and
nothing here logs keys, customer ids or request URLs (uvicorn's access log is off).

API keys: `X-API-Key: <key>` or `Authorization: Bearer <key>`, compared in constant time with
every key of `EVENTREACH_API_KEYS` (comma-separated, each >= 16 characters). Webhook: header
`X-EventReach-Timestamp: <unix seconds>` and `X-EventReach-Signature: sha256=<hex>`, the
HMAC-SHA256 with `EVENTREACH_WEBHOOK_SECRET` of `<timestamp>.<raw body>`; the timestamp is
signed so a captured delivery cannot be re-sent with a fresh one, and one more than 5 minutes
from the server's clock is refused. The local deployment needs neither variable: it creates a
random key and secret in its data dir (`api_key`, `webhook_secret`, mode 0600) and prints where.

Registered / waitlisted lists are read whole and kept per process for
`EVENTREACH_API_CACHE_SECONDS` (default 5; see `ExpiringCache`). Run it with
`python -m eventreach_assets.serving.api --host 127.0.0.1 --port 8000 [--workers N]` (`make serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import gc
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventreach_assets.deployments import DEPLOYMENT_ENV, eventreach_home, resources_for
from eventreach_assets.domain.engagement_schemas import CANCELLED
from eventreach_assets.domain.registrations import RegistrationOutcome, cancellation_problem
from eventreach_assets.ingestion import ingest_registrations, quarantine
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.sqlite import SqliteBacked
from eventreach_assets.resources.warehouse import WarehouseResource

logger = logging.getLogger(__name__)

API_KEYS_ENV = "EVENTREACH_API_KEYS"
WEBHOOK_SECRET_ENV = "EVENTREACH_WEBHOOK_SECRET"
CACHE_SECONDS_ENV = "EVENTREACH_API_CACHE_SECONDS"
SIGNATURE_HEADER = "x-eventreach-signature"
TIMESTAMP_HEADER = "x-eventreach-timestamp"
API_KEY_HEADER = "x-api-key"

PAGE_LIMIT = 100  # the most any answer holds, and the default
MIN_API_KEY_LENGTH = 16
MIN_WEBHOOK_SECRET_LENGTH = 32
WEBHOOK_TOLERANCE_SECONDS = 300  # a delivery signed more than 5 minutes from now is refused
MAX_WEBHOOK_BYTES = 1024 * 1024
MAX_WEBHOOK_RECORDS = 1000
DEFAULT_CACHE_SECONDS = 5.0
MAX_CURSOR_LENGTH = 2048
WEBHOOK_BATCH_PREFIX = "webhook"

_ID = re.compile(r"^[^#\s]{1,128}$")  # ids are key segments: no '#', no whitespace
_CURSOR = re.compile(r"^[A-Za-z0-9_=-]+$")  # url-safe base64, what every cursor here is
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
_PII_COLUMNS = ("email",)
_JSON_TS = "%Y-%m-%dT%H:%M:%S%.6fZ"

# What a registered-candidates row holds, whichever store it came from.
REGISTRATION_VIEW: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "status": pl.String(),
    "registered_at": pl.Datetime("us", "UTC"),
    "channel": pl.String(),  # the channel the registration is attributed to (null: unknown)
    "campaign_id": pl.String(),  # waitlisted rows only (the candidate store does not keep it)
    "score": pl.Float64(),  # registered rows only: the candidate's score (best over channels)
    "score_band": pl.String(),
    "marketplace": pl.String(),
    "timezone": pl.String(),
}
STATUSES = ("registered", "waitlisted")

T = TypeVar("T")


# ---- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than 200: status, a message for the caller and, for a 400, the parameter."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter


def bad_parameter(parameter: str, message: str) -> ApiError:
    return ApiError(400, f"{parameter}: {message}", parameter)


# ---- parameters (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class CandidatesQuery:
    program: str
    event: str
    channel: str
    min_score: float
    limit: int
    exclude_registered: bool
    cursor: str | None


@dataclass(frozen=True)
class RegisteredQuery:
    program: str
    event: str
    status: str
    limit: int
    cursor: str | None


@dataclass(frozen=True)
class CustomerQuery:
    program: str
    customer: str
    event: str | None
    limit: int
    cursor: str | None


class Params:
    """One request's query parameters: each read once, unknown or repeated ones refused."""

    def __init__(self, items: Sequence[tuple[str, str]], allowed: Sequence[str]) -> None:
        self._values: dict[str, str] = {}
        for name, value in items:
            if name not in allowed:
                raise bad_parameter(name, f"unknown parameter (allowed: {', '.join(allowed)})")
            if name in self._values:
                raise bad_parameter(name, "given more than once")
            self._values[name] = value

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self._values.get(name)
        if value is None or value == "":
            if required:
                raise bad_parameter(name, "required")
            return None
        return value

    def identifier(self, name: str, *, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is not None and not _ID.match(value):
            raise bad_parameter(name, "must be 1-128 characters without '#' or whitespace")
        return value

    def limit(self) -> int:
        value = self.text("limit")
        if value is None:
            return PAGE_LIMIT
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= PAGE_LIMIT:
            raise bad_parameter("limit", f"must be an integer from 1 to {PAGE_LIMIT}")
        return int(value)

    def score(self, name: str) -> float:
        value = self.text(name)
        if value is None:
            return 0.0
        try:
            number = float(value)
        except ValueError:
            raise bad_parameter(name, "must be a number from 0 to 1") from None
        if not math.isfinite(number) or not 0.0 <= number <= 1.0:
            raise bad_parameter(name, "must be a number from 0 to 1")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise bad_parameter(name, "must be true or false")

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.text(name) or default
        if value not in choices:
            raise bad_parameter(name, f"must be one of {', '.join(choices)}")
        return value

    def cursor(self) -> str | None:
        value = self.text("cursor")
        if value is not None and (len(value) > MAX_CURSOR_LENGTH or not _CURSOR.match(value)):
            raise bad_parameter("cursor", "not a cursor from a previous page")
        return value


def required_id(params: Params, name: str) -> str:
    value = params.identifier(name, required=True)
    assert value is not None  # required=True raised otherwise
    return value


def parse_candidates_query(items: Sequence[tuple[str, str]], channels: Sequence[str]) -> CandidatesQuery:
    """GetCandidatesForChannel's parameters, validated; `channels` are the program's invitation channels."""
    params = Params(items, ("program", "event", "channel", "minScore", "limit", "excludeRegistered", "cursor"))
    program, event = required_id(params, "program"), required_id(params, "event")
    channel = params.text("channel", required=True)
    if channel not in channels:
        raise bad_parameter("channel", f"must be one of {', '.join(channels)}")
    return CandidatesQuery(
        program=program,
        event=event,
        channel=str(channel),
        min_score=params.score("minScore"),
        limit=params.limit(),
        exclude_registered=params.flag("excludeRegistered", True),
        cursor=params.cursor(),
    )


def parse_registered_query(items: Sequence[tuple[str, str]]) -> RegisteredQuery:
    """GetRegisteredCandidates' parameters, validated."""
    params = Params(items, ("program", "event", "status", "limit", "cursor"))
    return RegisteredQuery(
        program=required_id(params, "program"),
        event=required_id(params, "event"),
        status=params.choice("status", STATUSES, "registered"),
        limit=params.limit(),
        cursor=params.cursor(),
    )


def parse_customer_query(customer: str, items: Sequence[tuple[str, str]]) -> CustomerQuery:
    """The candidate-by-customer query's parameters (the customer comes from the path)."""
    params = Params(items, ("program", "event", "limit", "cursor"))
    if not _ID.match(customer):
        raise bad_parameter("customer", "must be 1-128 characters without '#' or whitespace")
    return CustomerQuery(
        program=required_id(params, "program"),
        customer=customer,
        event=params.identifier("event"),
        limit=params.limit(),
        cursor=params.cursor(),
    )


# ---- pages of an in-memory list (pure) --------------------------------------------------------


def encode_position(query_key: str, after: Sequence[Any]) -> str:
    """An opaque cursor: the sort key of the last row served, tied to the query that served it."""
    raw = json.dumps({"k": query_key, "a": list(after)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_position(cursor: str, query_key: str, width: int) -> list[Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        key, after = data["k"], data["a"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad_parameter("cursor", "not a cursor from a previous page") from None
    if key != query_key:
        raise bad_parameter("cursor", "belongs to a different query (program, event, status or customer changed)")
    if not isinstance(after, list) or len(after) != width or not all(isinstance(v, str) for v in after):
        raise bad_parameter("cursor", "not a cursor from a previous page")
    return after


def page_after(
    frame: pl.DataFrame, keys: Sequence[str], limit: int, query_key: str, cursor: str | None
) -> tuple[pl.DataFrame, str | None]:
    """The page of `frame` (sorted by the string columns `keys`, unique) after `cursor`, and the
    next page's cursor (None when this page is the last)."""
    rest = frame
    if cursor is not None:
        after = decode_position(cursor, query_key, len(keys))
        # Strictly after the row in lexicographic (keys) order: k1 > a1 or (k1 == a1 and (k2 > a2 ...)).
        condition = pl.col(keys[-1]) > after[-1]
        for key, value in zip(reversed(keys[:-1]), reversed(after[:-1]), strict=True):
            condition = (pl.col(key) > value) | ((pl.col(key) == value) & condition)
        rest = frame.filter(condition)
    page = rest.head(limit)
    if rest.height <= limit:
        return page, None
    return page, encode_position(query_key, list(page.row(limit - 1, named=True)[key] for key in keys))


def registered_view(items: pl.DataFrame) -> pl.DataFrame:
    """Registered candidate items (one per customer x channel) as one row per customer, by customer_id."""
    return (
        items.group_by("customer_id")
        .agg(
            pl.col("status_at").min().dt.convert_time_zone("UTC").alias("registered_at"),
            pl.col("registered_channel").drop_nulls().first().alias("channel"),
            pl.col("score").max(),
            pl.col("score_band").sort_by("score", descending=True).first(),
            pl.col("marketplace").drop_nulls().first(),
            pl.col("timezone").drop_nulls().first(),
        )
        .with_columns(status=pl.lit("registered"), campaign_id=pl.lit(None, pl.String))
        .select([pl.col(name).cast(dtype) for name, dtype in REGISTRATION_VIEW.items()])
        .sort("customer_id")
    )


def waitlisted_view(registrations: pl.DataFrame) -> pl.DataFrame:
    """Waitlisted engagement-store rows (naive UTC times) in the registered view's shape."""
    return (
        registrations.select(
            "customer_id",
            "status",
            pl.col("registered_at").dt.replace_time_zone("UTC"),
            "channel",
            "campaign_id",
        )
        .with_columns(
            pl.lit(None, pl.Float64).alias("score"),
            *(pl.lit(None, pl.String).alias(name) for name in ("score_band", "marketplace", "timezone")),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in REGISTRATION_VIEW.items()])
        .unique("customer_id", keep="first", maintain_order=True)
        .sort("customer_id")
    )


def public_rows(frame: pl.DataFrame) -> bytes:
    """Rows as a JSON array, without PII columns, times as ISO 8601 UTC (`...Z`)."""
    columns: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        if name in _PII_COLUMNS:
            continue
        column = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is not None:
                column = column.dt.convert_time_zone("UTC")
            column = column.dt.to_string(_JSON_TS)
        columns.append(column)
    return frame.select(columns).write_json().encode() if columns else b"[]"


def page_body(rows: pl.DataFrame, next_cursor: str | None) -> bytes:
    """The response of every list query: items, count and the next page's cursor."""
    tail = json.dumps({"count": rows.height, "nextCursor": next_cursor}, separators=(",", ":"))
    return b'{"items":' + public_rows(rows) + b"," + tail[1:].encode()


# ---- authentication (pure) ----------------------------------------------------------------------


def api_key_matches(presented: str, keys: Sequence[bytes]) -> bool:
    """Constant-time comparison with every configured key (no early exit, so timing tells nothing)."""
    candidate = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


def presented_api_key(headers: Mapping[str, str]) -> str | None:
    value = headers.get(API_KEY_HEADER)
    if value:
        return value
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-EventReach-Signature` value of a delivery: HMAC-SHA256 of `<timestamp>.<body>`."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook(secret: bytes, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise a 401 ApiError unless the delivery is signed with `secret` within the tolerance."""
    timestamp, signature = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise ApiError(401, "X-EventReach-Timestamp and X-EventReach-Signature headers are required")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise ApiError(401, "X-EventReach-Timestamp must be unix seconds")
    if abs(now - int(timestamp)) > WEBHOOK_TOLERANCE_SECONDS:
        raise ApiError(401, f"X-EventReach-Timestamp is more than {WEBHOOK_TOLERANCE_SECONDS} s from the server's time")
    if not hmac.compare_digest(signature.encode(), webhook_signature(secret, timestamp, body).encode()):
        raise ApiError(401, "X-EventReach-Signature does not match the body")


def webhook_records(body: bytes) -> list[dict[str, Any]]:
    """The delivery's registration records: a JSON list, or an object with a `registrations` list.

    An element that is not an object is kept as a malformed record (quarantined with its
    reason by the ingestion), not dropped.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_parameter("body", "not JSON") from None
    if isinstance(data, dict):
        if "registrations" not in data:
            raise bad_parameter("body", "an object needs a 'registrations' list")
        data = data["registrations"]
    if not isinstance(data, list) or not data:
        raise bad_parameter("body", "registrations must be a non-empty list of records")
    if len(data) > MAX_WEBHOOK_RECORDS:
        raise bad_parameter("body", f"at most {MAX_WEBHOOK_RECORDS} records per delivery, got {len(data)}")
    for index, record in enumerate(data):
        # A cancellation that cannot be applied leaves a seat blocked: the platform must hear it now.
        problem = cancellation_problem(record) if isinstance(record, dict) else None
        if problem is not None:
            field, message = problem
            raise bad_parameter(f"registrations[{index}].{field}", message)
    return [
        record if isinstance(record, dict) else {"_error": "not a JSON object", "_raw": json.dumps(record)}
        for record in data
    ]


# ---- the app ------------------------------------------------------------------------------------


@dataclass
class ServingDependencies:
    """What the API reads and writes: the same resources the deployment's Dagster runs use."""

    program: ProgramConfig
    store: CandidateStoreResource
    engagement: EngagementStoreResource
    warehouse: WarehouseResource
    decision_log: DecisionLogResource
    link_key: bytes  # verifies the register tokens in webhook records
    clock: Callable[[], datetime]  # "now" for reads and ingestion (the deployment's ClockResource)


@dataclass
class ExpiringCache:
    """Per-process cache of whole registered / waitlisted lists, refreshed after `seconds` (0: off).

    A registered list is read whole from the store (it has no paged query; ~20 ms per 1,000
    registrants locally), so pages of one list share one read. An expired list is still
    served while one background load replaces it (a refresh never makes a request wait); a list
    never loaded, or dropped by `clear`, is loaded before answering. The webhook clears the
    cache of the process that ingested; other processes serve new registrations after at most
    `seconds` plus one load. At most `max_entries` lists are kept.
    """

    seconds: float
    max_entries: int = 256
    _entries: OrderedDict[tuple[str, ...], tuple[float, Any]] = field(default_factory=OrderedDict)
    _refreshing: set[tuple[str, ...]] = field(default_factory=set)
    _locks: dict[tuple[str, ...], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _generation: int = 0  # bumped by `clear`: a load begun before it does not store its (older) value

    def lookup(self, key: tuple[str, ...]) -> tuple[Any | None, bool]:
        """(the cached value or None, whether the caller should start its refresh); never blocks.

        Only the first caller after expiry is asked to refresh, so one load runs per key.
        """
        with self._guard:
            entry = self._entries.get(key)
            if entry is None or self.seconds <= 0:
                return None, False
            if entry[0] > time.monotonic() or key in self._refreshing:
                return entry[1], False
            self._refreshing.add(key)
            return entry[1], True

    def load(self, key: tuple[str, ...], loader: Callable[[], T]) -> T:
        """`loader()`'s value, stored under `key` (blocks: run it in a thread). Concurrent loads of
        a key wait for the first one and take its value."""
        if self.seconds <= 0:
            return loader()
        started = time.monotonic()
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            generation = self._generation
        try:
            with lock:
                with self._guard:
                    entry = self._entries.get(key)
                if entry is not None and entry[0] - self.seconds >= started:  # loaded while we waited
                    return entry[1]
                value = loader()
                with self._guard:
                    if generation != self._generation:
                        return value
                    self._entries[key] = (time.monotonic() + self.seconds, value)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.max_entries:
                        evicted, _ = self._entries.popitem(last=False)
                        self._locks.pop(evicted, None)
                return value
        finally:
            with self._guard:
                self._refreshing.discard(key)

    def clear(self) -> None:
        """Forget every list (after new registrations), including loads still running."""
        with self._guard:
            self._entries.clear()
            self._generation += 1


def _json(status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _ok(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    payload: dict[str, Any] = {"error": error.message}
    if error.parameter is not None:
        payload["parameter"] = error.parameter
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return _json(error.status, payload, headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return _json(error.status_code, {"error": str(error.detail)}, error.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def checked_api_keys(api_keys: Sequence[str]) -> list[bytes]:
    keys = [key.encode() for key in api_keys]
    if not keys or any(len(key) < MIN_API_KEY_LENGTH for key in keys):
        raise ValueError(f"API keys: give at least one, each at least {MIN_API_KEY_LENGTH} characters")
    return keys


def checked_webhook_secret(webhook_secret: bytes | str) -> bytes:
    secret = webhook_secret.encode() if isinstance(webhook_secret, str) else webhook_secret
    if len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
        raise ValueError(f"the webhook secret must be at least {MIN_WEBHOOK_SECRET_LENGTH} characters")
    return secret


def webhook_reply(outcome: RegistrationOutcome) -> dict[str, Any]:
    """What the webhook answers: counts, and each rejected record's position and reason (no ids)."""
    return {
        "accepted": outcome.accepted.height,
        "waitlisted": outcome.waitlisted.height,
        "cancelled": 0 if outcome.cancelled is None else outcome.cancelled.height,
        "rejected": outcome.rejected.height,
        "stored": outcome.stored or 0,
        "rejections": [
            {"position": line, "reason": reason} for line, reason in outcome.rejected.select("line", "reason").rows()
        ],
    }


def webhook_batch_name(body: bytes) -> str:
    """The quarantine file name of a delivery: when it came, and a digest of what came."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{WEBHOOK_BATCH_PREFIX}-{stamp}-{hashlib.sha256(body).hexdigest()[:12]}"


class ServingApi:
    """The API's request handlers and what they share: the deployment's dependencies, the keys,
    the list cache. `create_app` routes requests to its methods.

    `reads_in_threads` (default: unless the candidate store is a local SQLite file) runs the
    store's page reads in the thread pool. A network store (DynamoDB: milliseconds per call)
    must not hold the event loop; a SQLite read is a local sub-millisecond call that costs less
    than the hand-off to a thread (measured: 520 vs 320 requests/s), so it runs inline. Whole
    registered lists and webhook ingestion always run in the thread pool.
    """

    def __init__(
        self,
        dependencies: ServingDependencies,
        *,
        api_keys: Sequence[str],
        webhook_secret: bytes | str,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        reads_in_threads: bool | None = None,
    ) -> None:
        self.keys = checked_api_keys(api_keys)
        self.secret = checked_webhook_secret(webhook_secret)
        self.deps = dependencies
        self.channels = [spec.channel_id for spec in dependencies.program.invitation_channels]
        self.lists = ExpiringCache(cache_seconds)
        self.offload = (
            not isinstance(dependencies.store, SqliteBacked) if reads_in_threads is None else reads_in_threads
        )
        self._ingest_lock = threading.Lock()  # one delivery at a time: capacity is read, then written
        self._refreshes: set[asyncio.Task[Any]] = set()

    # ---- steps every route shares

    def authenticate(self, request: Request) -> None:
        presented = presented_api_key(request.headers)
        if presented is None:
            raise ApiError(401, "an API key is required (X-API-Key header or Authorization: Bearer)")
        if not api_key_matches(presented, self.keys):
            raise ApiError(401, "invalid API key")

    def known_program(self, program: str) -> None:
        if program != self.deps.program.program_id:
            raise ApiError(404, f"unknown program {program!r}")

    async def read(self, function: Callable[..., T], *args: Any) -> T:
        return await run_in_threadpool(function, *args) if self.offload else function(*args)

    # ---- GET /v1/candidates

    async def candidates(self, request: Request) -> Response:
        self.authenticate(request)
        query = parse_candidates_query(request.query_params.multi_items(), self.channels)
        self.known_program(query.program)
        store = self.deps.store
        try:
            page = await self.read(
                store.top_candidates_for_channel, query.program, query.event, query.channel, query.min_score,
                query.limit, query.exclude_registered, query.cursor, self.deps.clock(),
            )  # fmt: skip
        except ValueError as error:
            if query.cursor is None:
                raise
            raise bad_parameter("cursor", str(error)) from None  # the store's own cursor check
        return _ok(page_body(page.items, page.next_cursor))

    # ---- GET /v1/registered-candidates

    def registration_list(self, query: RegisteredQuery) -> pl.DataFrame:
        """The whole registered (candidate store, less cancellations) or waitlisted list."""
        engagement = self.deps.engagement
        if query.status == "registered":
            items = self.deps.store.registered_candidates(query.program, query.event, now=self.deps.clock())
            cancelled = engagement.registrations(query.event, CANCELLED).select("customer_id")
            return registered_view(items.join(cancelled, on="customer_id", how="anti"))
        return waitlisted_view(engagement.registrations(query.event, "waitlisted"))

    async def cached_registration_list(self, query: RegisteredQuery) -> pl.DataFrame:
        """The list from the cache; loaded first when missing, refreshed in the background when expired."""
        key = (query.program, query.event, query.status)
        rows, refresh = self.lists.lookup(key)
        if rows is None:
            return await run_in_threadpool(self.lists.load, key, lambda: self.registration_list(query))
        if refresh:
            task = asyncio.create_task(run_in_threadpool(self.lists.load, key, lambda: self.registration_list(query)))
            self._refreshes.add(task)  # keep a reference until it is done
            task.add_done_callback(self._finished_refresh)
        return rows

    def _finished_refresh(self, task: asyncio.Task[Any]) -> None:
        self._refreshes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The stale list stays served and the next request retries; the type only (no data).
            logger.warning("refreshing a registration list failed: %s", type(task.exception()).__name__)

    async def registered_candidates(self, request: Request) -> Response:
        self.authenticate(request)
        query = parse_registered_query(request.query_params.multi_items())
        self.known_program(query.program)
        rows = await self.cached_registration_list(query)
        query_key = "|".join((query.program, query.event, query.status))
        page, next_cursor = page_after(rows, ["customer_id"], query.limit, query_key, query.cursor)
        return _ok(page_body(page, next_cursor))

    # ---- GET /v1/customers/{customer}/candidates

    async def customer_candidates(self, request: Request) -> Response:
        self.authenticate(request)
        query = parse_customer_query(request.path_params["customer"], request.query_params.multi_items())
        self.known_program(query.program)
        items = await self.read(
            self.deps.store.candidates_for_customer, query.program, query.customer, self.deps.clock()
        )
        if query.event is not None:
            items = items.filter(pl.col("event_id") == query.event)
        query_key = f"{query.program}|{query.customer}|{query.event or ''}"
        page, next_cursor = page_after(items, ["event_id", "channel"], query.limit, query_key, query.cursor)
        return _ok(page_body(page, next_cursor))

    # ---- POST /v1/webhooks/registrations

    def ingest(self, records: list[dict[str, Any]], batch: str) -> dict[str, Any]:
        """Store a delivery through the feed's own ingestion, quarantine its rejections, answer counts."""
        deps = self.deps
        with self._ingest_lock:
            outcome = ingest_registrations(
                records, warehouse=deps.warehouse, store=deps.store, engagement=deps.engagement,
                program=deps.program, secret=deps.link_key, now=deps.clock(),
            )  # fmt: skip
            self.lists.clear()
        quarantine(deps.decision_log, "registrations", batch, outcome.rejected)
        summary = outcome.summary()
        logger.info("registration webhook: %s", {key: summary[key] for key in ("accepted", "waitlisted", "rejected")})
        return webhook_reply(outcome)

    async def registrations_webhook(self, request: Request) -> Response:
        body = await _read_body(request, MAX_WEBHOOK_BYTES)
        verify_webhook(self.secret, request.headers, body, time.time())
        records = webhook_records(body)
        return _json(200, await run_in_threadpool(self.ingest, records, webhook_batch_name(body)))


async def health(request: Request) -> Response:
    return _json(200, {"status": "ok"})


def closing(
    on_shutdown: Callable[[], None] | None,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: run `on_shutdown` (closing resources) when the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if on_shutdown is not None:
                on_shutdown()

    return lifespan


def create_app(
    dependencies: ServingDependencies,
    *,
    api_keys: Sequence[str],
    webhook_secret: bytes | str,
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
    reads_in_threads: bool | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    """The Serving API over `dependencies` (see `ServingApi`); `on_shutdown` runs when the server
    stops (closing resources)."""
    api = ServingApi(
        dependencies, api_keys=api_keys, webhook_secret=webhook_secret, cache_seconds=cache_seconds,
        reads_in_threads=reads_in_threads,
    )  # fmt: skip
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/candidates", api.candidates, methods=["GET"]),
            Route("/v1/registered-candidates", api.registered_candidates, methods=["GET"]),
            Route("/v1/customers/{customer}/candidates", api.customer_candidates, methods=["GET"]),
            Route("/v1/webhooks/registrations", api.registrations_webhook, methods=["POST"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=closing(on_shutdown),
    )


# ---- the deployment's resources, keys and the command line ----------------------------------------

SERVING_RESOURCES = ("program", "clock", "candidate_store", "engagement", "warehouse", "decision_log", "link_signing")


@contextlib.contextmanager
def deployment_dependencies(home: Path | None = None, deployment: str | None = None) -> Iterator[ServingDependencies]:
    """The API's dependencies from the deployment's own resources (deployments.py: `resources_for`),
    with every `dg.EnvVar` resolved as a run would resolve it; closed when the context ends."""
    import dagster as dg

    deployed = resources_for(deployment, home=home)
    with dg.build_resources({name: deployed[name] for name in SERVING_RESOURCES}) as resources:
        yield ServingDependencies(
            program=resources.program.load(),
            store=resources.candidate_store,
            engagement=resources.engagement,
            warehouse=resources.warehouse,
            decision_log=resources.decision_log,
            link_key=resources.link_signing.key(),
            clock=resources.clock.now,
        )


def local_secret_file(path: Path) -> str:
    """A random secret kept in `path` (mode 0600), created on first use (as the link secret is)."""
    from eventreach_assets.resources.link_signing import LocalLinkSecret

    return LocalLinkSecret(path=str(path)).key().decode()


def api_keys_from_env(home: Path, deployment: str) -> tuple[list[str], str]:
    """The API keys and where they came from; locally a generated key file when the env has none."""
    configured = [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
    if configured:
        return configured, f"env {API_KEYS_ENV}"
    if deployment != "local":
        raise RuntimeError(f"{API_KEYS_ENV} is not set (comma-separated API keys, each >= {MIN_API_KEY_LENGTH} chars)")
    path = home / "api_key"
    return [local_secret_file(path)], str(path)


def webhook_secret_from_env(home: Path, deployment: str) -> tuple[str, str]:
    """The webhook secret and where it came from; locally a generated file when the env has none."""
    configured = os.environ.get(WEBHOOK_SECRET_ENV, "").strip()
    if configured:
        return configured, f"env {WEBHOOK_SECRET_ENV}"
    if deployment != "local":
        raise RuntimeError(f"{WEBHOOK_SECRET_ENV} is not set (>= {MIN_WEBHOOK_SECRET_LENGTH} characters)")
    path = home / "webhook_secret"
    return local_secret_file(path), str(path)


def _deployment_settings() -> tuple[Path, str]:
    return eventreach_home(), os.environ.get(DEPLOYMENT_ENV, "local")


def app_from_env() -> Starlette:
    """The app for the environment's deployment (uvicorn's factory; each worker process calls it)."""
    home, deployment = _deployment_settings()
    keys, _ = api_keys_from_env(home, deployment)
    secret, _ = webhook_secret_from_env(home, deployment)
    cache_seconds = float(os.environ.get(CACHE_SECONDS_ENV, DEFAULT_CACHE_SECONDS))
    stack = contextlib.ExitStack()
    dependencies = stack.enter_context(deployment_dependencies(home if deployment == "local" else None, deployment))
    app = create_app(
        dependencies, api_keys=keys, webhook_secret=secret, cache_seconds=cache_seconds, on_shutdown=stack.close
    )
    # Start-up leaves millions of long-lived objects (Dagster definitions, libraries); a full
    # collection walking them all took hundreds of ms mid-request. Freeze them out of the GC.
    gc.collect()
    gc.freeze()
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m eventreach_assets.serving.api`: serve the deployment named by the environment."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="eventreach-serving-api", description="EventReach Serving API")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--home", type=Path, help="local data dir (default: EVENTREACH_HOME or ./.eventreach)")
    args = parser.parse_args(argv)
    if args.home is not None:
        os.environ["EVENTREACH_HOME"] = str(args.home.resolve())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # this module's counts; libraries stay at warnings
    home, deployment = _deployment_settings()
    # Created (locally) before the workers start, and named by where they are, never by value.
    _, keys_from = api_keys_from_env(home, deployment)
    _, secret_from = webhook_secret_from_env(home, deployment)
    print(f"EventReach Serving API ({deployment}) on http://{args.host}:{args.port}", flush=True)
    print(f"  API keys from {keys_from}; webhook secret from {secret_from}", flush=True)
    uvicorn.run(
        "eventreach_assets.serving.api:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,  # request lines carry customer ids: not logged
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
