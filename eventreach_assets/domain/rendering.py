"""What each channel sends, rendered from a plan row: templated emails (invitation, day-of,
survey, update, cancellation, waitlist confirmation), push reminders and in-app banners.

Pure code, no Dagster. Every link is signed (domain/link_tokens.py). Rendering is deterministic
for a given row, campaign and send time, so a retried run produces the same message (and, on
the wire, the same bytes and Message-ID: domain/email_wire.py) as the first.

What is the same for every email of a segment (campaign x language x timezone: the template with
the event's name and local date rendered in, the link signer, the `.ics` head, the mailto prefix)
is built once and cached (`_email_segment`); per message there remain the recipient's signed
links, the first name, the `.ics` lines naming them, and the message itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from functools import lru_cache
from typing import Any

from eventreach_assets.domain.calendar_invite import (
    ICS_CANCEL,
    ICS_FILENAME,
    ICS_REQUEST,
    IcsTemplate,
    ics_content_type,
    ics_template,
)
from eventreach_assets.domain.campaigns import to_utc_naive
from eventreach_assets.domain.delivery import Attachment, DeliveryKey, MessageKind, OutboundMessage, occurrence_for
from eventreach_assets.domain.email_wire import address_domain, one_line
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.link_tokens import LinkSigner, link_prefix, link_signer
from eventreach_assets.domain.templates import (
    CANCELLATION_TEMPLATE,
    DAY_OF_TEMPLATE,
    DEFAULT_LANGUAGE,
    INVITATION_TEMPLATE,
    SURVEY_TEMPLATE,
    UPDATE_TEMPLATE,
    WAITLIST_CONFIRMATION_TEMPLATE,
    SegmentRenderer,
    TemplateSet,
    frozen_context,
    language_for,
    local_when,
)


class _RecipientLinks:
    """One recipient's signed URLs, each token signed once and only when asked for."""

    __slots__ = ("_base_url", "_customer_id", "_signer", "_tokens")

    def __init__(self, signer: LinkSigner, base_url: str, customer_id: str) -> None:
        self._signer, self._base_url, self._customer_id = signer, base_url, customer_id
        self._tokens: dict[str, str] = {}

    def token(self, action: str) -> str:
        token = self._tokens.get(action)
        if token is None:
            token = self._tokens[action] = self._signer.token(self._customer_id, action)
        return token

    def url(self, path: str, action: str) -> str:
        """`{base_url}/{path}?t={token}`; the token's alphabet is URL-safe, so it appends as is."""
        return link_prefix(self._base_url, path) + self.token(action)


def _recipient_links(
    secret: bytes | str, base_url: str, row: dict[str, Any], event: EventContext, channel: str, campaign_id: str
) -> _RecipientLinks:
    return _RecipientLinks(link_signer(secret, event.event_id, channel, campaign_id), base_url, str(row["customer_id"]))


# Template variable -> (URL path, token action); "join" and "calendar" carry a "click" token.
EMAIL_LINKS: dict[str, tuple[str, str]] = {
    "register_url": ("register", "register"),
    "join_url": ("join", "click"),
    "unsubscribe_url": ("unsubscribe", "unsubscribe"),
    "open_pixel_url": ("open", "open"),
    "calendar_url": ("calendar", "click"),
    "survey_url": ("survey", "survey"),
}
RECIPIENT_VARIABLES: tuple[str, ...] = (*EMAIL_LINKS, "first_name")  # the rest of a template's context is per segment


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


def _segment_context(event: EventContext, spec: EmailSpec, timezone: str | None, language: str) -> dict[str, Any]:
    """The template variables every recipient of a segment shares; dates worded in `language`,
    the one the template resolved to, in the segment's timezone."""
    return {
        "event_name": event.name,
        "event_topics": list(event.topics),
        **local_when(event.start_time_utc, timezone, language),
        **spec.extra_context,
    }


@dataclass(frozen=True)
class _EmailSegment:
    """What every email of one segment (campaign x language x timezone) shares, built once."""

    renderer: SegmentRenderer
    signer: LinkSigner
    actions: tuple[str, ...]  # the token actions a message needs
    urls: tuple[tuple[str, str], ...]  # (template variable, its token's action): the renderer has the address
    join_prefix: str  # the .ics join URL up to the token
    unsubscribe_prefix: str
    mailto_prefix: str  # the List-Unsubscribe mailto URI up to the token
    ics: IcsTemplate | None
    ics_content_type: str
    occurrence: str


_SEGMENTS: dict[tuple[Any, ...], _EmailSegment] = {}
_MAX_SEGMENTS = 1024


def _email_segment(
    event: EventContext, setup: EmailSetup, spec: EmailSpec, requested: str, timezone: str | None
) -> _EmailSegment:
    """The segment's templates, signer and `.ics` head, from a small cache (a campaign asks once per message)."""
    key = (
        setup.templates, setup.secret, setup.base_url, setup.sender, setup.organizer_email, spec.kind,
        spec.template_id, spec.campaign_id, spec.calendar_method, spec.calendar_sequence, spec.duration_minutes,
        frozen_context(spec.extra_context), event.event_id, event.name, tuple(event.topics), event.start_time_utc,
        requested, timezone,
    )  # fmt: skip
    segment = _SEGMENTS.get(key)
    if segment is None:
        if len(_SEGMENTS) >= _MAX_SEGMENTS:
            _SEGMENTS.clear()
        segment = _SEGMENTS[key] = _build_email_segment(event, setup, spec, requested, timezone)
    return segment


def _build_email_segment(
    event: EventContext, setup: EmailSetup, spec: EmailSpec, requested: str, timezone: str | None
) -> _EmailSegment:
    # Dates are worded in the language actually used, so a fallback reads as one language.
    language = setup.templates.resolve(spec.template_id, requested)
    shared = _segment_context(event, spec, timezone, language)
    per_recipient = [name for name in RECIPIENT_VARIABLES if name not in spec.extra_context]
    ics = None
    if spec.calendar_method is not None:
        organizer = setup.organizer_email or parseaddr(setup.sender)[1]
        ics = ics_template(event.event_id, event.name, event.start_time_utc, spec.duration_minutes,
                           spec.calendar_method, None, spec.calendar_sequence, organizer)  # fmt: skip
    # A link's address up to its token is the segment's: rendered into the template once.
    prefixes = {name: link_prefix(setup.base_url, path) for name, (path, _) in EMAIL_LINKS.items()}
    renderer = setup.templates.segment_renderer(spec.template_id, requested, shared, per_recipient, prefixes)
    urls = tuple((name, EMAIL_LINKS[name][1]) for name in sorted(renderer.needs) if name in EMAIL_LINKS)
    return _EmailSegment(
        renderer=renderer,
        signer=link_signer(setup.secret, event.event_id, "email", spec.campaign_id),
        actions=tuple(sorted({"unsubscribe", *(["click"] if ics else []), *(action for _, action in urls)})),
        urls=urls,
        join_prefix=link_prefix(setup.base_url, "join"),
        unsubscribe_prefix=link_prefix(setup.base_url, "unsubscribe"),
        mailto_prefix=f"mailto:unsubscribe@{address_domain(setup.sender)}?subject=unsubscribe%20",
        ics=ics,
        ics_content_type=ics_content_type(spec.calendar_method) if spec.calendar_method else "",
        occurrence=occurrence_for(spec.kind, event.start_time_utc),
    )


def _email_message(
    row: dict[str, Any], event: EventContext, setup: EmailSetup, spec: EmailSpec, send_at: datetime | None
) -> OutboundMessage:
    """One email of any kind, for one plan row (customer_id, email, marketplace, timezone, first_name),
    sent at `send_at` (the spec's own is ignored: a spec may be shared by a whole campaign)."""
    customer_id = str(row["customer_id"])
    recipient = row.get("email")
    if not recipient:
        raise ValueError(f"customer {customer_id} has no email address")
    requested = language_for(row.get("marketplace"))
    segment = _email_segment(event, setup, spec, requested, row.get("timezone"))
    tokens = segment.signer.tokens(customer_id, segment.actions)
    values = {name: tokens[action] for name, action in segment.urls}
    values["first_name"] = row.get("first_name") or ""
    rendered = segment.renderer.render(values)
    attachments: tuple[Attachment, ...] = ()
    if segment.ics is not None:
        join_url, stamp = segment.join_prefix + tokens["click"], send_at or datetime.now(UTC)
        ics = segment.ics.render(customer_id=customer_id, attendee_email=str(recipient), join_url=join_url, stamp=stamp)
        attachments = (Attachment(ICS_FILENAME, segment.ics_content_type, ics),)
    unsubscribe = tokens["unsubscribe"]  # its alphabet needs no percent-encoding in either URI
    return OutboundMessage(
        key=DeliveryKey(customer_id, event.event_id, "email", spec.kind, segment.occurrence),
        campaign_id=spec.campaign_id,
        recipient=str(recipient),
        subject=rendered.subject,
        body_text=rendered.text,
        body_html=rendered.html,
        headers={
            "From": setup.sender,
            # RFC 2369 + RFC 8058 one-click unsubscribe
            "List-Unsubscribe": f"<{segment.unsubscribe_prefix}{unsubscribe}>, <{segment.mailto_prefix}{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-EventReach-Campaign": spec.campaign_id,
            "Content-Language": rendered.used_language,
        },
        attachments=attachments,
        payload={
            "template_id": spec.template_id,
            "language": rendered.used_language,
            "requested_language": requested,
            "fell_back": rendered.fell_back,
        },
        scheduled_at=to_utc_naive(send_at) if send_at else None,
    )


@lru_cache(maxsize=256)
def _cached_setup(templates: TemplateSet, secret: bytes | str, base_url: str, sender: str,
                  organizer_email: str | None) -> EmailSetup:  # fmt: skip
    return EmailSetup(templates, secret, base_url, sender, organizer_email)


@lru_cache(maxsize=256)
def _cached_spec(kind: MessageKind, template_id: str, campaign_id: str, calendar_method: str | None,
                 duration_minutes: int) -> EmailSpec:  # fmt: skip
    """A campaign's EmailSpec without extra context, built once (its send_at is passed per message)."""
    return EmailSpec(kind, template_id, campaign_id, None, calendar_method, duration_minutes=duration_minutes)


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
    setup = _cached_setup(templates, secret, base_url, sender, organizer_email)
    invite = ICS_REQUEST if include_calendar_invite else None
    spec = _cached_spec(MessageKind.INVITATION, template_id, campaign_id, invite, duration_minutes)
    return _email_message(row, event, setup, spec, send_at)


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
    setup = _cached_setup(templates, secret, base_url, sender, organizer_email)
    invite = ICS_REQUEST if include_calendar_invite else None
    spec = _cached_spec(MessageKind.DAY_OF, template_id, campaign_id, invite, duration_minutes)
    return _email_message(row, event, setup, spec, send_at)


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
    spec = _cached_spec(MessageKind.SURVEY, template_id, campaign_id, None, 60)
    return _email_message(row, event, _cached_setup(templates, secret, base_url, sender, None), spec, send_at)


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
    return _email_message(row, event, EmailSetup(templates, secret, base_url, sender, organizer_email), spec, send_at)


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
    return _email_message(row, event, EmailSetup(templates, secret, base_url, sender, organizer_email), spec, send_at)


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
    return _email_message(row, event, EmailSetup(templates, secret, base_url, sender, organizer_email), spec, send_at)


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
    links = _recipient_links(secret, base_url, row, event, "push", campaign_id)
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
            "deep_link": links.url("calendar", "click"),
            "open_url": links.url("open", "open"),  # the app pings it when the notification is opened
            "join_url": links.url("join", "click"),
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
    links = _recipient_links(secret, base_url, row, event, "push", campaign_id)
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
            "open_url": links.url("open", "open"),  # the app pings it when the notification is opened
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
    links = _recipient_links(secret, base_url, row, event, "in-app", campaign_id)
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
            "cta_url": links.url("register", "register"),
            "click_url": links.url("click", "click"),
            "impression_url": links.url("open", "open"),
            "display_from": start.isoformat() + "Z",
            "display_until": until.isoformat() + "Z",
            "event_start_utc": to_utc_naive(event.start_time_utc).isoformat() + "Z",
        },
        scheduled_at=start,
    )
