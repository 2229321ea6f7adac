"""The campaign: invitations in local-time waves, reminders, the survey; each message sent exactly once.

Every sending asset is declared by its row in `domain.campaign_kinds.CAMPAIGN_KINDS` (name,
channel, pool, tags, upstream, what launches it); the bodies below are what differs between
kinds. Each reads what it needs once through `CampaignServices`, hands it to one planning
function in `domain/campaigns.py`, renders (`domain/rendering.py`) and delivers through
`domain.sending.deliver`, which consults the delivery ledger before every provider call:
re-materializing a partition, or retrying a run that died half-way, sends only what was not sent.
A run that sends nothing (sold out, nobody registered, everyone already invited, the next
segment's local time still ahead, the event cancelled) succeeds and says why in `reason`.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import dagster as dg
import polars as pl

from eventreach_assets.assets.feedback import breaker_decision
from eventreach_assets.assets.metadata import NEXT_DUE_AT, PLANNED_AT, Stopwatch, stopwatch, table
from eventreach_assets.assets.storage import BATCH_READY_AT
from eventreach_assets.domain import campaigns, rendering
from eventreach_assets.domain.campaign_kinds import CAMPAIGN_KINDS, CampaignKind
from eventreach_assets.domain.delivery import (
    FIRST_CHANGE_SEQUENCE,
    OutboundMessage,
    calendar_sequences,
    change_notice_recipients,
    occurrence_of,
)
from eventreach_assets.domain.email_wire import email_problems, to_email_message
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.holdout import holdout_members
from eventreach_assets.domain.sending import DeliveryReport, deliver
from eventreach_assets.domain.templates import TemplateSet
from eventreach_assets.ingestion import promote_from_waitlist
from eventreach_assets.partitions import events_partitions
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.campaign_services import CampaignServices
from eventreach_assets.resources.channels import (
    ChannelResource,
    EmailChannelResource,
    InAppChannelResource,
    PacingStats,
    PushChannelResource,
)
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ClockResource

REASON = "reason"  # why a run sent nothing
NO_REGISTRANTS = "no_registrations: nobody is registered for the event"
NO_ATTENDEES = "no_attendees: nobody attended the event"
BREAKER_OPEN = "circuit_breaker_open"
NO_RECIPIENTS = "no_recipients: nobody was invited to or registered for the event"
NO_SEATS_OR_WAITLIST = "nobody_promoted: no seat is free, or nobody is waiting for one"


def sending_asset(name: str) -> Callable[[Callable[..., dg.MaterializeResult]], dg.AssetsDefinition]:
    """The asset decorator for one row of CAMPAIGN_KINDS: partitions, group, pool, tags, kinds, deps."""
    kind = CAMPAIGN_KINDS[name]
    return dg.asset(
        name=kind.asset,
        partitions_def=events_partitions,
        group_name="campaigns",
        owners=["team:events"],
        deps=list(kind.upstream),
        kinds={kind.channel},
        tags={"stage": kind.stage, "channel": kind.channel},
        pool=kind.pool,
        description=kind.description,
    )


def latest_metadata(instance: dg.DagsterInstance, asset_name: str, event_id: str) -> dict[str, Any]:
    """The metadata of the asset's latest materialization for the event ({} if none)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset_name), asset_partitions=[event_id]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    return {key: value.value for key, value in materialization.metadata.items()} if materialization else {}


def batch_ready_at(instance: dg.DagsterInstance, event_id: str) -> datetime | None:
    """When the weekly batch stored the event's candidates (by the batch's clock), or None if it has not."""
    value = latest_metadata(instance, "candidates_table", event_id).get(BATCH_READY_AT)
    return datetime.fromisoformat(str(value)) if value else None


def nothing_sent(reason: str, **extra: Any) -> dg.MaterializeResult:
    """A successful run that sent nothing, saying why."""
    return dg.MaterializeResult(metadata={REASON: reason, "planned": 0, "sent": 0, "dagster/row_count": 0, **extra})


@dataclass
class RenderTally:
    """What the events team reads of the rendered messages, counted as they stream past (none is kept:
    a campaign of 50,000 holds one chunk of rendered messages at a time)."""

    sample: OutboundMessage | None = None
    fell_back: int = 0  # emails whose template had no translation in the customer's language
    languages: set[str] = field(default_factory=set)
    invalid: int = 0  # emails that failed validation: recorded in the ledger, not sent

    def count(self, messages: Iterable[OutboundMessage]) -> Iterator[OutboundMessage]:
        for message in messages:
            if self.sample is None:
                self.sample = message
            self.fell_back += bool(message.payload.get("fell_back"))
            if "language" in message.payload:
                self.languages.add(str(message.payload["language"]))
            yield message

    def valid_emails(
        self, messages: Iterable[OutboundMessage], ledger: DeliveryLedgerResource, expect_calendar_invite: bool
    ) -> Iterator[OutboundMessage]:
        """The emails fit to send; the rest are recorded in the ledger as permanent failures with the reason."""
        for message in messages:
            problems = email_problems(message, expect_calendar_invite=expect_calendar_invite)
            if not problems:
                yield message
                continue
            ledger.mark_failed(message.key, f"invalid_message: {'; '.join(problems)}", permanent=True,
                               campaign_id=message.campaign_id)  # fmt: skip
            self.invalid += 1


@dataclass(frozen=True)
class CampaignRun:
    plan: pl.DataFrame
    tally: RenderTally
    report: DeliveryReport
    pacing: PacingStats  # the rate the channel paced to, and the throttling it met

    @property
    def provider_rate(self) -> float | None:
        """Messages/s the channel paced to (None: unlimited)."""
        return self.pacing.provider_rate

    def metadata(self, watch: Stopwatch, **extra: Any) -> dict[str, Any]:
        """What the events team reads: planned, sent, skipped (and why), failed, how fast, a sample."""
        report, sample = self.report, self.tally.sample
        metadata: dict[str, Any] = {
            "planned": self.plan.height,
            "sent": report.sent,
            "skipped": report.skipped_total,
            "skipped_by_reason": table(report.skipped_frame()),
            "failed_transient": report.failed_transient,
            "failed_permanent": report.failed_permanent,
            "invalid_messages_not_sent": self.tally.invalid,
            "dagster/row_count": report.sent,
            "messages_per_second": dg.MetadataValue.float(round(report.messages_per_second, 1)),
            "sending_s": dg.MetadataValue.float(round(report.sending_s, 3)),
            "concurrency": report.concurrency,
            "peak_in_flight": report.peak_in_flight,
            "provider_rate_per_second": (
                dg.MetadataValue.float(self.provider_rate) if self.provider_rate else dg.MetadataValue.text("unlimited")
            ),
            "throttled": self.pacing.throttled,
            "throttle_gave_up": self.pacing.gave_up,
            **extra,
            **watch.metadata(report.sent),
        }
        if sample is not None:
            metadata["sample_subject"] = sample.subject
            metadata["sample_campaign"] = sample.campaign_id
        return metadata


def stream_campaign(
    plan: pl.DataFrame,
    render: Callable[[dict[str, Any]], OutboundMessage],
    *,
    ledger: DeliveryLedgerResource,
    channel: ChannelResource,
    now: Callable[[], datetime],
    owner: str | None,
    validate_email: bool | None = None,
) -> CampaignRun:
    """Render each planned row as the send loop asks for it, validate emails (`validate_email`: whether an
    .ics is required), deliver through `channel` at its concurrency and rate. No Dagster: the benchmark
    runs exactly this."""
    tally = RenderTally()
    messages = tally.count(render(row) for row in plan.iter_rows(named=True))
    if validate_email is not None:
        messages = tally.valid_emails(messages, ledger, validate_email)
    report = deliver(messages, ledger=ledger, send=channel.send, now=now, owner=owner,
                     concurrency=channel.concurrency, send_many=channel.send_many,
                     batch_size=channel.batch_size)  # fmt: skip
    return CampaignRun(plan, tally, report, channel.pacing_stats())


def send_campaign(
    plan: pl.DataFrame,
    render: Callable[[dict[str, Any]], OutboundMessage],
    *,
    ledger: DeliveryLedgerResource,
    channel: ChannelResource,
    clock: ClockResource,
    validate_email: bool | None = None,
) -> CampaignRun:
    """`stream_campaign` with the run owning its reservations (see open_campaign)."""
    owner = dg.OpExecutionContext.get().run_id
    return stream_campaign(plan, render, ledger=ledger, channel=channel, now=clock.now, owner=owner,
                           validate_email=validate_email)  # fmt: skip


PREVIEW_RECIPIENT = {"customer_id": "preview", "email": "preview@eventreach.invalid"}


def preview_message(
    plan: pl.DataFrame,
    render: Callable[..., OutboundMessage],
    decision_log: DecisionLogResource,
    event_id: str,
    asset_name: str,
    now: datetime,
) -> str:
    """A sample of what went out, rendered for a made-up recipient so no customer's data is exposed."""
    first = plan.row(0, named=True) if plan.height else {"marketplace": "US", "timezone": "UTC"}
    row = {**first, **PREVIEW_RECIPIENT, "campaign_id": f"{event_id}:preview"}
    message = render(row, campaign_id=row["campaign_id"], send_at=now)
    return decision_log.write_file("samples", event_id, f"{asset_name}.eml", to_email_message(message).as_bytes())


def hold_out(
    plan: pl.DataFrame, config: ProgramConfig, event: EventContext, kind: CampaignKind,
    ledger: DeliveryLedgerResource, now: datetime,
) -> tuple[pl.DataFrame, int]:  # fmt: skip
    """The plan without the channel's control group, which the ledger records as held out.

    Membership is a stable hash of customer x event (`metrics.holdout`), so a rerun holds out the
    same people, and a held-out row is final: no later run sends it.
    """
    holdout = config.metrics.holdout
    if holdout.channel != kind.channel or holdout.share == 0 or plan.height == 0:
        return plan, 0
    held = holdout_members(plan.select("customer_id"), event.event_id, holdout.share)
    control = plan.filter(held)
    keys = control.select(
        "customer_id", "campaign_id", event_id=pl.lit(event.event_id), channel=pl.lit(kind.channel),
        kind=pl.lit(str(kind.kind)),
    )  # fmt: skip
    ledger.mark_held_out_many(keys, now=now)
    return plan.filter(~held), control.height


def open_campaign(
    context: dg.AssetExecutionContext, services: CampaignServices, kind: CampaignKind
) -> tuple[EventContext, dg.MaterializeResult | None]:
    """The partition's event, and a finished result when this kind must not send for it any more:
    the event is off (or, for a cancellation notice, still on), or the campaign's circuit breaker
    has tripped on bounces or complaints (until an operator re-arms it)."""
    event = services.event(context.partition_key)
    parent = context.run.parent_run_id
    if parent:  # a retry of a run that died: its unattempted reservations come back before planning
        released, in_doubt = services.ledger.release_owner(parent, f"run {parent} ended before confirming", None)
        context.log.info(f"took over run {parent}'s reservations: {released} released, {in_doubt} in doubt")
    stopped = services.stopped_because(event, kind)
    if stopped:
        return event, nothing_sent(stopped, event_status=event.status)
    if kind.breaker:
        decision = breaker_decision(services.ledger, services.config().deliverability, event.event_id, kind.channel)
        if decision.stop:
            context.log.warning(
                f"circuit breaker open for {event.event_id} on {kind.channel}: {'; '.join(decision.reasons)}; "
                "nothing sent until an operator runs rearm_circuit_breaker"
            )
            judged = {f"breaker_{key}": value for key, value in decision.as_metadata().items()}
            return event, nothing_sent(f"{BREAKER_OPEN}: {'; '.join(decision.reasons)}", **judged)
    return event, None


# ---- invitations: per-segment local-time waves ---------------------------------------------------


def invitation_wave(
    context: dg.AssetExecutionContext, services: CampaignServices, config: ProgramConfig, event: EventContext,
    kind: CampaignKind, now: datetime,
) -> tuple[campaigns.InvitationWave, int]:  # fmt: skip
    """This wave of the channel's invitations (domain.campaigns.plan_invitation_wave) and the seats
    left when it was planned."""
    registered = services.registered(event.event_id, now)
    remaining = campaigns.remaining_capacity(event.capacity, config.event_config.capacity_limit, registered.height)
    targeting = config.campaigns.targeting(kind.channel)
    prior = services.ledger.deliveries(event.event_id, channel=kind.channel, kind=kind.kind)
    outstanding = prior.join(registered, on="customer_id", how="anti").height
    candidates = services.top_candidates(event.event_id, kind.channel, targeting.min_score, targeting.limit, now).join(
        registered, on="customer_id", how="anti", maintain_order="left"
    )
    wave = campaigns.plan_invitation_wave(
        candidates, prior=prior, outstanding=outstanding, event=event, channel=kind.channel,
        limit=targeting.limit, remaining_capacity=remaining, send_time=config.invitation_send_time(kind.channel),
        batch_ready_at=batch_ready_at(context.instance, event.event_id) or now, now=now,
        deadline=campaigns.registration_deadline(event, config.event_config.registration_deadline_days),
    )  # fmt: skip
    return wave, remaining


def wave_metadata(wave: campaigns.InvitationWave, remaining: int, now: datetime) -> dict[str, Any]:
    """What the events team and the event-date sensor read of a wave."""
    next_due = wave.next_due_at
    return {
        PLANNED_AT: now.isoformat(),
        **({NEXT_DUE_AT: next_due.isoformat()} if next_due is not None else {}),
        **({REASON: wave.reason} if wave.reason else {}),
        "remaining_capacity": remaining,
        "new_invitations_budget": wave.budget,
        "due_now": wave.due.height,
        "retried_after_transient_failure": wave.retries,
        "waiting_for_local_send_time": wave.deferred.height,
        "segments": table(campaigns.segment_summary(wave.planned)),
    }


@sending_asset("email_invitations")
def email_invitations(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    email_channel: EmailChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Top candidates (score ≥ 0.5, ≤ 50,000, ≤ seats left) get an email, each segment at its local 10:00."""
    kind = CAMPAIGN_KINDS["email_invitations"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    channel = config.channel("email")
    render = partial(
        rendering.render_invitation_email, event=event, templates=TemplateSet(),
        secret=services.link_signing.key(), base_url=config.campaigns.link_base_url, sender=config.campaigns.sender,
        organizer_email=config.campaigns.organizer, include_calendar_invite=kind.calendar_invite,
        template_id=channel.config["templateId"], duration_minutes=event.duration_minutes,
    )  # fmt: skip
    with stopwatch() as watch:
        wave, remaining = invitation_wave(context, services, config, event, kind, now)
        plan, held_out = hold_out(wave.due, config, event, kind, services.ledger, now)
        # `Date` is the real send time: the wave runs at its segment's local send time.
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"], send_at=clock.now()),
            ledger=services.ledger, channel=email_channel, clock=clock, validate_email=kind.calendar_invite,
        )  # fmt: skip
    return dg.MaterializeResult(
        metadata=run.metadata(
            watch,
            **wave_metadata(wave, remaining, now),
            held_out=held_out,
            fell_back_to_english=run.tally.fell_back,
            languages=", ".join(sorted(run.tally.languages)),
            sample_message=dg.MetadataValue.path(
                preview_message(plan, render, services.decision_log, event.event_id, kind.asset, now)
            ),
        )
    )


@sending_asset("in_app_invitations")
def in_app_invitations(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    in_app_channel: InAppChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """A home-screen banner for candidates with score ≥ 0.6 not registered, each segment at its local 14:00."""
    kind = CAMPAIGN_KINDS["in_app_invitations"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    channel = config.channel("in-app")
    render = partial(
        rendering.render_in_app_banner, event=event, banner_type=channel.config["bannerType"],
        placement=channel.config["placement"], display_days=int(channel.config["displayDuration"]),
        secret=services.link_signing.key(), base_url=config.campaigns.link_base_url, now=now,
    )  # fmt: skip
    with stopwatch() as watch:
        wave, remaining = invitation_wave(context, services, config, event, kind, now)
        plan, held_out = hold_out(wave.due, config, event, kind, services.ledger, now)
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"]),
            ledger=services.ledger, channel=in_app_channel, clock=clock,
        )  # fmt: skip
    return dg.MaterializeResult(metadata=run.metadata(watch, **wave_metadata(wave, remaining, now), held_out=held_out))


# ---- reminders and the survey --------------------------------------------------------------------


def reminder_plan(
    services: CampaignServices, config: ProgramConfig, event: EventContext, kind: CampaignKind, now: datetime
) -> tuple[pl.DataFrame, int, int]:
    """Registered customers with where to reach them, timed by the program's reminderSchedule entry.

    Returns the plan, how many are registered and how many were dropped because the event has
    already started.
    """
    schedule = next(r for r in config.event_config.reminder_schedule if r.channel == kind.channel)
    registered = services.registered(event.event_id, now)
    plan = campaigns.plan_reminders(
        services.with_contacts(registered, event.event_id, now),
        event=event, days_before=schedule.days_before, time=schedule.time, now=now, channel=kind.channel,
        kind=kind.kind,
    )  # fmt: skip
    return plan.filter(~pl.col("too_late")), registered.height, plan.filter(pl.col("too_late")).height


@sending_asset("push_reminders")
def push_reminders(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    push_channel: PushChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """One day before the event: a push to every registered customer ("{eventName} Tomorrow!")."""
    kind = CAMPAIGN_KINDS["push_reminders"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    channel = config.channel("push")
    render = partial(
        rendering.render_push_reminder, event=event, title_template=channel.config["title"],
        body_template=channel.config["body"], secret=services.link_signing.key(),
        base_url=config.campaigns.link_base_url,
    )  # fmt: skip
    with stopwatch() as watch:
        plan, registered, too_late = reminder_plan(services, config, event, kind, now)
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"]),
            ledger=services.ledger, channel=push_channel, clock=clock,
        )  # fmt: skip
    extra = {REASON: NO_REGISTRANTS} if registered == 0 else {}
    return dg.MaterializeResult(metadata=run.metadata(watch, not_sent_event_started=too_late, **extra))


@sending_asset("day_of_reminders")
def day_of_reminders(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    email_channel: EmailChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """The event day at 09:00 local: an email with the join link to every registered customer."""
    kind = CAMPAIGN_KINDS["day_of_reminders"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    render = partial(
        rendering.render_day_of_email, event=event, templates=TemplateSet(),
        secret=services.link_signing.key(), base_url=config.campaigns.link_base_url, sender=config.campaigns.sender,
    )  # fmt: skip
    with stopwatch() as watch:
        plan, registered, too_late = reminder_plan(services, config, event, kind, now)
        due, deferred = campaigns.split_due(plan, now)
        run = send_campaign(
            due, lambda row: render(row, campaign_id=row["campaign_id"], send_at=clock.now()),
            ledger=services.ledger, channel=email_channel, clock=clock, validate_email=kind.calendar_invite,
        )  # fmt: skip
    next_due = deferred["send_at_utc"].min() if deferred.height else None
    extra = {REASON: NO_REGISTRANTS} if registered == 0 else {}
    return dg.MaterializeResult(
        metadata=run.metadata(
            watch,
            not_sent_event_started=too_late,
            not_yet_due=deferred.height,
            **{PLANNED_AT: now.isoformat()},
            # The event-date sensor launches the next run at this moment (the next timezone's 09:00).
            **({NEXT_DUE_AT: next_due.isoformat()} if next_due is not None else {}),  # type: ignore[union-attr]
            **extra,
        )
    )


@sending_asset("post_event_surveys")
def post_event_surveys(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    email_channel: EmailChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """One day after the event: a one-question survey email to every attendee (not to no-shows)."""
    kind = CAMPAIGN_KINDS["post_event_surveys"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    render = partial(
        rendering.render_survey_email, event=event, templates=TemplateSet(),
        secret=services.link_signing.key(), base_url=config.campaigns.link_base_url, sender=config.campaigns.sender,
    )  # fmt: skip
    with stopwatch() as watch:
        attendees = services.engagement.attendance(event.event_id).select("customer_id")
        plan = campaigns.plan_follow_up(
            services.with_contacts(attendees, event.event_id, now),
            event=event, channel=kind.channel, kind=kind.kind, now=now,
        )  # fmt: skip
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"], send_at=clock.now()),
            ledger=services.ledger, channel=email_channel, clock=clock, validate_email=kind.calendar_invite,
        )  # fmt: skip
    extra = {REASON: NO_ATTENDEES} if attendees.height == 0 else {}
    return dg.MaterializeResult(metadata=run.metadata(watch, attendees=attendees.height, **extra))


# ---- when the event changes: updates, cancellations, waitlist confirmations ----------------------


def change_notice_plan(
    services: CampaignServices, event: EventContext, kind: CampaignKind, occurrence: str, now: datetime
) -> pl.DataFrame:
    """Everyone who holds a calendar entry or a seat for the event (a delivered invitation or
    waitlist confirmation, or a registration), with where to reach them and the SEQUENCE their
    next .ics must carry (strictly above every notice they may have)."""
    deliveries = services.ledger.deliveries(event.event_id)
    recipients = change_notice_recipients(deliveries, services.registered(event.event_id, now), event.event_id)
    if kind.channel == "push":  # the app reaches registrants; invitees only have the email
        recipients = recipients.filter(pl.col("registered"))
    with_sequence = recipients.join(
        calendar_sequences(deliveries, event.event_id, occurrence), on="customer_id", how="left"
    ).with_columns(pl.col("sequence").fill_null(FIRST_CHANGE_SEQUENCE))
    return campaigns.plan_follow_up(
        services.with_contacts(with_sequence, event.event_id, now), event=event, channel=kind.channel,
        kind=kind.kind, now=now,
    )  # fmt: skip


def notice_email(
    render: Callable[..., OutboundMessage], clock: ClockResource
) -> Callable[[dict[str, Any]], OutboundMessage]:
    """Render one planned change notice, dated when it leaves, with the row's calendar SEQUENCE."""
    return lambda row: render(row, campaign_id=row["campaign_id"], sequence=int(row["sequence"]), send_at=clock.now())


def email_notice_renderer(
    render: Callable[..., OutboundMessage], services: CampaignServices, config: ProgramConfig, event: EventContext,
    **extra: Any,
) -> Callable[..., OutboundMessage]:  # fmt: skip
    return partial(
        render, event=event, templates=TemplateSet(), secret=services.link_signing.key(),
        base_url=config.campaigns.link_base_url, sender=config.campaigns.sender,
        organizer_email=config.campaigns.organizer, duration_minutes=event.duration_minutes, **extra,
    )  # fmt: skip


PREVIOUS_START_TAG = "eventreach/previous-start"  # set by the catalog sensor on an update run


@sending_asset("event_update_emails")
def event_update_emails(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    email_channel: EmailChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """After a reschedule: one "Updated:" email per new date, the .ics under the invitation's UID
    with a higher SEQUENCE (METHOD:REQUEST), so calendars move the entry instead of adding one."""
    kind = CAMPAIGN_KINDS["event_update_emails"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    previous = context.run.tags.get(PREVIOUS_START_TAG)
    render = email_notice_renderer(
        rendering.render_update_email, services, config, event,
        previous_start_utc=datetime.fromisoformat(previous) if previous else None,
    )  # fmt: skip
    with stopwatch() as watch:
        plan = change_notice_plan(services, event, kind, occurrence_of(event.start_time_utc), now)
        run = send_campaign(
            plan, notice_email(render, clock), ledger=services.ledger, channel=email_channel, clock=clock,
            validate_email=kind.calendar_invite,
        )  # fmt: skip
    extra = {REASON: NO_RECIPIENTS} if plan.height == 0 else {}
    return dg.MaterializeResult(metadata=run.metadata(watch, new_start_utc=event.start_time_utc.isoformat(), **extra))


@sending_asset("cancellation_emails")
def cancellation_emails(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    email_channel: EmailChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """The event is cancelled: one email to every invitee and registrant whose .ics (METHOD:CANCEL,
    STATUS:CANCELLED, same UID, higher SEQUENCE) removes the calendar entry."""
    kind = CAMPAIGN_KINDS["cancellation_emails"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    render = email_notice_renderer(rendering.render_cancellation_email, services, config, event)
    with stopwatch() as watch:
        plan = change_notice_plan(services, event, kind, "", now)
        run = send_campaign(
            plan, notice_email(render, clock), ledger=services.ledger, channel=email_channel, clock=clock,
            validate_email=kind.calendar_invite,
        )  # fmt: skip
    extra = {REASON: NO_RECIPIENTS} if plan.height == 0 else {}
    return dg.MaterializeResult(metadata=run.metadata(watch, **extra))


@sending_asset("cancellation_pushes")
def cancellation_pushes(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    push_channel: PushChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """The event is cancelled: a push to every registrant, once."""
    kind = CAMPAIGN_KINDS["cancellation_pushes"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    render = partial(
        rendering.render_cancellation_push, event=event, secret=services.link_signing.key(),
        base_url=config.campaigns.link_base_url,
    )  # fmt: skip
    with stopwatch() as watch:
        plan = change_notice_plan(services, event, kind, "", now)
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"], send_at=clock.now()),
            ledger=services.ledger, channel=push_channel, clock=clock,
        )  # fmt: skip
    extra = {REASON: NO_REGISTRANTS} if plan.height == 0 else {}
    return dg.MaterializeResult(metadata=run.metadata(watch, **extra))


@sending_asset("waitlist_confirmations")
def waitlist_confirmations(
    context: dg.AssetExecutionContext,
    services: CampaignServices,
    email_channel: EmailChannelResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Seats freed by cancellations (or a capacity raised in the catalog) go to the earliest
    waitlisted customers, first come first served; each promoted customer gets one confirmation
    with the join link and the .ics."""
    kind = CAMPAIGN_KINDS["waitlist_confirmations"]
    event, stopped = open_campaign(context, services, kind)
    if stopped is not None:
        return stopped
    config, now = services.config(), clock.now()
    render = email_notice_renderer(rendering.render_waitlist_confirmation_email, services, config, event)
    with stopwatch() as watch:
        promoted = promote_from_waitlist(
            services.warehouse, services.candidate_store, services.engagement, config, event, now
        ).select("customer_id")
        sequences = calendar_sequences(services.ledger.deliveries(event.event_id), event.event_id, "")
        plan = campaigns.plan_follow_up(
            services.with_contacts(
                promoted.join(sequences, on="customer_id", how="left").with_columns(
                    pl.col("sequence").fill_null(FIRST_CHANGE_SEQUENCE)
                ),
                event.event_id, now,
            ),
            event=event, channel=kind.channel, kind=kind.kind, now=now,
        )  # fmt: skip
        run = send_campaign(
            plan, notice_email(render, clock), ledger=services.ledger, channel=email_channel, clock=clock,
            validate_email=kind.calendar_invite,
        )  # fmt: skip
    extra = {REASON: NO_SEATS_OR_WAITLIST} if promoted.height == 0 else {}
    return dg.MaterializeResult(metadata=run.metadata(watch, promoted=promoted.height, **extra))


campaign_assets = [
    email_invitations, in_app_invitations, push_reminders, day_of_reminders, post_event_surveys,
    event_update_emails, cancellation_emails, cancellation_pushes, waitlist_confirmations,
]  # fmt: skip
if {asset.key.path[-1] for asset in campaign_assets} != set(CAMPAIGN_KINDS):
    raise RuntimeError("every row of CAMPAIGN_KINDS needs exactly one sending asset, and every sending asset a row")
