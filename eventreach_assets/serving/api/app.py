"""The Starlette app: the routes, their handlers (`ServingApi`) and the JSON answers and errors.

The handlers parse (params), authenticate (auth), read the deployment's stores, page (paging)
and answer; what they read and write is handed in as `ServingDependencies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import polars as pl
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventreach_assets.domain.engagement_schemas import CANCELLED
from eventreach_assets.ingestion import ingest_registrations, quarantine
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.sqlite import SqliteBacked
from eventreach_assets.resources.warehouse import WarehouseResource
from eventreach_assets.serving.api.auth import (
    api_key_matches,
    checked_api_keys,
    checked_webhook_secret,
    presented_api_key,
    verify_webhook,
)
from eventreach_assets.serving.api.cache import DEFAULT_CACHE_SECONDS, ExpiringCache
from eventreach_assets.serving.api.cursors import CursorSigner, query_binding
from eventreach_assets.serving.api.openapi import openapi_document
from eventreach_assets.serving.api.paging import page_after, page_body
from eventreach_assets.serving.api.params import (
    ApiError,
    RegisteredQuery,
    bad_parameter,
    parse_candidates_query,
    parse_customer_query,
    parse_registered_query,
)
from eventreach_assets.serving.api.views import registered_view, waitlisted_view
from eventreach_assets.serving.api.webhook import MAX_WEBHOOK_BYTES, webhook_batch_name, webhook_records, webhook_reply

# The package's name, as the logs have always carried it; `main` raises it to INFO.
logger = logging.getLogger(__package__)

T = TypeVar("T")


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
        cursor_keys: Sequence[bytes | str],
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        reads_in_threads: bool | None = None,
    ) -> None:
        self.keys = checked_api_keys(api_keys)
        self.secret = checked_webhook_secret(webhook_secret)
        self.cursors = CursorSigner.from_keys(cursor_keys)
        self.deps = dependencies
        self.channels = [spec.channel_id for spec in dependencies.program.invitation_channels]
        self.lists = ExpiringCache(cache_seconds)
        self.offload = (
            not isinstance(dependencies.store, SqliteBacked) if reads_in_threads is None else reads_in_threads
        )
        self._ingest_lock = threading.Lock()  # one delivery at a time: capacity is read, then written
        self._refreshes: set[asyncio.Task[Any]] = set()
        self.openapi_body = json.dumps(openapi_document(self.channels), separators=(",", ":")).encode()

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
        binding = query_binding(
            "candidates", query.program, query.event, query.channel, query.min_score, query.exclude_registered
        )
        # The signed cursor wraps the store's own (its position in the GSI1 order).
        after = self.cursors.redeem(query.cursor, binding, 1)[0] if query.cursor is not None else None
        store = self.deps.store
        try:
            page = await self.read(
                store.top_candidates_for_channel, query.program, query.event, query.channel, query.min_score,
                query.limit, query.exclude_registered, after, self.deps.clock(),
            )  # fmt: skip
        except ValueError:
            if after is None:
                raise
            # The store's own check (a cursor signed for this query, from an older store format);
            # its message quotes the cursor, which holds a customer id: not echoed.
            raise bad_parameter("cursor", "no longer valid: start from the first page") from None
        next_cursor = self.cursors.issue(binding, [page.next_cursor]) if page.next_cursor is not None else None
        return _ok(page_body(page.items, next_cursor))

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
        binding = query_binding("registered-candidates", query.program, query.event, query.status)
        page, next_cursor = page_after(rows, ["customer_id"], query.limit, self.cursors, binding, query.cursor)
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
        binding = query_binding("customer-candidates", query.program, query.customer, query.event)
        keys = ["event_id", "channel"]
        page, next_cursor = page_after(items, keys, query.limit, self.cursors, binding, query.cursor)
        return _ok(page_body(page, next_cursor))

    # ---- GET /openapi.json (no key: the document holds no data)

    async def openapi(self, request: Request) -> Response:
        return _ok(self.openapi_body)

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
    cursor_keys: Sequence[bytes | str],
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
    reads_in_threads: bool | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    """The Serving API over `dependencies` (see `ServingApi`); `cursor_keys` sign page cursors (the
    first signs, any verifies; every worker process must get the same); `on_shutdown` runs when
    the server stops (closing resources)."""
    api = ServingApi(
        dependencies, api_keys=api_keys, webhook_secret=webhook_secret, cursor_keys=cursor_keys,
        cache_seconds=cache_seconds, reads_in_threads=reads_in_threads,
    )  # fmt: skip
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/openapi.json", api.openapi, methods=["GET"]),
            Route("/v1/candidates", api.candidates, methods=["GET"]),
            Route("/v1/registered-candidates", api.registered_candidates, methods=["GET"]),
            Route("/v1/customers/{customer}/candidates", api.customer_candidates, methods=["GET"]),
            Route("/v1/webhooks/registrations", api.registrations_webhook, methods=["POST"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=closing(on_shutdown),
    )
