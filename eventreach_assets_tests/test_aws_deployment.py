"""The weekly batch on the aws deployment, every service a real-protocol stand-in on loopback.

Snowflake is fakesnow, DynamoDB / S3 / Glue / CloudWatch are one moto server (real HTTP
through boto3 and dagster-aws), SageMaker is the project's own model server serving the
artifacts the aws model assets wrote to S3. The result must equal the local deployment's on
the same generated data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import polars as pl
import pytest
from dagster_snowflake import SnowflakeResource

from eventreach_assets.definitions import build_definitions
from eventreach_assets.demo.generator import generate_warehouse, write_duckdb
from eventreach_assets.demo.run import register_event_partitions, run_event_batches, train_models
from eventreach_assets.resources.candidate_store import create_candidate_tables
from eventreach_assets.resources.engagement_store import create_engagement_table
from eventreach_assets.resources.ledger import create_ledger_table
from eventreach_assets.resources.warehouse import load_tables
from eventreach_assets.serving.model_server import ModelApp, serve_in_thread
from eventreach_assets_tests.stand_ins import REGION, fake_snowflake_connector

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 23, 2, 0)
PROGRAM = "event-invitations"
ENV = {
    "AWS_REGION": REGION,
    "EVENTREACH_STATE_BUCKET": "eventreach-state",
    "EVENTREACH_EXPORT_BUCKET": "eventreach-export",
    "EVENTREACH_GLUE_DATABASE": "eventreach",
    "EVENTREACH_DYNAMODB_TABLE": "eventreach-candidates",
    "EVENTREACH_DYNAMODB_CACHE_TABLE": "eventreach-score-cache",
    "EVENTREACH_DYNAMODB_LEDGER_TABLE": "eventreach-delivery-ledger",
    "EVENTREACH_DYNAMODB_ENGAGEMENT_TABLE": "eventreach-engagement",
    "EVENTREACH_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/eventreach-sagemaker",
    "EVENTREACH_SAGEMAKER_IMAGE_URI": "123456789012.dkr.ecr.us-east-1.amazonaws.com/eventreach-model-server:1",
    "EVENTREACH_IN_APP_WEBHOOK_URL": "http://127.0.0.1:9/in-app",  # unused by the batch; required config
    "EVENTREACH_IN_APP_API_KEY": "in-app-key-not-a-secret",
    "EVENTREACH_LINK_SECRET": "link-secret-for-tests-only-0123456789abcdef",
    "SNOWFLAKE_ACCOUNT": "eventreach-test",
    "SNOWFLAKE_USER": "batch",
    "SNOWFLAKE_PASSWORD": "not-a-secret",
    "SNOWFLAKE_WAREHOUSE": "BATCH_WH",
    "SNOWFLAKE_ROLE": "EVENTREACH",
    "SNOWFLAKE_DATABASE": "CUSTOMER_DATA",
    "SNOWFLAKE_SCHEMA": "PUBLIC",
}


class CountingModelApp(ModelApp):
    """The model server app, counting invocations so the test knows scoring went remote."""

    invocations = 0

    def invoke(self, *args: object, **kwargs: object):
        CountingModelApp.invocations += 1
        return super().invoke(*args, **kwargs)


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    return generate_warehouse(12_000, seed=3, as_of=AS_OF)


def provision_aws(endpoint: str) -> None:
    """What the README's "Running on AWS" asks an operator to create, done against moto."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    for bucket in (ENV["EVENTREACH_STATE_BUCKET"], ENV["EVENTREACH_EXPORT_BUCKET"]):
        s3.create_bucket(Bucket=bucket)
    boto3.client("glue", endpoint_url=endpoint, region_name=REGION).create_database(
        DatabaseInput={"Name": ENV["EVENTREACH_GLUE_DATABASE"]}
    )
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
    create_candidate_tables(dynamodb, ENV["EVENTREACH_DYNAMODB_TABLE"], ENV["EVENTREACH_DYNAMODB_CACHE_TABLE"])
    create_ledger_table(dynamodb, ENV["EVENTREACH_DYNAMODB_LEDGER_TABLE"])
    create_engagement_table(dynamodb, ENV["EVENTREACH_DYNAMODB_ENGAGEMENT_TABLE"])


@pytest.fixture
def aws_env(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in {**ENV, "EVENTREACH_AWS_ENDPOINT_URL": aws_endpoint}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("EVENTREACH_SAGEMAKER_ENDPOINT_URL", raising=False)
    provision_aws(aws_endpoint)
    yield aws_endpoint


@contextmanager
def resolved(defs: dg.Definitions) -> Iterator[Any]:
    """The deployment's resources with their `dg.EnvVar`s resolved, as a run would see them."""
    keys = ("model_registry", "scoring_service", "candidate_store", "exporter", "metrics_sink")
    with dg.build_resources({key: defs.resources[key] for key in keys}) as resources:
        yield resources


def run_local(home: Path, tables: dict[str, pl.DataFrame]) -> tuple[dg.Definitions, dict, list]:
    write_duckdb(home / "warehouse.duckdb", tables)
    with dg.instance_for_test() as instance:
        defs = build_definitions(home=home, deployment="local", fixed_now=AS_OF.isoformat())
        register_event_partitions(defs, instance)
        models = train_models(defs, instance)
        return defs, models, run_event_batches(defs, instance, limit=1)


def run_aws(tables: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch) -> tuple[dg.Definitions, dict, list]:
    load_tables(
        SnowflakeResource(
            account="fake", user="fake", password="fake", database=ENV["SNOWFLAKE_DATABASE"], schema="PUBLIC",
            paramstyle="qmark",
        ),
        tables,
    )  # fmt: skip
    with dg.instance_for_test() as instance:
        defs = build_definitions(deployment="aws", fixed_now=AS_OF.isoformat())
        register_event_partitions(defs, instance)
        models = train_models(defs, instance)
        # Serve what the model assets just wrote to S3, as the SageMaker endpoints would.
        with resolved(defs) as resources:
            served = {
                model_id: resources.model_registry.load_current(model_id)
                for model_id in resources.scoring_service.endpoints
            }
        url, stop = serve_in_thread(CountingModelApp(served))
        try:
            monkeypatch.setenv("EVENTREACH_SAGEMAKER_ENDPOINT_URL", url)
            defs = build_definitions(deployment="aws", fixed_now=AS_OF.isoformat())
            return defs, models, run_event_batches(defs, instance, limit=1)
        finally:
            stop()


def test_aws_deployment_equals_local(tmp_path: Path, tables, aws_env: str, monkeypatch: pytest.MonkeyPatch):
    local_defs, local_models, (local,) = run_local(tmp_path, tables)
    with fake_snowflake_connector():
        aws_defs, aws_models, (remote,) = run_aws(tables, monkeypatch)
    event_id = local.event_id
    assert remote.event_id == event_id
    assert CountingModelApp.invocations > 0, "scoring must have gone through the SageMaker protocol"

    # Same models from the same data, every check green on both sides.
    for name in ("event_attendance_model", "interest_affinity_model"):
        assert aws_models[name]["version"] == local_models[name]["version"]
    assert local.checks and all(local.checks.values()), local.checks
    assert remote.checks == local.checks

    # Same funnel.
    for stage, keys in {
        "raw_candidates": ("extracted_rows", "unique_candidates", "quarantined_rows"),
        "filtered_candidates": ("eligible_candidates",),
        "scored_candidates": ("scored_candidates", "band_share_high", "band_share_medium", "band_share_low"),
        "candidates_table": ("customers", "items_written"),
    }.items():
        for key in keys:
            assert remote.metadata[stage][key] == local.metadata[stage][key], (stage, key)
    funnel = [r.data for r in local.metadata["filtered_candidates"]["funnel"].records]
    assert [r.data for r in remote.metadata["filtered_candidates"]["funnel"].records] == funnel
    assert funnel[-1]["remaining"] > 0

    # Same stored candidates (DynamoDB vs SQLite), scores equal to 1e-9.
    columns = ["customer_id", "channel", "score", "score_band", "status", "marketplace", "timezone"]
    with resolved(local_defs) as local_resources, resolved(aws_defs) as aws_resources:
        local_items = local_resources.candidate_store.event_items(PROGRAM, event_id, now=AS_OF).select(columns)
        aws_items = aws_resources.candidate_store.event_items(PROGRAM, event_id, now=AS_OF).select(columns)
        local_export = local_resources.exporter.read_event(PROGRAM, event_id, AS_OF.date())
        aws_export = aws_resources.exporter.read_event(PROGRAM, event_id, AS_OF.date())
        local_metrics = local_resources.metrics_sink.read()
    assert aws_items.height == local_items.height > 0
    joined = local_items.join(aws_items, on=["customer_id", "channel"], suffix="_aws")
    assert joined.height == local_items.height
    assert (joined["score"] - joined["score_aws"]).abs().max() < 1e-9
    assert (joined["score_band"] == joined["score_band_aws"]).all()

    # Same exported rows (S3 Parquet vs local Parquet), and a Glue partition pointing at them.
    assert aws_export.height == local_export.height == local_items.height
    assert sorted(aws_export["customer_id"]) == sorted(local_export["customer_id"])
    glue = boto3.client("glue", endpoint_url=aws_env, region_name=REGION)
    partition = glue.get_partition(
        DatabaseName=ENV["EVENTREACH_GLUE_DATABASE"],
        TableName="event_candidates",
        PartitionValues=[PROGRAM, event_id, AS_OF.date().isoformat()],
    )["Partition"]
    location = partition["StorageDescriptor"]["Location"]
    assert location.startswith(f"s3://{ENV['EVENTREACH_EXPORT_BUCKET']}/")
    assert f"event={event_id}" in location

    # Same batch metrics, in CloudWatch on aws.
    expected = local_metrics.filter(pl.col("name") == "EligibleCandidates")["value"].item()
    cloudwatch = boto3.client("cloudwatch", endpoint_url=aws_env, region_name=REGION)
    dimensions = [{"Name": "Program", "Value": PROGRAM}, {"Name": "Event", "Value": event_id}]
    data = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "eligible",
                "MetricStat": {
                    "Metric": {"Namespace": "EventReach", "MetricName": "EligibleCandidates", "Dimensions": dimensions},
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
        ],
        StartTime=datetime(2026, 11, 22),
        EndTime=datetime(2026, 11, 24),
    )["MetricDataResults"][0]["Values"]
    assert data == [expected]


def test_missing_setting_fails_with_its_name(aws_env: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("EVENTREACH_DYNAMODB_TABLE")
    with fake_snowflake_connector(), dg.instance_for_test() as instance:
        defs = build_definitions(deployment="aws", fixed_now=AS_OF.isoformat())
        instance.add_dynamic_partitions("events", ["evt-cloud-summit"])
        with pytest.raises(dg.DagsterInvalidConfigError, match='environment variable "EVENTREACH_DYNAMODB_TABLE"'):
            defs.resolve_job_def("weekly_batch").execute_in_process(instance=instance, partition_key="evt-cloud-summit")


def test_no_secret_reaches_run_metadata_or_logs(tmp_path: Path, tables, aws_env: str, monkeypatch):
    """Credentials live in the environment only: nothing a run records may contain them."""
    with fake_snowflake_connector():
        load_tables(
            SnowflakeResource(
                account="fake", user="fake", password="fake", database=ENV["SNOWFLAKE_DATABASE"], schema="PUBLIC",
                paramstyle="qmark",
            ),
            tables,
        )  # fmt: skip
        with dg.instance_for_test() as instance:
            defs = build_definitions(deployment="aws", fixed_now=AS_OF.isoformat())
            register_event_partitions(defs, instance)
            train_models(defs, instance)
            records = instance.get_run_records()
            text = " ".join(
                str(entry.dagster_event or "") + str(entry.user_message)
                for record in records
                for entry in instance.all_logs(record.dagster_run.run_id)
            )
    assert records and "holdout_auc" in text
    secrets = ("SNOWFLAKE_PASSWORD", "EVENTREACH_IN_APP_API_KEY", "EVENTREACH_LINK_SECRET")
    for secret in (*(ENV[name] for name in secrets), "testing"):  # "testing": the fake AWS keys
        assert secret not in text
