"""The Serving API's OpenAPI document over real HTTP: valid OpenAPI 3.1, every route in it, and the
running app's real answers (pages, errors, the webhook's reply) valid against its schemas.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from eventreach_assets.serving.api import PAGE_LIMIT, STATUSES, create_app
from eventreach_assets_tests.conftest import AS_OF
from eventreach_assets_tests.test_serving_api import (
    API_KEY,
    CHANNELS,
    CURSOR_KEY,
    PROGRAM,
    WEBHOOK_SECRET,
    Api,
    Reply,
    call,
    registration,
)
from eventreach_assets_tests.test_serving_api import api as api  # the fixture: a served local deployment

pytestmark = pytest.mark.integration

DOCUMENT_URI = "urn:eventreach-serving-api"


def document(api: Api) -> dict[str, Any]:
    reply = call(f"{api.base}/openapi.json", key=None)
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    return reply.body


def answer_schema(spec: dict[str, Any], path: str, method: str, status: int) -> Draft202012Validator:
    """A validator for the documented JSON body of `method path` answering `status`."""
    parts = ["paths", path, method, "responses", str(status), "content", "application/json", "schema"]
    pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)
    registry = Registry().with_resource(DOCUMENT_URI, Resource.from_contents(spec, default_specification=DRAFT202012))
    return Draft202012Validator(
        {"$ref": f"{DOCUMENT_URI}#/{pointer}"}, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def test_the_document_is_valid_openapi_3_1_served_without_a_key(api: Api):
    spec = document(api)
    validate(spec, cls=OpenAPIV31SpecValidator)  # raises on any violation of the 3.1 schema
    assert spec["openapi"].startswith("3.1")
    assert call(f"{api.base}/openapi.json").body == spec  # a key, when sent, changes nothing
    parameters = spec["components"]["parameters"]
    assert parameters["channel"]["schema"]["enum"] == CHANNELS
    assert parameters["status"]["schema"]["enum"] == list(STATUSES)
    assert parameters["limit"]["schema"]["maximum"] == PAGE_LIMIT
    assert {"apiKey", "bearer"} <= set(spec["components"]["securitySchemes"])
    assert spec["paths"]["/health"]["get"]["security"] == []


def test_every_route_the_app_serves_is_documented(api: Api):
    spec = document(api)
    app = create_app(api.resources, api_keys=[API_KEY], webhook_secret=WEBHOOK_SECRET, cursor_keys=[CURSOR_KEY])
    served = {(route.path, method.lower()) for route in app.routes for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, operations in spec["paths"].items() for method in operations}
    assert served == documented


def test_what_the_document_allows_the_api_accepts_and_its_bounds_are_the_api_s(api: Api):
    parameters = document(api)["components"]["parameters"]
    for channel in parameters["channel"]["schema"]["enum"]:
        assert api.candidates(channel=channel).status == 200
    for status in parameters["status"]["schema"]["enum"]:
        assert api.registered(status=status).status == 200
    limit = parameters["limit"]["schema"]
    assert api.candidates(limit=str(limit["maximum"])).body["count"] == limit["maximum"]
    for value in (limit["minimum"] - 1, limit["maximum"] + 1):
        assert api.candidates(limit=str(value)).body["parameter"] == "limit"
    score = parameters["minScore"]["schema"]
    assert api.candidates(minScore=str(score["maximum"] + 0.1)).body["parameter"] == "minScore"


def test_real_answers_match_the_documented_schemas(api: Api):
    spec = document(api)
    customers = api.scored["customer_id"].to_list()
    reply = api.deliver(json.dumps([registration(api, n, c) for n, c in enumerate(customers[:3])] + ["oops"]).encode())
    waitlisted = pl.DataFrame(
        {"event_id": api.event, "customer_id": customers[5:7], "registration_id": ["w1", "w2"],
         "registered_at": [AS_OF, AS_OF], "channel": "email", "campaign_id": "cmp-w"},
        schema_overrides={"registered_at": pl.Datetime("us")},
    )  # fmt: skip
    api.resources.engagement.record_registrations(waitlisted, "waitlisted", AS_OF)
    customer_path = f"/v1/customers/{customers[0]}/candidates"
    answers: list[tuple[str, str, Reply]] = [
        ("/v1/webhooks/registrations", "post", reply),
        ("/v1/webhooks/registrations", "post", api.deliver(b"[]")),
        ("/v1/webhooks/registrations", "post", api.deliver(b"[]", secret="another-secret-of-enough-length-0000")),
        ("/v1/candidates", "get", api.candidates(excludeRegistered="false", limit="5")),
        ("/v1/candidates", "get", api.candidates(minScore="2")),
        ("/v1/candidates", "get", api.candidates(key=None)),
        ("/v1/candidates", "get", api.candidates(program="another-program")),
        ("/v1/registered-candidates", "get", api.registered(limit="2")),
        ("/v1/registered-candidates", "get", api.registered(status="waitlisted")),
        ("/v1/registered-candidates", "get", api.registered(cursor="AAAA")),
        ("/v1/customers/{customer}/candidates", "get", api.get(customer_path, program=PROGRAM, limit="1")),
        ("/health", "get", call(f"{api.base}/health", key=None)),
    ]
    statuses = {(path, answer.status) for path, _, answer in answers}
    assert {200, 400, 401, 404} == {status for _, status in statuses}
    for path, method, answer in answers:
        answer_schema(spec, path, method, answer.status).validate(answer.body)
    page = api.candidates(limit="1").body
    assert page["items"] and page["nextCursor"]
    leaked = {**page, "items": [{**page["items"][0], "email": "someone@example.test"}]}
    with pytest.raises(ValidationError):  # the schema is strict: an undocumented field (PII here) fails
        answer_schema(spec, "/v1/candidates", "get", 200).validate(leaked)
