"""The Dagster definitions: assets, checks, jobs, schedules and sensors, over the resources of the
deployment `EVENTREACH_DEPLOYMENT` names (built in deployments.py)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from eventreach_assets.assets import (
    campaigns,
    extraction,
    feedback,
    feeds,
    filtering,
    metrics,
    model_deployment,
    models,
    reporting,
    scoring,
    storage,
)
from eventreach_assets.checks import batch_checks, campaign_checks, deliverability_checks, report_checks
from eventreach_assets.deployments import deployment_program_path, resources_for
from eventreach_assets.jobs import (
    attendance_job,
    campaign_jobs,
    campaign_report_job,
    daily_metrics_freshness_job,
    daily_metrics_job,
    export_job,
    feed_jobs,
    model_training_job,
    profile_snapshot_job,
    weekly_batch_job,
)
from eventreach_assets.loaded_code import freeze_loaded_objects
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.program import load_checked_program
from eventreach_assets.schedules import build_schedules
from eventreach_assets.sensors import (
    event_lifecycle_sensor,
    events_catalog_sensor,
    feed_sensors,
    profile_snapshot_sensor,
    run_failure_alert_sensor,
    waitlist_promotion_sensor,
)

ASSETS = [  # besides the extraction assets, which the program's `extraction` setting picks
    filtering.filtered_candidates,
    models.model_training_set,
    *models.model_assets,
    model_deployment.model_endpoints,
    scoring.scored_candidates,
    storage.candidates_table,
    storage.candidates_export,
    metrics.batch_metrics,
    *campaigns.campaign_assets,
    *feeds.feed_assets,
    *feedback.feedback_assets,
    *reporting.reporting_assets,
]
ASSET_CHECKS = [
    *dg.load_asset_checks_from_modules([batch_checks]),
    *campaign_checks.campaign_checks,
    *report_checks.report_checks,
    *deliverability_checks.deliverability_checks,
]
JOBS = [
    weekly_batch_job,
    profile_snapshot_job,
    export_job,
    model_training_job,
    *campaign_jobs,
    attendance_job,
    *feed_jobs.values(),
    daily_metrics_job,
    campaign_report_job,
    daily_metrics_freshness_job,
    feedback.rearm_circuit_breaker,
]
SENSORS = [
    events_catalog_sensor,
    event_lifecycle_sensor,
    *feed_sensors,
    waitlist_promotion_sensor,
    run_failure_alert_sensor,
]


def assets_for(program: ProgramConfig) -> list[dg.AssetsDefinition]:
    """The asset graph the program asks for: how raw_candidates extracts (`extraction`), then the rest."""
    return [*extraction.extraction_assets(program.extraction), *ASSETS]


def sensors_for(program: ProgramConfig) -> list[dg.SensorDefinition]:
    """The sensors; with a weekly snapshot, the one that launches the events' runs after it."""
    return [*SENSORS, profile_snapshot_sensor] if program.extraction == "weekly_snapshot" else SENSORS


def build_definitions(
    home: Path | None = None,
    program_path: Path | None = None,
    deployment: str | None = None,
    fixed_now: str | None = None,
) -> dg.Definitions:
    """Definitions for one deployment (resources from deployments.py: `resources_for`); tests call
    this with a temporary home and a pinned clock."""
    resources = resources_for(deployment, home=home, program=program_path, fixed_now=fixed_now)
    program = load_checked_program(deployment_program_path(program_path))
    return dg.Definitions(
        assets=assets_for(program),
        asset_checks=ASSET_CHECKS,
        jobs=JOBS,
        schedules=build_schedules(program),
        sensors=sensors_for(program),
        resources=resources,
    )


defs = build_definitions()
freeze_loaded_objects()  # loaded_code.py: the collector skips what lives as long as the process
