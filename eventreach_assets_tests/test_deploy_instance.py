"""The production Dagster instance (deploy/dagster.yaml) on a real PostgreSQL 15 server.

One server for the module (postgres_server.py: initdb + pg_ctl on 127.0.0.1), a database per
test. First the file as shipped: Postgres storage from the environment, the queued run
coordinator with the local dagster.yaml's rules, EcsRunLauncher and S3 compute logs. Then the
operator console's whole path (test_operator_console.py) on it, with only the run launcher
swapped for the local one (no ECS here) and compute logs sent to moto's S3, and the run queue
made to prove "one run per event": two runs of the same event submitted at once run one after the
other. What the console showed is then read back from Postgres itself.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml

from eventreach_assets_tests.postgres_server import PostgresServer, postgres_server
from eventreach_assets_tests.stand_ins import moto_server
from eventreach_assets_tests.test_operator_console import (
    BATCH_JOB,
    FINISHED,
    Console,
    operate_weekly_batch,
    poll,
    run_errors,
    running_console,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
PRODUCTION_YAML = REPO / "deploy" / "dagster.yaml"
LOCAL_YAML = REPO / "dagster.yaml"
SECRETS = ("DAGSTER_PG_PASSWORD_SECRET", "EVENTREACH_LINK_SECRET", "EVENTREACH_IN_APP_API_KEY", "SNOWFLAKE_PRIVATE_KEY")
COMPUTE_LOG_BUCKET, COMPUTE_LOG_PREFIX = "eventreach-dagster-logs", "compute-logs"
# What an ECS task definition would set beside the Postgres settings (placeholders: nothing here calls ECS).
ECS_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "DAGSTER_COMPUTE_LOG_BUCKET": COMPUTE_LOG_BUCKET,
    "DAGSTER_COMPUTE_LOG_PREFIX": COMPUTE_LOG_PREFIX,
    "EVENTREACH_RUN_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/eventreach-run",
    "EVENTREACH_RUN_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/eventreach-run-execution",
    "EVENTREACH_RUN_LOG_GROUP": "/ecs/eventreach-runs",
    **{f"{name}_ARN": f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name.lower()}" for name in SECRETS},
}
SAME_EVENT_TIMEOUT = 420  # two weekly batches of one event in turn (~1 min idle; minutes on a loaded machine)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_the_production_instance_loads_on_postgres_with_the_local_run_rules(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """deploy/dagster.yaml unmodified: every part is the production class, configured from the environment."""
    import psycopg2
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    database = postgres.create_database("instance_config")
    for name, value in {**database.dagster_env, **ECS_ENV}.items():
        monkeypatch.setenv(name, value)
    shutil.copy(PRODUCTION_YAML, tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        tables = {row[0] for row in database.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        with pytest.raises(psycopg2.OperationalError, match=r"no pg_hba\.conf entry"):  # the server takes TLS only,
            psycopg2.connect(**{**database.connect_args(database.db_name), "sslmode": "disable"})  # so Dagster used it
        assert {"runs", "event_logs", "jobs", "job_ticks", "bulk_actions", "concurrency_slots"} <= tables, tables

        launcher = instance.run_launcher
        assert isinstance(launcher, EcsRunLauncher)
        assert launcher.supports_check_run_worker_health  # run monitoring can fail a run whose task died
        assert launcher.task_definition_dict["task_role_arn"] == ECS_ENV["EVENTREACH_RUN_TASK_ROLE_ARN"]
        assert {secret["name"] for secret in launcher.secrets} >= {"DAGSTER_PG_PASSWORD", "EVENTREACH_LINK_SECRET"}
        assert "DAGSTER_PG_PASSWORD" not in launcher.env_vars  # the password travels as an ECS secret only
        assert not launcher.secrets_tags  # nothing mounted by tag discovery

        logs = instance.compute_log_manager
        assert isinstance(logs, S3ComputeLogManager)
        assert (logs._s3_bucket, logs._s3_prefix) == (COMPUTE_LOG_BUCKET, COMPUTE_LOG_PREFIX)

        # The run rules are the local instance's: one run per event, one step per channel pool, retries.
        config = instance.get_concurrency_config()
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert config.pool_config.default_pool_limit == 1
        assert config.run_queue_config.max_concurrent_runs >= 2
        production, local = load_yaml(PRODUCTION_YAML), load_yaml(LOCAL_YAML)
        assert (
            production["concurrency"]["runs"]["tag_concurrency_limits"]
            == (local["concurrency"]["runs"]["tag_concurrency_limits"])
        )
        assert production["concurrency"]["pools"] == local["concurrency"]["pools"]
        assert production["run_retries"] == local["run_retries"]
        timeouts = {"start_timeout_seconds"}  # a Fargate task pulls its image first: longer than a local process
        assert {k: v for k, v in production["run_monitoring"].items() if k not in timeouts} == {
            k: v for k, v in local["run_monitoring"].items() if k not in timeouts
        }
        assert instance.run_monitoring_enabled and instance.run_retries_max_retries == 1
    finally:
        instance.dispose()


def production_instance_for_this_machine(endpoint_url: str) -> str:
    """deploy/dagster.yaml with the local run launcher (no ECS here) and compute logs on moto's S3."""
    config = load_yaml(PRODUCTION_YAML)
    config["run_launcher"] = load_yaml(LOCAL_YAML)["run_launcher"]
    config["compute_logs"]["config"]["endpoint_url"] = endpoint_url
    return yaml.safe_dump(config, sort_keys=False)


def run_rows(database: PostgresServer, run_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """run_id -> (status, partition, start_time, end_time), from Dagster's `runs` table in Postgres."""
    rows = database.query(
        "SELECT run_id, status, partition, start_time, end_time FROM runs WHERE run_id = ANY(%s)", (run_ids,)
    )
    return {row[0]: row[1:] for row in rows}


def test_the_operator_console_runs_on_the_production_instance_in_postgres(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Sensor, training, a two-event backfill and its checks with Postgres storage; one run per event at a time."""
    database = postgres.create_database("operator_console")
    with moto_server() as endpoint:  # sets fake AWS credentials in os.environ, which both servers inherit
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=COMPUTE_LOG_BUCKET)
        for name, value in {**database.dagster_env, **ECS_ENV}.items():
            monkeypatch.setenv(name, value)
        with running_console(tmp_path, production_instance_for_this_machine(endpoint)) as console:
            session = operate_weekly_batch(console)
            same_event_runs = run_the_same_event_twice_at_once(console, database, next(iter(session.run_by_event)))
            log_keys = [
                item["Key"]
                for page in boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
                .get_paginator("list_objects_v2")
                .paginate(Bucket=COMPUTE_LOG_BUCKET, Prefix=f"{COMPUTE_LOG_PREFIX}/")
                for item in page.get("Contents", [])
            ]

    # What the console showed is in Postgres: the backfill's runs, their events, checks and the partitions.
    backfill_runs = list(session.run_by_event.values())
    rows = run_rows(database, backfill_runs)
    assert {run_id: row[:2] for run_id, row in rows.items()} == {
        run_id: ("SUCCESS", event) for event, run_id in session.run_by_event.items()
    }
    (backfill_status,) = database.query("SELECT status FROM bulk_actions WHERE key = %s", (session.backfill_id,))
    assert backfill_status == ("COMPLETED_SUCCESS",)
    partitions = database.query("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'events'")
    assert sorted(row[0] for row in partitions) == ["evt-cloud-summit", "evt-kubernetes-launch", "evt-mlops-training"]
    materialized = database.query(
        "SELECT DISTINCT run_id FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        " AND asset_key = %s AND run_id = ANY(%s)",
        ('["candidates_table"]', backfill_runs),
    )
    assert sorted(row[0] for row in materialized) == sorted(backfill_runs)
    checks = database.query(
        "SELECT partition, execution_status FROM asset_check_executions WHERE check_name = %s AND run_id = ANY(%s)",
        ("candidates_table_matches_scored", backfill_runs),
    )
    assert sorted(checks) == sorted((event, "SUCCEEDED") for event in session.run_by_event)

    # The queue held the second run of the same event until the first had finished.
    (first, second) = sorted(same_event_runs.values(), key=lambda row: row[2])
    assert first[0] == second[0] == "SUCCESS", same_event_runs
    assert first[1] == second[1], same_event_runs  # the same partition
    assert first[3] <= second[2], f"runs of one event overlapped: {same_event_runs}"

    # Step logs went to the S3 compute log manager: every backfill run has its logs in the bucket.
    for run_id in backfill_runs:
        assert any(run_id in key for key in log_keys), (run_id, log_keys[:20])


def run_the_same_event_twice_at_once(
    console: Console, database: PostgresServer, event: str
) -> dict[str, tuple[Any, ...]]:
    """Submit two weekly batches of `event` back to back, wait for both; their rows from Postgres."""
    tags = {"dagster/partition": event, "eventreach/requested-by": "same-event-queue-test"}
    run_ids = [
        console.client.submit_job_execution(BATCH_JOB, console.location, console.repository, tags=tags)
        for _ in range(2)
    ]
    started = time.monotonic()
    for run_id in run_ids:
        status = poll(
            f"run {run_id} of {event} finished",
            SAME_EVENT_TIMEOUT - (time.monotonic() - started),
            lambda run_id=run_id: (state := console.client.get_run_status(run_id).value) in FINISHED and state,
            lambda run_id=run_id: f"{run_errors(console, run_id)}\n{console.log_tails()}",
        )
        assert status == "SUCCESS", run_errors(console, run_id)
    return run_rows(database, run_ids)
