"""Schedules of the use case, from the program YAML; they only launch runs, no logic here."""

import dagster as dg

from eventreach_assets.domain.events import upcoming_event_ids
from eventreach_assets.jobs import export_job, model_training_job, weekly_batch_job
from eventreach_assets.partitions import events_partitions
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.program import ClockResource
from eventreach_assets.resources.warehouse import WarehouseResource

TIMEZONE = "UTC"  # the YAML's crons are UTC ("Weekly on Monday at 2 AM UTC")


def per_event_run_requests(
    context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource, clock: ClockResource, stage: str
) -> list[dg.RunRequest]:
    """One run per upcoming event that is registered as a partition; run keys make ticks idempotent."""
    known = set(context.instance.get_dynamic_partitions(events_partitions.name))
    tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H%M") if context.scheduled_execution_time else "adhoc"
    return [
        dg.RunRequest(
            run_key=f"{stage}:{event_id}:{tick}",
            partition_key=event_id,
            tags={"eventreach/event": event_id, "eventreach/stage": stage},
        )
        for event_id in upcoming_event_ids(warehouse.events(), clock.now())
        if event_id in known
    ]


def build_schedules(program: ProgramConfig) -> list[dg.ScheduleDefinition]:
    @dg.schedule(
        name="weekly_batch_schedule",
        cron_schedule=program.batch_cron,
        execution_timezone=TIMEZONE,
        job=weekly_batch_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Weekly batch for every upcoming event ({program.batch_schedule}).",
    )
    def weekly_batch_schedule(
        context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource, clock: ClockResource
    ) -> list[dg.RunRequest] | dg.SkipReason:
        requests = per_event_run_requests(context, warehouse, clock, "weekly-batch")
        return requests or dg.SkipReason("no upcoming event partitions")

    @dg.schedule(
        name="candidates_export_schedule",
        cron_schedule=program.export_cron,
        execution_timezone=TIMEZONE,
        job=export_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Parquet export for every upcoming event ({program.export_schedule}).",
    )
    def candidates_export_schedule(
        context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource, clock: ClockResource
    ) -> list[dg.RunRequest] | dg.SkipReason:
        requests = per_event_run_requests(context, warehouse, clock, "export")
        return requests or dg.SkipReason("no upcoming event partitions")

    model_training_schedule = dg.ScheduleDefinition(
        name="model_training_schedule",
        cron_schedule=program.model_training_cron,
        execution_timezone=TIMEZONE,
        job=model_training_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return [weekly_batch_schedule, candidates_export_schedule, model_training_schedule]
