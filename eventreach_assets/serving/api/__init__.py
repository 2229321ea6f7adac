"""The Serving API: the use case's read queries and the registration webhook over HTTP (ASGI).

Routes (JSON in and out; every GET needs an API key, the webhook a signed body):

* `GET /v1/candidates?program=&event=&channel=&minScore=&limit=&excludeRegistered=&cursor=` —
  GetCandidatesForChannel: the event's live candidates on an invitation channel with
  score >= minScore, score descending (ties by customer_id), registered customers left out
  unless `excludeRegistered=false`.
* `GET /v1/registered-candidates?program=&event=&status=&limit=&cursor=` —
  GetRegisteredCandidates: one row per customer; `registered` (the default) from the candidate
  store's GSI2 in its order (registration date, then customer_id), cancellations left out;
  `waitlisted` from the engagement store, by customer_id.
* `GET /v1/customers/{customer}/candidates?program=[&event=][&limit=&cursor=]` — one customer's
  live candidate items (support), by event then channel.
* `POST /v1/webhooks/registrations` — the event platform's registrations, validated and stored
  by the same `ingest_registrations` the registrations feed uses (idempotent: a replayed
  delivery is stored once). A record with `"action": "cancel"` (event_id, customer_id,
  cancelled_at, optional registration_id) cancels a registration or waitlist place; a record
  with an unknown action, or a cancellation lacking a field or with a bad one, refuses the
  whole delivery with a 400 naming it (`registrations[<index>].<field>`), nothing stored.
* `GET /health` — liveness, no key, no data.
* `GET /openapi.json` — the OpenAPI 3.1 document of all of this (`openapi`), no key: it holds
  no data, and client generators fetch it unauthenticated.

Every answer is at most one page (`limit` 1..100, default 100) with an opaque `nextCursor`
(null on the last page). A cursor is signed (HMAC-SHA256) and bound to the query that issued
it (route and every parameter but `limit`, which may change between pages); an altered,
forged or borrowed cursor is a 400 naming `cursor` (see `cursors`). The keys come from
`EVENTREACH_API_CURSOR_KEYS` (comma-separated, each >= 32 characters; the first signs, any
verifies: rotate by putting the new key first, drop the old one later), locally from a
generated `cursor_key` file: every worker process must hold the same keys.

A bad parameter is a 400 naming it (`{"error": ..., "parameter": ...}`); an unknown parameter
is a bad one (a typo must not silently widen a query). A missing or wrong API key is a 401, an
unknown program a 404. The `email` attribute (PII) is never returned, and nothing here logs
keys, customer ids or request URLs (uvicorn's access log is off).

API keys: `X-API-Key: <key>` or `Authorization: Bearer <key>`, compared in constant time with
every key of `EVENTREACH_API_KEYS` (comma-separated, each >= 16 characters). Webhook: header
`X-EventReach-Timestamp: <unix seconds>` and `X-EventReach-Signature: sha256=<hex>`, the
HMAC-SHA256 with `EVENTREACH_WEBHOOK_SECRET` of `<timestamp>.<raw body>`; the timestamp is
signed so a captured delivery cannot be re-sent with a fresh one, and one more than 5 minutes
from the server's clock is refused. The local deployment needs neither variable: it creates a
random key and secrets in its data dir (`api_key`, `webhook_secret`, `cursor_key`, mode 0600)
and prints where.

Every page is read from the stores' indexes (a keyset on the key the list is ordered by: GSI1
for candidates, GSI2 for registered customers, the engagement key for the waitlist) as JSON
text, never a whole list or a frame per request. Over the local SQLite stores each process
keeps the pages it answered until anything is committed to the stores or an item expires
(`page_cache`, `EVENTREACH_API_PAGE_CACHE_MB`, 0: off), so every process still serves a new
registration on its next request. Run it with
`python -m eventreach_assets.serving.api --host 127.0.0.1 --port 8000 [--workers N]` (`make serve`).

Modules: `params` (query parameters, `ApiError`), `cursors` (signed cursors), `paging` (page
bodies), `page_cache` (answers kept between writes), `openapi` (the OpenAPI document), `views`
(the registered / waitlisted rows served), `auth` (API keys, webhook signatures), `webhook` (the
delivery format), `app` (the Starlette app and its handlers), `cli` (the deployment's
dependencies and secrets, `main`).
"""

from eventreach_assets.serving.api.app import PAGE_CACHE_BYTES, ServingApi, ServingDependencies, create_app
from eventreach_assets.serving.api.auth import (
    API_KEY_HEADER,
    MIN_API_KEY_LENGTH,
    MIN_WEBHOOK_SECRET_LENGTH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_TOLERANCE_SECONDS,
    api_key_matches,
    presented_api_key,
    verify_webhook,
    webhook_signature,
)
from eventreach_assets.serving.api.cli import (
    API_KEYS_ENV,
    CURSOR_KEYS_ENV,
    PAGE_CACHE_ENV,
    WEBHOOK_SECRET_ENV,
    api_keys_from_env,
    app_from_env,
    cursor_keys_from_env,
    deployment_dependencies,
    main,
    webhook_secret_from_env,
)
from eventreach_assets.serving.api.cursors import MIN_CURSOR_KEY_LENGTH, CursorSigner, query_binding
from eventreach_assets.serving.api.page_cache import PageCache
from eventreach_assets.serving.api.paging import page_body
from eventreach_assets.serving.api.params import (
    PAGE_LIMIT,
    STATUSES,
    ApiError,
    CandidatesQuery,
    CustomerQuery,
    RegisteredQuery,
    bad_parameter,
    parse_candidates_query,
    parse_customer_query,
    parse_registered_query,
)
from eventreach_assets.serving.api.views import REGISTRATION_VIEW, registered_row_json, waitlisted_row_json
from eventreach_assets.serving.api.webhook import MAX_WEBHOOK_BYTES, MAX_WEBHOOK_RECORDS, webhook_records

__all__ = [
    "API_KEYS_ENV",
    "API_KEY_HEADER",
    "CURSOR_KEYS_ENV",
    "MAX_WEBHOOK_BYTES",
    "MAX_WEBHOOK_RECORDS",
    "MIN_API_KEY_LENGTH",
    "MIN_CURSOR_KEY_LENGTH",
    "MIN_WEBHOOK_SECRET_LENGTH",
    "PAGE_CACHE_BYTES",
    "PAGE_CACHE_ENV",
    "PAGE_LIMIT",
    "REGISTRATION_VIEW",
    "SIGNATURE_HEADER",
    "STATUSES",
    "TIMESTAMP_HEADER",
    "WEBHOOK_SECRET_ENV",
    "WEBHOOK_TOLERANCE_SECONDS",
    "ApiError",
    "CandidatesQuery",
    "CursorSigner",
    "CustomerQuery",
    "PageCache",
    "RegisteredQuery",
    "ServingApi",
    "ServingDependencies",
    "api_key_matches",
    "api_keys_from_env",
    "app_from_env",
    "bad_parameter",
    "create_app",
    "cursor_keys_from_env",
    "deployment_dependencies",
    "main",
    "page_body",
    "parse_candidates_query",
    "parse_customer_query",
    "parse_registered_query",
    "presented_api_key",
    "query_binding",
    "registered_row_json",
    "verify_webhook",
    "waitlisted_row_json",
    "webhook_records",
    "webhook_secret_from_env",
    "webhook_signature",
]
