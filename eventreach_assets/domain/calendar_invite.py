"""Calendar invites: the `.ics` an email carries (RFC 5545, iTIP RFC 5546 REQUEST and CANCEL).

Pure code, no Dagster. One UID per customer x event, so an update or a cancellation acts on the
entry the invitation created.

The `.ics` is written directly (RFC 5545 text escaping, 75-octet folding), not through a calendar
library: everything but the recipient's lines (UID, DTSTAMP, ATTENDEE, the join link) is the same
for every message of a campaign and is built once (`IcsTemplate`, cached). The tests read every
invite back with `icalendar`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import compress
from operator import itemgetter, ne
from typing import NamedTuple

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


_FOLD_OCTETS = 75  # RFC 5545 3.1: content lines SHOULD NOT be longer, CRLF excluded
_CONTINUATIONS = re.compile(".{1,74}", re.DOTALL)  # what follows the leading space of each continuation line
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PARAM_SPECIALS = re.compile(r"[;:,]")


def _plain(value: str) -> bool:
    """Printable ASCII only (str.isprintable is 10x slower on a URL)."""
    return value.isascii() and not value.encode("ascii").translate(None, _PRINTABLE_ASCII)


_PRINTABLE_ASCII = bytes(range(32, 127))


def ics_text(value: str) -> str:
    """An RFC 5545 TEXT value (3.3.11): backslash, semicolon and comma escaped, line breaks as
    `\\n`, other control characters dropped (they are not allowed in TEXT)."""
    if "\\" not in value and ";" not in value and "," not in value and _plain(value):
        return value  # a URL, usually
    escaped = value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
    escaped = escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return _CONTROLS.sub("", escaped)


def _param_value(value: str) -> str:
    """A parameter value (3.2): quoted when it holds `;:,`; DQUOTE and controls cannot occur in one."""
    clean = _CONTROLS.sub("", value.replace('"', ""))
    return f'"{clean}"' if _PARAM_SPECIALS.search(clean) else clean


def _uri(value: str) -> str:
    """A URI or CAL-ADDRESS value: no escaping in RFC 5545, but never a line break."""
    return value if _plain(value) else _CONTROLS.sub("", value)


def fold_content_line(line: str) -> str:
    """`line` + CRLF, folded (CRLF + space) so no physical line exceeds 75 octets, never inside a UTF-8 character."""
    if line.isascii():
        if len(line) <= _FOLD_OCTETS:
            return line + "\r\n"
        return "\r\n ".join([line[:_FOLD_OCTETS], *_CONTINUATIONS.findall(line, _FOLD_OCTETS)]) + "\r\n"
    data = line.encode()
    if len(data) <= _FOLD_OCTETS:
        return line + "\r\n"
    pieces, start, room = [], 0, _FOLD_OCTETS
    while len(data) - start > room:
        cut = start + room
        while data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: the character started before
            cut -= 1
        pieces.append(data[start:cut])
        start, room = cut, _FOLD_OCTETS - 1  # a continuation line starts with its space
    pieces.append(data[start:])
    return (b"\r\n ".join(pieces) + b"\r\n").decode()


def _utc_stamp(moment: datetime) -> str:
    """A DATE-TIME in UTC form (3.3.5): `20261203T160000Z`."""
    date = f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"  # strftime is 10x slower
    return f"{date}T{moment.hour:02d}{moment.minute:02d}{moment.second:02d}Z"


class IcsTemplate:
    """The `.ics` of one campaign (event, method, status, sequence, duration, organizer): its
    lines built once; `render` adds the recipient's UID, DTSTAMP, ATTENDEE and join link."""

    def __init__(self, event_id: str, name: str, start_utc: datetime, duration_minutes: int, method: str,
                 status: str, sequence: int, organizer_email: str, organizer_name: str) -> None:  # fmt: skip
        start = to_utc_naive(start_utc)
        self.event_id = event_id
        head = [
            "BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{_PRODID}", f"METHOD:{method}", "BEGIN:VEVENT",
            f"DTSTART:{_utc_stamp(start)}", f"DTEND:{_utc_stamp(start + timedelta(minutes=duration_minutes))}",
            f"SEQUENCE:{sequence}", f"STATUS:{status}", f"SUMMARY:{ics_text(name)}",
            f"ORGANIZER;CN={_param_value(organizer_name)}:mailto:{_uri(organizer_email)}",
        ]  # fmt: skip
        self._head = "".join(map(fold_content_line, head))
        self._description = "DESCRIPTION:" + ics_text(name + "\n\nJoin online: ")
        self._tail = "END:VEVENT\r\nEND:VCALENDAR\r\n"

    def render(self, *, customer_id: str, attendee_email: str | None, join_url: str, stamp: datetime) -> bytes:
        """The recipient's `.ics` bytes; `stamp` is DTSTAMP (naive UTC or aware)."""
        url = _uri(join_url)
        text = url if "\\" not in url and ";" not in url and "," not in url else ics_text(url)  # checked by _uri
        lines = [
            f"UID:{calendar_uid(self.event_id, customer_id)}",
            f"DTSTAMP:{_utc_stamp(to_utc_naive(stamp))}",
            f"{self._description}{text}",
            f"LOCATION:{text}",
            f"URL:{url}",
        ]
        if attendee_email:
            lines.append(
                f"ATTENDEE;PARTSTAT=NEEDS-ACTION;ROLE=REQ-PARTICIPANT;RSVP=FALSE:mailto:{_uri(attendee_email)}"
            )
        return f"{self._head}{''.join(map(fold_content_line, lines))}{self._tail}".encode()


@lru_cache(maxsize=256)
def ics_template(event_id: str, name: str, start_utc: datetime, duration_minutes: int, method: str = ICS_REQUEST,
                 status: str | None = None, sequence: int = 0, organizer_email: str = "",
                 organizer_name: str = "EventReach") -> IcsTemplate:  # fmt: skip
    """The (cached) IcsTemplate of one campaign; raises ValueError for what calendars would reject.

    `status` defaults to CONFIRMED for a REQUEST and CANCELLED for a CANCEL.
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
    return IcsTemplate(event_id, name, start_utc, duration_minutes, method, status, sequence, organizer_email,
                       organizer_name)  # fmt: skip


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
    template = ics_template(event.event_id, event.name, event.start_time_utc, duration_minutes, method, status,
                            sequence, organizer_email, organizer_name)  # fmt: skip
    return template.render(
        customer_id=customer_id, attendee_email=attendee_email, join_url=join_url, stamp=stamp or datetime.now(UTC)
    )


# ---- the light check of an invite, per message (email_wire.checked_email) ------------------------

_PARAM_VALUE = rb'(?:"[^"\x00-\x1f\x7f]*"|[^";:,\x00-\x1f\x7f]*)'  # RFC 5545 3.1: quoted-string or paramtext
_PARAMS = rb"(?:;[A-Za-z0-9-]+=" + _PARAM_VALUE + rb"(?:," + _PARAM_VALUE + rb")*)*"
_CONTENT_LINE = re.compile(rb"([A-Za-z0-9-]+)(" + _PARAMS + rb"):([^\x00-\x08\x0a-\x1f\x7f]*)")
_DATE_TIME = re.compile(rb"[0-9]{8}(?:[Tt][0-9]{6}[Zz]?)?")
_TYPED = {b"DTSTART": _DATE_TIME, b"DTEND": _DATE_TIME, b"DTSTAMP": _DATE_TIME, b"SEQUENCE": re.compile(rb"[0-9]+")}
ICS_LACKS = f"calendar invite lacks METHOD ({'/'.join(sorted(ICS_METHODS))}), a VEVENT or its UID"
_READ_LINES: dict[bytes, tuple[bytes, bytes, bytes]] = {}  # most lines of an invite repeat in every message
_MAX_READ_LINES = 8192


def _content_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """(NAME, PARAMETERS, value) of one unfolded content line (RFC 5545 3.1), typed values checked;
    ValueError saying what is wrong."""
    read = _READ_LINES.get(line)
    if read is None:
        matched = _CONTENT_LINE.fullmatch(line)
        if matched is None:
            raise ValueError(f"not a content line: {line[:40].decode(errors='replace')!r}")
        read = (matched[1].upper(), matched[2].upper(), matched[3])
        form = _TYPED.get(read[0])
        if form is not None and not form.fullmatch(read[2]):
            raise ValueError(f"{read[0].decode()} value {read[2][:30].decode(errors='replace')!r}")
        if len(_READ_LINES) >= _MAX_READ_LINES:
            _READ_LINES.clear()
        _READ_LINES[line] = read
    return read


class _Invite:
    """What the check needs from an invite: METHOD, and the first VEVENT's UID and DTSTART."""

    def __init__(self) -> None:
        self.method = b""
        self.events = 0
        self.uid = b""
        self.dtstart = (b"", b"")  # parameters, value


def invite_lines(data: bytes) -> list[bytes]:
    """The unfolded content lines of an invite; ValueError for what is not UTF-8."""
    data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    lines = data.replace(b"\r\n ", b"").replace(b"\r\n\t", b"").rstrip(b"\r\n").split(b"\r\n")
    rest = b"".join(lines)
    if b"\n" in rest or b"\r" in rest:  # bare line ends, as lenient readers take them
        data = re.sub(rb"\r?\n", b"\r\n", data)
        lines = data.replace(b"\r\n ", b"").replace(b"\r\n\t", b"").rstrip(b"\r\n").split(b"\r\n")
    return lines


def _read_invite(lines: list[bytes]) -> _Invite:
    invite, open_components, in_event = _Invite(), [], False
    for line in lines:
        name, params, value = _content_line(line)
        if name == b"BEGIN":
            open_components.append(value.upper())
            if (len(open_components) == 1) != (open_components[-1] == b"VCALENDAR"):
                raise ValueError(f"BEGIN:{value.decode(errors='replace')} where it cannot be")
            in_event = open_components == [b"VCALENDAR", b"VEVENT"] and not invite.events
            invite.events += in_event
        elif name == b"END":
            if not open_components or open_components.pop() != value.upper():
                raise ValueError(f"END:{value.decode(errors='replace')} does not close what is open")
            in_event = False
        elif name == b"METHOD" and len(open_components) == 1:
            invite.method = value.upper()
        elif in_event and name == b"UID":
            invite.uid = value
        elif in_event and name == b"DTSTART":
            invite.dtstart = (params, value)
    if open_components or lines[0].upper() != b"BEGIN:VCALENDAR" or lines[-1].upper() != b"END:VCALENDAR":
        raise ValueError("not one VCALENDAR with its components closed")
    return invite


def _utc_problem(params: bytes, value: bytes) -> list[str]:
    if len(value) < 15 or not (value.endswith((b"Z", b"z")) or b"TZID=" in params):
        return ["calendar invite DTSTART is not in UTC"]
    return []


# Properties whose value may differ from a checked invite's (free text, URIs, addresses, the
# typed values _content_line checks): a changed value of any other falls back to the whole check.
_RECIPIENT_PROPERTIES = frozenset({b"UID", b"DTSTAMP", b"DTSTART", b"DTEND", b"SEQUENCE", b"SUMMARY", b"DESCRIPTION",
                                   b"LOCATION", b"URL", b"ATTENDEE", b"ORGANIZER", b"COMMENT", b"CONTACT"})  # fmt: skip


class CheckedInvite(NamedTuple):
    """An invite that passed, as `ics_problems` compares others to it."""

    lines: list[bytes]  # its unfolded content lines
    names: list[bytes]  # NAME of each
    heads: list[bytes]  # each line up to its value: name, parameters, colon
    valued: frozenset[int]  # the lines whose value has a form to check (UID, date-times, SEQUENCE)


def checked_reference(lines: list[bytes]) -> CheckedInvite:
    """The CheckedInvite of the `invite_lines` of an invite that passed."""
    names, heads = [], []
    for line in lines:
        matched = _CONTENT_LINE.fullmatch(line)
        if matched is None:
            raise ValueError(f"not a content line: {line[:40].decode(errors='replace')!r}")
        names.append(matched[1].upper())
        heads.append(line[: matched.end(2) + 1])
    valued = frozenset(index for index, name in enumerate(names) if name in _TYPED or name == b"UID")
    return CheckedInvite(lines, names, heads, valued)


_VALUE_CHARS = bytes([9, *range(32, 127), *range(128, 256)])  # RFC 5545 3.1 VALUE-CHAR: no control but HTAB


def _changed_line_problems(lines: list[bytes], reference: CheckedInvite) -> list[str] | None:
    """The problems of an invite that differs from a checked `reference` only in the values of
    recipient properties (same line count, and line by line the same name and parameters, written
    the same); None otherwise. The changed lines are found and checked together (C-speed loops)."""
    checked = reference.lines
    if len(lines) != len(checked):
        return None
    changed = list(compress(range(len(lines)), map(ne, lines, checked)))
    if not changed:
        return []
    pick = itemgetter(*changed) if len(changed) > 1 else lambda sequence: (sequence[changed[0]],)
    new, heads, names = pick(lines), pick(reference.heads), pick(reference.names)
    if not all(map(bytes.startswith, new, heads)) or not _RECIPIENT_PROPERTIES.issuperset(names):
        return None
    if b"\n".join(new).translate(None, _VALUE_CHARS) != b"\n" * (len(new) - 1):  # a control character
        return None
    problems: list[str] = []
    for index in reference.valued.intersection(changed):  # a value of its own to check
        line, head, name = lines[index], reference.heads[index], reference.names[index]
        value = line[len(head) :]
        if name in _TYPED and not _TYPED[name].fullmatch(value):
            return None
        if name == b"UID" and not value:
            problems.append(ICS_LACKS)
        elif name == b"DTSTART":
            problems.extend(_utc_problem(head.upper(), value))
    return problems


def ics_problems(data: bytes, part_method: str | None, reference: CheckedInvite | None = None) -> list[str]:
    """What a calendar client would reject in an invite, without a calendar library (cheap enough
    for every message).

    The same findings, worded the same, as the `icalendar` check of email_wire: METHOD
    REQUEST/CANCEL, a VEVENT with a UID, the part's `method=` naming the same method (RFC 6047),
    DTSTART in UTC (or with a TZID); plus the syntax of every content line (RFC 5545 3.1), one
    VCALENDAR with its components closed, and the form of DTSTART, DTEND, DTSTAMP and SEQUENCE.
    Given the `checked_reference` of an invite that passed (with the same `part_method`), only the
    lines that differ from it are read, provided they differ only in recipient values (a line
    that does not is read with all the others).
    """
    try:
        lines = invite_lines(data)
        changed = _changed_line_problems(lines, reference) if reference is not None else None
        if changed is not None:
            return changed
        invite = _read_invite(lines)
    except ValueError as error:
        return [f"calendar invite does not parse: {error}"]
    method = invite.method.decode()
    if method not in ICS_METHODS or not invite.events or not invite.uid:
        return [ICS_LACKS]
    if (part_method or "").upper() != method:
        return [f"calendar part's content type does not say method={method}"]
    return _utc_problem(*invite.dtstart)
