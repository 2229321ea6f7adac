"""What each channel sends, rendered from a plan row: templated emails (invitation, day-of,
survey, update, cancellation, waitlist confirmation), push reminders and in-app banners.

Pure code, no Dagster. Every link is signed (domain/link_tokens.py). Rendering is deterministic
for a given row, campaign and send time, so a retried run produces the same message (and, on
the wire, the same bytes and Message-ID: domain/email_wire.py) as the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any
from urllib.parse import quote

from eventreach_assets.domain.calendar_invite import (
    ICS_CANCEL,
    ICS_FILENAME,
    ICS_REQUEST,
    calendar_invite,
    ics_content_type,
)
from eventreach_assets.domain.campaigns import to_utc_naive
from eventreach_assets.domain.delivery import Attachment, DeliveryKey, MessageKind, OutboundMessage, occurrence_for
from eventreach_assets.domain.email_wire import address_domain, one_line
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.link_tokens import link, sign_link_token
from eventreach_assets.domain.templates import (
    CANCELLATION_TEMPLATE,
    DAY_OF_TEMPLATE,
    DEFAULT_LANGUAGE,
    INVITATION_TEMPLATE,
    SURVEY_TEMPLATE,
    UPDATE_TEMPLATE,
    WAITLIST_CONFIRMATION_TEMPLATE,
    TemplateSet,
    language_for,
    local_when,
)


def _signed_links(
    secret: bytes | str, base_url: str, row: dict[str, Any], event: EventContext, channel: str, campaign_id: str
) -> dict[str, str]:
    """The signed URLs one message needs, keyed by purpose."""

    def token(action: str) -> str:
        return sign_link_token(
            secret,
            customer_id=str(row["customer_id"]),
            event_id=event.event_id,
            channel=channel,
            campaign_id=campaign_id,
            action=action,
        )

    click = token("click")
    return {
        "register": link(base_url, "register", token("register")),
        "unsubscribe": link(base_url, "unsubscribe", token("unsubscribe")),
        "open": link(base_url, "open", token("open")),
        "click": link(base_url, "click", click),
        "join": link(base_url, "join", click),
        "calendar": link(base_url, "calendar", click),
        "unsubscribe_token": token("unsubscribe"),
        "survey": link(base_url, "survey", token("survey")),
    }


def _unsubscribe_headers(unsubscribe_url: str, unsubscribe_token: str, sender: str) -> dict[str, str]:
    """RFC 2369 + RFC 8058 one-click unsubscribe, as bulk-sender rules of large mailbox providers require."""
    mailto = f"mailto:unsubscribe@{address_domain(sender)}?subject=unsubscribe%20{quote(unsubscribe_token, safe='')}"
    return {
        "List-Unsubscribe": f"<{unsubscribe_url}>, <{mailto}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


@dataclass(frozen=True)
class EmailSetup:
    """What every email of a campaign shares: its templates, how links are signed, who sends it."""

    templates: TemplateSet
    secret: bytes | str
    base_url: str
    sender: str
    organizer_email: str | None = None  # the invite's organizer; default: the sender's address


@dataclass(frozen=True)
class EmailSpec:
    """What one email is: its kind and template, its campaign and send time, and the calendar part.

    `calendar_method` None sends no invite; otherwise the .ics has that method and
    `calendar_sequence` (see calendar_invite). The key carries the event date for kinds sent once
    per date (delivery.PER_DATE_KINDS).
    """

    kind: MessageKind
    template_id: str
    campaign_id: str
    send_at: datetime | None
    calendar_method: str | None = None
    calendar_sequence: int = 0
    duration_minutes: int = 60
    extra_context: dict[str, Any] = field(default_factory=dict)


def _email_context(
    row: dict[str, Any], event: EventContext, links: dict[str, str], spec: EmailSpec, language: str
) -> dict[str, Any]:
    """The template's variables; dates are worded in `language`, the one the template resolved to."""
    return {
        "event_name": event.name,
        "event_topics": list(event.topics),
        **local_when(event.start_time_utc, row.get("timezone"), language),
        "register_url": links["register"],
        "join_url": links["join"],
        "unsubscribe_url": links["unsubscribe"],
        "open_pixel_url": links["open"],
        "calendar_url": links["calendar"],
        "survey_url": links["survey"],
        "first_name": row.get("first_name") or "",
        **spec.extra_context,
    }


def _calendar_attachments(
    event: EventContext, customer_id: str, recipient: str, join_url: str, setup: EmailSetup, spec: EmailSpec
) -> tuple[Attachment, ...]:
    """The .ics the spec asks for (none when `calendar_method` is None)."""
    if spec.calendar_method is None:
        return ()
    ics = calendar_invite(
        event,
        customer_id=customer_id,
        organizer_email=setup.organizer_email or parseaddr(setup.sender)[1],
        join_url=join_url,
        duration_minutes=spec.duration_minutes,
        attendee_email=recipient,
        stamp=spec.send_at,
        sequence=spec.calendar_sequence,
        method=spec.calendar_method,
    )
    return (Attachment(ICS_FILENAME, ics_content_type(spec.calendar_method), ics),)


def _email_message(row: dict[str, Any], event: EventContext, setup: EmailSetup, spec: EmailSpec) -> OutboundMessage:
    """One email of any kind, for one plan row (customer_id, email, marketplace, timezone, first_name)."""
    customer_id = str(row["customer_id"])
    recipient = row.get("email")
    if not recipient:
        raise ValueError(f"customer {customer_id} has no email address")
    requested = language_for(row.get("marketplace"))
    links = _signed_links(setup.secret, setup.base_url, row, event, "email", spec.campaign_id)
    # Dates are worded in the language actually used, so a fallback reads as one language.
    language = setup.templates.resolve(spec.template_id, requested)
    context = _email_context(row, event, links, spec, language)
    rendered = setup.templates.render(spec.template_id, requested, context)
    headers = {
        "From": setup.sender,
        **_unsubscribe_headers(links["unsubscribe"], links["unsubscribe_token"], setup.sender),
        "X-EventReach-Campaign": spec.campaign_id,
        "Content-Language": rendered.used_language,
    }
    occurrence = occurrence_for(spec.kind, event.start_time_utc)
    return OutboundMessage(
        key=DeliveryKey(customer_id, event.event_id, "email", spec.kind, occurrence),
        campaign_id=spec.campaign_id,
        recipient=str(recipient),
        subject=rendered.subject,
        body_text=rendered.text,
        body_html=rendered.html,
        headers=headers,
        attachments=_calendar_attachments(event, customer_id, str(recipient), links["join"], setup, spec),
        payload={
            "template_id": spec.template_id,
            "language": rendered.used_language,
            "requested_language": requested,
            "fell_back": rendered.fell_back,
        },
        scheduled_at=to_utc_naive(spec.send_at) if spec.send_at else None,
    )


def render_invitation_email(
    row: dict[str, Any],
    *,
    event: EventContext,
    templates: TemplateSet,
    secret: bytes | str,
    base_url: str,
    sender: str,
    organizer_email: str,
    campaign_id: str,
    include_calendar_invite: bool,
    send_at: datetime | None,
    template_id: str = INVITATION_TEMPLATE,
    duration_minutes: int = 60,
) -> OutboundMessage:
    """The invitation email for one plan row (customer_id, email, marketplace, timezone).

    Subject "Join us for {event} on {date}" in the customer's local date and time, a signed
    "Register Now" link, an open pixel, one-click unsubscribe headers and, when asked, the .ics.
    `payload` records the template, language and whether it fell back to English.
    """
    setup = EmailSetup(templates, secret, base_url, sender, organizer_email)
    invite = ICS_REQUEST if include_calendar_invite else None
    spec = EmailSpec(
        MessageKind.INVITATION, template_id, campaign_id, send_at, invite, duration_minutes=duration_minutes
    )
    return _email_message(row, event, setup, spec)


def render_day_of_email(
    row: dict[str, Any],
    *,
    event: EventContext,
    templates: TemplateSet,
    secret: bytes | str,
    base_url: str,
    sender: str,
    campaign_id: str,
    send_at: datetime | None = None,
    organizer_email: str | None = None,
    template_id: str = DAY_OF_TEMPLATE,
    include_calendar_invite: bool = False,
    duration_minutes: int = 60,
) -> OutboundMessage:
    """The event-day reminder email to a registered customer, with the (signed) join link.

    `organizer_email` (default: the sender's address) only matters with a calendar invite.
    """
    setup = EmailSetup(templates, secret, base_url, sender, organizer_email)
    invite = ICS_REQUEST if include_calendar_invite else None
    spec = EmailSpec(MessageKind.DAY_OF, template_id, campaign_id, send_at, invite, duration_minutes=duration_minutes)
    return _email_message(row, event, setup, spec)


def render_survey_email(
    row: dict[str, Any],
    *,
    event: EventContext,
    templates: TemplateSet,
    secret: bytes | str,
    base_url: str,
    sender: str,
    campaign_id: str,
    send_at: datetime | None = None,
    template_id: str = SURVEY_TEMPLATE,
) -> OutboundMessage:
    """The post-event survey to an attendee: a signed survey link, so answers can't be forged."""
    spec = EmailSpec(MessageKind.SURVEY, template_id, campaign_id, send_at)
    return _email_message(row, event, EmailSetup(templates, secret, base_url, sender), spec)


def _previous_when(row: dict[str, Any], previous_start_utc: datetime | None, templates: TemplateSet,
                   template_id: str) -> dict[str, str]:  # fmt: skip
    """`previous_event_when` (the old date, worded like the new one), "" when unknown."""
    if previous_start_utc is None:
        return {"previous_event_when": ""}
    language = templates.resolve(template_id, language_for(row.get("marketplace")))
    return {"previous_event_when": local_when(previous_start_utc, row.get("timezone"), language)["event_when"]}


def render_update_email(
    row: dict[str, Any],
    *,
    event: EventContext,
    templates: TemplateSet,
    secret: bytes | str,
    base_url: str,
    sender: str,
    campaign_id: str,
    sequence: int,
    send_at: datetime | None = None,
    organizer_email: str | None = None,
    previous_start_utc: datetime | None = None,
    template_id: str = UPDATE_TEMPLATE,
    duration_minutes: int = 60,
) -> OutboundMessage:
    """The event moved: "Updated: ..." with the new times and an .ics METHOD:REQUEST under the
    original UID with `sequence` (delivery.calendar_sequences), so calendars move the entry.

    `event` carries the new start; the key's occurrence is that start, so each new date is
    announced once. `previous_start_utc`, when known, is worded in the body ("was ...").
    """
    if sequence < 1:
        raise ValueError(f"an update's SEQUENCE must be above the invitation's 0, got {sequence}")
    previous = _previous_when(row, previous_start_utc, templates, template_id)
    spec = EmailSpec(
        MessageKind.UPDATE,
        template_id,
        campaign_id,
        send_at,
        calendar_method=ICS_REQUEST,
        calendar_sequence=sequence,
        duration_minutes=duration_minutes,
        extra_context=previous,
    )
    return _email_message(row, event, EmailSetup(templates, secret, base_url, sender, organizer_email), spec)


def render_cancellation_email(
    row: dict[str, Any],
    *,
    event: EventContext,
    templates: TemplateSet,
    secret: bytes | str,
    base_url: str,
    sender: str,
    campaign_id: str,
    sequence: int,
    send_at: datetime | None = None,
    organizer_email: str | None = None,
    template_id: str = CANCELLATION_TEMPLATE,
    duration_minutes: int = 60,
) -> OutboundMessage:
    """The event is off: a cancellation with an .ics METHOD:CANCEL, STATUS:CANCELLED under the
    original UID with `sequence`, so calendars remove the entry. Sent once per customer and event."""
    if sequence < 1:
        raise ValueError(f"a cancellation's SEQUENCE must be above the invitation's 0, got {sequence}")
    spec = EmailSpec(
        MessageKind.CANCELLATION,
        template_id,
        campaign_id,
        send_at,
        calendar_method=ICS_CANCEL,
        calendar_sequence=sequence,
        duration_minutes=duration_minutes,
    )
    return _email_message(row, event, EmailSetup(templates, secret, base_url, sender, organizer_email), spec)


def render_waitlist_confirmation_email(
    row: dict[str, Any],
    *,
    event: EventContext,
    templates: TemplateSet,
    secret: bytes | str,
    base_url: str,
    sender: str,
    campaign_id: str,
    sequence: int,
    send_at: datetime | None = None,
    organizer_email: str | None = None,
    template_id: str = WAITLIST_CONFIRMATION_TEMPLATE,
    duration_minutes: int = 60,
) -> OutboundMessage:
    """A seat freed up: the promoted customer's confirmation with the join link and an .ics
    METHOD:REQUEST (`sequence` from delivery.calendar_sequences, so it also supersedes an
    invitation already in their calendar). Sent once per customer and event."""
    if sequence < 0:
        raise ValueError(f"sequence must be >= 0, got {sequence}")
    kind = MessageKind.WAITLIST_CONFIRMATION
    spec = EmailSpec(
        kind,
        template_id,
        campaign_id,
        send_at,
        calendar_method=ICS_REQUEST,
        calendar_sequence=sequence,
        duration_minutes=duration_minutes,
    )
    return _email_message(row, event, EmailSetup(templates, secret, base_url, sender, organizer_email), spec)


class _KeepUnknown(dict[str, str]):
    """format_map mapping that leaves unknown {placeholders} as they are instead of failing."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_push_reminder(
    row: dict[str, Any],
    *,
    event: EventContext,
    title_template: str,
    body_template: str,
    secret: bytes | str,
    base_url: str,
    campaign_id: str,
    send_at: datetime | None = None,
    kind: MessageKind = MessageKind.REMINDER,
) -> OutboundMessage:
    """Push reminder from the YAML's `{eventName}` / `{eventTime}` templates, time in the
    customer's timezone, with an "Add to Calendar" action whose deep link is signed."""
    customer_id = str(row["customer_id"])
    language = language_for(row.get("marketplace"))
    when = local_when(event.start_time_utc, row.get("timezone"), language)
    values = _KeepUnknown(
        eventName=event.name, eventTime=when["event_time"], eventDate=when["event_date"], eventWhen=when["event_when"]
    )
    links = _signed_links(secret, base_url, row, event, "push", campaign_id)
    title = one_line(title_template.format_map(values))
    body = one_line(body_template.format_map(values))
    return OutboundMessage(
        key=DeliveryKey(customer_id, event.event_id, "push", kind, occurrence_for(kind, event.start_time_utc)),
        campaign_id=campaign_id,
        recipient=str(row.get("push_target") or customer_id),
        subject=title,
        body_text=body,
        payload={
            "title": title,
            "body": body,
            "action": "Add to Calendar",
            "deep_link": links["calendar"],
            "open_url": links["open"],  # the app pings it when the notification is opened
            "join_url": links["join"],
            "event_id": event.event_id,
        },
        scheduled_at=to_utc_naive(send_at) if send_at else None,
    )


# Cancellation push texts per language ({eventName}, {eventDate}, {eventTime}, {eventWhen}); English fallback.
CANCELLATION_PUSH_TEXT: dict[str, tuple[str, str]] = {
    "en": ("Cancelled: {eventName}", "{eventName} on {eventWhen} will not take place. We're sorry."),
    "de": ("Abgesagt: {eventName}", "{eventName} am {eventWhen} findet nicht statt. Das tut uns leid."),
    "fr": ("Annulé : {eventName}", "{eventName} du {eventWhen} n'aura pas lieu. Nous en sommes désolés."),
}


def render_cancellation_push(
    row: dict[str, Any],
    *,
    event: EventContext,
    secret: bytes | str,
    base_url: str,
    campaign_id: str,
    send_at: datetime | None = None,
    title_template: str | None = None,
    body_template: str | None = None,
) -> OutboundMessage:
    """The push telling a registrant the event is off (like render_push_reminder: local date and
    time, signed open link), worded in their language unless templates are given. No join or
    calendar action: there is nothing to join."""
    customer_id = str(row["customer_id"])
    requested = language_for(row.get("marketplace"))
    language = requested if requested in CANCELLATION_PUSH_TEXT else DEFAULT_LANGUAGE
    default_title, default_body = CANCELLATION_PUSH_TEXT[language]
    when = local_when(event.start_time_utc, row.get("timezone"), language)
    values = _KeepUnknown(
        eventName=event.name, eventTime=when["event_time"], eventDate=when["event_date"], eventWhen=when["event_when"]
    )
    links = _signed_links(secret, base_url, row, event, "push", campaign_id)
    title = one_line((title_template or default_title).format_map(values))
    body = one_line((body_template or default_body).format_map(values))
    return OutboundMessage(
        key=DeliveryKey(customer_id, event.event_id, "push", MessageKind.CANCELLATION),
        campaign_id=campaign_id,
        recipient=str(row.get("push_target") or customer_id),
        subject=title,
        body_text=body,
        payload={
            "title": title,
            "body": body,
            "status": "cancelled",
            "open_url": links["open"],  # the app pings it when the notification is opened
            "event_id": event.event_id,
            "language": language,
        },
        scheduled_at=to_utc_naive(send_at) if send_at else None,
    )


def render_in_app_banner(
    row: dict[str, Any],
    *,
    event: EventContext,
    banner_type: str,
    placement: str,
    display_days: int,
    secret: bytes | str,
    base_url: str,
    campaign_id: str,
    send_at: datetime | None = None,
    now: datetime | None = None,
) -> OutboundMessage:
    """In-app invitation banner: shown from `send_at` (else `now`) for `display_days`, never past
    the event start."""
    shown_from = send_at or now
    if shown_from is None:
        raise ValueError("an in-app banner needs send_at or now (when it starts showing)")
    customer_id = str(row["customer_id"])
    language = language_for(row.get("marketplace"))
    when = local_when(event.start_time_utc, row.get("timezone"), language)
    links = _signed_links(secret, base_url, row, event, "in-app", campaign_id)
    start = to_utc_naive(shown_from)
    until = min(start + timedelta(days=display_days), to_utc_naive(event.start_time_utc))
    headline = one_line(f"{event.name} — {when['event_when']}")
    return OutboundMessage(
        key=DeliveryKey(customer_id, event.event_id, "in-app", MessageKind.INVITATION),
        campaign_id=campaign_id,
        recipient=customer_id,
        subject=headline,
        body_text=f"Join us for {event.name}.",
        payload={
            "banner_type": banner_type,
            "placement": placement,
            "event_id": event.event_id,
            "event_name": event.name,
            "headline": headline,
            "cta_label": "Register Now",
            "cta_url": links["register"],
            "click_url": links["click"],
            "impression_url": links["open"],
            "display_from": start.isoformat() + "Z",
            "display_until": until.isoformat() + "Z",
            "event_start_utc": to_utc_naive(event.start_time_utc).isoformat() + "Z",
        },
        scheduled_at=start,
    )
