"""Play one event's whole lifecycle on a simulated clock, through the real schedules and sensors.

Local deployment only. Every tick moves the clock (`EVENTREACH_NOW` semantics: the
deployment's `ClockResource`), evaluates each schedule whose cron fired since the last tick and
every sensor against the real Dagster instance, and launches what they ask for as real runs
(run keys deduplicated per schedule/sensor, as the daemon does). Between ticks the SIMULATED
engagement (`demo/simulator.py`) plays the customers and the event platform: it reads what the
ledger says was sent and drops opens, clicks, registrations, attendance and survey answers
into the feeds, which the feed sensors pick up on the next tick. Nothing here calls an asset
function directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from dagster._core.execution.resources_init import get_transitive_required_resource_keys
from dagster._utils.schedules import cron_string_iterator  # the daemon's own cron arithmetic

from eventreach_assets.definitions import build_definitions
from eventreach_assets.demo import simulator
from eventreach_assets.demo.run import QUIET
from eventreach_assets.deployments import resources_for
from eventreach_assets.domain import funnel as funnel_domain
from eventreach_assets.ingestion import registered_customers
from eventreach_assets.partitions import events_partitions

# React to run events, not to the clock (the daemon evaluates them on run status changes).
SKIPPED_SENSORS = {"run_failure_alert_sensor", "waitlist_promotion_sensor"}


@dataclass
class LaunchedRun:
    """One run the schedules or sensors asked for, as the demo's timeline prints it."""

    at: datetime
    origin: str  # schedule or sensor name
    job_name: str
    partition: str | None
    success: bool
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class TickState:
    """What the daemon would remember between ticks: cursors and the run keys it launched."""

    cursors: dict[str, str | None] = field(default_factory=dict)
    run_keys: set[tuple[str, str]] = field(default_factory=set)


def fire_times(cron: str, timezone: str, after: datetime, until: datetime) -> Iterator[datetime]:
    """The cron's fire times in (after, until], naive UTC."""
    for moment in cron_string_iterator(after.replace(tzinfo=UTC).timestamp(), cron, timezone):
        fired = moment.astimezone(UTC).replace(tzinfo=None)
        if fired > until:
            return
        if fired > after:
            yield fired


def required_resources(defs: dg.Definitions, required: set[str]) -> dict[str, Any]:
    """The resources a sensor or schedule uses (and theirs), as the code server builds them per tick: not all."""
    top_level = defs.get_repository_def().get_top_level_resources()
    keys = get_transitive_required_resource_keys(required, top_level)
    return {key: resource for key, resource in top_level.items() if key in keys}


def _merge(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    return {**base, **(extra or {})}


SUMMARY_KEYS = (
    "sent", "planned", "accepted", "waitlisted", "attended", "not_yet_due", "waiting_for_local_send_time",
    "items_written", "rows", "delivered", "bounced", "complained", "suppressed_addresses", "reason",
)  # fmt: skip


def summarize(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The few numbers of a run worth a line in the timeline (no customer data)."""
    summary: dict[str, Any] = {}
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        for key in SUMMARY_KEYS:
            if key in metadata and not isinstance(metadata[key].value, dict):
                summary[key] = metadata[key].value
    return summary


class LifecyclePlayer:
    """Runs ticks of the simulated clock against one Dagster instance and local data dir."""

    def __init__(
        self,
        home: Path,
        instance: dg.DagsterInstance,
        clock_start: datetime,
        event_id: str,
        on_tick: Callable[[datetime, dg.Definitions], None] | None = None,
        on_run: Callable[[LaunchedRun], None] | None = None,
    ) -> None:
        self.home = home
        self.instance = instance
        self.now = clock_start
        self.event_id = event_id
        self.on_tick = on_tick
        self.on_run = on_run
        self.state = TickState()
        self.timeline: list[LaunchedRun] = []

    def definitions(self, now: datetime) -> dg.Definitions:
        return build_definitions(home=self.home, deployment="local", fixed_now=now.isoformat())

    def advance(self, until: datetime, step: timedelta) -> None:
        """Tick from the current time to `until` in `step`s."""
        while self.now < until:
            previous, self.now = self.now, min(self.now + step, until)
            self.tick(previous, self.now)

    def tick(self, previous: datetime, now: datetime) -> None:
        # Time partitions (the daily metrics) exist up to the simulated "now", not the wall clock's.
        with dg.partition_loading_context(effective_dt=now.replace(tzinfo=UTC), dynamic_partitions_store=self.instance):
            self._tick(previous, now)

    def _tick(self, previous: datetime, now: datetime) -> None:
        defs = self.definitions(now)
        if self.on_tick is not None:  # the simulated world acts first: what happened until now
            self.on_tick(now, defs)
        # Sensors first: the daemon ticks them every few minutes, so by a schedule's time the
        # catalog sensor has long registered the partitions.
        for sensor in defs.sensors or []:
            if sensor.name in SKIPPED_SENSORS:
                continue
            sensor_def = defs.resolve_sensor_def(sensor.name)
            with dg.build_sensor_context(
                instance=self.instance, cursor=self.state.cursors.get(sensor.name), sensor_name=sensor.name,
                resources=required_resources(defs, sensor_def.required_resource_keys), definitions=defs,
            ) as context:  # fmt: skip
                data = sensor_def.evaluate_tick(context)
            for request in data.dynamic_partitions_requests or []:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys or []))
            for asset_event in data.asset_events or []:
                self.instance.report_runless_asset_event(asset_event)
            if data.cursor is not None:
                self.state.cursors[sensor.name] = data.cursor
            default_job = sensor_def.job_name if sensor_def.has_jobs and len(sensor_def.jobs) == 1 else None
            self.launch(defs, sensor.name, default_job, data.run_requests or [], now)
        for schedule in defs.schedules or []:
            schedule_def = defs.resolve_schedule_def(schedule.name)
            timezone = schedule_def.execution_timezone or "UTC"
            for fired in fire_times(schedule_def.cron_schedule, timezone, previous, now):
                with dg.build_schedule_context(
                    instance=self.instance, scheduled_execution_time=fired.replace(tzinfo=UTC),
                    resources=required_resources(defs, schedule_def.required_resource_keys),
                    repository_def=defs.get_repository_def(),
                ) as context:  # fmt: skip
                    data = schedule_def.evaluate_tick(context)
                self.launch(defs, schedule_def.name, schedule_def.job_name, data.run_requests or [], now)

    def launch(
        self, defs: dg.Definitions, origin: str, default_job: str | None, requests: list[dg.RunRequest], now: datetime
    ) -> None:
        """Execute each new request (its run key unseen for `origin`) for the demo's event only."""
        other_events = set(self.instance.get_dynamic_partitions(events_partitions.name)) - {self.event_id}
        for request in requests:
            if request.partition_key in other_events:
                continue  # the demo plays one event; the daemon would launch the others too
            key = (origin, request.run_key or f"{origin}:{now.isoformat()}")
            if key in self.state.run_keys:
                continue
            self.state.run_keys.add(key)
            job_name = request.job_name or default_job
            if job_name is None:
                raise ValueError(f"{origin} asked for a run without naming its job")
            result = defs.resolve_job_def(job_name).execute_in_process(
                instance=self.instance,
                partition_key=request.partition_key,
                run_config=_merge(QUIET, dict(request.run_config or {})),
                tags={**request.tags, "eventreach/simulated-clock": now.isoformat(timespec="minutes"),
                      **({"dagster/run_key": request.run_key} if request.run_key else {})},
                raise_on_error=False,
            )  # fmt: skip
            launched = LaunchedRun(now, origin, job_name, request.partition_key, result.success, summarize(result))
            self.timeline.append(launched)
            if self.on_run is not None:
                self.on_run(launched)


# ---- the SIMULATED world: customers and the event platform ----------------------------------

FEED_TIME_COLUMN = {"tracking": "occurred_at", "registrations": "registered_at", "survey": "submitted_at"}
INVITATION_KINDS = ("invitation",)
REMINDER_KINDS = ("reminder", "day-of")
MESSAGE_KEY = ("customer_id", "channel", "kind")


@dataclass
class SimulatedWorld:
    """SIMULATED (local demo only): reacts to what the ledger says was sent, between ticks.

    Responses are generated once per delivery, spread over the following days, and held back
    until the clock reaches their timestamp; then they are dropped into the feeds as files, as
    the tracking service and the event platform would. Attendance is dropped once the event has
    ended; survey answers follow the survey email.
    """

    event_id: str
    seed: int = 7
    rates: simulator.EngagementRates = simulator.DEFAULT_RATES
    answered: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=dict.fromkeys(MESSAGE_KEY, pl.String)))
    pending: dict[str, list[pl.DataFrame]] = field(default_factory=dict)  # feed -> records not yet due
    attendance_dropped: bool = False
    batches: int = 0
    provider_since: datetime | None = None  # SES reports up to here were dropped already
    reschedule_at: datetime | None = None  # the events team moves the event at this moment ...
    reschedule_by: timedelta = timedelta(days=1)  # ... by this much (once)

    def __call__(self, now: datetime, defs: dg.Definitions) -> None:
        resources = defs.resources
        if self.reschedule_at is not None and now >= self.reschedule_at:
            move_event(resources["warehouse"].path, self.event_id, self.reschedule_by)
            self.reschedule_at = None
        self.provider_reports(now, resources)
        config = resources["program"].load()
        timing = simulator.EventTiming.from_events(resources["warehouse"].events(), self.event_id, config)
        secret = resources["link_signing"].key()
        scores = resources["candidate_store"].event_items(config.program_id, self.event_id, now=now)
        sent = self.unanswered(resources["ledger"].deliveries(self.event_id))
        horizon = timing.end_time_utc  # responses to a message arrive until the event is over
        if sent.filter(pl.col("kind").is_in(INVITATION_KINDS)).height:
            engagement = simulator.simulate_invitation_engagement(
                sent.filter(pl.col("kind").is_in(INVITATION_KINDS)), scores, timing, secret, horizon,
                self.next_seed(), self.rates,
            )  # fmt: skip
            self.hold("tracking", engagement.tracking)
            self.hold("registrations", engagement.registrations)
        if sent.filter(pl.col("kind").is_in(REMINDER_KINDS)).height:
            engagement = simulator.simulate_reminder_engagement(
                sent.filter(pl.col("kind").is_in(REMINDER_KINDS)), scores, timing, secret, horizon,
                self.next_seed(), self.rates,
            )  # fmt: skip
            self.hold("tracking", engagement.tracking)
        store = resources["engagement"]
        if not self.attendance_dropped and now >= timing.end_time_utc:
            registered = registered_customers(
                resources["warehouse"], resources["candidate_store"], store, config.program_id, self.event_id, now
            ).with_columns(event_id=pl.lit(self.event_id))
            attendance = simulator.simulate_attendance(
                registered, scores, timing, self.next_seed(), self.rates, now=now
            )
            simulator.drop_simulated(resources["engagement_feed"], "attendance", "attendance", now, attendance)
            self.attendance_dropped = True
        surveys = sent.filter(pl.col("kind") == "survey")
        if surveys.height:
            answers = simulator.simulate_survey(
                surveys, store.attendance(self.event_id), timing, secret, self.next_seed(), self.rates,
                now=now + timedelta(days=3),
            )  # fmt: skip
            self.hold("survey", answers)
        for feed in FEED_TIME_COLUMN:
            self.release(resources["engagement_feed"], feed, now)

    def provider_reports(self, now: datetime, resources: dict[str, Any]) -> None:
        """SES's delivery, bounce and complaint reports for the emails sent so far, into the provider feed."""
        emails = resources["ledger"].deliveries(self.event_id, "email")
        if emails.height:
            contacts = resources["warehouse"].contacts(emails["customer_id"].unique().to_list())
            records = simulator.simulate_provider_events(
                emails, contacts, now, seed=self.seed, since=self.provider_since
            )
            simulator.drop_provider_events(resources["engagement_feed"], now, records)
        self.provider_since = now

    def next_seed(self) -> int:
        self.batches += 1
        return self.seed * 1_000 + self.batches

    def unanswered(self, deliveries: pl.DataFrame) -> pl.DataFrame:
        """Sent messages the world has not reacted to yet (each gets one reaction)."""
        sent = deliveries.filter(pl.col("status") == "sent").with_columns(pl.col(MESSAGE_KEY).cast(pl.String))
        new = sent.join(self.answered, on=list(MESSAGE_KEY), how="anti")
        self.answered = pl.concat([self.answered, new.select(MESSAGE_KEY)])
        return new

    def hold(self, feed: str, records: pl.DataFrame) -> None:
        if records.height:
            self.pending.setdefault(feed, []).append(records)

    def release(self, feed_resource: Any, feed: str, now: datetime) -> None:
        """Drop the held records whose time has come, as one file."""
        held = self.pending.pop(feed, [])
        if not held:
            return
        records = pl.concat(held)
        due = pl.col(FEED_TIME_COLUMN[feed]) <= now
        simulator.drop_simulated(feed_resource, feed, feed, now, records.filter(due))
        if records.filter(~due).height:
            self.pending[feed] = [records.filter(~due)]


@dataclass
class LifecycleReport:
    event_id: str
    clock_start: datetime
    clock_end: datetime
    timeline: list[LaunchedRun]
    funnel: pl.DataFrame
    deliverability: pl.DataFrame  # per channel: sent, delivered, bounced, complained (ledger + provider reports)
    seconds: float


def move_event(warehouse_path: str, event_id: str, by: timedelta) -> None:
    """SIMULATED: the events team moves the event in the catalog (the catalog sensor notices)."""
    import duckdb

    with duckdb.connect(warehouse_path) as connection:
        connection.execute(
            "UPDATE events SET start_time_utc = start_time_utc + to_seconds(?) WHERE event_id = ?",
            [int(by.total_seconds()), event_id],
        )


def monday_before(moment: datetime) -> datetime:
    """00:00 UTC of the Monday on or before `moment`: the lifecycle starts with a weekly batch."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    return day - timedelta(days=day.weekday())


def event_funnel(resources: dict[str, Any], event_id: str) -> pl.DataFrame:
    """The funnel from the ledger and the engagement records (nothing counted on the side)."""
    store = resources["engagement"]
    return funnel_domain.event_funnel(
        deliveries=resources["ledger"].deliveries(event_id),
        registrations=store.registrations(event_id),
        interactions=store.interactions(event_id),
        attendance=store.attendance(event_id),
        survey=store.survey_responses(event_id),
    )


def play(
    home: Path,
    instance: dg.DagsterInstance,
    event_id: str,
    clock_start: datetime,
    step: timedelta,
    days_after: int = 3,
    seed: int = 7,
    progress: Callable[[LaunchedRun], None] | None = None,
    reschedule_by: timedelta | None = timedelta(days=1),
) -> LifecycleReport:
    """Tick from `clock_start` (a Monday 00:00) until `days_after` days after the event; every
    run, from the model training at 01:00 to the survey, comes from a schedule or sensor.

    With `reschedule_by`, the event moves by that much halfway between the start of the clock
    and the event (after the invitations, before the reminders): updates go out, reminders follow."""
    started = time.perf_counter()
    events = resources_for("local", home=home, fixed_now=clock_start.isoformat())["warehouse"].events()
    start = events.filter(pl.col("event_id") == event_id)["start_time_utc"]
    if start.len() == 0:
        raise ValueError(f"event {event_id!r} is not in the warehouse's events table")
    world = SimulatedWorld(event_id, seed=seed)
    if reschedule_by is not None:
        world.reschedule_at, world.reschedule_by = clock_start + (start[0] - clock_start) / 2, reschedule_by
    player = LifecyclePlayer(home, instance, clock_start, event_id, on_tick=world, on_run=progress)
    clock_end = start[0] + (reschedule_by or timedelta(0)) + timedelta(days=days_after)
    player.advance(clock_end, step)
    final = resources_for("local", home=home, fixed_now=clock_end.isoformat())
    counts = final["ledger"].campaign_counts(event_id, rearmed=False)
    return LifecycleReport(
        event_id, clock_start, clock_end, player.timeline, event_funnel(final, event_id),
        counts.drop("event_id", "rejected").with_columns(
            bounce_rate_pct=pl.when(pl.col("sent") > 0).then((pl.col("bounced") * 100 / pl.col("sent")).round(2)),
            complaint_rate_pct=pl.when(pl.col("delivered") > 0).then(
                (pl.col("complained") * 100 / pl.col("delivered")).round(3)
            ),
        ),
        time.perf_counter() - started,
    )  # fmt: skip
