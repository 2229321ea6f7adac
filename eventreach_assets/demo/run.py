"""The local demo: the weekly batch for the sample events, through the real Dagster definitions.

Partitions are registered by evaluating the real catalog sensor, models and batches run as
the real jobs on the instance in `DAGSTER_HOME`, so `make dev` shows every materialization,
check result and partition afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from eventreach_assets.assets.campaigns import NEXT_DUE_AT
from eventreach_assets.definitions import build_definitions
from eventreach_assets.domain.campaign_kinds import Trigger, kinds_with
from eventreach_assets.jobs import profile_snapshot_job
from eventreach_assets.partitions import events_partitions

# The demo prints its own summary; Dagster's step-by-step console log stays in the instance (UI).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

FUNNEL_STAGES = ("raw_candidates", "filtered_candidates", "scored_candidates", "candidates_table", "candidates_export")


@dataclass
class EventReport:
    event_id: str
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # asset name -> metadata values
    checks: dict[str, bool] = field(default_factory=dict)  # check name -> passed
    seconds: dict[str, float] = field(default_factory=dict)


def register_event_partitions(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    """Evaluate the catalog sensor once and apply its partition requests, as the daemon would."""
    sensor = defs.resolve_sensor_def("events_catalog_sensor")
    with dg.build_sensor_context(instance=instance, resources=defs.resources, sensor_name=sensor.name) as context:
        result = sensor(context)
    added: list[str] = []
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            added.extend(request.partition_keys)
    return added


def _values(metadata: dict[str, dg.MetadataValue]) -> dict[str, Any]:
    return {key: value.value for key, value in metadata.items()}


def collect_report(event_id: str, *results: dg.ExecuteInProcessResult) -> EventReport:
    report = EventReport(event_id)
    for result in results:
        for event in result.get_asset_materialization_events():
            materialization = event.materialization
            report.metadata[materialization.asset_key.to_user_string()] = _values(materialization.metadata)
        for evaluation in result.get_asset_check_evaluations():
            report.checks[f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"] = evaluation.passed
    return report


def train_models(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, dict[str, Any]]:
    """Run the `train_models` job; returns each model asset's metadata."""
    training = defs.resolve_job_def("train_models").execute_in_process(
        instance=instance, raise_on_error=True, run_config=QUIET
    )
    return {
        event.materialization.asset_key.to_user_string(): _values(event.materialization.metadata)
        for event in training.get_asset_materialization_events()
    }


def run_event_batches(
    defs: dg.Definitions, instance: dg.DagsterInstance, limit: int | None = None
) -> list[EventReport]:
    """Run `weekly_batch` then `export_candidates` for the registered events (the first `limit`),
    after the week's profile snapshot when the program shares one (`extraction: weekly_snapshot`)."""
    reports = []
    if defs.resources["program"].load().extraction == "weekly_snapshot":
        defs.resolve_job_def(profile_snapshot_job.name).execute_in_process(
            instance=instance, tags={"eventreach/stage": "weekly-batch"}, run_config=QUIET
        )
    for event_id in instance.get_dynamic_partitions(events_partitions.name)[:limit]:
        tags = {"eventreach/event": event_id}
        batch = defs.resolve_job_def("weekly_batch").execute_in_process(
            instance=instance,
            partition_key=event_id,
            tags={**tags, "eventreach/stage": "weekly-batch"},
            run_config=QUIET,
        )
        export = defs.resolve_job_def("export_candidates").execute_in_process(
            instance=instance, partition_key=event_id, tags={**tags, "eventreach/stage": "export"}, run_config=QUIET
        )
        reports.append(collect_report(event_id, batch, export))
    return reports


CAMPAIGN_JOBS = tuple(kind.job for kind in kinds_with(Trigger.WAVES))  # Monday's invitations, in waves
MAX_WAVES = 48  # a campaign has one wave per distinct local send time: a handful, bounded anyway
SIMULATED_TAG = {"eventreach/clock": "simulated"}


@dataclass
class Wave:
    """One run of a campaign job at its (simulated) moment."""

    at: datetime
    result: dg.ExecuteInProcessResult

    @property
    def metadata(self) -> dict[str, Any]:
        events = self.result.get_asset_materialization_events()
        return _values(events[0].materialization.metadata) if events else {}


def run_waves(
    home: Path, instance: dg.DagsterInstance, event_id: str, job: str, start: datetime, until: datetime | None = None
) -> list[Wave]:
    """Run a campaign job as the event-date sensor launches it: at `start`, then at each
    `next_due_at` the last run reported (the next segment's local send time), on a simulated
    clock, until nothing is left to wait for (or `until`)."""
    waves: list[Wave] = []
    now = start
    for _ in range(MAX_WAVES):
        defs = build_definitions(home=home, fixed_now=now.isoformat())
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=event_id, run_config=QUIET, raise_on_error=False,
            tags={"eventreach/event": event_id, **SIMULATED_TAG},
        )  # fmt: skip
        waves.append(Wave(now, result))
        due = waves[-1].metadata.get(NEXT_DUE_AT)
        if not result.success or due is None:
            break
        now = max(datetime.fromisoformat(str(due)), now + timedelta(minutes=1))
        if until is not None and now > until:
            break
    return waves


def run_campaigns(home: Path, instance: dg.DagsterInstance, event_id: str, start: datetime) -> dict[str, list[Wave]]:
    """Monday's invitations for one event: every email wave, then every in-app wave."""
    return {job: run_waves(home, instance, event_id, job, start) for job in CAMPAIGN_JOBS}


def run_weekly_batch(
    home: Path, instance: dg.DagsterInstance, fixed_now: str | None = None, limit: int | None = None
) -> tuple[list[EventReport], dict[str, Any]]:
    """The local demo: register partitions, train the models, then batch + export per event."""
    defs = build_definitions(home=home, fixed_now=fixed_now)
    register_event_partitions(defs, instance)
    models = train_models(defs, instance)
    return run_event_batches(defs, instance, limit), models


def funnel_frame(report: EventReport) -> pl.DataFrame:
    """The funnel of one event as printed by the demo: stage, rows, % of unique candidates."""
    raw = report.metadata.get("raw_candidates", {})
    filtered = report.metadata.get("filtered_candidates", {})
    unique = int(raw.get("unique_candidates", 0))
    rows: list[tuple[str, int]] = [
        ("extracted rows", int(raw.get("extracted_rows", 0))),
        ("quarantined rows (bad + superseded duplicates)", int(raw.get("quarantined_rows", 0))),
        ("unique candidates", unique),
    ]
    funnel = filtered.get("funnel")
    if funnel is not None:
        for record in funnel.records:
            if record.data["filter_id"] != "input":
                rows.append((f"  removed by {record.data['filter_id']}", -int(record.data["removed"])))
    rows += [
        ("eligible", int(filtered.get("eligible_candidates", 0))),
        ("scored", int(report.metadata.get("scored_candidates", {}).get("scored_candidates", 0))),
        (
            "stored items (customers x channels)",
            int(report.metadata.get("candidates_table", {}).get("items_written", 0)),
        ),
        ("exported rows", int(report.metadata.get("candidates_export", {}).get("rows", 0))),
    ]
    return pl.DataFrame({"stage": [r[0] for r in rows], "count": [r[1] for r in rows]}).with_columns(
        pct_of_unique=(pl.col("count").abs() * 100.0 / max(unique, 1)).round(1)
    )
