"""Schedules of the use case, from the program YAML; they only launch runs, no logic here."""

import dagster as dg

from eventreach_assets.domain.events import upcoming_event_ids
from eventreach_assets.jobs import export_job, model_training_job, weekly_batch_job
from eventreach_assets.partitions import events_partitions
from eventreach_assets.program.config import ProgramConfig, aws_cron_to_unix
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


def per_event_schedule(name: str, cron: str, job_name: str, stage: str, source: str) -> dg.ScheduleDefinition:
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
        requests = per_event_run_requests(context, warehouse, clock, stage)
        return requests or dg.SkipReason("no upcoming event partitions")

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
        per_event_schedule(
            "weekly_batch_schedule", program.batch_cron, weekly_batch_job.name, "weekly-batch", program.batch_schedule
        ),
        per_event_schedule(
            "candidates_export_schedule", program.export_cron, export_job.name, "export", program.export_schedule
        ),
        per_event_schedule(
            "email_campaign_schedule",
            aws_cron_to_unix(program.campaigns.email.schedule),
            "email_campaign",
            "email-campaign",
            program.campaigns.email.schedule,
        ),
        per_event_schedule(
            "in_app_campaign_schedule",
            aws_cron_to_unix(program.campaigns.in_app.schedule),
            "in_app_campaign",
            "in-app-campaign",
            program.campaigns.in_app.schedule,
        ),
    ]
