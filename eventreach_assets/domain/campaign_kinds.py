"""What a campaign message kind is, declared once: the table every campaign piece is generated from.

One row per asset that sends: the channel and message kind it writes to the ledger, the job that
runs it, what launches that job (`trigger`) and the lifecycle stage the event-date sensor knows it
by. The assets (assets/campaigns.py), their jobs (jobs.py), checks (checks/campaign_checks.py),
lifecycle stages (domain/lifecycle.py) and the sensors' job lists are all generated from
`CAMPAIGN_KINDS`; adding a kind is one entry here plus its asset body.

Triggers:
- `waves`: the invitation campaigns. Launched by the event-date sensor once the weekly batch has
  stored the event's candidates, then again at each `next_due_at` the last run reported (the next
  segment's local send time), until the registration deadline;
- `reminder` / `day-of` / `after-event`: event-relative steps of the event-date sensor;
- `catalog`: launched by the events-catalog sensor when the catalog changes (a reschedule, a
  cancellation, a capacity raise) or when new registrations free or add seats.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from eventreach_assets.domain.delivery import MessageKind


class Trigger(StrEnum):
    WAVES = "waves"
    REMINDER = "reminder"
    DAY_OF = "day-of"
    AFTER_EVENT = "after-event"
    CATALOG = "catalog"


@dataclass(frozen=True)
class CampaignKind:
    """One sending asset: what it sends, on which channel, launched by what."""

    asset: str  # the asset's name
    job: str  # the job that runs it (one asset per job)
    stage: str  # the lifecycle stage / run tag `eventreach/stage`
    channel: str  # email | in-app | push
    kind: MessageKind  # the ledger's message kind
    trigger: Trigger
    description: str
    upstream: tuple[str, ...] = ("candidates_table",)
    calendar_invite: bool = False  # emails carry an .ics that the validator must find
    sends_when_cancelled: bool = False  # the cancellation notice: sent only for a cancelled event
    # Marketing email stops when the campaign's circuit breaker trips (bounces / complaints); the
    # transactional notices (update, cancellation, waitlist confirmation) still go out.
    breaker: bool = False

    @property
    def pool(self) -> str:
        """The concurrency pool (dagster.yaml): never two sends on one channel at once."""
        return f"channel-{self.channel}"

    @property
    def repeats(self) -> bool:
        """Runs again at the `next_due_at` its last run reported (waves by timezone)."""
        return self.trigger in (Trigger.WAVES, Trigger.DAY_OF)


CAMPAIGN_KINDS: dict[str, CampaignKind] = {
    kind.asset: kind
    for kind in (
        CampaignKind(
            "email_invitations", "email_campaign", "email-invitation", "email", MessageKind.INVITATION,
            Trigger.WAVES, "Email invitations with .ics, each segment at its local 10:00 (Monday).",
            calendar_invite=True, breaker=True,
        ),
        CampaignKind(
            "in_app_invitations", "in_app_campaign", "in-app-invitation", "in-app", MessageKind.INVITATION,
            Trigger.WAVES, "In-app banners, each segment at its local 14:00 (Monday).",
            upstream=("email_invitations",),
        ),
        CampaignKind(
            "push_reminders", "push_reminder", "push-reminder", "push", MessageKind.REMINDER,
            Trigger.REMINDER, "Push reminder to registrants, 1 day before.",
        ),
        CampaignKind(
            "day_of_reminders", "day_of_reminder", "day-of-email", "email", MessageKind.DAY_OF,
            Trigger.DAY_OF, "Email on the event day, 09:00 local.", breaker=True,
        ),
        CampaignKind(
            "post_event_surveys", "post_event_survey", "survey", "email", MessageKind.SURVEY,
            Trigger.AFTER_EVENT, "Survey email to attendees, 1 day after the event.",
            upstream=("event_attendance",), breaker=True,
        ),
        CampaignKind(
            "event_update_emails", "event_update", "event-update", "email", MessageKind.UPDATE,
            Trigger.CATALOG, "The event moved: one update per new date to invitees and registrants (.ics SEQUENCE+1).",
            calendar_invite=True,
        ),
        CampaignKind(
            "cancellation_emails", "event_cancellation_email", "event-cancellation", "email", MessageKind.CANCELLATION,
            Trigger.CATALOG, "The event is off: a cancellation (.ics METHOD:CANCEL) to invitees and registrants, once.",
            calendar_invite=True, sends_when_cancelled=True,
        ),
        CampaignKind(
            "cancellation_pushes", "event_cancellation_push", "event-cancellation", "push", MessageKind.CANCELLATION,
            Trigger.CATALOG, "The event is off: a push to every registrant, once.", sends_when_cancelled=True,
        ),
        CampaignKind(
            "waitlist_confirmations", "waitlist_promotion", "waitlist", "email", MessageKind.WAITLIST_CONFIRMATION,
            Trigger.CATALOG, "A seat freed up or capacity was raised: the earliest waitlisted are promoted and get a "
            "confirmation with the .ics, once.", calendar_invite=True,
        ),
    )
}  # fmt: skip


def kinds_with(trigger: Trigger) -> list[CampaignKind]:
    return [kind for kind in CAMPAIGN_KINDS.values() if kind.trigger == trigger]


def kind_for_stage(stage: str) -> CampaignKind | None:
    return next((kind for kind in CAMPAIGN_KINDS.values() if kind.stage == stage), None)
