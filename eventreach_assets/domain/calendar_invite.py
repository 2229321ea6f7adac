"""Calendar invites: the `.ics` an email carries (RFC 5545, iTIP RFC 5546 REQUEST and CANCEL).

Pure code, no Dagster. One UID per customer x event, so an update or a cancellation acts on the
entry the invitation created.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import icalendar

from eventreach_assets.domain.campaigns import to_utc_naive
from eventreach_assets.domain.events import EventContext

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
