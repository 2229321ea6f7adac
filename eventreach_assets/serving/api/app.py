"""The Starlette app: the routes, their handlers (`ServingApi`) and the JSON answers and errors.

The handlers parse (params), authenticate (auth), read the deployment's stores, page (paging)
and answer; what they read and write is handed in as `ServingDependencies`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventreach_assets.domain.candidate_items import epoch_seconds
from eventreach_assets.ingestion import ingest_registrations, quarantine
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource, RegisteredCustomer
from eventreach_assets.resources.candidate_store.sqlite import SqliteCandidateStore
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
from eventreach_assets.serving.api.cursors import CursorSigner, query_binding
from eventreach_assets.serving.api.openapi import openapi_document
from eventreach_assets.serving.api.page_cache import PageCache
from eventreach_assets.serving.api.paging import page_body
from eventreach_assets.serving.api.params import (
    ApiError,
    RegisteredQuery,
    bad_parameter,
    parse_candidates_query,
    parse_customer_query,
    parse_registered_query,
)
from eventreach_assets.serving.api.views import registered_row_json, waitlisted_row_json
from eventreach_assets.serving.api.webhook import MAX_WEBHOOK_BYTES, webhook_batch_name, webhook_records, webhook_reply

# The package's name, as the logs have always carried it; `main` raises it to INFO.
logger = logging.getLogger(__package__)

T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]

PAGE_CACHE_BYTES = 64 * 2**20  # per worker process: the bench's whole request mix takes ~10 MB


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
    """The API's request handlers and what they share: the deployment's dependencies and the
    keys. `create_app` routes requests to its methods.

    Every list is read a page at a time from the stores' indexes as JSON text (no frame, no
    cached whole lists): every process serves a new registration on its next request.
    `reads_in_threads` (default: unless the candidate store is a local SQLite file) runs the
    page reads in the thread pool. A network store (DynamoDB: milliseconds per call) must not
    hold the event loop; a SQLite page is a local read of ~0.1 ms that costs less than the
    hand-off to a thread, so it runs inline. Webhook ingestion always runs in the thread pool.

    Over local SQLite stores each process keeps the pages it answered (`page_cache`, bounded by
    `page_cache_bytes`, 0: none) while nothing is committed to the stores and no item expires:
    the same request is then answered without reading the page again, never with a stale one.
    """

    def __init__(
        self,
        dependencies: ServingDependencies,
        *,
        api_keys: Sequence[str],
        webhook_secret: bytes | str,
        cursor_keys: Sequence[bytes | str],
        reads_in_threads: bool | None = None,
        page_cache_bytes: int = PAGE_CACHE_BYTES,
    ) -> None:
        self.keys = checked_api_keys(api_keys)
        self.secret = checked_webhook_secret(webhook_secret)
        self.cursors = CursorSigner.from_keys(cursor_keys)
        self.deps = dependencies
        self.channels = [spec.channel_id for spec in dependencies.program.invitation_channels]
        self.offload = (
            not isinstance(dependencies.store, SqliteBacked) if reads_in_threads is None else reads_in_threads
        )
        store, engagement = dependencies.store, dependencies.engagement
        # A network store cannot tell what changed without reading it: pages are cached over local files only.
        local = isinstance(store, SqliteCandidateStore) and isinstance(engagement, SqliteBacked)
        self.page_cache = PageCache(page_cache_bytes) if local and page_cache_bytes > 0 else None
        # One version per file (the local deployment keeps the stores in two; both may share one).
        readers = {each.path: each.version_reader() for each in (store, engagement) if isinstance(each, SqliteBacked)}
        self._version_readers = tuple(readers.values())
        self._ingest_lock = threading.Lock()  # one delivery at a time: capacity is read, then written
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

    async def read_page(self, after: object, function: Callable[..., T], *args: Any) -> T:
        """`read`, a position the store refuses (a signed cursor of an older format) being a 400."""
        try:
            return await self.read(function, *args)
        except ValueError:
            if after is None:
                raise
            # The store's message may quote the position, which holds a customer id: not echoed.
            raise bad_parameter("cursor", "no longer valid: start from the first page") from None

    def answer(self, items: list[str], binding: bytes, next_position: list[str] | None) -> Response:
        """A page: its items and, when more follow, the signed cursor of the position after it."""
        next_cursor = self.cursors.issue(binding, next_position) if next_position is not None else None
        return Response(page_body(items, next_cursor), media_type="application/json")

    def page(self, handler: Endpoint) -> Endpoint:
        """The endpoint of a list query: authenticated, then answered from the page cache when the
        same request was answered since the stores last changed, else by `handler` (a 200 kept)."""

        async def endpoint(request: Request) -> Response:
            self.authenticate(request)
            cache = self.page_cache
            if cache is None:
                return await handler(request)
            store = cast(SqliteCandidateStore, self.deps.store)  # a page cache exists only over one
            # Read before the page: a write committed while it is read moves them, so it is not kept.
            versions = tuple(read() for read in self._version_readers)
            now_epoch = epoch_seconds(self.deps.clock())
            cache.renew(versions, now_epoch, lambda: store.next_expiry(now_epoch))
            key = (request.scope["path"], request.scope["query_string"])
            body = cache.get(key)
            if body is not None:
                return _ok(body)
            response = await handler(request)
            if response.status_code == 200:
                cache.put(key, versions, response.body)
            return response

        return endpoint

    # ---- GET /v1/candidates

    async def candidates(self, request: Request) -> Response:
        query = parse_candidates_query(request.query_params.multi_items(), self.channels)
        self.known_program(query.program)
        binding = query_binding(
            "candidates", query.program, query.event, query.channel, query.min_score, query.exclude_registered
        )
        # The signed cursor wraps the store's own (its position in the GSI1 order).
        after = self.cursors.redeem(query.cursor, binding, 1)[0] if query.cursor is not None else None
        page = await self.read_page(
            after, self.deps.store.served_top_candidates, query.program, query.event, query.channel,
            query.min_score, query.limit, query.exclude_registered, after, self.deps.clock(),
        )  # fmt: skip
        return self.answer(page.items, binding, page.next_position)

    # ---- GET /v1/registered-candidates

    def registered_page(self, query: RegisteredQuery, after: str | None) -> tuple[list[str], list[str] | None]:
        """One page of registered customers, cancellations left out, read from the store's index
        page by page (a page with cancelled customers reads on until it is full or the list ends)."""
        store, engagement, now = self.deps.store, self.deps.engagement, self.deps.clock()
        served: list[RegisteredCustomer] = []
        while True:
            wanted = query.limit + 1 - len(served)  # one more than the page tells whether another follows
            customers, more = store.registered_customers_page(query.program, query.event, wanted, after, now)
            cancelled = engagement.cancelled_among(query.event, [customer.customer_id for customer in customers])
            served += [customer for customer in customers if customer.customer_id not in cancelled]
            if len(served) > query.limit or not more or not customers:
                break
            after = customers[-1].position
        page = served[: query.limit]
        next_position = [page[-1].position] if len(served) > query.limit else None
        return [registered_row_json(customer) for customer in page], next_position

    def waitlisted_page(self, query: RegisteredQuery, after: str | None) -> tuple[list[str], list[str] | None]:
        """One page of the engagement store's waitlist, by customer_id (its key's order)."""
        rows, more = self.deps.engagement.registrations_page(query.event, "waitlisted", query.limit, after)
        return [waitlisted_row_json(row) for row in rows], ([rows[-1][1]] if more else None)

    async def registered_candidates(self, request: Request) -> Response:
        query = parse_registered_query(request.query_params.multi_items())
        self.known_program(query.program)
        binding = query_binding("registered-candidates", query.program, query.event, query.status)
        after = self.cursors.redeem(query.cursor, binding, 1)[0] if query.cursor is not None else None
        read = self.registered_page if query.status == "registered" else self.waitlisted_page
        items, next_position = await self.read_page(after, read, query, after)
        return self.answer(items, binding, next_position)

    # ---- GET /v1/customers/{customer}/candidates

    async def customer_candidates(self, request: Request) -> Response:
        query = parse_customer_query(request.path_params["customer"], request.query_params.multi_items())
        self.known_program(query.program)
        binding = query_binding("customer-candidates", query.program, query.customer, query.event)
        after = tuple(self.cursors.redeem(query.cursor, binding, 2)) if query.cursor is not None else None
        page = await self.read_page(
            after, self.deps.store.served_customer_items, query.program, query.customer, query.event,
            query.limit, after, self.deps.clock(),
        )  # fmt: skip
        return self.answer(page.items, binding, page.next_position)

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
    reads_in_threads: bool | None = None,
    page_cache_bytes: int = PAGE_CACHE_BYTES,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    """The Serving API over `dependencies` (see `ServingApi`); `cursor_keys` sign page cursors (the
    first signs, any verifies; every worker process must get the same); `on_shutdown` runs when
    the server stops (closing resources); `page_cache_bytes` bounds each process's page cache
    (0: none; see `ServingApi`)."""
    api = ServingApi(
        dependencies, api_keys=api_keys, webhook_secret=webhook_secret, cursor_keys=cursor_keys,
        reads_in_threads=reads_in_threads, page_cache_bytes=page_cache_bytes,
    )  # fmt: skip
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/openapi.json", api.openapi, methods=["GET"]),
            Route("/v1/candidates", api.page(api.candidates), methods=["GET"]),
            Route("/v1/registered-candidates", api.page(api.registered_candidates), methods=["GET"]),
            Route("/v1/customers/{customer}/candidates", api.page(api.customer_candidates), methods=["GET"]),
            Route("/v1/webhooks/registrations", api.registrations_webhook, methods=["POST"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=closing(on_shutdown),
    )
