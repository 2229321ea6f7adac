"""The Serving API over real HTTP: uvicorn on 127.0.0.1 serving the deployment's own stores.

Each test starts the real app (the local deployment's SQLite stores over a generated warehouse,
or DynamoDB in moto) and talks to it with urllib: queries, pagination, API keys, parameter
validation and the signed registration webhook, whose deliveries must be stored exactly once.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
import uvicorn

from eventreach_assets.domain.link_tokens import sign_link_token
from eventreach_assets.serving.api import (
    TIMESTAMP_HEADER,
    create_app,
    deployment_dependencies,
    webhook_signature,
)
from eventreach_assets_tests.conftest import AS_OF, Deployment
from eventreach_assets_tests.stand_ins import free_port

pytestmark = pytest.mark.integration

PROGRAM = "event-invitations"
CHANNELS = ["email", "in-app"]
API_KEY = "serving-api-key-for-tests-0001"
OTHER_KEY = "serving-api-key-for-tests-0002"
WEBHOOK_SECRET = "webhook-secret-for-tests-only-0123456789"
CURSOR_KEY = "cursor-signing-key-for-tests-only-0123456789"
CANDIDATES = 250


# ---- a real server and a plain HTTP client ---------------------------------------------------


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """uvicorn serving `app` on a loopback socket in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def call(url: str, *, key: str | None = API_KEY, data: bytes | None = None, headers: dict | None = None) -> Reply:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if key is not None:
        request.add_header("X-API-Key", key)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, json.loads(response.read()), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Reply(error.code, json.loads(error.read()), dict(error.headers))


def declared_only(url: str, length: int) -> Reply:
    """POST headers announcing a `length`-byte body, and no body: what a server that judges the
    declared size answers at once."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", parts.path)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(length))):
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return Reply(response.status, json.loads(response.read()), dict(response.headers))
    finally:
        connection.close()


def query(base: str, path: str, **params: Any) -> str:
    return f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"


# ---- the deployment under test ---------------------------------------------------------------


@dataclass
class Api:
    base: str
    deployment: Deployment
    event: str
    scored: pl.DataFrame  # what the store holds for the event (customer_id, score)
    resources: Any

    def get(self, path: str, key: str | None = API_KEY, **params: Any) -> Reply:
        return call(query(self.base, path, **params), key=key)

    def candidates(self, **params: Any) -> Reply:
        return self.get("/v1/candidates", **{"program": PROGRAM, "event": self.event, "channel": "email", **params})

    def registered(self, **params: Any) -> Reply:
        return self.get("/v1/registered-candidates", **{"program": PROGRAM, "event": self.event, **params})

    def deliver(self, body: bytes, *, timestamp: int | None = None, secret: str = WEBHOOK_SECRET) -> Reply:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            "X-EventReach-Signature": webhook_signature(secret.encode(), stamp, body),
        }
        return call(f"{self.base}/v1/webhooks/registrations", key=None, data=body, headers=headers)


def unregistered_customers(deployment: Deployment, event: str, n: int) -> list[str]:
    """Real customers of the generated warehouse not yet registered for `event`."""
    with duckdb.connect(str(deployment.home / "warehouse.duckdb"), read_only=True) as warehouse:
        rows = warehouse.execute(
            "SELECT DISTINCT customer_id FROM customer_profiles WHERE customer_id IS NOT NULL AND customer_id NOT IN "
            "(SELECT customer_id FROM event_registrations WHERE event_id = ?) ORDER BY 1 LIMIT ?",
            [event, n],
        ).fetchall()
    return [row[0] for row in rows]


def scored_for(customers: list[str]) -> pl.DataFrame:
    # Two decimals over 250 customers: many ties, so pages must break them by customer_id.
    scores = [round(((i * 37) % len(customers)) / len(customers), 2) for i in range(len(customers))]
    return pl.DataFrame(
        {
            "customer_id": customers,
            "score": scores,
            "score_band": ["high" if s >= 0.7 else "medium" if s >= 0.4 else "low" for s in scores],
            "marketplace": "US",
            "timezone": "America/New_York",
            "email": [f"{c.lower()}@example.test" for c in customers],
        }
    )


@pytest.fixture
def api(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("EVENTREACH_NOW", AS_OF.isoformat())  # reads and ingestion on the deployment's clock
    event = deployment.seed.upcoming_event_ids[0]
    scored = scored_for(unregistered_customers(deployment, event, CANDIDATES))
    with deployment_dependencies(home=deployment.home, deployment="local") as dependencies:
        dependencies.store.replace_event_candidates(PROGRAM, event, scored, CHANNELS, AS_OF, 14, 100)
        app = create_app(
            dependencies, api_keys=[API_KEY, OTHER_KEY], webhook_secret=WEBHOOK_SECRET, cursor_keys=[CURSOR_KEY]
        )
        with serving(app) as base:
            yield Api(base, deployment, event, scored.select("customer_id", "score"), dependencies)


def expected_order(scored: pl.DataFrame, min_score: float) -> list[str]:
    ranked = scored.filter(pl.col("score") >= min_score).sort(["score", "customer_id"], descending=[True, False])
    return ranked["customer_id"].to_list()


def walk(first: dict[str, Any], fetch: Any, max_pages: int = 100) -> tuple[list[dict], list[int]]:
    """Follow nextCursor from the first page; returns every item and each page's size."""
    items, sizes, params = [], [], dict(first)
    for _ in range(max_pages):
        reply = fetch(**params)
        assert reply.status == 200, reply.body
        items += reply.body["items"]
        sizes.append(reply.body["count"])
        assert reply.body["count"] == len(reply.body["items"])
        if reply.body["nextCursor"] is None:
            return items, sizes
        params = {**first, "cursor": reply.body["nextCursor"]}
    raise AssertionError(f"more than {max_pages} pages")


def register_token(api: Api, customer: str, channel: str = "email") -> str:
    key = api.deployment.defs.resources["link_signing"].key()
    return sign_link_token(key, customer_id=customer, event_id=api.event, channel=channel,
                           campaign_id=f"{api.event}:{channel}:US", action="register")  # fmt: skip


def registration(api: Api, number: int, customer: str, *, channel: str = "email", token: str | None = None) -> dict:
    return {
        "registration_id": f"web-{number}",
        "event_id": api.event,
        "customer_id": customer,
        "registered_at": (AS_OF - timedelta(hours=1, minutes=number)).isoformat() + "Z",
        "token": token or register_token(api, customer, channel),
    }


# ---- GetCandidatesForChannel -----------------------------------------------------------------


def test_a_page_is_the_top_candidates_by_score_without_pii(api: Api):
    reply = api.candidates(minScore="0.5", limit="20")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    items = reply.body["items"]
    assert [item["customer_id"] for item in items] == expected_order(api.scored, 0.5)[:20]
    assert all(item["score"] >= 0.5 and item["channel"] == "email" for item in items)
    assert all("email" not in item for item in items)  # PII never leaves the store through the API
    assert items[0]["status"] == "candidate" and items[0]["status_at"].endswith("Z")
    assert reply.body["count"] == 20 and reply.body["nextCursor"]


def test_walking_the_cursor_returns_every_candidate_once_in_order_and_never_more_than_a_page(api: Api):
    items, sizes = walk({"minScore": "0.3", "limit": "7"}, api.candidates)
    ids = [item["customer_id"] for item in items]
    assert ids == expected_order(api.scored, 0.3) and len(set(ids)) == len(ids)
    assert max(sizes) == 7 and len(sizes) == -(-len(ids) // 7)
    # No limit: pages of 100 at most, the default and the maximum.
    items, sizes = walk({"channel": "in-app"}, api.candidates)
    assert sizes == [100, 100, CANDIDATES - 200]
    assert sorted(item["customer_id"] for item in items) == sorted(api.scored["customer_id"])


def test_registered_customers_are_excluded_unless_asked_for(api: Api):
    top = expected_order(api.scored, 0.0)[:2]
    delivery = json.dumps([registration(api, n, customer) for n, customer in enumerate(top)]).encode()
    assert api.deliver(delivery).body["accepted"] == 2
    default = [item["customer_id"] for item in api.candidates(limit="10").body["items"]]
    assert default == expected_order(api.scored, 0.0)[2:12]
    included = api.candidates(limit="10", excludeRegistered="false").body["items"]
    assert [item["customer_id"] for item in included] == expected_order(api.scored, 0.0)[:10]
    assert [item["status"] for item in included[:3]] == ["registered", "registered", "candidate"]


# ---- GetRegisteredCandidates and candidate by customer -----------------------------------------


def test_registered_and_waitlisted_customers_one_row_each_paged(api: Api):
    assert api.registered().body == {"items": [], "count": 0, "nextCursor": None}  # (also fills the list cache)
    customers = api.scored["customer_id"].to_list()[:5]
    records = [registration(api, n, c, channel="in-app" if n % 2 else "email") for n, c in enumerate(customers)]
    reply = api.deliver(json.dumps({"registrations": records}).encode())
    assert (reply.status, reply.body["accepted"], reply.body["stored"]) == (200, 5, 5)
    # The webhook's process serves the new registrations at once (its list cache is cleared).
    rows, sizes = walk({"status": "registered", "limit": "2"}, api.registered)
    assert sizes == [2, 2, 1]
    assert [row["customer_id"] for row in rows] == sorted(customers)
    by_customer = {row["customer_id"]: row for row in rows}
    assert by_customer[customers[1]]["channel"] == "in-app" and by_customer[customers[0]]["channel"] == "email"
    assert by_customer[customers[0]]["registered_at"] == (AS_OF - timedelta(hours=1)).isoformat() + ".000000Z"
    assert all(row["status"] == "registered" and row["score"] is not None for row in rows)

    later = api.scored["customer_id"].to_list()[5:7]  # over capacity, as the ingestion would waitlist them
    waitlisted = pl.DataFrame(
        {"event_id": api.event, "customer_id": later[::-1], "registration_id": ["w1", "w2"],
         "registered_at": [AS_OF, AS_OF], "channel": "email", "campaign_id": "cmp-w"},
        schema_overrides={"registered_at": pl.Datetime("us")},
    )  # fmt: skip
    api.resources.engagement.record_registrations(waitlisted, "waitlisted", AS_OF)
    reply = api.registered(status="waitlisted")
    assert [row["customer_id"] for row in reply.body["items"]] == sorted(later)
    assert {row["status"] for row in reply.body["items"]} == {"waitlisted"}
    assert {row["campaign_id"] for row in reply.body["items"]} == {"cmp-w"}


def test_candidate_by_customer(api: Api):
    customer = api.scored["customer_id"][0]
    reply = api.get(f"/v1/customers/{customer}/candidates", program=PROGRAM)
    assert reply.status == 200
    assert [(i["event_id"], i["channel"]) for i in reply.body["items"]] == [(api.event, c) for c in CHANNELS]
    assert all("email" not in item and item["customer_id"] == customer for item in reply.body["items"])
    first, sizes = walk({"program": PROGRAM, "limit": "1"},
                        lambda **p: api.get(f"/v1/customers/{customer}/candidates", **p))  # fmt: skip
    assert sizes == [1, 1] and [i["channel"] for i in first] == CHANNELS
    other_event = api.get(f"/v1/customers/{customer}/candidates", program=PROGRAM, event="evt-other")
    assert other_event.body == {"items": [], "count": 0, "nextCursor": None}
    assert api.get("/v1/customers/C-nobody/candidates", program=PROGRAM).body["count"] == 0


# ---- keys, parameters, programs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/v1/candidates", ("program", "event", "channel")),
        ("/v1/registered-candidates", ("program", "event")),
        ("/v1/customers/C1/candidates", ("program",)),
    ],
)
def test_every_query_needs_a_valid_api_key(api: Api, path: str, names: tuple[str, ...]):
    params = {name: {"program": PROGRAM, "event": api.event, "channel": "email"}[name] for name in names}
    for key in (None, "", "wrong-key-of-a-decent-length", API_KEY + "x", API_KEY[:-1]):
        reply = call(query(api.base, path, **params), key=key or None)
        assert reply.status == 401, key
        assert "API key" in reply.body["error"] and reply.headers["www-authenticate"] == "Bearer"
    assert call(query(api.base, path, minScore="nope"), key=None).status == 401  # keys before parameters
    bearer = call(query(api.base, path, **params), key=None, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert bearer.status == 200
    assert call(query(api.base, "/health"), key=None).body == {"status": "ok"}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"minScore": "high"}, "minScore"),
        ({"minScore": "1.5"}, "minScore"),
        ({"minScore": "nan"}, "minScore"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"channel": "push"}, "channel"),
        ({"channel": ""}, "channel"),
        ({"event": ""}, "event"),
        ({"event": "evt#1"}, "event"),
        ({"program": ""}, "program"),
        ({"excludeRegistered": "maybe"}, "excludeRegistered"),
        ({"cursor": "not a cursor!"}, "cursor"),
        ({"cursor": "bm90LWpzb24="}, "cursor"),  # base64, but not one of ours
        ({"min_score": "0.5"}, "min_score"),  # unknown: a typo must not widen the query
    ],
)
def test_bad_candidate_parameters_are_400s_naming_the_parameter(api: Api, params: dict, parameter: str):
    reply = api.candidates(**params)
    assert reply.status == 400
    assert reply.body["parameter"] == parameter and parameter in reply.body["error"]


def test_other_bad_parameters_and_cursors_are_400s_naming_them(api: Api):
    repeated = call(f"{api.base}/v1/candidates?program={PROGRAM}&event={api.event}&channel=email&limit=5&limit=6")
    assert (repeated.status, repeated.body["parameter"]) == (400, "limit")
    for reply, parameter in [
        (api.registered(status="cancelled"), "status"),
        (api.get("/v1/registered-candidates", program=PROGRAM), "event"),
        (api.registered(cursor="eyJrIjoieCIsImEiOlsiYyJdfQ=="), "cursor"),  # another query's position
        (api.get("/v1/customers/C%201/candidates", program=PROGRAM), "customer"),
        (api.get("/v1/customers/C1/candidates"), "program"),
    ]:
        assert (reply.status, reply.body["parameter"]) == (400, parameter), reply.body
    # A cursor of one query handed to another is refused, not silently applied.
    email_cursor = api.candidates(limit="5").body["nextCursor"]
    reply = api.candidates(channel="in-app", limit="5", cursor=email_cursor)
    assert (reply.status, reply.body["parameter"]) == (400, "cursor")


def test_an_unknown_program_is_a_404(api: Api):
    for reply in (
        api.candidates(program="another-program"),
        api.registered(program="another-program"),
        api.get("/v1/customers/C1/candidates", program="another-program"),
    ):
        assert reply.status == 404 and "another-program" in reply.body["error"]
    assert api.get("/v1/nothing-here").status == 404


# ---- the registration webhook ---------------------------------------------------------------


def engagement_rows(api: Api) -> list[tuple]:
    frame = api.resources.engagement.registrations(api.event)
    return frame.select("customer_id", "registration_id", "status", "channel").rows()


def test_a_signed_delivery_is_stored_and_its_replay_stored_once(api: Api):
    customer = api.scored["customer_id"][3]
    body = json.dumps([registration(api, 1, customer, channel="in-app")]).encode()
    first = api.deliver(body)
    assert first.status == 200
    assert (first.body["accepted"], first.body["stored"], first.body["rejected"]) == (1, 1, 0)
    assert engagement_rows(api) == [(customer, "web-1", "registered", "in-app")]
    items = api.resources.store.candidates_for_customer(PROGRAM, customer, now=AS_OF)
    assert set(items["status"]) == {"registered"} and set(items["registered_channel"]) == {"in-app"}

    replay = api.deliver(body)  # the platform retried the same delivery
    assert replay.status == 200
    assert (replay.body["accepted"], replay.body["stored"]) == (0, 0)
    assert replay.body["rejections"] == [{"position": 1, "reason": "duplicate"}]
    assert engagement_rows(api) == [(customer, "web-1", "registered", "in-app")]
    assert api.resources.store.candidates_for_customer(PROGRAM, customer, now=AS_OF).equals(items)


def test_unsigned_forged_tampered_or_stale_deliveries_are_refused_and_store_nothing(api: Api):
    body = json.dumps([registration(api, 1, api.scored["customer_id"][4])]).encode()
    url = f"{api.base}/v1/webhooks/registrations"
    unsigned = call(url, key=API_KEY, data=body, headers={"Content-Type": "application/json"})
    assert unsigned.status == 401 and "X-EventReach-Signature" in unsigned.body["error"]
    assert api.deliver(body, secret="a-different-secret-of-enough-length-000").status == 401
    stamp = str(int(time.time()))
    signed_original = {
        TIMESTAMP_HEADER: stamp,
        "X-EventReach-Signature": webhook_signature(WEBHOOK_SECRET.encode(), stamp, body),
    }
    tampered = call(url, key=None, data=body.replace(b"web-1", b"web-2"), headers=signed_original)
    assert tampered.status == 401
    stale = api.deliver(body, timestamp=int(time.time()) - 301)
    assert stale.status == 401 and "300 s" in stale.body["error"]
    assert api.deliver(body, timestamp=int(time.time()) + 301).status == 401
    assert engagement_rows(api) == []
    assert api.deliver(body, timestamp=int(time.time()) - 240).status == 200  # within five minutes
    assert len(engagement_rows(api)) == 1


def test_bad_records_are_rejected_with_reasons_and_quarantined(api: Api):
    good, forged = api.scored["customer_id"][5], api.scored["customer_id"][6]
    records = [registration(api, 1, good), registration(api, 2, forged, token=register_token(api, good)), "oops"]
    reply = api.deliver(json.dumps(records).encode())
    assert reply.status == 200 and reply.body["accepted"] == 1
    assert reply.body["rejections"] == [
        {"position": 2, "reason": "token_mismatch"},
        {"position": 3, "reason": "malformed_record"},
    ]
    files = list((api.deployment.home / "decisions").rglob("*.parquet"))
    assert len(files) == 1 and "registrations" in str(files[0]) and files[0].name.startswith("webhook-")
    assert sorted(pl.read_parquet(files[0])["reason"].to_list()) == ["malformed_record", "token_mismatch"]
    for body, message in [(b"{not json", "not JSON"), (b"[]", "non-empty"), (b'{"rows": []}', "registrations")]:
        reply = api.deliver(body)
        assert (reply.status, reply.body["parameter"]) == (400, "body") and message in reply.body["error"]
    # Refused from the declared length before a byte of the body is read: the client sends only the
    # headers and reads the answer (sending the whole megabyte first races the server's close).
    too_big = declared_only(f"{api.base}/v1/webhooks/registrations", 1024 * 1024 + 2)
    assert too_big.status == 413 and "larger than" in too_big.body["error"]


# ---- the command `make serve` runs -----------------------------------------------------------


def test_the_command_serves_locally_with_generated_keys_it_never_prints(deployment: Deployment, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTREACH_")}
    command = [sys.executable, "-m", "eventreach_assets.serving.api", "--port", str(port),
               "--home", str(deployment.home)]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if call(f"http://127.0.0.1:{port}/health", key=None).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        key_file, secret_file = deployment.home / "api_key", deployment.home / "webhook_secret"
        for path in (key_file, secret_file):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        url = query(f"http://127.0.0.1:{port}", "/v1/registered-candidates", program=PROGRAM, event="evt-x")
        assert call(url, key=key).status == 200
        assert call(url, key=None).status == 401
    finally:
        process.terminate()
        process.wait(timeout=20)
    printed = log.read_text()
    assert str(key_file) in printed and str(secret_file) in printed
    assert key not in printed and secret_file.read_text().strip() not in printed


# ---- the aws deployment: DynamoDB in moto ---------------------------------------------------------


def test_the_aws_deployment_serves_pages_from_dynamodb(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    from eventreach_assets_tests.test_aws_deployment import ENV, provision_aws

    settings = {**ENV, "EVENTREACH_AWS_ENDPOINT_URL": aws_endpoint, "EVENTREACH_NOW": AS_OF.isoformat()}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    provision_aws(aws_endpoint)
    customers = [f"C{n:09d}" for n in range(1, 131)]
    scored = scored_for(customers)
    with deployment_dependencies(deployment="aws") as dependencies:
        assert type(dependencies.store).__name__ == "DynamoDBCandidateStore"
        dependencies.store.replace_event_candidates(PROGRAM, "evt-aws", scored, CHANNELS, AS_OF, 14, 25)
        dependencies.store.mark_registered(PROGRAM, "evt-aws", customers[0], AS_OF, "email")
        app = create_app(dependencies, api_keys=[API_KEY], webhook_secret=WEBHOOK_SECRET, cursor_keys=[CURSOR_KEY])
        with serving(app) as base:
            fetch = lambda **p: call(query(base, "/v1/candidates", **p))  # noqa: E731
            first = {"program": PROGRAM, "event": "evt-aws", "channel": "in-app", "minScore": "0.2", "limit": "9"}
            items, sizes = walk(first, fetch)
            expected = [c for c in expected_order(scored, 0.2) if c != customers[0]]
            assert [item["customer_id"] for item in items] == expected and max(sizes) == 9
            assert all("email" not in item for item in items)
            registered = call(query(base, "/v1/registered-candidates", program=PROGRAM, event="evt-aws")).body
            assert [row["customer_id"] for row in registered["items"]] == [customers[0]]
            mine = call(query(base, f"/v1/customers/{customers[1]}/candidates", program=PROGRAM)).body
            assert [item["channel"] for item in mine["items"]] == CHANNELS


# ---- registered lists: paged by the store, never cached -----------------------------------------


def test_registrations_written_by_another_process_are_served_at_once_and_cancellations_skipped_across_pages(
    api: Api,
):
    """No list cache: a registration the feed (another process) stores is on the next page read,
    and a page with cancelled customers reads on through the index until it is full."""
    customers = api.scored["customer_id"].to_list()[:9]
    assert api.registered().body["count"] == 0
    store, engagement = api.resources.store, api.resources.engagement
    registrations = pl.DataFrame(
        {"customer_id": customers, "registered_at": [AS_OF - timedelta(hours=2)] * 9, "channel": "email"},
        schema_overrides={"registered_at": pl.Datetime("us")},
    )
    store.mark_registered_many(PROGRAM, api.event, registrations)  # as the registrations feed would
    rows, sizes = walk({"limit": "4"}, api.registered)
    assert [row["customer_id"] for row in rows] == sorted(customers) and sizes == [4, 4, 1]
    assert rows[0]["registered_at"] == (AS_OF - timedelta(hours=2)).isoformat() + ".000000Z"
    # Cancel five of them, among them the whole second page: pages stay full, nobody repeats.
    cancelled = sorted(customers)[3:8]
    engagement.record_registrations(
        registrations.with_columns(event_id=pl.lit(api.event), registration_id=pl.col("customer_id")),
        "registered", AS_OF,
    )  # fmt: skip
    engagement.record_registrations(
        registrations.filter(pl.col("customer_id").is_in(cancelled)).with_columns(
            event_id=pl.lit(api.event), registration_id=pl.col("customer_id")
        ),
        "cancelled", AS_OF,
    )  # fmt: skip
    rows, sizes = walk({"limit": "3"}, api.registered)
    assert [row["customer_id"] for row in rows] == [c for c in sorted(customers) if c not in cancelled]
    assert sizes == [3, 1]


def cancellation(api: Api, customer: str, **fields: Any) -> dict:
    record = {
        "action": "cancel",
        "registration_id": "web-1",
        "event_id": api.event,
        "customer_id": customer,
        "cancelled_at": (AS_OF - timedelta(minutes=10)).isoformat() + "Z",
    }
    return {**record, **fields}


def test_a_signed_cancellation_frees_the_seat_and_a_bad_one_is_a_400_naming_the_field(api: Api):
    customer = api.scored["customer_id"][7]
    assert api.deliver(json.dumps([registration(api, 1, customer)]).encode()).body["accepted"] == 1
    assert customer in [item["customer_id"] for item in api.registered(limit=100).body["items"]]

    for record, parameter in [
        (cancellation(api, customer, cancelled_at=None), "registrations[0].cancelled_at"),
        (cancellation(api, customer, cancelled_at="yesterday"), "registrations[0].cancelled_at"),
        (cancellation(api, customer, action="unregister"), "registrations[0].action"),
        ({k: v for k, v in cancellation(api, customer).items() if k != "customer_id"}, "registrations[0].customer_id"),
    ]:
        reply = api.deliver(json.dumps([record, registration(api, 2, api.scored["customer_id"][8])]).encode())
        assert (reply.status, reply.body["parameter"]) == (400, parameter), reply.body
    assert engagement_rows(api) == [(customer, "web-1", "registered", "email")]  # a refused delivery stores nothing

    body = json.dumps([cancellation(api, customer)]).encode()
    reply = api.deliver(body)
    assert reply.status == 200
    assert (reply.body["cancelled"], reply.body["stored"], reply.body["rejected"]) == (1, 1, 0)
    assert engagement_rows(api) == [(customer, "web-1", "cancelled", "email")]
    assert customer not in [item["customer_id"] for item in api.registered(limit=100).body["items"]]
    replay = api.deliver(body)
    assert (replay.body["cancelled"], replay.body["stored"]) == (0, 0)
    assert replay.body["rejections"] == [{"position": 1, "reason": "duplicate"}]
    # Cancelling a customer who holds no seat is quarantined with its reason, not a 400.
    nobody = api.deliver(json.dumps([cancellation(api, api.scored["customer_id"][9])]).encode())
    assert nobody.status == 200 and nobody.body["rejections"] == [{"position": 1, "reason": "not_registered"}]


def test_the_api_imports_no_asset_module_and_not_the_definitions():
    """The Serving API sits beside the assets, not on them: resources from deployments.py, the
    webhook through ingestion/."""
    code = (
        "import sys; import eventreach_assets.serving.api; "
        "print(sorted(m for m in sys.modules if m.startswith('eventreach_assets.assets') "
        "or m in ('eventreach_assets.definitions', 'eventreach_assets.checks')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
