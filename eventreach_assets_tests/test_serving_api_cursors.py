"""The Serving API's cursors over real HTTP: a cursor continues only the query that issued it.

Every `nextCursor` is signed and bound to its query, so a client cannot forge a position
(odd types, SQL-like text, a huge string), alter a real cursor, or carry one to another query:
each of those is a 400 naming `cursor`. The signing key is shared (the environment, or the
local data dir's generated file), so a cursor issued by one server process continues in another.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from eventreach_assets.domain.candidate_items import gsi1_pk
from eventreach_assets.serving.api import CURSOR_KEYS_ENV, create_app, deployment_dependencies
from eventreach_assets_tests.conftest import AS_OF, Deployment
from eventreach_assets_tests.stand_ins import free_port
from eventreach_assets_tests.test_serving_api import (
    API_KEY,
    CANDIDATES,
    CHANNELS,
    CURSOR_KEY,
    PROGRAM,
    WEBHOOK_SECRET,
    Api,
    Reply,
    call,
    expected_order,
    query,
    registration,
    scored_for,
    serving,
    unregistered_customers,
    walk,
)
from eventreach_assets_tests.test_serving_api import api as api  # the fixture: a served local deployment

pytestmark = pytest.mark.integration


def unsigned(payload: Any) -> str:
    """A well-formed cursor as the API's used to be (url-safe base64 JSON, unsigned): what a
    client that decoded one could write for itself."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def candidates_key(api: Api) -> str:
    """The query key the unsigned candidates cursor carried (channel email, minScore 0, excludeRegistered)."""
    return f"{gsi1_pk(PROGRAM, 'email', api.event)}|{0.0!r}|True"


def register(api: Api, customers: list[str]) -> None:
    records = [registration(api, n, customer) for n, customer in enumerate(customers)]
    assert api.deliver(json.dumps(records).encode()).body["accepted"] == len(customers)


def customer_path(api: Api) -> str:
    return f"/v1/customers/{api.scored['customer_id'][0]}/candidates"


def refused(reply: Reply) -> bool:
    return reply.status == 400 and reply.body.get("parameter") == "cursor" and "cursor" in reply.body["error"]


# ---- forged cursors: the right query, positions the API never issued ---------------------------


@pytest.mark.parametrize(
    ("score", "customer"),
    [
        (0.5, {"customer_id": "C1"}),  # an object as the customer id
        (float("inf"), "C0"),  # JSON Infinity
        (float("nan"), "C0"),  # JSON NaN
        (0.5, "' OR '1'='1' --"),  # SQL-like text
        (0.5, "C" * 1200),  # a huge string (the cursor still under the length limit)
        (-1e308, "C0"),
    ],
)
def test_a_forged_candidates_cursor_is_a_400_naming_cursor(api: Api, score: Any, customer: Any):
    cursor = unsigned({"k": candidates_key(api), "s": score, "c": customer})
    assert len(cursor) <= 2048
    reply = api.candidates(cursor=cursor)
    assert refused(reply), (reply.status, reply.body)
    assert cursor not in reply.body["error"]  # a cursor (a customer id inside) is never echoed


def test_forged_registered_and_customer_cursors_are_400s_naming_cursor(api: Api):
    register(api, api.scored["customer_id"].to_list()[:3])
    for position in (["' OR 1=1 --"], ["Z" * 1200], [""]):
        reply = api.registered(cursor=unsigned({"k": f"{PROGRAM}|{api.event}|registered", "a": position}))
        assert refused(reply), (position, reply.status, reply.body)
    customer_key = f"{PROGRAM}|{api.scored['customer_id'][0]}|"
    for position in ([api.event, "' OR 1=1 --"], ["", ""], ["~", "~"]):
        reply = api.get(customer_path(api), program=PROGRAM, cursor=unsigned({"k": customer_key, "a": position}))
        assert refused(reply), (position, reply.status, reply.body)


# ---- real cursors, altered or carried elsewhere --------------------------------------------------


def first_cursors(api: Api) -> dict[str, tuple[Any, str]]:
    """A real first-page cursor of each paged route, with the fetch that continues it."""
    register(api, api.scored["customer_id"].to_list()[:3])

    def customer(**params: Any) -> Reply:
        return api.get(customer_path(api), **{"program": PROGRAM, **params})

    fetches = {
        "candidates": lambda **p: api.candidates(**{"minScore": "0.2", "limit": "5", **p}),
        "registered": lambda **p: api.registered(**{"limit": "1", **p}),
        "customer": lambda **p: customer(**{"limit": "1", **p}),
    }
    cursors = {name: (fetch, fetch().body["nextCursor"]) for name, fetch in fetches.items()}
    assert all(cursor for _, cursor in cursors.values())
    return cursors


def altered(cursor: str, position: int) -> str:
    replacement = "B" if cursor[position] == "A" else "A"
    return cursor[:position] + replacement + cursor[position + 1 :]


def test_every_one_character_alteration_of_a_real_cursor_is_refused(api: Api):
    for name, (fetch, cursor) in first_cursors(api).items():
        assert fetch(cursor=cursor).status == 200, name
        for position in range(len(cursor)):
            reply = fetch(cursor=altered(cursor, position))
            assert refused(reply), (name, position, reply.status, reply.body)
        for variant in (cursor + "=", cursor[:-1], cursor + "AAAA", cursor[4:]):
            assert refused(fetch(cursor=variant)), (name, variant)


def test_a_cursor_continues_only_the_query_that_issued_it_whatever_the_page_size(api: Api):
    cursors = first_cursors(api)
    candidates, registered, customer = (cursors[name][1] for name in ("candidates", "registered", "customer"))
    for reply in (
        api.candidates(minScore="0.3", cursor=candidates),
        api.candidates(minScore="0.2", channel="in-app", cursor=candidates),
        api.candidates(minScore="0.2", excludeRegistered="false", cursor=candidates),
        api.candidates(minScore="0.2", event="evt-other", cursor=candidates),
        api.registered(cursor=candidates),
        api.registered(status="waitlisted", cursor=registered),
        api.candidates(minScore="0.2", cursor=registered),
        api.get(customer_path(api), program=PROGRAM, event=api.event, cursor=customer),
        api.get(f"/v1/customers/{api.scored['customer_id'][1]}/candidates", program=PROGRAM, cursor=customer),
        api.registered(cursor=customer),
    ):
        assert refused(reply), (reply.status, reply.body)
    # The page size is not part of the query: a client may change it between pages.
    rest = api.candidates(minScore="0.2", limit="100", cursor=candidates)
    assert rest.status == 200
    registered_ids = set(api.scored["customer_id"].to_list()[:3])
    expected = [c for c in expected_order(api.scored, 0.2) if c not in registered_ids]
    assert [item["customer_id"] for item in rest.body["items"]] == expected[5:105]


# ---- one key for every process ---------------------------------------------------------------------


def test_a_cursor_signed_with_a_retired_key_still_pages_and_a_removed_key_does_not(api: Api):
    """Rotation: sign with the first key, verify with any; a server given only another key refuses."""
    first = api.candidates(limit="10").body
    with ExitStack() as stack:
        dependencies = stack.enter_context(deployment_dependencies(home=api.deployment.home, deployment="local"))

        def served(keys: list[str]) -> str:
            app = create_app(dependencies, api_keys=[API_KEY], webhook_secret=WEBHOOK_SECRET, cursor_keys=keys)
            return stack.enter_context(serving(app))

        rotated, replaced = (
            served(["a-new-cursor-key-of-enough-length-0001", CURSOR_KEY]),
            served(["a-new-cursor-key-of-enough-length-0001"]),
        )
        params = {"program": PROGRAM, "event": api.event, "channel": "email", "limit": "10"}
        second = call(query(rotated, "/v1/candidates", **params, cursor=first["nextCursor"]))
        assert second.status == 200
        ranked = expected_order(api.scored, 0.0)
        assert [item["customer_id"] for item in first["items"] + second.body["items"]] == ranked[:20]
        assert refused(call(query(replaced, "/v1/candidates", **params, cursor=first["nextCursor"])))
        # The rotated server signs with its first (new) key: the original server, without it, refuses.
        assert refused(api.candidates(limit="10", cursor=second.body["nextCursor"]))
        assert call(query(replaced, "/v1/candidates", **params, cursor=second.body["nextCursor"])).status == 200


@contextmanager
def served_process(home: Path, log: Path, env: dict[str, str]) -> Iterator[str]:
    """`python -m eventreach_assets.serving.api` over `home` on a free port; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "eventreach_assets.serving.api", "--port", str(port), "--home", str(home)]
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


def wait_until_up(base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, log.read_text()
        try:
            if call(f"{base}/health", key=None).status == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)


def test_a_cursor_from_one_server_process_continues_in_another(deployment: Deployment, tmp_path: Path):
    """Two processes over one data dir (as uvicorn's workers are) share the generated cursor key:
    page 2 comes from the other process. The key file is private and never printed."""
    with deployment_dependencies(home=deployment.home, deployment="local") as dependencies:
        event = deployment.seed.upcoming_event_ids[0]
        scored = scored_for(unregistered_customers(deployment, event, CANDIDATES))
        dependencies.store.replace_event_candidates(PROGRAM, event, scored, CHANNELS, AS_OF, 14, 100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTREACH_")}
    env["EVENTREACH_NOW"] = AS_OF.isoformat()
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    with served_process(deployment.home, logs[0], env) as one, served_process(deployment.home, logs[1], env) as two:
        wait_until_up(one, logs[0])
        wait_until_up(two, logs[1])
        key = (deployment.home / "api_key").read_text().strip()
        bases = iter([one, two] * 20)
        params = {"program": PROGRAM, "event": event, "channel": "email", "limit": "40"}
        items, sizes = walk(params, lambda **p: call(query(next(bases), "/v1/candidates", **p), key=key))
        assert [item["customer_id"] for item in items] == expected_order(scored, 0.0) and len(sizes) > 2
    cursor_file = deployment.home / "cursor_key"
    assert oct(cursor_file.stat().st_mode & 0o777) == oct(0o600)
    printed = "".join(log.read_text() for log in logs)
    assert str(cursor_file) in printed and cursor_file.read_text().strip() not in printed


def test_cursor_keys_come_from_the_environment_first_and_are_required_on_aws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from eventreach_assets.serving.api import cursor_keys_from_env

    monkeypatch.setenv(CURSOR_KEYS_ENV, " new-cursor-key-of-enough-length-0001 , old-cursor-key-of-enough-length-0002")
    assert cursor_keys_from_env(tmp_path, "aws") == (
        ["new-cursor-key-of-enough-length-0001", "old-cursor-key-of-enough-length-0002"],
        f"env {CURSOR_KEYS_ENV}",
    )
    monkeypatch.delenv(CURSOR_KEYS_ENV)
    with pytest.raises(RuntimeError, match=CURSOR_KEYS_ENV):
        cursor_keys_from_env(tmp_path, "aws")
    keys, source = cursor_keys_from_env(tmp_path, "local")
    assert source == str(tmp_path / "cursor_key") and keys == [(tmp_path / "cursor_key").read_text().strip()]
    with pytest.raises(ValueError, match="32"):
        create_app(None, api_keys=[API_KEY], webhook_secret=WEBHOOK_SECRET, cursor_keys=["short"])  # type: ignore[arg-type]
