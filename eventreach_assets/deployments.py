"""Each deployment's resources: the one module that builds them.

`EVENTREACH_DEPLOYMENT=local` (the default) runs everything on this machine under
`EVENTREACH_HOME` (default `./.eventreach`); `aws` runs on Snowflake, DynamoDB, SageMaker, S3 +
Glue and CloudWatch. The Dagster definitions, the Serving API and the demo all ask
`resources_for` here, so they read and write the same stores; asset bodies never know which
deployment runs them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg

from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, ProgramConfig
from eventreach_assets.resources.alerts import LocalAlertLog
from eventreach_assets.resources.campaign_services import CampaignServices
from eventreach_assets.resources.candidate_store import SqliteCandidateStore
from eventreach_assets.resources.channels import LocalOutboxEmail, LocalOutboxInApp, LocalOutboxPush
from eventreach_assets.resources.decision_log import LocalDecisionLog
from eventreach_assets.resources.engagement_store import SqliteEngagementStore
from eventreach_assets.resources.export import LocalParquetExport
from eventreach_assets.resources.feeds import LocalFolderFeed
from eventreach_assets.resources.ledger import SqliteDeliveryLedger
from eventreach_assets.resources.link_signing import EnvLinkSecret, LocalLinkSecret
from eventreach_assets.resources.metrics_sink import LocalMetricsSink
from eventreach_assets.resources.model_deployment import InProcessDeployment
from eventreach_assets.resources.model_registry import LocalModelRegistry
from eventreach_assets.resources.parquet_io import PolarsParquetIOManager
from eventreach_assets.resources.program import ClockResource, ProgramResource, load_checked_program
from eventreach_assets.resources.scoring import InProcessScoring
from eventreach_assets.resources.sqlite import (
    copy_tables_to_new_file,
    drop_tables,
    page_size_of,
    repack,
    tables_in,
)
from eventreach_assets.resources.warehouse import DuckDBWarehouse

_LOG = logging.getLogger(__name__)

DEPLOYMENTS = ("local", "aws")
DEPLOYMENT_ENV = "EVENTREACH_DEPLOYMENT"

# Settings of the aws deployment that have defaults (required ones are `dg.EnvVar`s below).
AWS_DEFAULTS = {
    "EVENTREACH_STATE_PREFIX": "eventreach",
    "EVENTREACH_EXPORT_PREFIX": "eventreach/candidates",
    "EVENTREACH_GLUE_TABLE": "event_candidates",
    "EVENTREACH_METRICS_NAMESPACE": "EventReach",
    "EVENTREACH_SAGEMAKER_INSTANCE_TYPE": "ml.m5.large",
}


def eventreach_home() -> Path:
    return Path(os.environ.get("EVENTREACH_HOME", ".eventreach")).resolve()


def deployment_name(deployment: str | None = None) -> str:
    """`deployment`, else `EVENTREACH_DEPLOYMENT`, else local; anything else is refused by name."""
    deployment = deployment or os.environ.get(DEPLOYMENT_ENV, "local")
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"{DEPLOYMENT_ENV}={deployment!r} is not one of {DEPLOYMENTS}")
    return deployment


def deployment_program_path(path: Path | None = None) -> Path:
    """`path`, else `EVENTREACH_PROGRAM`, else the packaged event-invitations program."""
    return path or Path(os.environ.get("EVENTREACH_PROGRAM", DEFAULT_PROGRAM_PATH))


# The local deployment's SQLite files: the candidate store (its weekly bulk writes, large pages)
# apart from the campaign's small commits (the delivery ledger and the engagement store).
CANDIDATES_SQLITE = "candidates.sqlite"
CAMPAIGN_SQLITE = "campaign.sqlite"


def split_shared_sqlite(home: Path) -> None:
    """Bring a data dir of the earlier layout to today's, once: until 2026-12-04 the candidate store,
    the ledger and the engagement store shared `candidates.sqlite` (4 KiB pages).

    The ledger's and the engagement store's tables are copied into a new `campaign.sqlite` (whole
    or not at all), then dropped from `candidates.sqlite`, which is repacked to the store's page
    size. Each step is taken again after a crash (`campaign.sqlite` exists: only the drop and the
    repack are left). The repack needs the file closed by every other process; while one has it
    open or the repack fails (a full disk), the store keeps its pages (slower, not wrong), a
    warning says so and the next start tries again. Under a lock file, so processes starting
    together (webserver, daemon, code server) split it once. Run it with the deployment stopped:
    a process still on the earlier layout would write the ledger into the file this one copies
    from."""
    candidates, campaign = home / CANDIDATES_SQLITE, home / CAMPAIGN_SQLITE
    page_size = SqliteCandidateStore.file_page_size
    if page_size_of(candidates) in (None, page_size):  # a new data dir, or split already: one read
        return
    with open(home / ".sqlite-layout.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if page_size_of(candidates) in (None, page_size):
            return
        moved = tables_in(candidates, SqliteDeliveryLedger.declared_tables() | SqliteEngagementStore.declared_tables())
        if moved:
            if not campaign.exists():  # else copied before a crash: only the drop is left
                copy_tables_to_new_file(candidates, campaign, moved)
                _LOG.info("copied %s from %s into %s", ", ".join(moved), candidates, campaign)
            drop_tables(candidates, moved)
        kept = f"{candidates} keeps its {page_size_of(candidates)}-byte pages"
        try:
            repacked = repack(candidates, page_size)
        except sqlite3.Error as error:  # a faster store is not worth a deployment that cannot start
            _LOG.warning("%s: repacking it failed (%s)", kept, error)
            return
        if repacked:
            _LOG.info("repacked %s with %s-byte pages", candidates, page_size)
        else:
            _LOG.warning(
                "%s (slower weekly writes) while another process has it open; "
                "the next start with every process stopped repacks it",
                kept,
            )


def local_resources(home: Path, program_path: Path, fixed_now: str | None = None) -> dict[str, Any]:
    """Every resource of the local deployment, all state under one data dir (a dir of the earlier
    file layout brought to today's first: `split_shared_sqlite`)."""
    split_shared_sqlite(home)
    registry = LocalModelRegistry(base_dir=str(home / "models"))
    return {
        "program": ProgramResource(path=str(program_path)),
        "clock": ClockResource(fixed_now=fixed_now),
        "warehouse": DuckDBWarehouse(path=str(home / "warehouse.duckdb")),
        "decision_log": LocalDecisionLog(base_dir=str(home / "decisions")),
        "io_manager": PolarsParquetIOManager(base_dir=str(home / "assets")),
        "model_registry": registry,
        "scoring_service": InProcessScoring(registry=registry),
        "model_deployment": InProcessDeployment(registry=registry),
        "candidate_store": SqliteCandidateStore(path=str(home / CANDIDATES_SQLITE)),
        "exporter": LocalParquetExport(base_dir=str(home / "export")),
        "metrics_sink": LocalMetricsSink(base_dir=str(home / "metrics")),
        "ledger": SqliteDeliveryLedger(path=str(home / CAMPAIGN_SQLITE)),
        "email_channel": LocalOutboxEmail(outbox_dir=str(home / "outbox" / "email"), **channel_limits("EMAIL")),
        "push_channel": LocalOutboxPush(outbox_dir=str(home / "outbox" / "push"), **channel_limits("PUSH")),
        "in_app_channel": LocalOutboxInApp(outbox_dir=str(home / "outbox" / "in-app"), **channel_limits("IN_APP")),
        "link_signing": LocalLinkSecret(path=str(home / "link_secret")),
        "engagement": SqliteEngagementStore(path=str(home / CAMPAIGN_SQLITE)),
        "engagement_feed": LocalFolderFeed(base_dir=str(home / "feeds")),
        "alerts": LocalAlertLog(path=str(home / "alerts.jsonl")),
    }


def _aws_setting(name: str) -> str:
    return os.environ.get(name, AWS_DEFAULTS[name])


def channel_limits(channel: str, rate_env: str | None = None) -> dict[str, Any]:
    """A channel's `concurrency` from `EVENTREACH_<channel>_CONCURRENCY` and its `max_messages_per_second`
    from `rate_env`, each only when set (else the channel's own default: docs/campaign.md)."""
    limits: dict[str, Any] = {}
    if os.environ.get(f"EVENTREACH_{channel}_CONCURRENCY"):
        limits["concurrency"] = int(os.environ[f"EVENTREACH_{channel}_CONCURRENCY"])
    if rate_env and os.environ.get(rate_env):
        limits["max_messages_per_second"] = float(os.environ[rate_env])
    return limits


def aws_campaign_resources(program: ProgramConfig, region: dg.EnvVar, endpoint_url: str | None) -> dict[str, Any]:
    """Channel services and the delivery ledger of the aws deployment.

    Email goes through SES v2 unless `EVENTREACH_EMAIL_PROVIDER=smtp` (any ESP's SMTP relay).
    Sends in flight and rates: `channel_limits` (SES paces to the account's own rate unless capped).
    """
    from eventreach_assets.resources.channels import SesEmail, SmtpEmail, SnsPush, WebhookInApp
    from eventreach_assets.resources.engagement_store import DynamoDBEngagementStore
    from eventreach_assets.resources.ledger import DynamoDBDeliveryLedger

    if os.environ.get("EVENTREACH_EMAIL_PROVIDER", "ses") == "smtp":
        email_channel: Any = SmtpEmail(
            host=dg.EnvVar("EVENTREACH_SMTP_HOST"),
            port=int(os.environ.get("EVENTREACH_SMTP_PORT", "587")),
            username=dg.EnvVar("EVENTREACH_SMTP_USERNAME"),
            password=dg.EnvVar("EVENTREACH_SMTP_PASSWORD"),
            sender=program.campaigns.sender,
            **channel_limits("EMAIL", "EVENTREACH_SMTP_MAX_RATE"),
        )
    else:
        email_channel = SesEmail(
            region_name=region,
            endpoint_url=endpoint_url,
            configuration_set=os.environ.get("EVENTREACH_SES_CONFIGURATION_SET"),
            sender=program.campaigns.sender,
            **channel_limits("EMAIL", "EVENTREACH_SES_MAX_RATE"),
        )
    return {
        "ledger": DynamoDBDeliveryLedger(
            table_name=dg.EnvVar("EVENTREACH_DYNAMODB_LEDGER_TABLE"), region_name=region, endpoint_url=endpoint_url
        ),
        "email_channel": email_channel,
        "push_channel": SnsPush(
            region_name=region,
            endpoint_url=endpoint_url,
            topic_arn=os.environ.get("EVENTREACH_PUSH_TOPIC_ARN"),
            **channel_limits("PUSH", "EVENTREACH_PUSH_MAX_RATE"),
        ),
        "in_app_channel": WebhookInApp(
            url=dg.EnvVar("EVENTREACH_IN_APP_WEBHOOK_URL"),
            api_key=dg.EnvVar("EVENTREACH_IN_APP_API_KEY"),
            **channel_limits("IN_APP", "EVENTREACH_IN_APP_MAX_RATE"),
        ),
        "link_signing": EnvLinkSecret(secret=dg.EnvVar("EVENTREACH_LINK_SECRET")),
        "engagement": DynamoDBEngagementStore(
            table_name=dg.EnvVar("EVENTREACH_DYNAMODB_ENGAGEMENT_TABLE"), region_name=region, endpoint_url=endpoint_url
        ),
        "alerts": alert_channel(region, endpoint_url),
    }


def alert_channel(region: dg.EnvVar, endpoint_url: str | None) -> Any:
    """SNS when `EVENTREACH_ALERT_TOPIC_ARN` is set, else a chat webhook when
    `EVENTREACH_ALERT_WEBHOOK_URL` is, else the daemon's log."""
    from eventreach_assets.resources.alerts import LoggedAlert, SnsAlert, WebhookAlert

    if os.environ.get("EVENTREACH_ALERT_TOPIC_ARN"):
        topic = dg.EnvVar("EVENTREACH_ALERT_TOPIC_ARN")
        return SnsAlert(topic_arn=topic, region_name=region, endpoint_url=endpoint_url)
    if os.environ.get("EVENTREACH_ALERT_WEBHOOK_URL"):
        return WebhookAlert(url=dg.EnvVar("EVENTREACH_ALERT_WEBHOOK_URL"))
    return LoggedAlert()


def aws_model_resources(
    program: ProgramConfig, registry: Any, region: dg.EnvVar, endpoint_url: str | None
) -> dict[str, Any]:
    """SageMaker scoring and model deployment of the aws deployment, one endpoint per program model."""
    from eventreach_assets.resources.model_deployment import SageMakerDeployment
    from eventreach_assets.resources.scoring import SageMakerScoring, endpoints_from_program

    endpoints = endpoints_from_program(program)
    return {
        "scoring_service": SageMakerScoring(
            registry=registry,
            endpoints=endpoints,
            region_name=region,
            endpoint_url=os.environ.get("EVENTREACH_SAGEMAKER_ENDPOINT_URL"),
        ),
        "model_deployment": SageMakerDeployment(
            registry=registry,
            endpoints=endpoints,
            role_arn=dg.EnvVar("EVENTREACH_SAGEMAKER_ROLE_ARN"),
            image_uri=dg.EnvVar("EVENTREACH_SAGEMAKER_IMAGE_URI"),
            instance_type=_aws_setting("EVENTREACH_SAGEMAKER_INSTANCE_TYPE"),
            region_name=region,
            endpoint_url=endpoint_url,
        ),
    }


def aws_resources(program_path: Path, fixed_now: str | None = None) -> dict[str, Any]:
    """The production deployment: Snowflake, DynamoDB, SageMaker, S3 + Glue, CloudWatch.

    Every required setting is a `dg.EnvVar`, so a missing one fails at resource start-up with
    its name; credentials come from the AWS / Snowflake environment, never from this file.
    `EVENTREACH_AWS_ENDPOINT_URL` and `EVENTREACH_SAGEMAKER_ENDPOINT_URL` exist only to point
    the clients at loopback stand-ins (moto, the model server) in tests.
    """
    # Imported here: dagster-snowflake pulls in Snowpark (seconds), which local runs never need.
    from dagster_aws.s3 import S3Resource

    from eventreach_assets.resources.candidate_store import DynamoDBCandidateStore
    from eventreach_assets.resources.decision_log import S3DecisionLog
    from eventreach_assets.resources.export import S3GlueExport
    from eventreach_assets.resources.feeds import S3Feed
    from eventreach_assets.resources.metrics_sink import CloudWatchMetricsSink
    from eventreach_assets.resources.model_registry import S3ModelRegistry
    from eventreach_assets.resources.parquet_io import S3PolarsParquetIOManager
    from eventreach_assets.resources.warehouse import SnowflakeWarehouse, snowflake_resource_from_env

    region = dg.EnvVar("AWS_REGION")
    endpoint_url = os.environ.get("EVENTREACH_AWS_ENDPOINT_URL")
    s3 = S3Resource(region_name=region, endpoint_url=endpoint_url)
    state_bucket, prefix = dg.EnvVar("EVENTREACH_STATE_BUCKET"), _aws_setting("EVENTREACH_STATE_PREFIX")
    registry = S3ModelRegistry(s3=s3, bucket=state_bucket, prefix=f"{prefix}/models")
    program = load_checked_program(program_path)
    return {
        "program": ProgramResource(path=str(program_path)),
        "clock": ClockResource(fixed_now=fixed_now),
        "warehouse": SnowflakeWarehouse(snowflake=snowflake_resource_from_env()),
        "decision_log": S3DecisionLog(s3=s3, bucket=state_bucket, prefix=f"{prefix}/decisions"),
        "io_manager": S3PolarsParquetIOManager(s3=s3, bucket=state_bucket, prefix=f"{prefix}/assets"),
        "model_registry": registry,
        **aws_model_resources(program, registry, region, endpoint_url),
        "candidate_store": DynamoDBCandidateStore(
            table_name=dg.EnvVar("EVENTREACH_DYNAMODB_TABLE"),
            score_cache_table_name=dg.EnvVar("EVENTREACH_DYNAMODB_CACHE_TABLE"),
            region_name=region,
            endpoint_url=endpoint_url,
        ),
        "exporter": S3GlueExport(
            s3=s3,
            bucket=dg.EnvVar("EVENTREACH_EXPORT_BUCKET"),
            prefix=_aws_setting("EVENTREACH_EXPORT_PREFIX"),
            glue_database=dg.EnvVar("EVENTREACH_GLUE_DATABASE"),
            glue_table=_aws_setting("EVENTREACH_GLUE_TABLE"),
            region_name=region,
            endpoint_url=endpoint_url,
        ),
        **aws_campaign_resources(program, region, endpoint_url),
        "engagement_feed": S3Feed(s3=s3, bucket=state_bucket, prefix=f"{prefix}/feeds"),
        "metrics_sink": CloudWatchMetricsSink(
            namespace=_aws_setting("EVENTREACH_METRICS_NAMESPACE"), region_name=region, endpoint_url=endpoint_url
        ),
    }


def campaign_services(resources: dict[str, Any]) -> CampaignServices:
    """The campaign assets' shared services, built from the deployment's own resources."""
    return CampaignServices(**{name: resources[name] for name in CampaignServices.model_fields})


def resources_for(
    deployment: str | None = None,
    *,
    home: Path | None = None,
    program: Path | None = None,
    fixed_now: str | None = None,
) -> dict[str, Any]:
    """The resources of `deployment` (default: `EVENTREACH_DEPLOYMENT`, else local), the campaign
    services included; the program (default `EVENTREACH_PROGRAM`) is loaded and checked first, so
    a bad one fails here. `home` is the local data dir (default `EVENTREACH_HOME`); `fixed_now`
    pins the clock (default `EVENTREACH_NOW`, else the wall clock)."""
    deployment = deployment_name(deployment)
    path = deployment_program_path(program)
    load_checked_program(path)
    fixed_now = fixed_now or os.environ.get("EVENTREACH_NOW")
    if deployment == "aws":
        resources = aws_resources(path, fixed_now)
    else:
        resources = local_resources(home or eventreach_home(), path, fixed_now)
    resources["services"] = campaign_services(resources)
    return resources
