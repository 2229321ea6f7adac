"""The RFC 5322 form every email provider receives, and the checks that it is fit to send.

Pure code, no Dagster. The outbox `.eml`, SMTP DATA and SES `Content.Raw` are the same bytes
(`email_wire_bytes`): CRLF, 7-bit, folded so mailbox providers read List-Unsubscribe raw. The
bytes derive from the message alone (Date, Message-ID and MIME boundaries included), so a
retried run sends exactly what the first one would have.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.headerregistry import UnstructuredHeader
from email.message import EmailMessage, Message
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any

import icalendar

from eventreach_assets.domain.calendar_invite import ICS_METHODS
from eventreach_assets.domain.campaigns import to_utc_naive
from eventreach_assets.domain.delivery import OutboundMessage


def one_line(text: str) -> str:
    """Headers are one line: collapse whitespace so no value (e.g. an event name) can inject one."""
    return " ".join(text.split())


def address_domain(address: str) -> str:
    """The domain of an address (`Name <user@domain>` or bare); a reserved one when there is none."""
    _, email = parseaddr(address)
    return email.rpartition("@")[2] or "eventreach.invalid"


def message_id(message: OutboundMessage) -> str:
    """Stable Message-ID from the idempotency key: a resend after a crash is recognisable as the same mail."""
    digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:40]
    return f"<{digest}@{address_domain(message.headers.get('From', ''))}>"


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
    email["Subject"] = one_line(message.subject)
    sent = message.scheduled_at or datetime.now(UTC).replace(tzinfo=None)
    email["Date"] = format_datetime(to_utc_naive(sent).replace(tzinfo=UTC))
    email["Message-ID"] = message_id(message)
    for name, value in message.headers.items():
        if name.lower() not in _STRUCTURAL_HEADERS:
            email[name] = one_line(value)
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
