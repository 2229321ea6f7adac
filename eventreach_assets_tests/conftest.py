"""Shared fixtures: a small generated warehouse and the weekly batch run through Dagster once."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from eventreach_assets.definitions import build_definitions
from eventreach_assets.demo.generator import SeedSummary, seed_warehouse

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)

AS_OF = datetime(2026, 11, 23, 2, 0)  # a Monday, 02:00 UTC: when the weekly batch runs
SMALL_PROFILES = 40_000


@pytest.hookimpl(optionalhook=True)  # only with pytest-xdist (`-n`); `-n 0` or `-p no:xdist` never call it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, longest files first (eventreach_assets_tests/scheduling.py); other modes as xdist has them."""
    if config.getoption("dist") != "loadfile":
        return None
    from eventreach_assets_tests.scheduling import SlowFilesFirst

    return SlowFilesFirst(config, log)


@dataclass(frozen=True)
class BatchedSnapshot:
    root: Path  # home/ (the data dir) and dagster_home/ (the instance) after the batch
    event_id: str  # the event the batch ran for


@dataclass
class Deployment:
    home: Path
    seed: SeedSummary
    defs: dg.Definitions
    instance: dg.DagsterInstance


@pytest.fixture
def warehouse_connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every read-only DuckDB connection (the local warehouse's) opened while the test runs (its arguments)."""
    import duckdb

    connections: list[tuple] = []
    connect = duckdb.connect

    def counted(*args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        if kwargs.get("read_only"):
            connections.append(args)
        return connect(*args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", counted)
    return connections


def assert_writable(path: Path) -> None:
    """Every read connection to the DuckDB file at `path` was closed: it opens read-write (a read
    session holding it would have the writer refused)."""
    import duckdb

    with duckdb.connect(str(path)) as writer:
        assert writer.execute("select count(*) from information_schema.tables").fetchone()[0] > 0


@pytest.fixture(scope="session")
def small_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SeedSummary]:
    home = tmp_path_factory.mktemp("warehouse")
    summary = seed_warehouse(home / "warehouse.duckdb", SMALL_PROFILES, seed=11, as_of=AS_OF)
    return home / "warehouse.duckdb", summary


@pytest.fixture
def deployment(tmp_path: Path, small_warehouse: tuple[Path, SeedSummary]) -> Iterator[Deployment]:
    """A fresh local deployment (own data dir and Dagster instance) over the shared warehouse."""
    warehouse, summary = small_warehouse
    home = tmp_path / "home"
    home.mkdir()
    (home / "warehouse.duckdb").symlink_to(warehouse)
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield Deployment(home, summary, build_definitions(home=home, fixed_now=AS_OF.isoformat()), instance)


@pytest.fixture(scope="session")
def batched_snapshot(
    tmp_path_factory: pytest.TempPathFactory, small_warehouse: tuple[Path, SeedSummary]
) -> BatchedSnapshot:
    """The weekly batch of the first event (`run_weekly_batch`, limit=1, at AS_OF) run once per worker:
    its data dir and Dagster instance, which `batched_deployment` copies for each test that sends."""
    from eventreach_assets.demo.run import run_weekly_batch

    root = tmp_path_factory.mktemp("batched")
    (root / "home").mkdir()
    (root / "home" / "warehouse.duckdb").symlink_to(small_warehouse[0])
    (root / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster_home")) as instance:
        reports, _ = run_weekly_batch(root / "home", instance, fixed_now=AS_OF.isoformat(), limit=1)
    return BatchedSnapshot(root, reports[0].event_id)


@pytest.fixture
def batched_deployment(
    tmp_path: Path, batched_snapshot: BatchedSnapshot, small_warehouse: tuple[Path, SeedSummary]
) -> Iterator[Deployment]:
    """A deployment of its own (data dir and Dagster instance copied from `batched_snapshot`) right after
    the weekly batch: what the `deployment` fixture plus `run_weekly_batch(..., limit=1)` leave, without the
    ~20 s batch per test. The warehouse stays the shared one (a symlink, as in `deployment`)."""
    for part in ("home", "dagster_home"):
        shutil.copytree(batched_snapshot.root / part, tmp_path / part, symlinks=True)
    home = tmp_path / "home"
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield Deployment(home, small_warehouse[1], build_definitions(home=home, fixed_now=AS_OF.isoformat()), instance)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session (loopback, free port); see `aws_endpoint` for a clean slate."""
    from eventreach_assets_tests.stand_ins import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws_endpoint(moto_endpoint: str) -> Iterator[str]:
    """The moto endpoint, emptied after the test."""
    from eventreach_assets_tests.stand_ins import reset_moto

    yield moto_endpoint
    reset_moto(moto_endpoint)


@pytest.fixture(params=["sqlite", "dynamodb"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The delivery ledger on both backends (SQLite file; DynamoDB on the moto server), one suite for both."""
    from eventreach_assets.resources.ledger import DynamoDBDeliveryLedger, SqliteDeliveryLedger
    from eventreach_assets_tests.stand_ins import REGION

    if request.param == "sqlite":
        store = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
        yield store
        store.close()
    else:
        endpoint = request.getfixturevalue("aws_endpoint")
        store = DynamoDBDeliveryLedger(table_name="eventreach-ledger", region_name=REGION, endpoint_url=endpoint)
        assert store.create_table()
        assert not store.create_table()  # idempotent
        yield store


@pytest.fixture
def held_checkpoints(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Background checkpoints of SQLite bulk writes wait until the returned event is set (at most
    30 s): what a test sees between a bulk commit and its checkpoint. Released and waited for at
    the end."""
    import threading

    from eventreach_assets.resources.sqlite import SqliteConnections, wait_for_checkpoints

    gate = threading.Event()
    checkpoint = SqliteConnections._checkpoint_while_requested

    def held(self: SqliteConnections, conn: Any) -> None:
        gate.wait(30)
        checkpoint(self, conn)

    monkeypatch.setattr(SqliteConnections, "_checkpoint_while_requested", held)
    yield gate
    gate.set()
    wait_for_checkpoints()
