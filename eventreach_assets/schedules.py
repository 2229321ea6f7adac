"""Every schedule of the use case, in one place, crons from the program YAML; they only launch runs.

All run in `TIMEZONE` (the YAML's crons are UTC: "Weekly on Monday at 2 AM UTC"):
model training Mon 01:00, weekly batch Mon 02:00, export Mon 04:30, daily metrics and campaign
reports 23:59, the metrics freshness check 00:30. The invitations are not a UTC cron: each segment
goes out at its own local 10:00 (email) / 14:00 (in-app, the hour of the YAML's campaign
schedule), so the event-date sensor (sensors.py) launches them in waves once the batch is ready,
like the event-relative steps (reminders, attendance, survey).
"""

from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl

from eventreach_assets.domain.events import reportable_event_ids, upcoming_event_ids
from eventreach_assets.jobs import (
    campaign_report_job,
    daily_metrics_freshness_job,
    daily_metrics_job,
    export_job,
    model_training_job,
    profile_snapshot_job,
    weekly_batch_job,
)
from eventreach_assets.partitions import event_run_requests
from eventreach_assets.program.config import ProgramConfig, aws_cron_to_unix
from eventreach_assets.resources.program import ClockResource
from eventreach_assets.resources.warehouse import WarehouseResource

TIMEZONE = "UTC"  # the YAML's crons are UTC ("Weekly on Monday at 2 AM UTC")


def tick_of(context: dg.ScheduleEvaluationContext) -> str:
    return context.scheduled_execution_time.strftime("%Y-%m-%dT%H%M") if context.scheduled_execution_time else "adhoc"


def per_event_run_requests(
    context: dg.ScheduleEvaluationContext,
    warehouse: WarehouseResource,
    clock: ClockResource,
    stage: str,
    select: Callable[[pl.DataFrame, datetime], list[str]] = upcoming_event_ids,
) -> list[dg.RunRequest]:
    """One run per selected event (default: upcoming) that is registered as a partition; run keys
    make ticks idempotent."""
    return event_run_requests(context.instance, select(warehouse.events(), clock.now()), stage, tick_of(context))


def per_event_schedule(
    name: str,
    cron: str,
    job_name: str,
    stage: str,
    source: str,
    select: Callable[[pl.DataFrame, datetime], list[str]] = upcoming_event_ids,
) -> dg.ScheduleDefinition:
    """A schedule that launches the job once per upcoming event partition at each tick."""

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        execution_timezone=TIMEZONE,
        job_name=job_name,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{job_name} for every upcoming event ({source}).",
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource, clock: ClockResource
    ) -> list[dg.RunRequest] | dg.SkipReason:
        requests = per_event_run_requests(context, warehouse, clock, stage, select)
        return requests or dg.SkipReason("no event partitions to run")

    return _schedule


def snapshot_schedule(cron: str, source: str) -> dg.ScheduleDefinition:
    """The weekly batch when the program shares one profile snapshot: the tick takes the snapshot
    once; `profile_snapshot_sensor` then launches one weekly_batch run per upcoming event."""

    @dg.schedule(
        name="weekly_batch_schedule",
        cron_schedule=cron,
        execution_timezone=TIMEZONE,
        job=profile_snapshot_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"The week's profile snapshot, then weekly_batch for every upcoming event ({source}).",
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource, clock: ClockResource
    ) -> dg.RunRequest | dg.SkipReason:
        events = per_event_run_requests(context, warehouse, clock, "weekly-batch")
        if not events:
            return dg.SkipReason("no event partitions to run: no snapshot needed")
        event_ids = ",".join(str(request.partition_key) for request in events)
        return dg.RunRequest(
            run_key=f"profile-snapshot:{tick_of(context)}",
            tags={"eventreach/stage": "weekly-batch", "eventreach/events": event_ids},
        )

    return _schedule


def weekly_batch_schedule(program: ProgramConfig) -> dg.ScheduleDefinition:
    """Monday's batch as the program's `extraction` says: per event, or one snapshot first."""
    if program.extraction == "weekly_snapshot":
        return snapshot_schedule(program.batch_cron, program.batch_schedule)
    return per_event_schedule(
        "weekly_batch_schedule", program.batch_cron, weekly_batch_job.name, "weekly-batch", program.batch_schedule
    )


def daily_metrics_schedule(cron: str, source: str) -> dg.ScheduleDefinition:
    """The day's metrics at the YAML's time (23:59 UTC): that day's partition."""

    @dg.schedule(
        name="daily_metrics_schedule",
        cron_schedule=cron,
        execution_timezone=TIMEZONE,
        job=daily_metrics_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"daily_metrics for the day ({source}).",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        moment = context.scheduled_execution_time or datetime.now(UTC)
        day = moment.astimezone(ZoneInfo(TIMEZONE)).date().isoformat()
        return dg.RunRequest(run_key=f"daily-metrics:{day}", partition_key=day, tags={"eventreach/stage": "metrics"})

    return _schedule


def build_schedules(program: ProgramConfig) -> list[dg.ScheduleDefinition]:
    """The use case's weekly schedules, with crons taken from the program YAML."""
    return [
        dg.ScheduleDefinition(
            name="model_training_schedule",
            cron_schedule=program.model_training_cron,
            execution_timezone=TIMEZONE,
            job=model_training_job,
            default_status=dg.DefaultScheduleStatus.RUNNING,
        ),
        weekly_batch_schedule(program),
        per_event_schedule(
            "candidates_export_schedule", program.export_cron, export_job.name, "export", program.export_schedule
        ),
        daily_metrics_schedule(aws_cron_to_unix(program.metrics.schedule), program.metrics.schedule),
        per_event_schedule(
            "campaign_report_schedule",
            aws_cron_to_unix(program.metrics.schedule),
            campaign_report_job.name,
            "report",
            program.metrics.schedule,
            select=reportable_event_ids,
        ),
        dg.ScheduleDefinition(
            name="daily_metrics_freshness_schedule",
            cron_schedule="30 0 * * *",
            execution_timezone=TIMEZONE,
            job=daily_metrics_freshness_job,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="00:30: the check that yesterday's metrics are published.",
        ),
    ]
