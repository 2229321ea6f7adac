"""The Serving API's page cache: a repeated page is answered without reading the store, and never
after the stores changed or an item expired.

The unit half drives `PageCache` and the SQLite version token directly; the integration half starts
the real app on 127.0.0.1 over the local deployment's stores and changes them from another
process, from another connection, and by moving the deployment's clock past the items' expiry.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from eventreach_assets.domain.candidate_items import epoch_seconds
from eventreach_assets.resources.candidate_store.dynamodb import DynamoDBCandidateStore
from eventreach_assets.resources.candidate_store.sqlite import SqliteCandidateStore
from eventreach_assets.resources.sqlite import SqliteConnections
from eventreach_assets.serving.api import (
    PAGE_CACHE_ENV,
    PageCache,
    ServingApi,
    create_app,
    deployment_dependencies,
)
from eventreach_assets.serving.api.cli import page_cache_bytes_from_env
from eventreach_assets_tests.conftest import AS_OF, Deployment
from eventreach_assets_tests.test_serving_api import (
    API_KEY,
    CHANNELS,
    CURSOR_KEY,
    PROGRAM,
    WEBHOOK_SECRET,
    call,
    expected_order,
    query,
    scored_for,
    serving,
    unregistered_customers,
)

TTL_DAYS = 14

# ---- PageCache ----------------------------------------------------------------------------------


def never_expires() -> None:
    return None


def test_answers_are_kept_while_the_versions_hold_and_dropped_when_they_move():
    cache = PageCache(max_bytes=1_000)
    cache.renew(("v", 1), now_epoch=100, next_expiry=never_expires)
    cache.put("a", ("v", 1), b"page a")
    cache.renew(("v", 1), now_epoch=10**9, next_expiry=never_expires)
    assert cache.get("a") == b"page a"
    cache.renew(("v", 2), now_epoch=10**9, next_expiry=never_expires)  # a commit somewhere
    assert cache.get("a") is None and len(cache) == 0 and cache.size_bytes == 0


def test_answers_are_dropped_when_the_next_live_item_expires():
    cache = PageCache(max_bytes=1_000)
    cache.renew("v", now_epoch=100, next_expiry=lambda: 160)
    cache.put("a", "v", b"page a")
    cache.renew("v", now_epoch=159, next_expiry=lambda: pytest.fail("asked again before the horizon"))
    assert cache.get("a") == b"page a"
    cache.renew("v", now_epoch=160, next_expiry=lambda: 400)  # an item is no longer live at its expires_at
    assert cache.get("a") is None


def test_a_page_read_before_the_stores_moved_on_is_not_kept():
    cache = PageCache(max_bytes=1_000)
    cache.renew("v1", now_epoch=0, next_expiry=never_expires)
    cache.renew("v2", now_epoch=0, next_expiry=never_expires)  # another request saw a newer version
    cache.put("a", "v1", b"read at v1")
    assert cache.get("a") is None


def test_the_bound_evicts_the_least_recently_used_and_refuses_a_body_of_half_the_cache():
    cache = PageCache(max_bytes=30)
    cache.renew("v", now_epoch=0, next_expiry=never_expires)
    for key in "abc":
        cache.put(key, "v", key.encode() * 10)
    assert cache.get("a") == b"a" * 10  # used: now the most recent
    cache.put("d", "v", b"d" * 10)
    assert cache.get("b") is None and cache.get("a") and cache.get("c") and cache.get("d")
    assert cache.size_bytes == 30
    cache.put("e", "v", b"e" * 16)
    assert cache.get("e") is None and cache.size_bytes == 30
    with pytest.raises(ValueError, match="max_bytes"):
        PageCache(0)


# ---- the SQLite version token and the next expiry ----------------------------------------------


def test_the_version_moves_on_a_commit_by_another_connection_or_process_and_only_then(tmp_path: Path):
    path = tmp_path / "store.sqlite"
    connections = SqliteConnections(str(path), 5.0, "CREATE TABLE IF NOT EXISTS t (x INTEGER);")
    first = connections.read_version()
    with connections.connect() as conn:
        conn.execute("SELECT count(*) FROM t").fetchone()
    assert connections.read_version() == first  # reads move nothing

    def write_from_another_thread() -> None:
        with connections.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")

    thread = threading.Thread(target=write_from_another_thread)
    thread.start()
    thread.join()
    second = connections.read_version()
    assert second != first
    subprocess.run(
        [sys.executable, "-c", f"import sqlite3; c = sqlite3.connect({str(path)!r}); "
         "c.execute('INSERT INTO t VALUES (2)'); c.commit()"],
        check=True,
    )  # fmt: skip
    third = connections.read_version()
    assert third != second
    with connections.transaction() as conn:  # this thread's own connection
        conn.execute("INSERT INTO t VALUES (3)")
    assert connections.read_version() != third


def test_a_replaced_file_is_another_version(tmp_path: Path):
    path = tmp_path / "store.sqlite"
    connections = SqliteConnections(str(path), 5.0, "CREATE TABLE IF NOT EXISTS t (x INTEGER);")
    before = connections.read_version()
    replacement = tmp_path / "new.sqlite"
    sqlite3.connect(replacement).close()
    replacement.replace(path)  # a reset data dir
    assert connections.read_version() != before


def test_next_expiry_is_the_earliest_expiry_still_ahead(tmp_path: Path):
    store = SqliteCandidateStore(path=str(tmp_path / "c.sqlite"))
    assert store.next_expiry(0) is None
    scored = scored_for([f"C{n:03d}" for n in range(5)])
    store.replace_event_candidates(PROGRAM, "evt-a", scored, CHANNELS, AS_OF, TTL_DAYS, 100)
    store.replace_event_candidates(PROGRAM, "evt-b", scored, CHANNELS, AS_OF + timedelta(days=3), TTL_DAYS, 100)
    a_expires, b_expires = store.next_expiry(0), store.next_expiry(epoch_seconds(AS_OF + timedelta(days=TTL_DAYS)))
    assert a_expires is not None and b_expires is not None and b_expires > a_expires
    assert store.next_expiry(a_expires - 1) == a_expires and store.next_expiry(a_expires) == b_expires
    assert store.next_expiry(b_expires) is None
    store.purge_expired(AS_OF + timedelta(days=TTL_DAYS + 1))  # evt-a's items are gone, and their expiry
    assert store.next_expiry(0) == b_expires


def test_a_file_written_before_the_expiries_were_recorded_gets_them_on_open(tmp_path: Path):
    path = tmp_path / "c.sqlite"
    store = SqliteCandidateStore(path=str(path))
    store.replace_event_candidates(PROGRAM, "evt-a", scored_for(["C001", "C002"]), CHANNELS, AS_OF, TTL_DAYS, 100)
    expected = store.next_expiry(0)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE candidate_item_expiries")  # as a file from before had it
    assert expected is not None and SqliteCandidateStore(path=str(path)).next_expiry(0) == expected


# ---- the API over real HTTP ---------------------------------------------------------------------


@dataclasses.dataclass
class CachedApi:
    base: str
    event: str
    home: Path
    scored: pl.DataFrame
    clock: list[datetime]  # the deployment's "now", movable
    reads: list[str]  # every page the candidate store was asked for

    def candidates(self, **params: Any) -> dict[str, Any]:
        reply = call(query(self.base, "/v1/candidates", program=PROGRAM, event=self.event, channel="email", **params))
        assert reply.status == 200, reply.body
        return reply.body


@pytest.fixture
def cached_api(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[CachedApi]:
    monkeypatch.setenv("EVENTREACH_NOW", AS_OF.isoformat())
    event = deployment.seed.upcoming_event_ids[0]
    scored = scored_for(unregistered_customers(deployment, event, 40))
    reads: list[str] = []
    served_top_page = SqliteCandidateStore._served_top_page

    def counted(store: SqliteCandidateStore, top_query: Any) -> Any:
        reads.append(top_query.gsi1pk)
        return served_top_page(store, top_query)

    monkeypatch.setattr(SqliteCandidateStore, "_served_top_page", counted)
    clock = [AS_OF]
    with deployment_dependencies(home=deployment.home, deployment="local") as dependencies:
        dependencies.store.replace_event_candidates(PROGRAM, event, scored, CHANNELS, AS_OF, TTL_DAYS, 100)
        movable = dataclasses.replace(dependencies, clock=lambda: clock[0])
        app = create_app(movable, api_keys=[API_KEY], webhook_secret=WEBHOOK_SECRET, cursor_keys=[CURSOR_KEY])
        with serving(app) as base:
            yield CachedApi(base, event, deployment.home, scored, clock, reads)


def test_a_repeated_page_is_not_read_again_until_another_process_registers_a_customer(cached_api: CachedApi):
    first = cached_api.candidates(limit="10")
    assert [item["customer_id"] for item in first["items"]] == expected_order(cached_api.scored, 0.0)[:10]
    assert len(cached_api.reads) == 1
    assert cached_api.candidates(limit="10") == first and len(cached_api.reads) == 1  # from the cache
    assert cached_api.candidates(limit="5")["count"] == 5 and len(cached_api.reads) == 2  # another query
    top = first["items"][0]["customer_id"]
    register = (
        "import polars as pl, datetime as d; "
        "from eventreach_assets.resources.candidate_store.sqlite import SqliteCandidateStore as S; "
        f"S(path={str(cached_api.home / 'candidates.sqlite')!r}).mark_registered_many({PROGRAM!r}, "
        f"{cached_api.event!r}, pl.DataFrame({{'customer_id': [{top!r}], "
        f"'registered_at': [d.datetime.fromisoformat({AS_OF.isoformat()!r})], 'channel': ['email']}}))"
    )
    subprocess.run([sys.executable, "-c", register], check=True)  # the registrations feed, another process
    after = cached_api.candidates(limit="10")
    assert top not in [item["customer_id"] for item in after["items"]] and len(cached_api.reads) == 3
    assert [item["customer_id"] for item in after["items"]] == expected_order(cached_api.scored, 0.0)[1:11]
    shown = cached_api.candidates(limit="10", excludeRegistered="false")["items"][0]
    assert shown["customer_id"] == top and shown["status"] == "registered"


def test_a_cached_page_is_left_the_moment_its_items_expire(cached_api: CachedApi):
    first = cached_api.candidates(limit="10")
    expires_at = first["items"][0]["expires_at"]
    assert all(item["expires_at"] == expires_at for item in first["items"])
    cached_api.clock[0] = datetime.fromtimestamp(expires_at - 1, UTC).replace(tzinfo=None)  # the clock's naive UTC
    assert cached_api.candidates(limit="10") == first and len(cached_api.reads) == 1
    cached_api.clock[0] += timedelta(seconds=1)  # now == expires_at: no longer live
    expired = cached_api.candidates(limit="10")
    assert expired == {"items": [], "count": 0, "nextCursor": None} and len(cached_api.reads) == 2


def test_no_page_cache_when_turned_off_or_over_dynamodb(deployment: Deployment, monkeypatch: pytest.MonkeyPatch):
    with deployment_dependencies(home=deployment.home, deployment="local") as dependencies:
        keys = {"api_keys": [API_KEY], "webhook_secret": WEBHOOK_SECRET, "cursor_keys": [CURSOR_KEY]}
        assert ServingApi(dependencies, **keys).page_cache is not None
        assert ServingApi(dependencies, **keys, page_cache_bytes=0).page_cache is None
        dynamodb = DynamoDBCandidateStore(table_name="candidates", score_cache_table_name="scores")
        assert ServingApi(dataclasses.replace(dependencies, store=dynamodb), **keys).page_cache is None
    monkeypatch.setenv(PAGE_CACHE_ENV, "0")
    assert page_cache_bytes_from_env() == 0
    monkeypatch.setenv(PAGE_CACHE_ENV, "16")
    assert page_cache_bytes_from_env() == 16 * 2**20
    monkeypatch.setenv(PAGE_CACHE_ENV, "lots")
    with pytest.raises(RuntimeError, match=PAGE_CACHE_ENV):
        page_cache_bytes_from_env()


def test_an_answer_is_the_same_bytes_whether_cached_or_read(cached_api: CachedApi):
    """Walking every page twice: the second walk (from the cache) is the first, byte for byte."""
    walks = []
    for _ in range(2):
        pages, cursor = [], None
        for _ in range(20):  # bounded: 40 candidates at 7 a page
            page = cached_api.candidates(limit="7", **({"cursor": cursor} if cursor else {}))
            pages.append(json.dumps(page))
            cursor = page["nextCursor"]
            if cursor is None:
                break
        walks.append(pages)
    assert walks[0] == walks[1] and len(walks[0]) == 6
    assert len(cached_api.reads) == 6  # each page read from the store once
