"""Rendering what each channel sends: signed links, calendar invites, templated emails, push
reminders, in-app banners, and the RFC 5322 form every email provider receives.

Pure code, no Dagster. Every link in a message carries a signed token naming customer, event,
channel, campaign and action, so a click, a registration or an unsubscribe can be attributed and
cannot be forged for someone else. Rendering is deterministic for a given row, campaign and
send time, so a retried run produces the same bytes (and the same Message-ID) as the first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.headerregistry import UnstructuredHeader
from email.message import EmailMessage, Message
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import icalendar
import jinja2

from eventreach_assets.domain.campaigns import to_local, to_utc_naive
from eventreach_assets.domain.delivery import Attachment, DeliveryKey, MessageKind, OutboundMessage, occurrence_for
from eventreach_assets.domain.events import EventContext

# ---- signed links ------------------------------------------------------------------------

LINK_ACTIONS: frozenset[str] = frozenset({"register", "unsubscribe", "open", "click", "survey"})
_TOKEN_VERSION = 1


class InvalidLinkToken(ValueError):
    """A link token that is malformed, forged, tampered with, or used for the wrong action."""


@dataclass(frozen=True)
class LinkClaims:
    """Who and what a verified link token is about."""

    customer_id: str
    event_id: str
    channel: str
    campaign_id: str
    action: str


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the link signing secret must not be empty")
    return key


def _signature(secret: bytes | str, payload_b64: str) -> bytes:
    return hmac.new(_key(secret), f"v{_TOKEN_VERSION}.{payload_b64}".encode("ascii"), hashlib.sha256).digest()


def sign_link_token(
    secret: bytes | str, *, customer_id: str, event_id: str, channel: str, campaign_id: str, action: str
) -> str:
    """URL-safe token `payload.signature`: HMAC-SHA256 over canonical JSON (sorted keys, compact).

    Deterministic (no timestamp): the same message renders the same links on every retry, and an
    unsubscribe link keeps working for as long as the mail sits in an inbox.
    """
    if action not in LINK_ACTIONS:
        raise ValueError(f"unknown link action {action!r}; expected one of {sorted(LINK_ACTIONS)}")
    claims = {"a": action, "c": customer_id, "ch": channel, "e": event_id, "k": campaign_id, "v": _TOKEN_VERSION}
    payload_b64 = _b64encode(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    return f"{payload_b64}.{_b64encode(_signature(secret, payload_b64))}"


def verify_link_token(secret: bytes | str, token: str, *, action: str | None = None) -> LinkClaims:
    """The claims of a genuine token; raises InvalidLinkToken saying why otherwise.

    The signature is checked (in constant time) before the payload is parsed, so nothing an
    attacker controls is interpreted unless we signed it. `action`, when given, must match: an
    open-pixel token cannot be replayed as an unsubscribe or a registration.
    """
    if not isinstance(token, str) or token.count(".") != 1:
        raise InvalidLinkToken("malformed token: expected payload.signature")
    payload_b64, signature_b64 = token.split(".")
    try:
        signature = _b64decode(signature_b64)
        payload_bytes = _b64decode(payload_b64)
    except (binascii.Error, ValueError) as error:
        raise InvalidLinkToken("malformed token: not URL-safe base64") from error
    if not hmac.compare_digest(signature, _signature(secret, payload_b64)):
        raise InvalidLinkToken("bad signature: token was not issued by us or was altered")
    try:
        claims = json.loads(payload_bytes)
        parsed = LinkClaims(
            customer_id=claims["c"],
            event_id=claims["e"],
            channel=claims["ch"],
            campaign_id=claims["k"],
            action=claims["a"],
        )
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidLinkToken("malformed token: payload is not a claims object") from error
    if claims.get("v") != _TOKEN_VERSION:
        raise InvalidLinkToken(f"unsupported token version {claims.get('v')!r}")
    if action is not None and parsed.action != action:
        raise InvalidLinkToken(f"token is for action {parsed.action!r}, not {action!r}")
    return parsed


def link(base_url: str, action: str, token: str) -> str:
    """`{base_url}/{action}?t={token}`: the URL a tracking/landing service serves for `action`.

    `action` is the path; it is usually the token's action, but e.g. "join" or "calendar" paths
    carry a "click" token.
    """
    if not re.fullmatch(r"[a-z][a-z0-9-]*", action):
        raise ValueError(f"link path must be a lowercase slug, got {action!r}")
    return f"{base_url.rstrip('/')}/{action}?t={quote(token, safe='')}"


def _signed(
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


# ---- calendar invite (RFC 5545 / iTIP RFC 5546 REQUEST and CANCEL) ------------------------

ICS_REQUEST = "REQUEST"  # invite, or update of an invite (same UID, higher SEQUENCE)
ICS_CANCEL = "CANCEL"  # the event is off: calendars remove the entry with that UID
ICS_METHODS: frozenset[str] = frozenset({ICS_REQUEST, ICS_CANCEL})
ICS_CONFIRMED = "CONFIRMED"
ICS_CANCELLED = "CANCELLED"
ICS_STATUSES: frozenset[str] = frozenset({ICS_CONFIRMED, ICS_CANCELLED})
ICS_FILENAME = "invite.ics"
_PRODID = "-//EventReach//Event Invitations//EN"


def ics_content_type(method: str = ICS_REQUEST) -> str:
    """The attachment's content type: mail clients read the iTIP method from it (RFC 6047)."""
    if method not in ICS_METHODS:
        raise ValueError(f"calendar method must be one of {sorted(ICS_METHODS)}, got {method!r}")
    return f"text/calendar; method={method}; charset=utf-8"


ICS_CONTENT_TYPE = ics_content_type(ICS_REQUEST)
ICS_CANCEL_CONTENT_TYPE = ics_content_type(ICS_CANCEL)


def calendar_uid(event_id: str, customer_id: str) -> str:
    """Stable per customer x event, so a resent or updated invite replaces the calendar entry
    instead of adding a second one (and reveals no customer id)."""
    return f"{hashlib.sha256(f'{event_id}:{customer_id}'.encode()).hexdigest()}@eventreach"


def calendar_invite(
    event: EventContext,
    *,
    customer_id: str,
    organizer_email: str,
    join_url: str,
    duration_minutes: int = 60,
    attendee_email: str | None = None,
    organizer_name: str = "EventReach",
    stamp: datetime | None = None,
    sequence: int = 0,
    method: str = ICS_REQUEST,
    status: str | None = None,
) -> bytes:
    """The `.ics` bytes of an iTIP invite (METHOD:REQUEST) or cancellation (METHOD:CANCEL), times in UTC.

    The UID is `calendar_uid(event, customer)` whatever the method, so an update or a cancellation
    acts on the entry the original invitation (SEQUENCE 0) created; calendars apply it only if its
    SEQUENCE is higher than the one they hold (see delivery.calendar_sequences). `status` defaults
    to CONFIRMED for a REQUEST and CANCELLED for a CANCEL. `stamp` (DTSTAMP) defaults to now; pass
    the send time to make the bytes reproducible.
    """
    if duration_minutes <= 0:
        raise ValueError(f"duration_minutes must be positive, got {duration_minutes}")
    if method not in ICS_METHODS:
        raise ValueError(f"calendar method must be one of {sorted(ICS_METHODS)}, got {method!r}")
    status = status or (ICS_CANCELLED if method == ICS_CANCEL else ICS_CONFIRMED)
    if status not in ICS_STATUSES:
        raise ValueError(f"calendar status must be one of {sorted(ICS_STATUSES)}, got {status!r}")
    if sequence < 0:
        raise ValueError(f"sequence must be >= 0, got {sequence}")
    start = to_utc_naive(event.start_time_utc).replace(tzinfo=UTC)
    calendar = icalendar.Calendar()
    calendar.add("prodid", _PRODID)
    calendar.add("version", "2.0")
    calendar.add("method", method)
    vevent = icalendar.Event()
    vevent.add("uid", calendar_uid(event.event_id, customer_id))
    vevent.add(
        "dtstamp", (to_utc_naive(stamp) if stamp else datetime.now(UTC).replace(tzinfo=None)).replace(tzinfo=UTC)
    )
    vevent.add("dtstart", start)
    vevent.add("dtend", start + timedelta(minutes=duration_minutes))
    vevent.add("sequence", sequence)
    vevent.add("status", status)
    vevent.add("summary", event.name)
    vevent.add("description", f"{event.name}\n\nJoin online: {join_url}")
    vevent.add("location", join_url)
    vevent.add("url", join_url)
    organizer = icalendar.vCalAddress(f"mailto:{organizer_email}")
    organizer.params["cn"] = icalendar.vText(organizer_name)
    vevent.add("organizer", organizer)
    if attendee_email:
        attendee = icalendar.vCalAddress(f"mailto:{attendee_email}")
        attendee.params["role"] = icalendar.vText("REQ-PARTICIPANT")
        attendee.params["partstat"] = icalendar.vText("NEEDS-ACTION")
        attendee.params["rsvp"] = icalendar.vText("FALSE")
        vevent.add("attendee", attendee)
    calendar.add_component(vevent)
    return calendar.to_ical()


# ---- templates -----------------------------------------------------------------------------

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
DEFAULT_LANGUAGE = "en"
INVITATION_TEMPLATE = "event-invitation-v3"
DAY_OF_TEMPLATE = "event-day-of-v1"
SURVEY_TEMPLATE = "event-survey-v1"
UPDATE_TEMPLATE = "event-update-v1"
CANCELLATION_TEMPLATE = "event-cancellation-v1"
WAITLIST_CONFIRMATION_TEMPLATE = "event-waitlist-confirmation-v1"
MARKETPLACE_LANGUAGE: dict[str, str] = {
    "US": "en",
    "UK": "en",
    "GB": "en",
    "AU": "en",
    "IN": "en",
    "DE": "de",
    "FR": "fr",
    "JP": "ja",
    "BR": "pt",
}


def language_for(marketplace: str | None) -> str:
    """The language a marketplace's customers read; English when the marketplace is unknown."""
    return MARKETPLACE_LANGUAGE.get((marketplace or "").upper(), DEFAULT_LANGUAGE)


class RenderedTemplate(NamedTuple):
    subject: str
    text: str
    html: str
    used_language: str
    fell_back: bool  # the requested language had no translation; English was used


def _one_line(text: str) -> str:
    """Headers are one line: collapse whitespace so no value (e.g. an event name) can inject one."""
    return " ".join(text.split())


class TemplateSet:
    """Versioned templates on disk: `<directory>/<template_id>/<language>/{subject.txt,body.txt,body.html}`.

    HTML is autoescaped (event names and customer data are untrusted); undefined variables fail
    loudly instead of rendering an empty greeting.
    """

    FILES = ("subject.txt", "body.txt", "body.html")

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else TEMPLATES_DIR
        self.environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        self._languages: dict[str, list[str]] = {}

    def languages(self, template_id: str) -> list[str]:
        """Languages with a complete translation of `template_id` (read once per TemplateSet)."""
        if template_id not in self._languages:
            root = self.directory / template_id
            found = [] if not root.is_dir() else [p for p in root.iterdir() if p.is_dir()]
            self._languages[template_id] = sorted(
                p.name for p in found if all((p / name).is_file() for name in self.FILES)
            )
        return self._languages[template_id]

    def resolve(self, template_id: str, language: str) -> str:
        """The language that will be used for `language`: itself if translated, else English."""
        available = self.languages(template_id)
        if DEFAULT_LANGUAGE not in available:
            raise LookupError(f"template {template_id!r} has no {DEFAULT_LANGUAGE!r} version in {self.directory}")
        return language if language in available else DEFAULT_LANGUAGE

    def render(self, template_id: str, language: str, context: dict[str, Any]) -> RenderedTemplate:
        """Render one message; a missing translation falls back to English and says so."""
        used = self.resolve(template_id, language)

        def render(name: str) -> str:
            return self.environment.get_template(f"{template_id}/{used}/{name}").render(**context)

        return RenderedTemplate(
            subject=_one_line(render("subject.txt")),
            text=render("body.txt").strip() + "\n",
            html=render("body.html"),
            used_language=used,
            fell_back=used != language,
        )


# ---- localized dates -------------------------------------------------------------------

_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
}
_WEEKDAYS = {
    "en": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "de": "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",
    "fr": "lundi mardi mercredi jeudi vendredi samedi dimanche",
}


def local_when(moment_utc: datetime, timezone: str | None, language: str) -> dict[str, str]:
    """Date, time and both together in the customer's timezone, worded for `language`.

    Languages without a table here use English wording (the template fell back to English too).
    """
    local = to_local(moment_utc, timezone)
    lang = language if language in _MONTHS else DEFAULT_LANGUAGE
    month = _MONTHS[lang].split()[local.month - 1]
    weekday = _WEEKDAYS[lang].split()[local.weekday()]
    zone_name = local.tzname() or "UTC"
    if lang == "de":
        day = f"{weekday}, {local.day}. {month} {local.year}"
        clock = f"{local:%H:%M} Uhr ({zone_name})"
        both = f"{day} um {clock}"
    elif lang == "fr":
        day = f"{weekday} {local.day} {month} {local.year}"
        clock = f"{local.hour}h{local:%M} ({zone_name})"
        both = f"{day} à {clock}"
    else:
        day = f"{weekday}, {month} {local.day}, {local.year}"
        clock = f"{(local.hour % 12) or 12}:{local:%M} {'AM' if local.hour < 12 else 'PM'} {zone_name}"
        both = f"{day} at {clock}"
    return {"event_date": day, "event_time": clock, "event_when": both, "event_timezone": str(timezone or "UTC")}


# ---- messages ------------------------------------------------------------------------------


def _domain(address: str) -> str:
    _, email = parseaddr(address)
    return email.rpartition("@")[2] or "eventreach.invalid"


def _unsubscribe_headers(unsubscribe_url: str, unsubscribe_token: str, sender: str) -> dict[str, str]:
    """RFC 2369 + RFC 8058 one-click unsubscribe, as bulk-sender rules of large mailbox providers require."""
    mailto = f"mailto:unsubscribe@{_domain(sender)}?subject=unsubscribe%20{quote(unsubscribe_token, safe='')}"
    return {
        "List-Unsubscribe": f"<{unsubscribe_url}>, <{mailto}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def _email_message(
    row: dict[str, Any],
    *,
    event: EventContext,
    templates: TemplateSet,
    template_id: str,
    kind: MessageKind,
    secret: bytes | str,
    base_url: str,
    sender: str,
    campaign_id: str,
    send_at: datetime | None,
    organizer_email: str | None = None,
    include_calendar_invite: bool = False,
    duration_minutes: int = 60,
    extra_context: dict[str, Any] | None = None,
    calendar_method: str = ICS_REQUEST,
    calendar_sequence: int = 0,
) -> OutboundMessage:
    """One email of any kind; `organizer_email` (default: the sender's address) only matters
    with a calendar invite (`calendar_method` / `calendar_sequence`: see calendar_invite). The key
    carries the event date for kinds sent once per date (delivery.PER_DATE_KINDS)."""
    customer_id = str(row["customer_id"])
    recipient = row.get("email")
    if not recipient:
        raise ValueError(f"customer {customer_id} has no email address")
    requested = language_for(row.get("marketplace"))
    links = _signed(secret, base_url, row, event, "email", campaign_id)
    # Dates are worded in the language actually used, so a fallback reads as one language.
    when = local_when(event.start_time_utc, row.get("timezone"), templates.resolve(template_id, requested))
    context = {
        "event_name": event.name,
        "event_topics": list(event.topics),
        **when,
        "register_url": links["register"],
        "join_url": links["join"],
        "unsubscribe_url": links["unsubscribe"],
        "open_pixel_url": links["open"],
        "calendar_url": links["calendar"],
        "survey_url": links["survey"],
        "first_name": row.get("first_name") or "",
        **(extra_context or {}),
    }
    rendered = templates.render(template_id, requested, context)
    attachments: tuple[Attachment, ...] = ()
    if include_calendar_invite:
        ics = calendar_invite(
            event,
            customer_id=customer_id,
            organizer_email=organizer_email or parseaddr(sender)[1],
            join_url=links["join"],
            duration_minutes=duration_minutes,
            attendee_email=str(recipient),
            stamp=send_at,
            sequence=calendar_sequence,
            method=calendar_method,
        )
        attachments = (Attachment(ICS_FILENAME, ics_content_type(calendar_method), ics),)
    headers = {
        "From": sender,
        **_unsubscribe_headers(links["unsubscribe"], links["unsubscribe_token"], sender),
        "X-EventReach-Campaign": campaign_id,
        "Content-Language": rendered.used_language,
    }
    return OutboundMessage(
        key=DeliveryKey(customer_id, event.event_id, "email", kind, occurrence_for(kind, event.start_time_utc)),
        campaign_id=campaign_id,
        recipient=str(recipient),
        subject=rendered.subject,
        body_text=rendered.text,
        body_html=rendered.html,
        headers=headers,
        attachments=attachments,
        payload={
            "template_id": template_id,
            "language": rendered.used_language,
            "requested_language": requested,
            "fell_back": rendered.fell_back,
        },
        scheduled_at=to_utc_naive(send_at) if send_at else None,
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
    return _email_message(
        row,
        event=event,
        templates=templates,
        template_id=template_id,
        kind=MessageKind.INVITATION,
        secret=secret,
        base_url=base_url,
        sender=sender,
        organizer_email=organizer_email,
        campaign_id=campaign_id,
        include_calendar_invite=include_calendar_invite,
        send_at=send_at,
        duration_minutes=duration_minutes,
    )


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
    return _email_message(
        row,
        event=event,
        templates=templates,
        template_id=template_id,
        kind=MessageKind.DAY_OF,
        secret=secret,
        base_url=base_url,
        sender=sender,
        organizer_email=organizer_email,
        campaign_id=campaign_id,
        include_calendar_invite=include_calendar_invite,
        send_at=send_at,
        duration_minutes=duration_minutes,
    )


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
    return _email_message(
        row, event=event, templates=templates, template_id=template_id, kind=MessageKind.SURVEY, secret=secret,
        base_url=base_url, sender=sender, campaign_id=campaign_id, send_at=send_at,
    )  # fmt: skip


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
    return _email_message(
        row, event=event, templates=templates, template_id=template_id, kind=MessageKind.UPDATE, secret=secret,
        base_url=base_url, sender=sender, organizer_email=organizer_email, campaign_id=campaign_id,
        include_calendar_invite=True, send_at=send_at, duration_minutes=duration_minutes,
        extra_context=_previous_when(row, previous_start_utc, templates, template_id),
        calendar_method=ICS_REQUEST, calendar_sequence=sequence,
    )  # fmt: skip


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
    return _email_message(
        row, event=event, templates=templates, template_id=template_id, kind=MessageKind.CANCELLATION,
        secret=secret, base_url=base_url, sender=sender, organizer_email=organizer_email, campaign_id=campaign_id,
        include_calendar_invite=True, send_at=send_at, duration_minutes=duration_minutes,
        calendar_method=ICS_CANCEL, calendar_sequence=sequence,
    )  # fmt: skip


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
    return _email_message(
        row, event=event, templates=templates, template_id=template_id, kind=MessageKind.WAITLIST_CONFIRMATION,
        secret=secret, base_url=base_url, sender=sender, organizer_email=organizer_email, campaign_id=campaign_id,
        include_calendar_invite=True, send_at=send_at, duration_minutes=duration_minutes,
        calendar_method=ICS_REQUEST, calendar_sequence=sequence,
    )  # fmt: skip


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
    links = _signed(secret, base_url, row, event, "push", campaign_id)
    title = _one_line(title_template.format_map(values))
    body = _one_line(body_template.format_map(values))
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
    links = _signed(secret, base_url, row, event, "push", campaign_id)
    title = _one_line((title_template or default_title).format_map(values))
    body = _one_line((body_template or default_body).format_map(values))
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
    links = _signed(secret, base_url, row, event, "in-app", campaign_id)
    start = to_utc_naive(shown_from)
    until = min(start + timedelta(days=display_days), to_utc_naive(event.start_time_utc))
    headline = _one_line(f"{event.name} — {when['event_when']}")
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


# ---- RFC 5322 ------------------------------------------------------------------------------


def message_id(message: OutboundMessage) -> str:
    """Stable Message-ID from the idempotency key: a resend after a crash is recognisable as the same mail."""
    digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:40]
    return f"<{digest}@{_domain(message.headers.get('From', ''))}>"


# Headers mailbox providers read raw (RFC 2369, RFC 8058): never RFC 2047-encoded, folded only
# between their <URI> elements.
VERBATIM_HEADERS: frozenset[str] = frozenset({"list-unsubscribe", "list-unsubscribe-post"})
MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1, without the CRLF
_SOFT_LINE_OCTETS = 78  # RFC 5322's SHOULD; where a List-* header folds at its comma
_COMMA_OUTSIDE_BRACKETS = re.compile(r",(?![^<]*>)")


def fold_verbatim_header(name: str, value: str, linesep: str = "\r\n") -> str:
    """`Name: <a>, <b>` + linesep, folded only after a comma between elements, never encoded.

    Past 78 octets each further element goes on its own continuation line (CRLF + space before
    its `<`), so the first line always holds the whole https URI. Raises ValueError for a value
    that is not printable ASCII (URIs must be percent-encoded) or an element that cannot fit the
    998-octet line limit, instead of letting the folder fall back to RFC 2047.
    """
    text = " ".join(value.split())  # unfolds a value read back from source, too
    if not text.isascii() or not text.isprintable():
        raise ValueError(f"{name} must be printable ASCII (percent-encode its URIs), got {text[:60]!r}")
    elements = [element.strip() for element in _COMMA_OUTSIDE_BRACKETS.split(text)]
    lines = [f"{name}: {elements[0]}"]
    for element in elements[1:]:
        if len(lines[-1]) + 2 + len(element) <= _SOFT_LINE_OCTETS:
            lines[-1] += f", {element}"
        else:
            lines[-1] += ","
            lines.append(f" {element}")
    longest = max(len(line) for line in lines)
    if longest > MAX_LINE_OCTETS:
        raise ValueError(f"{name} needs a line of {longest} octets, over RFC 5322's limit of {MAX_LINE_OCTETS}")
    return linesep.join(lines) + linesep


def _wrap_plain_text(name: str, value: Any, linesep: str) -> str | None:
    """An ASCII unstructured header (Subject, X-...) wrapped at spaces; None where the stock folder must act.

    The stock folder moves a 70-odd-character Subject whole onto a continuation line
    (`Subject:` CRLF ` text`), which parsers read back with a leading space.
    """
    text = str(value)
    if not isinstance(value, UnstructuredHeader) or not (text.isascii() and text.isprintable()) or "=?" in text:
        return None
    lines = [f"{name}:"]
    for word in text.split():
        if len(lines[-1]) + 1 + len(word) > _SOFT_LINE_OCTETS and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += f" {word}"
    return None if max(map(len, lines)) > MAX_LINE_OCTETS else linesep.join(lines) + linesep


class WirePolicy(email_policy.EmailPolicy):
    """RFC 5322 on the wire: CRLF, 7-bit, 78-character folding with RFC 2047 where it belongs
    (a non-ASCII Subject or display name), and VERBATIM_HEADERS written as they are.

    The stock folder RFC 2047-encodes any word longer than the line limit, which turns a
    List-Unsubscribe URL into encoded-words that Gmail ignores (one-click unsubscribe lost);
    raising the limit to 998 instead would make over-long encoded-words of a non-ASCII Subject.
    """

    def fold(self, name: str, value: Any) -> str:
        if name.lower() in VERBATIM_HEADERS:
            return fold_verbatim_header(name, str(value), self.linesep)
        return _wrap_plain_text(name, value, self.linesep) or super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in VERBATIM_HEADERS:
            return fold_verbatim_header(name, str(value), self.linesep).encode("ascii")
        plain = _wrap_plain_text(name, value, self.linesep)
        return plain.encode("ascii") if plain else super().fold_binary(name, value)


EMAIL_POLICY = WirePolicy(linesep="\r\n", cte_type="7bit")
_STRUCTURAL_HEADERS = frozenset({"from", "to", "subject", "date", "message-id", "content-type", "mime-version"})


def to_email_message(message: OutboundMessage) -> EmailMessage:
    """The RFC 5322 message: multipart/alternative text + HTML, attachments alongside (multipart/mixed).

    From comes from `message.headers["From"]`; Date is the scheduled send time (so reruns render
    the same bytes) or now; the other headers are copied as they are. MIME boundaries derive from
    the Message-ID, so the bytes are reproducible too. Serialize with `email_wire_bytes`.
    """
    sender = message.headers.get("From")
    if not sender:
        raise ValueError("an email needs a From header (render_* functions set it)")
    email = EmailMessage(policy=EMAIL_POLICY)  # bodies encoded with 76-character lines
    email["From"] = sender
    email["To"] = formataddr(("", message.recipient))
    email["Subject"] = _one_line(message.subject)
    sent = message.scheduled_at or datetime.now(UTC).replace(tzinfo=None)
    email["Date"] = format_datetime(to_utc_naive(sent).replace(tzinfo=UTC))
    email["Message-ID"] = message_id(message)
    for name, value in message.headers.items():
        if name.lower() not in _STRUCTURAL_HEADERS:
            email[name] = _one_line(value)
    # Quoted-printable keeps every line short and 7-bit, whatever the template or the provider.
    email.set_content(message.body_text or "", subtype="plain", charset="utf-8", cte="quoted-printable")
    if message.body_html:
        email.add_alternative(message.body_html, subtype="html", charset="utf-8", cte="quoted-printable")
    for attachment in message.attachments:
        mime, _, rest = attachment.content_type.partition(";")
        maintype, _, subtype = mime.strip().partition("/")
        params = {}
        for part in rest.split(";"):
            name, _, value = part.strip().partition("=")
            if name:
                params[name] = value
        email.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename, params=params
        )
    # "=_" never occurs in quoted-printable or base64 bodies, so these boundaries cannot collide.
    digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:24]
    for number, part in enumerate(part for part in email.walk() if part.is_multipart()):
        part.set_boundary(f"=_er{number}_{digest}")
    return email


def email_wire_bytes(message: OutboundMessage) -> bytes:
    """The exact bytes every email channel hands over: the outbox `.eml`, SMTP DATA, SES `Content.Raw`.

    CRLF line ends, 7-bit, lines of at most 998 octets, List-Unsubscribe plain. Raises
    ValueError for a message that cannot be put on the wire (no From, an unfoldable header).
    """
    return to_email_message(message).as_bytes(policy=EMAIL_POLICY)


def raw_header_fields(raw: bytes) -> list[tuple[str, bytes]]:
    """(name, raw value) of each top-level header field as it is on the wire, folds kept.

    Mailbox providers read some headers (List-Unsubscribe) without RFC 2047 decoding, so the
    checks must look at these bytes, not at what `email` decodes them to.
    """
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    fields: list[tuple[str, bytes]] = []
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name.decode("ascii", "replace").strip(), value.strip(b" \t")))
    return fields


def _calendar_problems(parsed: Message, expect_calendar_invite: bool) -> list[str]:
    problems: list[str] = []
    invites = [part for part in parsed.walk() if part.get_content_type() == "text/calendar"]
    if expect_calendar_invite and not invites:
        problems.append("missing calendar invite")
    for part in invites:
        try:
            calendar = icalendar.Calendar.from_ical(part.get_payload(decode=True))
            events = calendar.walk("VEVENT")
            method = str(calendar.get("METHOD"))
            if method not in ICS_METHODS or not events or not events[0].get("UID"):
                problems.append(f"calendar invite lacks METHOD ({'/'.join(sorted(ICS_METHODS))}), a VEVENT or its UID")
            elif str(part.get_param("method") or "").upper() != method:
                # RFC 6047: the part's method parameter must name the iTIP method inside.
                problems.append(f"calendar part's content type does not say method={method}")
            elif events[0].get("DTSTART") is None or events[0].decoded("DTSTART").utcoffset() is None:
                problems.append("calendar invite DTSTART is not in UTC")
        except ValueError as error:
            problems.append(f"calendar invite does not parse: {error}")
    return problems


def wire_problems(raw: bytes, *, expect_calendar_invite: bool) -> list[str]:
    """What makes these email bytes unfit to send, as a mailbox provider reads them.

    Line ends and lengths (RFC 5321/5322), 7-bit data, the required headers, MIME structure, a plain one-click
    List-Unsubscribe (RFC 2369/8058: `<https://…>` first, a `mailto:` too, no RFC 2047) with
    `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and a calendar invite that parses.
    """
    problems: list[str] = []
    if re.search(rb"(?<!\r)\n|\r(?!\n)", raw):
        problems.append("bare CR or LF: SMTP and SES need CRLF line ends")
    longest = max((len(line) for line in re.split(rb"\r?\n", raw)), default=0)
    if longest > MAX_LINE_OCTETS:
        problems.append(f"a line of {longest} octets, over RFC 5322's {MAX_LINE_OCTETS}")
    if not raw.isascii():
        problems.append("8-bit data: headers and bodies must be 7-bit (RFC 2047, quoted-printable, base64)")
    fields: dict[str, list[bytes]] = {}
    for name, value in raw_header_fields(raw):
        fields.setdefault(name.lower(), []).append(value)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
        count = len(fields.get(name.lower(), []))
        if count != 1:
            problems.append(f"missing {name} header" if not count else f"{count} {name} headers")
    unsubscribe = fields.get("list-unsubscribe", [])
    if not unsubscribe:
        problems.append("missing List-Unsubscribe")
    else:
        value = re.sub(rb"\r\n[ \t]", b" ", unsubscribe[0])
        if b"=?" in value:
            problems.append("List-Unsubscribe is RFC 2047-encoded: mailbox providers read it raw and ignore it")
        elif not value.startswith(b"<https://"):
            problems.append("List-Unsubscribe does not start with an <https://...> one-click URI")
        if b"<mailto:" not in value:
            problems.append("List-Unsubscribe has no <mailto:...> URI")
    if fields.get("list-unsubscribe-post") != [b"List-Unsubscribe=One-Click"]:
        problems.append("missing List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    parsed = message_from_bytes(raw, policy=email_policy.compat32)  # structure only: 10x faster than default
    defects = sorted({type(defect).__name__ for part in parsed.walk() for defect in part.defects})
    if defects:
        problems.append(f"MIME structure is broken: {', '.join(defects)}")
    problems.extend(_calendar_problems(parsed, expect_calendar_invite))
    return problems


def email_problems(message: OutboundMessage, *, expect_calendar_invite: bool) -> list[str]:
    """What makes an email unfit to send, checked on the exact bytes the channels send.

    Large mailbox providers reject bulk mail without one-click unsubscribe, and a calendar
    invite that does not parse is worse than none (see `wire_problems`).
    """
    try:
        raw = email_wire_bytes(message)
    except ValueError as error:
        return [f"cannot be serialized: {error}"]
    return wire_problems(raw, expect_calendar_invite=expect_calendar_invite)
