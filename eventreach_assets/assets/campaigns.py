"""The campaign: email and in-app invitations, push and day-of reminders, each sent exactly once.

Every asset reads the candidates table by key, plans its sends (domain/campaigns.py), renders
messages (domain/messages.py) and hands them to `domain.sending.deliver`, which consults the
delivery ledger before every provider call. Re-materializing a partition, or retrying a run
that died half-way, sends only what was not sent yet.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import dagster as dg
import polars as pl

from eventreach_assets.assets.ingestion import current_event
from eventreach_assets.assets.metadata import Stopwatch, stopwatch, table
from eventreach_assets.assets.storage import candidates_table
from eventreach_assets.domain import campaigns, messages, report
from eventreach_assets.domain.delivery import MessageKind, OutboundMessage
from eventreach_assets.domain.filters import EventContext
from eventreach_assets.domain.messages import to_email_message
from eventreach_assets.domain.sending import DeliveryReport, deliver
from eventreach_assets.partitions import events_partitions
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.registrations import registered_customers
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.channels import EmailChannelResource, InAppChannelResource, PushChannelResource
from eventreach_assets.resources.engagement import EngagementStoreResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.secrets import LinkSigningResource
from eventreach_assets.resources.storage import DecisionLogResource
from eventreach_assets.resources.warehouse import WarehouseResource

CAMPAIGN = {"group_name": "campaigns", "owners": ["team:events"], "partitions_def": events_partitions}
PAGE = 5_000
NEXT_DUE_AT = "next_due_at"  # metadata keys the event-date sensor reads
PLANNED_AT = "planned_at"


def with_contacts(customers: pl.DataFrame, warehouse: WarehouseResource, store: CandidateStoreResource,
                  program_id: str, event_id: str, now: datetime) -> pl.DataFrame:  # fmt: skip
    """`customers` with where to reach them: from the candidates table, or from the warehouse
    for customers who never were candidates (registered before the batch, or elsewhere)."""
    stored = (
        store.event_items(program_id, event_id, now=now)
        .unique("customer_id", keep="first", maintain_order=True)
        .select("customer_id", "email", "marketplace", "timezone")
    )
    missing = customers.join(stored, on="customer_id", how="anti")["customer_id"].to_list()
    contacts = pl.concat([stored, warehouse.contacts(missing).select(stored.columns)], how="vertical_relaxed")
    return customers.join(contacts, on="customer_id", how="inner", maintain_order="left")


def cancelled_result(event: EventContext) -> dg.MaterializeResult | None:
    """For a cancelled event: a materialization that says nothing was sent, and why."""
    if event.status != "cancelled":
        return None
    return dg.MaterializeResult(metadata={"event_status": "cancelled", "sent": 0, "dagster/row_count": 0})


def top_candidates(
    store: CandidateStoreResource, program_id: str, event_id: str, channel: str, min_score: float, limit: int,
    now: datetime,
) -> pl.DataFrame:  # fmt: skip
    """Up to `limit` live, unregistered candidates for a channel, score descending, read page by page."""
    pages: list[pl.DataFrame] = []
    cursor: str | None = None
    fetched = 0
    while fetched < limit:
        page = store.top_candidates_for_channel(
            program_id, event_id, channel, min_score=min_score, limit=min(PAGE, limit - fetched),
            exclude_registered=True, cursor=cursor, now=now,
        )  # fmt: skip
        pages.append(page.items)
        fetched += page.count
        cursor = page.next_cursor
        if cursor is None or page.count == 0:
            break
    return pl.concat(pages, how="diagonal_relaxed") if pages else pl.DataFrame()


@dataclass(frozen=True)
class CampaignRun:
    plan: pl.DataFrame
    rendered: list[OutboundMessage]
    invalid: int  # emails that failed validation: recorded in the ledger, not sent
    report: DeliveryReport

    def metadata(self, watch: Stopwatch, **extra: Any) -> dict[str, Any]:
        """What the events team reads: planned, sent, skipped (and why), failed, a sample."""
        report = self.report
        metadata: dict[str, Any] = {
            "planned": self.plan.height,
            "sent": report.sent,
            "skipped": report.skipped_total,
            "skipped_by_reason": table(report.skipped_frame()),
            "failed_transient": report.failed_transient,
            "failed_permanent": report.failed_permanent,
            "invalid_messages_not_sent": self.invalid,
            "dagster/row_count": report.sent,
            **extra,
            **watch.metadata(report.sent),
        }
        if self.rendered:
            metadata["sample_subject"] = self.rendered[0].subject
            metadata["sample_campaign"] = self.rendered[0].campaign_id
        return metadata


def send_campaign(
    plan: pl.DataFrame,
    render: Callable[[dict[str, Any]], OutboundMessage],
    *,
    ledger: DeliveryLedgerResource,
    send: Callable[[OutboundMessage], str],
    clock: ClockResource,
    validate_email: bool | None = None,
) -> CampaignRun:
    """Render every planned row, validate emails (`validate_email`: whether an .ics is required), deliver."""
    rendered = [render(row) for row in plan.iter_rows(named=True)]
    sendable, invalid = (
        validated_emails(rendered, ledger, validate_email) if validate_email is not None else (rendered, 0)
    )
    run = dg.OpExecutionContext.get().run  # owns its reservations; a retry first takes over its failed parent's
    report = deliver(
        sendable, ledger=ledger, send=send, now=clock.now, owner=run.run_id, dead_owners=[run.parent_run_id]
    )
    return CampaignRun(plan, rendered, invalid, report)


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
    message = render(row, campaign_id=row["campaign_id"], send_at=first.get("send_at_utc") or now)
    return decision_log.write_file("samples", event_id, f"{asset_name}.eml", to_email_message(message).as_bytes())


def validated_emails(
    rendered: list[OutboundMessage], ledger: DeliveryLedgerResource, expect_calendar_invite: bool
) -> tuple[list[OutboundMessage], int]:
    """Emails fit to send; the rest are recorded in the ledger as permanent failures with the reason."""
    sendable: list[OutboundMessage] = []
    invalid = 0
    for message in rendered:
        problems = messages.email_problems(message, expect_calendar_invite=expect_calendar_invite)
        if problems:
            ledger.mark_failed(message.key, f"invalid_message: {'; '.join(problems)}", permanent=True,
                               campaign_id=message.campaign_id)  # fmt: skip
            invalid += 1
        else:
            sendable.append(message)
    return sendable, invalid


def hold_out(
    plan: pl.DataFrame, config: ProgramConfig, event: EventContext, channel: str, ledger: DeliveryLedgerResource,
    now: datetime,
) -> tuple[pl.DataFrame, int]:  # fmt: skip
    """The plan without the channel's control group, which the ledger records as held out.

    Membership is a stable hash of customer x event (`metrics.holdout`), so a rerun holds out the
    same people, and a held-out row is final: no later run sends it.
    """
    holdout = config.metrics.holdout
    if holdout.channel != channel or holdout.share == 0 or plan.height == 0:
        return plan, 0
    held = report.holdout_members(plan.select("customer_id"), event.event_id, holdout.share)
    control = plan.filter(held)
    keys = control.select(
        "customer_id", "campaign_id", event_id=pl.lit(event.event_id), channel=pl.lit(channel),
        kind=pl.lit(str(MessageKind.INVITATION)),
    )  # fmt: skip
    ledger.mark_held_out_many(keys, now=now)
    return plan.filter(~held), control.height


def invitation_context(
    warehouse: WarehouseResource, store: CandidateStoreResource, engagement: EngagementStoreResource,
    config: ProgramConfig, event: EventContext, channel: str, now: datetime,
) -> tuple[pl.DataFrame, int]:  # fmt: skip
    """This channel's plan for the event, and how many seats were left when it was made."""
    registered = registered_customers(warehouse, store, engagement, config.program_id, event.event_id, now)
    remaining = campaigns.remaining_capacity(event.capacity, config.event_config.capacity_limit, registered.height)
    targeting = config.campaigns.targeting(channel)
    candidates = top_candidates(
        store, config.program_id, event.event_id, channel, targeting.min_score, min(targeting.limit, remaining), now
    ).join(registered, on="customer_id", how="anti", maintain_order="left")
    send_time = config.channel(channel).config.get("sendTime")
    plan = campaigns.plan_invitations(
        candidates, event=event, channel=channel, limit=targeting.limit, remaining_capacity=remaining,
        send_time=send_time, now=now,
    )  # fmt: skip
    return plan, remaining


@dg.asset(**CAMPAIGN, deps=[candidates_table], kinds={"email"}, tags={"stage": "campaign", "channel": "email"},
          pool="channel-email")  # fmt: skip
def email_invitations(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    candidate_store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    ledger: DeliveryLedgerResource,
    email_channel: EmailChannelResource,
    link_signing: LinkSigningResource,
    decision_log: DecisionLogResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Monday 10:00 local: the top candidates (score ≥ 0.5, ≤ 50,000, ≤ remaining capacity) get an email."""
    config = program.load()
    event = current_event(warehouse, context.partition_key)
    if (cancelled := cancelled_result(event)) is not None:
        return cancelled
    channel = config.channel("email")
    calendar_invite = bool(channel.config.get("includeCalendarInvite", True))
    render = partial(
        messages.render_invitation_email, event=event, templates=messages.TemplateSet(), secret=link_signing.key(),
        base_url=config.campaigns.link_base_url, sender=config.campaigns.sender,
        organizer_email=config.campaigns.organizer, include_calendar_invite=calendar_invite,
        template_id=channel.config["templateId"], duration_minutes=event.duration_minutes,
    )  # fmt: skip
    with stopwatch() as watch:
        plan, remaining = invitation_context(
            warehouse, candidate_store, engagement, config, event, "email", clock.now()
        )
        plan, held_out = hold_out(plan, config, event, "email", ledger, clock.now())
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"], send_at=row["send_at_utc"]),
            ledger=ledger, send=email_channel.send, clock=clock, validate_email=calendar_invite,
        )  # fmt: skip
    return dg.MaterializeResult(
        metadata=run.metadata(
            watch,
            remaining_capacity=remaining,
            held_out=held_out,
            segments=table(campaigns.segment_summary(plan)),
            fell_back_to_english=sum(1 for message in run.rendered if message.payload.get("fell_back")),
            languages=", ".join(sorted({str(message.payload.get("language")) for message in run.rendered})),
            sample_message=dg.MetadataValue.path(
                preview_message(plan, render, decision_log, event.event_id, "email_invitations", clock.now())
            ),
        )
    )


@dg.asset(**CAMPAIGN, deps=[email_invitations], kinds={"in-app"}, tags={"stage": "campaign", "channel": "in-app"},
          pool="channel-in-app")  # fmt: skip
def in_app_invitations(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    candidate_store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    ledger: DeliveryLedgerResource,
    in_app_channel: InAppChannelResource,
    link_signing: LinkSigningResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Monday 14:00: a home-screen banner for candidates with score ≥ 0.6 not registered by then."""
    config = program.load()
    event = current_event(warehouse, context.partition_key)
    if (cancelled := cancelled_result(event)) is not None:
        return cancelled
    channel = config.channel("in-app")
    now = clock.now()
    render = partial(
        messages.render_in_app_banner, event=event, banner_type=channel.config["bannerType"],
        placement=channel.config["placement"], display_days=int(channel.config["displayDuration"]),
        secret=link_signing.key(), base_url=config.campaigns.link_base_url, now=now,
    )  # fmt: skip
    with stopwatch() as watch:
        plan, remaining = invitation_context(warehouse, candidate_store, engagement, config, event, "in-app", now)
        plan, held_out = hold_out(plan, config, event, "in-app", ledger, now)
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"]),
            ledger=ledger, send=in_app_channel.send, clock=clock,
        )  # fmt: skip
    return dg.MaterializeResult(metadata=run.metadata(watch, remaining_capacity=remaining, held_out=held_out))


def reminder_plan(
    warehouse: WarehouseResource, store: CandidateStoreResource, engagement: EngagementStoreResource,
    config: ProgramConfig, event: EventContext, channel: str, now: datetime,
) -> tuple[pl.DataFrame, int]:  # fmt: skip
    """Registered customers with where to reach them, timed by the program's reminderSchedule entry.

    Returns the plan and how many were dropped because the event has already started.
    """
    schedule = next(r for r in config.event_config.reminder_schedule if r.channel == channel)
    registered = registered_customers(warehouse, store, engagement, config.program_id, event.event_id, now)
    plan = campaigns.plan_reminders(
        with_contacts(registered, warehouse, store, config.program_id, event.event_id, now),
        event=event, days_before=schedule.days_before, time=schedule.time, now=now, channel=channel,
    )  # fmt: skip
    return plan.filter(~pl.col("too_late")), plan.filter(pl.col("too_late")).height


@dg.asset(**CAMPAIGN, deps=[candidates_table], kinds={"push"}, tags={"stage": "reminder", "channel": "push"},
          pool="channel-push")  # fmt: skip
def push_reminders(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    candidate_store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    ledger: DeliveryLedgerResource,
    push_channel: PushChannelResource,
    link_signing: LinkSigningResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """One day before the event: a push to every registered customer ("{eventName} Tomorrow!")."""
    config = program.load()
    event = current_event(warehouse, context.partition_key)
    if (cancelled := cancelled_result(event)) is not None:
        return cancelled
    channel = config.channel("push")
    render = partial(
        messages.render_push_reminder, event=event, title_template=channel.config["title"],
        body_template=channel.config["body"], secret=link_signing.key(), base_url=config.campaigns.link_base_url,
    )  # fmt: skip
    with stopwatch() as watch:
        plan, too_late = reminder_plan(warehouse, candidate_store, engagement, config, event, "push", clock.now())
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"]),
            ledger=ledger, send=push_channel.send, clock=clock,
        )  # fmt: skip
    return dg.MaterializeResult(metadata=run.metadata(watch, not_sent_event_started=too_late))


@dg.asset(**CAMPAIGN, deps=[candidates_table], kinds={"email"}, tags={"stage": "reminder", "channel": "email"},
          pool="channel-email")  # fmt: skip
def day_of_reminders(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    candidate_store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    ledger: DeliveryLedgerResource,
    email_channel: EmailChannelResource,
    link_signing: LinkSigningResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """The event day at 09:00 local: an email with the join link to every registered customer."""
    config = program.load()
    event = current_event(warehouse, context.partition_key)
    if (cancelled := cancelled_result(event)) is not None:
        return cancelled
    render = partial(
        messages.render_day_of_email, event=event, templates=messages.TemplateSet(), secret=link_signing.key(),
        base_url=config.campaigns.link_base_url, sender=config.campaigns.sender,
    )  # fmt: skip
    now = clock.now()
    with stopwatch() as watch:
        plan, too_late = reminder_plan(warehouse, candidate_store, engagement, config, event, "email", now)
        due, deferred = campaigns.split_due(plan, now)
        run = send_campaign(
            due, lambda row: render(row, campaign_id=row["campaign_id"], send_at=row["send_at_utc"]),
            ledger=ledger, send=email_channel.send, clock=clock, validate_email=False,
        )  # fmt: skip
    next_due = deferred["send_at_utc"].min() if deferred.height else None
    return dg.MaterializeResult(
        metadata=run.metadata(
            watch,
            not_sent_event_started=too_late,
            not_yet_due=deferred.height,
            **{PLANNED_AT: now.isoformat()},
            # The event-date sensor launches the next run at this moment (the next timezone's 09:00).
            **({NEXT_DUE_AT: next_due.isoformat()} if next_due is not None else {}),
        )
    )


@dg.asset(**CAMPAIGN, deps=["event_attendance"], kinds={"email"}, tags={"stage": "survey", "channel": "email"},
          pool="channel-email")  # fmt: skip
def post_event_surveys(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    candidate_store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    ledger: DeliveryLedgerResource,
    email_channel: EmailChannelResource,
    link_signing: LinkSigningResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """One day after the event: a one-question survey email to every attendee (not to no-shows)."""
    config = program.load()
    event = current_event(warehouse, context.partition_key)
    if (cancelled := cancelled_result(event)) is not None:
        return cancelled
    now = clock.now()
    render = partial(
        messages.render_survey_email, event=event, templates=messages.TemplateSet(), secret=link_signing.key(),
        base_url=config.campaigns.link_base_url, sender=config.campaigns.sender,
    )  # fmt: skip
    with stopwatch() as watch:
        attendees = engagement.attendance(event.event_id).select("customer_id")
        plan = campaigns.plan_follow_up(
            with_contacts(attendees, warehouse, candidate_store, config.program_id, event.event_id, now),
            event=event, channel="email", kind=MessageKind.SURVEY, now=now,
        )  # fmt: skip
        run = send_campaign(
            plan, lambda row: render(row, campaign_id=row["campaign_id"], send_at=row["send_at_utc"]),
            ledger=ledger, send=email_channel.send, clock=clock, validate_email=False,
        )  # fmt: skip
    return dg.MaterializeResult(metadata=run.metadata(watch, attendees=attendees.height))


CAMPAIGN_KINDS = {
    "email_invitations": ("email", MessageKind.INVITATION),
    "in_app_invitations": ("in-app", MessageKind.INVITATION),
    "push_reminders": ("push", MessageKind.REMINDER),
    "day_of_reminders": ("email", MessageKind.DAY_OF),
    "post_event_surveys": ("email", MessageKind.SURVEY),
}
