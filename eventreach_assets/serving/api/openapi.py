"""The API's OpenAPI 3.1 document (`GET /openapi.json`), built as data so channel teams can
generate their clients.

Pure. Parameters come from the constants the parsing uses (`params`: names, id and cursor
patterns, statuses, the page limit), item fields from the stores' own schemas
(`domain.candidate_items`, `views.REGISTRATION_VIEW`), so the document cannot drift from what
the API accepts and answers. The channels are the program's, given when the app is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from eventreach_assets.domain.candidate_items import BASE_ATTRIBUTES, EXTRA_ATTRIBUTES, PROBABILITY_PREFIX
from eventreach_assets.domain.candidate_items import STATUSES as ITEM_STATUSES
from eventreach_assets.serving.api.auth import API_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from eventreach_assets.serving.api.params import (
    CANDIDATES_PARAMETERS,
    CURSOR_PATTERN,
    CUSTOMER_PARAMETERS,
    ID_PATTERN,
    MAX_CURSOR_LENGTH,
    PAGE_LIMIT,
    REGISTERED_PARAMETERS,
    STATUSES,
)
from eventreach_assets.serving.api.views import PII_COLUMNS, REGISTRATION_VIEW
from eventreach_assets.serving.api.webhook import MAX_WEBHOOK_BYTES, MAX_WEBHOOK_RECORDS

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
_ID = {"type": "string", "pattern": ID_PATTERN}
_ITEM_NOT_NULL = frozenset({"customer_id", "program_id", "event_id", "channel", "score", "status"})
_ROW_NOT_NULL = frozenset({"customer_id", "status"})  # a waitlisted row has no score
_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def column_schema(dtype: pl.DataType, nullable: bool) -> dict[str, Any]:
    """A served column's JSON type (see `views.public_rows`: times as ISO 8601 UTC text)."""
    if isinstance(dtype, pl.Datetime):
        schema: dict[str, Any] = {"type": "string", "format": "date-time"}
    elif isinstance(dtype, pl.Date):
        schema = {"type": "string", "format": "date"}
    elif dtype.is_integer():
        schema = {"type": "integer"}
    elif dtype.is_float():
        schema = {"type": "number"}
    else:
        schema = {"type": "string"}
    if nullable:
        schema["type"] = [schema["type"], "null"]
    return schema


def _row_schema(
    columns: Mapping[str, pl.DataType], not_null: frozenset[str], description: str, **extra: Any
) -> dict[str, Any]:
    properties = {
        name: column_schema(dtype, nullable=name not in not_null)
        for name, dtype in columns.items()
        if name not in PII_COLUMNS
    }
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


def _page_schema(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": _ref(item), "maxItems": PAGE_LIMIT},
            "count": {"type": "integer", "minimum": 0, "maximum": PAGE_LIMIT},
            "nextCursor": {
                "type": ["string", "null"],
                "description": "pass back as `cursor` for the next page (same query; `limit` may change); "
                "null on the last page",
            },
        },
        "required": ["items", "count", "nextCursor"],
        "additionalProperties": False,
    }


def _webhook_schemas() -> dict[str, Any]:
    text, time = {"type": "string"}, {"type": "string", "format": "date-time"}
    registration = {
        "registration_id": text,
        "event_id": text,
        "customer_id": text,
        "registered_at": time,
        "token": {"type": "string", "description": "the register link's token"},
    }
    cancellation = {
        "action": {"const": "cancel"},
        "registration_id": text,
        "event_id": text,
        "customer_id": text,
        "cancelled_at": time,
    }
    counts = {
        name: {"type": "integer", "minimum": 0}
        for name in ("accepted", "waitlisted", "cancelled", "rejected", "stored")
    }
    rejection = {
        "type": "object",
        "properties": {"position": {"type": "integer", "minimum": 1}, "reason": text},
        "required": ["position", "reason"],
        "additionalProperties": False,
    }
    return {
        "Registration": {"type": "object", "properties": registration, "required": list(registration)},
        "Cancellation": {
            "type": "object",
            "properties": cancellation,
            "required": ["action", "event_id", "customer_id", "cancelled_at"],
        },
        "WebhookRecords": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_WEBHOOK_RECORDS,
            "items": {"anyOf": [_ref("Registration"), _ref("Cancellation")]},
        },
        "WebhookReply": {
            "type": "object",
            "properties": {**counts, "rejections": {"type": "array", "items": rejection}},
            "required": [*counts, "rejections"],
            "additionalProperties": False,
        },
    }


def schemas() -> dict[str, Any]:
    """The bodies the API answers (and the webhook's), by name."""
    item_columns = {**BASE_ATTRIBUTES, **{name: pl.String() for name in EXTRA_ATTRIBUTES}}
    item = _row_schema(
        item_columns,
        _ITEM_NOT_NULL,
        f"a live candidate item (one per customer x event x channel); `{PROBABILITY_PREFIX}*` fields are the "
        "program's model probabilities",
        patternProperties={f"^{PROBABILITY_PREFIX}": {"type": ["number", "null"]}},
    )
    item["properties"]["status"]["enum"] = list(ITEM_STATUSES)
    row = _row_schema(REGISTRATION_VIEW, _ROW_NOT_NULL, "one registered or waitlisted customer")
    row["properties"]["status"]["enum"] = list(STATUSES)
    error = {
        "type": "object",
        "properties": {
            "error": {"type": "string", "description": "what is wrong (400s start with the parameter's name)"},
            "parameter": {"type": "string", "description": "the parameter (or webhook field) to fix; 400s only"},
        },
        "required": ["error"],
        "additionalProperties": False,
    }
    return {
        "CandidateItem": item,
        "CandidatePage": _page_schema("CandidateItem"),
        "RegistrationRow": row,
        "RegistrationPage": _page_schema("RegistrationRow"),
        "Error": error,
        "Health": {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]},
        **_webhook_schemas(),
    }


def query_parameters(channels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every query parameter, by name, as the parsing (`params`) reads it."""

    def parameter(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}

    return {
        "program": parameter("program", _ID, "the program (unknown: 404)", True),
        "event": parameter("event", _ID, "the event", True),
        "channel": parameter("channel", {"type": "string", "enum": list(channels)}, "an invitation channel", True),
        "minScore": parameter(
            "minScore", {"type": "number", "minimum": 0, "maximum": 1, "default": 0}, "lowest score served"
        ),
        "limit": parameter(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": PAGE_LIMIT, "default": PAGE_LIMIT},
            "page size; may change between pages",
        ),
        "excludeRegistered": parameter(
            "excludeRegistered",
            {"type": "boolean", "default": True},
            "leave out registered customers (also accepts 1/0, yes/no)",
        ),
        "status": parameter(
            "status",
            {"type": "string", "enum": list(STATUSES), "default": STATUSES[0]},
            "registered (candidate store) or waitlisted (engagement store)",
        ),
        "cursor": parameter(
            "cursor",
            {"type": "string", "pattern": CURSOR_PATTERN, "maxLength": MAX_CURSOR_LENGTH},
            "the previous page's nextCursor, for the same query (else 400 naming cursor)",
        ),
    }


_ERROR_MEANINGS = {
    400: "a bad, missing, repeated or unknown parameter (named in `parameter`)",
    401: "a missing or wrong API key (GETs), a missing, wrong or stale signature (the webhook)",
    404: "an unknown program",
    413: f"a body over {MAX_WEBHOOK_BYTES} bytes",
}


def _answers(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    """A route's responses: 200 with `ok`'s schema, then each error status with the error body."""
    answers: dict[str, Any] = {"200": {"description": "OK", "content": {_JSON: {"schema": ok}}}}
    for status in errors:
        answers[str(status)] = {"description": _ERROR_MEANINGS[status], "content": {_JSON: {"schema": _ref("Error")}}}
        if status == 401:
            answers["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}}
    return answers


def _get(summary: str, names: Sequence[str], ok: str, *, path: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    refs = [{"$ref": f"#/components/parameters/{name}"} for name in names]
    return {
        "get": {
            "summary": summary,
            "operationId": summary.split(":")[0],
            "parameters": [*path, *refs],
            "responses": _answers(_ref(ok), 400, 401, 404),
        }
    }


def _webhook_operation() -> dict[str, Any]:
    """POST /v1/webhooks/registrations: signed headers instead of an API key."""
    signature = [
        {
            "name": TIMESTAMP_HEADER,
            "in": "header",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
            "description": "unix seconds; refused when more than 5 minutes from the server's clock",
        },
        {
            "name": SIGNATURE_HEADER,
            "in": "header",
            "required": True,
            "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
            "description": "HMAC-SHA256 (hex) of `<timestamp>.<raw body>` with the shared webhook secret",
        },
    ]
    wrapped = {"type": "object", "properties": {"registrations": _ref("WebhookRecords")}, "required": ["registrations"]}
    return {
        "summary": "the event platform's registrations and cancellations (stored once per registration)",
        "operationId": "PostRegistrations",
        "security": [],
        "parameters": signature,
        "requestBody": {"required": True, "content": {_JSON: {"schema": {"anyOf": [_ref("WebhookRecords"), wrapped]}}}},
        "responses": _answers(_ref("WebhookReply"), 400, 401, 413),
    }


def paths() -> dict[str, Any]:
    """Every route the app serves, with its parameters and answers."""
    customer = {"name": "customer", "in": "path", "required": True, "schema": _ID}
    return {
        "/v1/candidates": _get(
            "GetCandidatesForChannel: a channel's live candidates, score descending",
            CANDIDATES_PARAMETERS,
            "CandidatePage",
        ),
        "/v1/registered-candidates": _get(
            "GetRegisteredCandidates: one row per customer, by customer_id", REGISTERED_PARAMETERS, "RegistrationPage"
        ),
        "/v1/customers/{customer}/candidates": _get(
            "GetCustomerCandidates: one customer's live items", CUSTOMER_PARAMETERS, "CandidatePage", path=[customer]
        ),
        "/v1/webhooks/registrations": {"post": _webhook_operation()},
        "/health": {
            "get": {
                "summary": "liveness (no key, no data)",
                "operationId": "Health",
                "security": [],
                "responses": _answers(_ref("Health")),
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document (no key: it holds no data)",
                "operationId": "OpenApi",
                "security": [],
                "responses": _answers({"type": "object"}),
            }
        },
    }


def openapi_document(channels: Sequence[str]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API serving a program with these invitation `channels`."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "EventReach Serving API",
            "version": API_VERSION,
            "description": "The use case's read queries (pages of at most 100, continued by signed cursors) and "
            "the registration webhook. Every GET under /v1 needs an API key.",
        },
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "parameters": query_parameters(channels),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": []}, {"bearer": []}],
    }
