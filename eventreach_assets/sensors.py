"""Sensors: they watch the world and launch runs; every decision lives in `domain/`.

- `events_catalog_sensor`: keeps the `events` partitions in sync with the warehouse's catalog
  and records cancellations and reschedules on the event's partition;
- `event_lifecycle_sensor`: launches each event's invitation waves (once the batch is ready, then
  at each segment's local send time), reminders, attendance tracking and survey when
  `domain.lifecycle` says they are due;
- one sensor per engagement feed (`registrations`, `tracking`, `survey`): hands new files to
  the feed's ingestion job, launching nothing when there is nothing new;
- `profile_snapshot_sensor` (program `extraction: weekly_snapshot`): once the week's profile
  snapshot is materialized, launches one weekly_batch run per upcoming event, which reads it;
- `run_failure_alert_sensor`: announces every failed run on the alert channel, gives the run's
  unattempted delivery reservations back to the next run (a hard-killed send could not) and tags
  the run with what it did.

Every run request carries a run key, so a tick that repeats (a daemon restart, a slow tick)
launches nothing twice, and the tags the UI filters on: event, stage, channel.
"""

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from eventreach_assets.assets.campaigns import (
    NEXT_DUE_AT,
    PLANNED_AT,
    PREVIOUS_START_TAG,
    batch_ready_at,
    latest_metadata,
)
from eventreach_assets.domain.campaign_kinds import CAMPAIGN_KINDS, Trigger, kinds_with
from eventreach_assets.domain.engagement_schemas import CANCELLED
from eventreach_assets.domain.events import normalize_events, upcoming_event_ids
from eventreach_assets.domain.lifecycle import STAGES, due_stages, lifecycle_schedule, stage_run_key
from eventreach_assets.jobs import FEED_JOBS, attendance_job, campaign_jobs, feed_jobs, weekly_batch_job
from eventreach_assets.partitions import event_run_requests, events_partitions, run_tags
from eventreach_assets.resources.alerts import AlertChannelResource, FailureAlert, first_line
from eventreach_assets.resources.feeds import EngagementFeedResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.warehouse import WarehouseResource

LIFECYCLE_JOBS = {stage.job_name for stage in STAGES.values()}
CATALOG_JOBS = {kind.job for kind in kinds_with(Trigger.CATALOG)}
FILES_PER_RUN = 200  # a backlog is ingested in runs of this many files, one run per tick


def utc_naive(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC).replace(tzinfo=None)


def catalog_state(events: pl.DataFrame, event_ids: list[str]) -> dict[str, str]:
    """`status@start@capacity` per known event: what the cursor remembers to notice a change."""
    rows = normalize_events(events).filter(pl.col("event_id").is_in(event_ids))
    return dict(
        rows.select(
            "event_id",
            pl.format(
                "{}@{}@{}", "status", pl.col("start_time_utc").dt.to_string("%Y-%m-%dT%H:%M"), pl.col("capacity")
            ),
        )
        .sort("event_id")
        .iter_rows()
    )


@dataclass(frozen=True)
class CatalogEntry:
    status: str
    start: str
    capacity: int | None  # None in a cursor written before capacity was remembered

    @classmethod
    def parse(cls, value: str) -> "CatalogEntry":
        status, start, *rest = value.split("@")
        return cls(status, start, int(rest[0]) if rest else None)


def change_requests(event_id: str, was: CatalogEntry, now: CatalogEntry) -> tuple[str | None, list[dg.RunRequest]]:
    """What a change in the catalog sends (domain/campaign_kinds.py, trigger `catalog`): a
    cancellation notice on each channel, an update for a new date, waitlist promotions for
    added seats. Run keys name the change, so a repeated tick launches nothing twice."""

    def request(asset: str, key: str, **tags: str) -> dg.RunRequest:
        kind = CAMPAIGN_KINDS[asset]
        return dg.RunRequest(
            run_key=f"{kind.stage}:{event_id}:{kind.channel}:{key}", job_name=kind.job, partition_key=event_id,
            tags={**run_tags(event_id, kind.stage, kind.channel), **tags},
        )  # fmt: skip

    if now.status == "cancelled" and was.status != "cancelled":
        return "cancelled: notices go out, nothing else", [
            request("cancellation_emails", "cancelled"), request("cancellation_pushes", "cancelled")
        ]  # fmt: skip
    if now.status != "scheduled":
        return None, []
    if now.start != was.start:
        update = request("event_update_emails", now.start, **{PREVIOUS_START_TAG: was.start})
        return f"rescheduled from {was.start} to {now.start}: updates go out", [update]
    if was.capacity is not None and now.capacity is not None and now.capacity > was.capacity:
        return f"capacity raised from {was.capacity} to {now.capacity}: waitlist promoted", [
            request("waitlist_confirmations", f"capacity-{now.capacity}")
        ]
    return None, []


@dg.sensor(
    name="events_catalog_sensor",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    jobs=[job for job in campaign_jobs if job.name in CATALOG_JOBS],
    description="Adds a partition for every upcoming scheduled event; on a cancellation, a reschedule or a capacity "
    "raise, records it and launches the notices (cancellation, update, waitlist confirmations).",
)
def events_catalog_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, clock: ClockResource
) -> dg.SensorResult | dg.SkipReason:
    events = warehouse.events()
    upcoming = upcoming_event_ids(events, clock.now())
    known = list(context.instance.get_dynamic_partitions(events_partitions.name))
    new_events = [event_id for event_id in upcoming if event_id not in known]
    previous: dict[str, str] = json.loads(context.cursor) if context.cursor and context.cursor[0] == "{" else {}
    state = catalog_state(events, known + new_events)
    observations: list[dg.AssetObservation] = []
    requests: list[dg.RunRequest] = []
    summary = [f"added partitions {', '.join(new_events)}"] if new_events else []
    for event_id, value in state.items():
        if event_id not in previous:
            continue
        was, now = CatalogEntry.parse(previous[event_id]), CatalogEntry.parse(value)
        change, launched = change_requests(event_id, was, now)
        if change is None:
            continue
        context.log.warning(f"event {event_id} {change}")
        summary.append(f"{event_id} {change}")
        requests.extend(launched)
        observations.append(
            dg.AssetObservation(
                asset_key="candidates_table",
                partition=event_id,
                metadata={
                    "event_status": now.status,
                    "start_time_utc": now.start,
                    "capacity": now.capacity,
                    "change": change,
                    "was": was.status,
                },
            )
        )
    if not new_events and not requests and previous == state:
        return dg.SkipReason(f"events catalog unchanged ({len(upcoming)} upcoming events)")
    if new_events:
        context.log.info(f"adding event partitions: {', '.join(new_events)}")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[events_partitions.build_add_request(new_events)] if new_events else [],
        asset_events=observations,
        cursor=json.dumps(state, sort_keys=True),
        # A tick that launches no run is shown as skipped; say what it did instead of "empty result".
        skip_reason=None if requests else "; ".join(summary) or "catalog state recorded",
    )


@dg.asset_sensor(
    asset_key=dg.AssetKey("profile_snapshot"),
    name="profile_snapshot_sensor",
    job=weekly_batch_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Once the week's profile snapshot is materialized, one weekly_batch run per upcoming event.",
)
def profile_snapshot_sensor(
    context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry, warehouse: WarehouseResource,
    clock: ClockResource,
) -> list[dg.RunRequest] | dg.SkipReason:  # fmt: skip
    upcoming = upcoming_event_ids(warehouse.events(), clock.now())
    requests = event_run_requests(context.instance, upcoming, "weekly-batch", asset_event.run_id)
    return requests or dg.SkipReason(f"snapshot of run {asset_event.run_id}: no upcoming event partition to run")


def next_due(instance: dg.DagsterInstance, asset_name: str, event_id: str, window_opened: datetime) -> datetime | None:
    """When a repeating stage runs next: the window's start, then whatever the last run in this
    window said (`next_due_at`: the next segment's local send time, or when to look for the
    attendance export again); None when the last run left nothing to do.

    "In this window" is judged by the run's own clock (`planned_at`), so a run before a
    reschedule, or a manual one days earlier, does not end the stage.
    """
    metadata = latest_metadata(instance, asset_name, event_id)
    planned_at = metadata.get(PLANNED_AT)
    if planned_at is None or datetime.fromisoformat(str(planned_at)) < window_opened:
        return window_opened
    due = metadata.get(NEXT_DUE_AT)
    return datetime.fromisoformat(str(due)) if due is not None else None


@dg.sensor(
    name="event_lifecycle_sensor",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    jobs=[job for job in [*campaign_jobs, attendance_job] if job.name in LIFECYCLE_JOBS],
    description="Invitation waves at each segment's local send time once the batch is ready, push reminder 1 day "
    "before, day-of email at 09:00 local, attendance after, survey 1 day after.",
)
def event_lifecycle_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, program: ProgramResource, clock: ClockResource
) -> dg.SensorResult | dg.SkipReason:
    now = clock.now()
    known = context.instance.get_dynamic_partitions(events_partitions.name)
    config = program.load()
    schedule = lifecycle_schedule(
        warehouse.events(), config.event_config.reminder_schedule, config.event_config.registration_deadline_days
    )
    requests: list[dg.RunRequest] = []
    for row in due_stages(schedule, now, known).iter_rows(named=True):
        stage = STAGES[row["stage"]]
        due_at = row["due_at"]
        if stage.after_batch:  # invitation waves open when the batch has stored the event's candidates
            ready = batch_ready_at(context.instance, row["event_id"])
            if ready is None:
                continue
            due_at = max(due_at, ready)
        if stage.repeats:
            due_at = next_due(context.instance, stage.asset_name, row["event_id"], due_at)
            if due_at is None or due_at > now:
                continue
        requests.append(
            dg.RunRequest(
                run_key=stage_run_key(row["event_id"], stage.name, row["start_time_utc"], due_at),
                job_name=stage.job_name,
                partition_key=row["event_id"],
                tags=run_tags(row["event_id"], stage.name, stage.channel),
            )
        )
    if not requests:
        return dg.SkipReason(f"nothing due at {now:%Y-%m-%d %H:%M} UTC for {len(known)} events")
    return dg.SensorResult(run_requests=requests, cursor=now.isoformat())


def build_feed_sensor(feed: str) -> dg.SensorDefinition:
    """A sensor that hands the feed's new files (after its cursor) to the feed's ingestion job."""
    job_name, asset_name = FEED_JOBS[feed]

    @dg.sensor(
        name=f"{feed}_feed_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job=feed_jobs[feed],
        description=f"Ingests new files of the {feed} feed ({job_name}); nothing new, nothing launched.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, engagement_feed: EngagementFeedResource
    ) -> dg.SensorResult | dg.SkipReason:
        files = engagement_feed.new_files(feed, after=context.cursor, limit=FILES_PER_RUN)
        if not files:
            return dg.SkipReason(f"no new {feed} files after {context.cursor or 'the start'}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{feed}:{files[-1]}",
                    run_config={"ops": {asset_name: {"config": {"files": files}}}},
                    tags={"eventreach/stage": "engagement", "eventreach/feed": feed},
                )
            ],
            cursor=files[-1],
        )

    return _sensor


feed_sensors = [build_feed_sensor(feed) for feed in FEED_JOBS]


def events_with_cancellations(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Events for which the run's registrations batch recorded cancellations (seats freed)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    events: set[str] = set()
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        per_event = materialization.metadata.get("per_event") if materialization else None
        for row in getattr(per_event, "records", None) or []:
            if row.data.get("outcome") == CANCELLED:
                events.add(str(row.data["event_id"]))
    return sorted(events)


WAITLIST = CAMPAIGN_KINDS["waitlist_confirmations"]


@dg.run_status_sensor(
    name="waitlist_promotion_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[feed_jobs["registrations"]],
    request_job=next(job for job in campaign_jobs if job.name == WAITLIST.job),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a registrations batch with cancellations: promotes the earliest waitlisted customers of each "
    "event whose seats were freed, and sends their confirmations.",
)
def waitlist_promotion_sensor(context: dg.RunStatusSensorContext) -> list[dg.RunRequest] | dg.SkipReason:
    run_id = context.dagster_run.run_id
    freed = events_with_cancellations(context.instance, run_id)
    requests = event_run_requests(context.instance, freed, WAITLIST.stage, run_id, WAITLIST.channel)
    return requests or dg.SkipReason(f"run {run_id} freed no seat")


def release_reservations(ledger: DeliveryLedgerResource, run_id: str, now: datetime) -> dict[str, str]:
    """Give back the delivery reservations a failed run left `pending` (a SIGKILL leaves its chunk so):
    the never-attempted ones go to the next run, the ones in the provider's hands become `in_doubt`.
    Returns the run tags saying what happened; a ledger error is reported there, never raised, so the
    alert still goes out (the lease frees the rows later)."""
    try:
        released, in_doubt = ledger.release_owner(run_id, f"run {run_id} failed", now)
    except Exception as error:
        return {"eventreach/reservations": f"release failed: {first_line(str(error)) or type(error).__name__}"}
    return {"eventreach/released": str(released), "eventreach/in_doubt": str(in_doubt)}


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    minimum_interval_seconds=5,
    description=(
        "Sends every failed run to the alert channel, releases its unattempted delivery reservations "
        "and tags the run `eventreach/alerted`, `eventreach/released`, `eventreach/in_doubt`."
    ),
)
def run_failure_alert_sensor(
    context: dg.RunFailureSensorContext, alerts: AlertChannelResource, ledger: DeliveryLedgerResource,
    clock: ClockResource,
) -> None:  # fmt: skip
    run = context.dagster_run
    latest = context.instance.get_run_by_id(run.run_id)
    if latest is not None and latest.tags.get("eventreach/alerted") == "yes":
        # A killed run can be reported failed twice (run monitoring and its code server): alert once.
        context.log.info(f"run {run.run_id} ({run.job_name}) was already alerted")
        return
    outcome = release_reservations(ledger, run.run_id, clock.now())
    record = context.instance.get_run_record_by_id(run.run_id)
    ended = record.end_time if record and record.end_time else time.time()
    alert = FailureAlert(
        run_id=run.run_id,
        job_name=run.job_name,
        partition=run.tags.get("dagster/partition"),
        stage=run.tags.get("eventreach/stage"),
        failed_at=utc_naive(ended),
        error=first_line(root_cause(context) or context.failure_event.message),
    )
    where = alerts.send(alert)
    context.instance.add_run_tags(run.run_id, {"eventreach/alerted": "yes", **outcome})
    context.log.info(f"alert for run {run.run_id} ({run.job_name}) sent to {where}; reservations: {outcome}")


def root_cause(context: dg.RunFailureSensorContext) -> str | None:
    """The first failed step's error (what broke), rather than the run's "steps failed" summary."""
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        if error is not None:
            return f"{event.step_key}: {error.message}"
    return None
