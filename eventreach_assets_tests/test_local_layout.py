"""The local deployment's SQLite files: the candidate store apart from the campaign's ledger and
engagement store, and a data dir of the earlier shared layout brought to it without losing a row."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from eventreach_assets import deployments
from eventreach_assets.deployments import CAMPAIGN_SQLITE, CANDIDATES_SQLITE, local_resources, split_shared_sqlite
from eventreach_assets.domain.delivery import DeliveryKey
from eventreach_assets.domain.engagement_schemas import REGISTERED
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH
from eventreach_assets.resources.candidate_store import SqliteCandidateStore
from eventreach_assets.resources.engagement_store import SqliteEngagementStore
from eventreach_assets.resources.ledger import SqliteDeliveryLedger
from eventreach_assets.resources.sqlite import (
    copy_tables_to_new_file,
    page_size_of,
    table_names,
    tables_in,
    wait_for_checkpoints,
)
from eventreach_assets_tests.test_candidate_store import CHANNELS, EVENT, NOW, PROGRAM, SCORES, replace
from eventreach_assets_tests.test_engagement_store import registrations
from eventreach_assets_tests.test_ledger import frame
from eventreach_assets_tests.test_ledger import key as ledger_key

CAMPAIGN_TABLES = SqliteDeliveryLedger.declared_tables() | SqliteEngagementStore.declared_tables()
STORE_TABLES = SqliteCandidateStore.declared_tables()
STORE_PAGES = SqliteCandidateStore.file_page_size  # larger than SQLite's 4 KiB (asserted below)


def key(customer: str) -> DeliveryKey:
    """An email invitation of the store's event."""
    return ledger_key(customer, event=EVENT)


def tables_of(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:  # closed: an open connection would keep the file from a repack
        return table_names(conn)


def what_the_stores_hold(candidates: Path, campaign: Path) -> dict[str, pl.DataFrame]:
    """Every kind of row the three stores were given below, read through the resources."""
    store = SqliteCandidateStore(path=str(candidates))
    ledger = SqliteDeliveryLedger(path=str(campaign))
    engagement = SqliteEngagementStore(path=str(campaign))
    try:
        return {
            "items": store.event_items(PROGRAM, EVENT, now=NOW),
            "cache": store.get_cached_scores(EVENT, "m1", "v1", pl.Series(["c01", "c02"]), NOW),
            "deliveries": ledger.deliveries(EVENT),
            "opt_outs": ledger.opt_outs(pl.Series(["c03"]), "email"),
            "registrations": engagement.registrations(EVENT),
        }
    finally:
        for resource in (store, ledger, engagement):
            resource.close()


def assert_nothing_lost(before: dict[str, pl.DataFrame], candidates: Path, campaign: Path) -> None:
    """The stores in their files hold every row they held in the shared file (`before`)."""
    after = what_the_stores_hold(candidates, campaign)
    for name, rows in before.items():
        assert rows.height, name  # each kind was there to lose
        assert_frame_equal(after[name], rows, check_row_order=False)


def shared_layout_home(home: Path) -> dict[str, pl.DataFrame]:
    """A data dir as releases before 2026-12-04 left it: the candidate store, the ledger and the
    engagement store in one `candidates.sqlite` of 4 KiB pages, each holding rows; what they hold."""
    path = home / CANDIDATES_SQLITE
    ledger = SqliteDeliveryLedger(path=str(path))  # the first to make the file: SQLite's 4 KiB pages
    ledger.reserve(frame(key("c01"), key("c02")), now=NOW)
    ledger.mark_sent(key("c01"), "msg-c01", NOW)
    ledger.record_opt_out("c03", None, "unsubscribe link", NOW)
    engagement = SqliteEngagementStore(path=str(path))
    engagement.record_registrations(registrations("c01", "c04", event=EVENT), REGISTERED, now=NOW)
    store = SqliteCandidateStore(path=str(path))
    replace(store, SCORES)
    store.mark_registered(PROGRAM, EVENT, "c01", NOW, CHANNELS[0])
    store.put_cached_scores(
        EVENT, "m1", "v1", pl.DataFrame({"customer_id": ["c01", "c02"], "probability": [0.9, 0.2]}), NOW, 14
    )
    for resource in (ledger, engagement, store):
        resource.close()
    wait_for_checkpoints()  # the store's bulk writes checkpoint in a thread: done before a process stops
    assert page_size_of(path) == 4096 and tables_of(path) >= CAMPAIGN_TABLES | STORE_TABLES
    return what_the_stores_hold(path, path)


def test_a_new_data_dir_keeps_the_store_in_large_pages_apart_from_the_campaign(tmp_path):
    resources = local_resources(tmp_path, DEFAULT_PROGRAM_PATH)
    replace(resources["candidate_store"], SCORES)
    resources["ledger"].reserve(frame(key("c01")), now=NOW)
    resources["engagement"].record_registrations(registrations("c01", event=EVENT), REGISTERED, now=NOW)
    for name in ("candidate_store", "ledger", "engagement"):
        resources[name].close()
    assert STORE_PAGES is not None and STORE_PAGES > 4096
    assert page_size_of(tmp_path / CANDIDATES_SQLITE) == STORE_PAGES
    assert page_size_of(tmp_path / CAMPAIGN_SQLITE) == 4096
    assert tables_of(tmp_path / CANDIDATES_SQLITE) == STORE_TABLES
    assert tables_of(tmp_path / CAMPAIGN_SQLITE) == CAMPAIGN_TABLES


def test_a_shared_data_dir_is_split_without_losing_a_row_or_sending_twice(tmp_path):
    before = shared_layout_home(tmp_path)
    resources = local_resources(tmp_path, DEFAULT_PROGRAM_PATH)

    candidates, campaign = tmp_path / CANDIDATES_SQLITE, tmp_path / CAMPAIGN_SQLITE
    assert page_size_of(candidates) == STORE_PAGES
    assert tables_of(candidates) == STORE_TABLES
    assert tables_of(campaign) == CAMPAIGN_TABLES
    assert_nothing_lost(before, candidates, campaign)
    # The message sent before the split is still the ledger's: a retried run may not send it again.
    again = resources["ledger"].reserve(frame(key("c01"), key("c05")), now=NOW)
    assert dict(again.select("customer_id", "granted").iter_rows()) == {"c01": False, "c05": True}
    resources["ledger"].close()


def test_a_split_cut_short_after_the_copy_is_finished_on_the_next_start(tmp_path):
    before = shared_layout_home(tmp_path)
    candidates, campaign = tmp_path / CANDIDATES_SQLITE, tmp_path / CAMPAIGN_SQLITE
    copy_tables_to_new_file(candidates, campaign, tables_in(candidates, CAMPAIGN_TABLES))  # then the crash
    (tmp_path / f"{CAMPAIGN_SQLITE}.partial").write_bytes(b"")  # and a stray partial copy: ignored
    split_shared_sqlite(tmp_path)
    assert tables_of(candidates) == STORE_TABLES and page_size_of(candidates) == STORE_PAGES
    assert_nothing_lost(before, candidates, campaign)


def test_the_store_keeps_small_pages_while_another_process_has_it_open_and_is_repacked_later(tmp_path, caplog):
    before = shared_layout_home(tmp_path)
    candidates, campaign = tmp_path / CANDIDATES_SQLITE, tmp_path / CAMPAIGN_SQLITE
    reader = sqlite3.connect(candidates)  # e.g. a Serving API still running
    reader.execute("SELECT count(*) FROM candidate_rows").fetchone()
    with caplog.at_level(logging.WARNING, logger="eventreach_assets.deployments"):
        split_shared_sqlite(tmp_path)
    assert page_size_of(candidates) == 4096  # not repacked under an open connection
    assert tables_of(candidates) == STORE_TABLES  # but split all the same
    assert f"{candidates} keeps its 4096-byte pages" in caplog.text
    reader.close()
    split_shared_sqlite(tmp_path)  # the next start
    assert page_size_of(candidates) == STORE_PAGES
    assert_nothing_lost(before, candidates, campaign)


def test_a_repack_that_fails_leaves_the_split_made_and_says_why(tmp_path, caplog, monkeypatch):
    before = shared_layout_home(tmp_path)

    def disk_full(path: Path, page_size: int) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(deployments, "repack", disk_full)
    with caplog.at_level(logging.WARNING, logger="eventreach_assets.deployments"):
        split_shared_sqlite(tmp_path)  # the deployment still starts
    candidates, campaign = tmp_path / CANDIDATES_SQLITE, tmp_path / CAMPAIGN_SQLITE
    assert "repacking it failed (database or disk is full)" in caplog.text
    assert page_size_of(candidates) == 4096 and tables_of(candidates) == STORE_TABLES
    assert_nothing_lost(before, candidates, campaign)


def test_processes_starting_together_split_the_data_dir_once(tmp_path):
    before = shared_layout_home(tmp_path)
    # Each process imports first, then waits for one shared moment, so the three splits race.
    go = time.time() + 8
    split = (
        "import logging, time; from pathlib import Path; "
        "from eventreach_assets.deployments import split_shared_sqlite; "
        f"logging.basicConfig(level=logging.INFO); time.sleep(max(0.0, {go} - time.time())); "
        f"split_shared_sqlite(Path({str(tmp_path)!r}))"
    )
    starts = [subprocess.Popen([sys.executable, "-c", split], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    logs = ""
    for start in starts:
        _, errors = start.communicate(timeout=120)
        assert start.returncode == 0, errors
        logs += errors
    assert logs.count("copied ") == 1 and logs.count("repacked ") == 1, logs
    candidates, campaign = tmp_path / CANDIDATES_SQLITE, tmp_path / CAMPAIGN_SQLITE
    assert page_size_of(candidates) == STORE_PAGES and tables_of(candidates) == STORE_TABLES
    assert_nothing_lost(before, candidates, campaign)


def test_tables_are_copied_into_a_new_file_only(tmp_path):
    shared_layout_home(tmp_path)
    (tmp_path / CAMPAIGN_SQLITE).write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"campaign\.sqlite exists"):
        copy_tables_to_new_file(tmp_path / CANDIDATES_SQLITE, tmp_path / CAMPAIGN_SQLITE, CAMPAIGN_TABLES)
