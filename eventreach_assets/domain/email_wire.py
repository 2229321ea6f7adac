"""The RFC 5322 form every email provider receives, and the checks that it is fit to send.

Pure code, no Dagster. The outbox `.eml`, SMTP DATA and SES `Content.Raw` are the same bytes
(`email_wire_bytes`): CRLF, 7-bit, folded so mailbox providers read List-Unsubscribe raw. The
bytes derive from the message alone (Date, Message-ID and MIME boundaries included), so a
retried run sends exactly what the first one would have.

The bytes are written directly by a small MIME writer, not through `email.message`: header lines
that are the same for many messages (From, a segment's Subject, Content-Language, the campaign,
Date to the second, the MIME part headers) are folded once and cached by value, bodies are
encoded once per segment where they are the template's (`QuotedPrintablePieces`: the renderer
hands over bodies with their encoding) and by C codecs otherwise. The standard library's parser
reads every message back to what was rendered (eventreach_assets_tests/test_email_wire.py, a
corpus in four languages). `checked_email` validates a message cheaply (the parsers once per
message shape) and keeps its bytes for the channel, so one serialization serves both.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from email import message_from_bytes, quoprimime
from email import policy as email_policy
from email.message import EmailMessage, Message
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote

import icalendar

from eventreach_assets.domain.calendar_invite import (
    ICS_LACKS,
    ICS_METHODS,
    CheckedInvite,
    checked_reference,
    ics_problems,
    invite_lines,
)
from eventreach_assets.domain.campaigns import to_utc_naive
from eventreach_assets.domain.delivery import OutboundMessage


def one_line(text: str) -> str:
    """Headers are one line: collapse whitespace so no value (e.g. an event name) can inject one."""
    return " ".join(text.split())


@lru_cache(maxsize=256)
def address_domain(address: str) -> str:
    """The domain of an address (`Name <user@domain>` or bare); a reserved one when there is none."""
    _, email = parseaddr(address)
    return email.rpartition("@")[2] or "eventreach.invalid"


def _key_digest(message: OutboundMessage) -> str:
    return hashlib.sha256(message.idempotency_key.encode()).hexdigest()


def message_id(message: OutboundMessage) -> str:
    """Stable Message-ID from the idempotency key: a resend after a crash is recognisable as the same mail."""
    return f"<{_key_digest(message)[:40]}@{address_domain(message.headers.get('From', ''))}>"


# Headers mailbox providers read raw (RFC 2369, RFC 8058): never RFC 2047-encoded, folded only
# between their <URI> elements.
VERBATIM_HEADERS: frozenset[str] = frozenset({"list-unsubscribe", "list-unsubscribe-post"})
MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1, without the CRLF
_PRINTABLE_ASCII = bytes(range(32, 127))
_SOFT_LINE_OCTETS = 78  # RFC 5322's SHOULD; where a List-* header folds at its comma
_COMMA_OUTSIDE_BRACKETS = re.compile(r",(?![^<]*>)")


def fold_verbatim_header(name: str, value: str, linesep: str = "\r\n") -> str:
    """`Name: <a>, <b>` + linesep, folded only after a comma between elements, never encoded.

    Past 78 octets each further element goes on its own continuation line (CRLF + space before
    its `<`), so the first line always holds the whole https URI. Raises ValueError for a value
    that is not printable ASCII (URIs must be percent-encoded) or an element that cannot fit the
    998-octet line limit, instead of letting a folder fall back to RFC 2047.
    """
    if value.startswith("<") and value.count(",") == 1 and ">, <" in value and _printable_ascii(value):
        first, second = value.split(", ")  # the renderer's `<https://…>, <mailto:…>`
        if value.count(" ") == 1 and max(len(name) + 3 + len(first), len(second) + 1) <= MAX_LINE_OCTETS:
            if len(name) + 4 + len(first) + len(second) <= _SOFT_LINE_OCTETS:
                return f"{name}: {first}, {second}{linesep}"
            return f"{name}: {first},{linesep} {second}{linesep}"
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


# ---- header lines ------------------------------------------------------------------------------


def _printable_ascii(text: str) -> bool:
    """Printable ASCII only (str.isprintable reads the Unicode database for each character)."""
    return text.isascii() and not text.encode("ascii").translate(None, _PRINTABLE_ASCII)


_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but the colon
_ADDR_SPEC = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")
_Q_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_ENCODED_WORD_OCTETS = 75  # RFC 2047 2: an encoded-word is at most 75 characters
_EW_OVERHEAD = len("=?utf-8?q??=")


def _q_encoded_words(text: str, first_room: int) -> list[str]:
    """RFC 2047 Q encoded-words for `text`, the first fitting in `first_room` characters.

    Spaces are encoded inside the words (`_`), since whitespace between encoded-words is dropped
    when they are decoded; a character's UTF-8 octets never straddle two words.
    """
    words: list[str] = []
    current = ""
    room = min(first_room, _ENCODED_WORD_OCTETS) - _EW_OVERHEAD
    for char in text:
        if char in _Q_SAFE:
            encoded = char
        else:
            encoded = "_" if char == " " else "".join(f"={octet:02X}" for octet in char.encode())
        if current and len(current) + len(encoded) > room:
            words.append(current)
            current, room = "", _ENCODED_WORD_OCTETS - _EW_OVERHEAD
        current += encoded
    words.append(current)
    return [f"=?utf-8?q?{word}?=" for word in words]


@lru_cache(maxsize=4096)
def unstructured_header(name: str, value: str) -> str:
    """`Name: value` + CRLF for an unstructured header (Subject, X-...): whitespace collapsed,
    plain ASCII wrapped at spaces before 78 octets, anything else (non-ASCII, `=?`, a word that
    cannot fit 998 octets) as RFC 2047 encoded-words, one per folded line. Cached by value: a
    segment's Subject is the same for all its messages."""
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"not a header name: {name!r}")
    text = one_line(value)
    if text.isascii() and text.isprintable() and "=?" not in text:
        lines = [f"{name}:"]
        for word in text.split(" ") if text else []:
            if len(lines[-1]) + 1 + len(word) > _SOFT_LINE_OCTETS and lines[-1] != f"{name}:":
                lines.append("")
            lines[-1] += f" {word}"
        if max(map(len, lines)) <= MAX_LINE_OCTETS:
            return "\r\n".join(lines) + "\r\n"
    words = _q_encoded_words(text, _SOFT_LINE_OCTETS - len(name) - 2)
    return f"{name}: " + "\r\n ".join(words) + "\r\n"


@lru_cache(maxsize=256)
def address_header(name: str, address: str) -> str:
    """`Name: Display <user@domain>` + CRLF: a non-ASCII display name RFC 2047-encoded, one with
    specials quoted (email.utils.formataddr); ValueError for what is not one plain address."""
    display, email = parseaddr(address)
    if not _ADDR_SPEC.fullmatch(email) or not email.isascii() or not email.isprintable():
        raise ValueError(f"{name} is not a plain ASCII address: {address[:60]!r}")
    line = f"{name}: {formataddr((one_line(display), email))}"
    if len(line) > MAX_LINE_OCTETS:
        raise ValueError(f"{name} needs a line of {len(line)} octets, over RFC 5322's limit of {MAX_LINE_OCTETS}")
    return line + "\r\n"


def recipient_header(recipient: str) -> str:
    """`To: user@domain` + CRLF; ValueError for anything else (no header injection, no 8-bit)."""
    if not _ADDR_SPEC.fullmatch(recipient) or not recipient.isascii() or len(recipient) > 900:
        raise ValueError(f"recipient is not a plain ASCII address: {recipient[:60]!r}")
    return f"To: {recipient}\r\n"


@lru_cache(maxsize=64)
def _date_header(sent: datetime) -> str:
    return f"Date: {format_datetime(sent.replace(tzinfo=UTC))}\r\n"


def date_header(scheduled_at: datetime | None) -> str:
    """`Date:` the scheduled send time (reruns render the same bytes), or now; cached per second."""
    sent = to_utc_naive(scheduled_at) if scheduled_at else datetime.now(UTC).replace(tzinfo=None)
    return _date_header(sent.replace(microsecond=0))


def other_header(name: str, value: str) -> str:
    """A header the renderer added: VERBATIM_HEADERS as they are, the rest as unstructured text."""
    return unstructured_header(name, value) if name.lower() not in VERBATIM_HEADERS else _verbatim(name, value)


def _verbatim(name: str, value: str) -> str:
    return _short_verbatim_header(name, value) if len(value) < 80 else _verbatim_header(name, value)


def _verbatim_header(name: str, value: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"not a header name: {name!r}")
    return fold_verbatim_header(name, value)


_short_verbatim_header = lru_cache(maxsize=256)(_verbatim_header)  # List-Unsubscribe-Post: the same in every message


# ---- MIME --------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#-'*+.0-9A-Z^-~-]+")  # RFC 2045 token (parameter names, types)


def _parameter(name: str, value: str) -> str:
    """`; name="value"`, or RFC 2231 `; name*=utf-8''…` for a value that is not plain ASCII."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"not a MIME parameter name: {name!r}")
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'; {name}="{value}"'
    return f"; {name}*=utf-8''{quote(value, safe='')}"


@lru_cache(maxsize=256)
def attachment_head(content_type: str, filename: str) -> bytes:
    """The part headers of a base64 attachment, e.g. `text/calendar; method=REQUEST; charset=utf-8`."""
    mime, _, rest = content_type.partition(";")
    if not re.fullmatch(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+", mime.strip()):
        raise ValueError(f"not a MIME type: {content_type!r}")
    params = ""
    for part in rest.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            params += _parameter(name.strip(), value.strip().strip('"'))
    lines = (
        f"Content-Type: {mime.strip().lower()}{params}\r\n"
        f"Content-Disposition: attachment{_parameter('filename', filename)}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    if max(len(line) for line in lines.split("\r\n")) > MAX_LINE_OCTETS:
        raise ValueError(f"attachment {filename[:60]!r} needs a header line over {MAX_LINE_OCTETS} octets")
    return lines.encode("ascii")


_TEXT_HEAD = {
    subtype: f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode()
    + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    for subtype in ("plain", "html")
}


def quoted_printable(text: str) -> bytes:
    """UTF-8 text as quoted-printable (RFC 2045 6.7) with CRLF line ends (line breaks normalised;
    encoded lines of at most 76 characters), line by line: a hard line break ends an encoded line."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return b"\r\n".join([_quoted_printable_line(line) for line in text.split("\n")])


_QP_LINE = 75  # RFC 2045 6.7 (5) allows 76, a soft break's "=" included; one less leaves room for the "=" of a seam


def _quoted_printable_line(line: str) -> bytes:
    """One line of text, encoded in lines of at most 75 characters: printable ASCII by hand (only
    "=" needs escaping, then a soft break every 74 characters, never inside an escape); anything
    else by binascii (cached: such lines are a template's, the same in every message)."""
    data = line.encode("utf-8")
    if not data.isascii() or data.translate(None, _PRINTABLE_ASCII) or data[-1:] == b" " or data == b".":
        return _quoted_printable_by_binascii(line)
    if b"=" in data:
        data = data.replace(b"=", b"=3D")
        escape = data.find(b"=") if len(data) > _QP_LINE else -1
        while escape >= 0:
            if escape % _WRAP >= _WRAP - 2:  # a cut every 74 characters would split this "=XX"
                return _quoted_printable_by_binascii(line)
            escape = data.find(b"=", escape + 3)
    if len(data) <= _QP_LINE:
        return data
    if len(data) % _WRAP == 1 and data[-1:] == b".":  # a lone dot would end it: what old SMTP servers choke on
        return _quoted_printable_by_binascii(line)
    return b"=\r\n".join(_SOFT_WRAPPED.findall(data))


_WRAP = _QP_LINE - 1  # characters of a line before its soft break
_SOFT_WRAPPED = re.compile(rb".{1,74}", re.DOTALL)
# A message's links appear in its text and its HTML body: each is encoded once.
_quoted_printable_value = lru_cache(maxsize=64)(_quoted_printable_line)


@lru_cache(maxsize=4096)
def _quoted_printable_by_binascii(line: str) -> bytes:
    data = line.encode("utf-8")
    encoded = binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
    if len(encoded) > _QP_LINE and max(map(len, encoded.split(b"\r\n"))) > _QP_LINE:
        # binascii writes 76-character lines (and a few more when it encodes trailing whitespace).
        encoded = quoprimime.body_encode(data.decode("latin-1"), maxlinelen=_QP_LINE, eol="\r\n").encode("ascii")
    return encoded


class EncodedText(str):
    """Text that carries its quoted-printable form (`quoted_printable` of it, or an equivalent
    one with extra soft line breaks), so the writer need not encode it again."""

    quoted_printable: bytes


_SOFT_BREAK = b"=\r\n"  # RFC 2045 6.7 (5): decodes to nothing


class QuotedPrintablePieces:
    """A text made of fixed literals with values between them (a template rendered for a segment):
    the literals are encoded once, and `join(values)` encodes only the values, each on encoded
    lines of its own: a soft line break before and after each (RFC 2045 6.7 (5); one may stand
    alone on a line), so the whole decodes to exactly the text."""

    def __init__(self, literals: tuple[str, ...]) -> None:
        self.literals = literals
        self._parts = [piece for literal in literals for piece in (literal, "")][:-1]  # values go in the gaps
        encoded = [quoted_printable(literal).replace(b"%", b"%%") for literal in literals]
        self.encoded_format = (_SOFT_BREAK + b"%s" + _SOFT_BREAK).join(encoded)
        self.whole = not any(literal.endswith("\r") for literal in literals)  # a CR + LF across a seam

    def join(self, values: list[str]) -> str:
        """literals[0] + values[0] + literals[1] + …, an EncodedText when the values hold no CR."""
        parts = self._parts.copy()
        parts[1::2] = values
        text = "".join(parts)
        if not self.whole or "\r" in text:
            return text
        encoded = EncodedText(text)
        # binascii takes a value's LF as a line break: values are encoded as single lines.
        encoded.quoted_printable = self.encoded_format % tuple([_quoted_printable_value(value) for value in values])
        return encoded


def encoded_text(text: str) -> EncodedText:
    """`text` with its quoted-printable form (worked out now: for text that is the same in many messages)."""
    encoded = EncodedText(text)
    encoded.quoted_printable = quoted_printable(text)
    return encoded


def _encoded_body(text: str) -> bytes:
    encoded = getattr(text, "quoted_printable", None)
    return encoded if isinstance(encoded, bytes) else quoted_printable(text)


def base64_lines(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines (RFC 2045 6.8)."""
    return b"\r\n".join(_BASE64_LINES.findall(binascii.b2a_base64(data, newline=False)))


_BASE64_LINES = re.compile(rb".{1,76}", re.DOTALL)


def _multipart(out: list[bytes], subtype: str, boundary: str, parts: list[list[bytes]]) -> None:
    """Append a multipart entity (its Content-Type line, a blank line, the parts) to `out`.

    The CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1), so a part's body
    reads back exactly as written.
    """
    delimiter = f"--{boundary}".encode("ascii")
    out.append(f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode("ascii"))
    for part in parts:
        out += (delimiter, b"\r\n", *part, b"\r\n")
    out += (delimiter, b"--\r\n")


def _mime_entity(message: OutboundMessage, digest: str) -> list[bytes]:
    """The message's top-level MIME entity, as chunks: its content headers, a blank line, the body.

    text/plain alone; with HTML, multipart/alternative; with attachments, multipart/mixed around
    that. Boundaries `=_er<n>_<digest>` are numbered in the order a parser walks them; `=_` never
    occurs in quoted-printable or base64, so no body can contain one.
    """
    text = [_TEXT_HEAD["plain"], _encoded_body(message.body_text or "")]
    mixed = f"=_er0_{digest}"
    if message.body_html:
        html = [_TEXT_HEAD["html"], _encoded_body(message.body_html)]
        alternative: list[bytes] = []
        _multipart(alternative, "alternative", f"=_er{1 if message.attachments else 0}_{digest}", [text, html])
        text = alternative
    if not message.attachments:
        return text if text[-1].endswith(b"\r\n") else [*text, b"\r\n"]
    attached = [[attachment_head(a.content_type, a.filename), base64_lines(a.data)] for a in message.attachments]
    entity: list[bytes] = []
    _multipart(entity, "mixed", mixed, [text, *attached])
    return entity


_STRUCTURAL_HEADERS = frozenset({"from", "to", "subject", "date", "message-id", "content-type", "mime-version"})
_STRUCTURAL, _UNSTRUCTURED, _VERBATIM = "structural", "unstructured", "verbatim"
_HEADER_ROLES: dict[str, str] = {}


def _header_role(name: str) -> str:
    """How `email_wire_bytes` writes a header of `message.headers` (the structural ones it writes itself)."""
    lower = name.lower()
    role = _STRUCTURAL if lower in _STRUCTURAL_HEADERS else _VERBATIM if lower in VERBATIM_HEADERS else _UNSTRUCTURED
    if len(_HEADER_ROLES) < 1024:
        _HEADER_ROLES[name] = role
    return role


def _serialize(message: OutboundMessage) -> bytes:
    sender = message.headers.get("From")
    if not sender:
        raise ValueError("an email needs a From header (render_* functions set it)")
    digest = _key_digest(message)
    head = [
        address_header("From", sender),
        recipient_header(message.recipient),
        unstructured_header("Subject", message.subject),
        date_header(message.scheduled_at),
        f"Message-ID: <{digest[:40]}@{address_domain(sender)}>\r\n",
    ]
    for name, value in message.headers.items():
        role = _HEADER_ROLES.get(name) or _header_role(name)
        if role is not _STRUCTURAL:
            head.append(unstructured_header(name, value) if role is _UNSTRUCTURED else _verbatim(name, value))
    head.append("MIME-Version: 1.0\r\n")
    return b"".join(["".join(head).encode("ascii"), *_mime_entity(message, digest[:24])])


# Messages validated by `checked_email` with their bytes, until a channel takes them (by identity).
SENDABLE_KEPT = 4096
_sendable: OrderedDict[int, tuple[OutboundMessage, tuple[tuple[str, str], ...], bytes]] = OrderedDict()
_sendable_lock = threading.Lock()


def _keep_sendable(message: OutboundMessage, raw: bytes) -> None:
    with _sendable_lock:
        _sendable[id(message)] = (message, tuple(message.headers.items()), raw)
        while len(_sendable) > SENDABLE_KEPT:
            _sendable.popitem(last=False)


def _take_sendable(message: OutboundMessage) -> bytes | None:
    """The bytes `checked_email` validated for this very message object (headers unchanged since), once."""
    with _sendable_lock:
        kept = _sendable.pop(id(message), None)
    if kept is None or kept[0] is not message or kept[1] != tuple(message.headers.items()):
        return None
    return kept[2]


def email_wire_bytes(message: OutboundMessage) -> bytes:
    """The exact bytes every email channel hands over: the outbox `.eml`, SMTP DATA, SES `Content.Raw`.

    CRLF line ends, 7-bit, lines of at most 998 octets, List-Unsubscribe plain. Raises
    ValueError for a message that cannot be put on the wire (no From, an unfoldable header, a
    recipient or sender that is not one plain ASCII address). A message `checked_email` found fit
    gets the very bytes it validated (the first time it is asked for them).
    """
    kept = _take_sendable(message)
    return kept if kept is not None else _serialize(message)


# The wire form read back as a message: a parsed header is written back as it came (no refolding).
EMAIL_POLICY = email_policy.default.clone(linesep="\r\n", cte_type="7bit", refold_source="none")


def to_email_message(message: OutboundMessage) -> EmailMessage:
    """The RFC 5322 message as an `email.message.EmailMessage`, parsed from `email_wire_bytes`
    (one code path for the wire form); its `as_bytes()` are those bytes."""
    parsed = message_from_bytes(_serialize(message), policy=EMAIL_POLICY)
    assert isinstance(parsed, EmailMessage)  # what EmailPolicy's message_factory makes
    return parsed


# ---- checks ------------------------------------------------------------------------------------


def raw_header_fields(raw: bytes) -> list[tuple[str, bytes]]:
    """(name, raw value) of each top-level header field as it is on the wire, folds kept.

    Mailbox providers read some headers (List-Unsubscribe) without RFC 2047 decoding, so the
    checks must look at these bytes, not at what `email` decodes them to.
    """
    head = raw.partition(b"\r\n\r\n")[0]
    if head.count(b"\n") == head.count(b"\r\n") and b"\r\n" in raw:
        lines = head.split(b"\r\n")
    else:  # bare line ends: read them as a lenient parser would
        lines = re.split(rb"\r?\n", re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0])
    fields: list[tuple[str, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name.decode("ascii", "replace").strip(), value.strip(b" \t")))
    return fields


_REQUIRED_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version")


def _line_problems(raw: bytes) -> list[str]:
    problems: list[str] = []
    lines = raw.split(b"\r\n")
    rest = b"".join(lines)  # a CR or LF left once the CRLFs are gone is a bare one
    if b"\r" in rest or b"\n" in rest:
        problems.append("bare CR or LF: SMTP and SES need CRLF line ends")
        lines = re.split(rb"\r?\n", raw)
    longest = max(map(len, lines), default=0)
    if longest > MAX_LINE_OCTETS:
        problems.append(f"a line of {longest} octets, over RFC 5322's {MAX_LINE_OCTETS}")
    if not raw.isascii():
        problems.append("8-bit data: headers and bodies must be 7-bit (RFC 2047, quoted-printable, base64)")
    return problems


_REQUIRED_NAMES = [name.lower().encode() for name in _REQUIRED_HEADERS]
_FIELD_NAMES = re.compile(rb"\r\n([^ \t\r\n:]*):")
_ONCE_EACH = [1] * len(_REQUIRED_HEADERS)


def _field_lines(lines: bytes, lower: bytes, key: bytes) -> list[bytes]:
    """The values (folds kept) of the fields found by `key` (CRLF + lower-case name + colon) in
    `lines`, a CRLF header block between CRLFs, and `lower`, the same lower-cased."""
    found = []
    at = lower.find(key)
    while at >= 0:
        end = lower.find(b"\r\n", at + len(key))
        while lines[end + 2 : end + 3] in (b" ", b"\t"):  # a folded field goes on
            end = lower.find(b"\r\n", end + 2)
        found.append(lines[at + len(key) : end].strip(b" \t"))
        at = lower.find(key, end)
    return found


def _checked_headers(head: bytes) -> list[str]:
    """`_header_problems` of a CRLF header block as `email_wire_bytes` writes it, its fields found
    by name (C-speed searches) instead of reading every line."""
    lines = b"\r\n" + head + b"\r\n"
    lower = lines.lower()
    unsubscribe = _field_lines(lines, lower, b"\r\nlist-unsubscribe:")
    post = _field_lines(lines, lower, b"\r\nlist-unsubscribe-post:")
    names = _FIELD_NAMES.findall(lower)  # a continuation line starts with white space: no name
    return _header_problems([names.count(name) for name in _REQUIRED_NAMES], unsubscribe, post)


def _header_problems(counts: list[int], unsubscribe: list[bytes], post: list[bytes]) -> list[str]:
    """The header problems, from how many of each _REQUIRED_HEADERS there are and the raw
    values of List-Unsubscribe and List-Unsubscribe-Post."""
    problems: list[str] = []
    if counts != _ONCE_EACH:
        for name, count in zip(_REQUIRED_HEADERS, counts, strict=True):
            if count != 1:
                problems.append(f"missing {name} header" if not count else f"{count} {name} headers")
    if not unsubscribe:
        problems.append("missing List-Unsubscribe")
    else:
        value = unsubscribe[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
        if b"=?" in value:
            problems.append("List-Unsubscribe is RFC 2047-encoded: mailbox providers read it raw and ignore it")
        elif not value.startswith(b"<https://"):
            problems.append("List-Unsubscribe does not start with an <https://...> one-click URI")
        if b"<mailto:" not in value:
            problems.append("List-Unsubscribe has no <mailto:...> URI")
    if post != [b"List-Unsubscribe=One-Click"]:
        problems.append("missing List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    return problems


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
                problems.append(ICS_LACKS)
            elif str(part.get_param("method") or "").upper() != method:
                # RFC 6047: the part's method parameter must name the iTIP method inside.
                problems.append(f"calendar part's content type does not say method={method}")
            elif events[0].get("DTSTART") is None or events[0].decoded("DTSTART").utcoffset() is None:
                problems.append("calendar invite DTSTART is not in UTC")
        except ValueError as error:
            problems.append(f"calendar invite does not parse: {error}")
    return problems


def _parsed_problems(raw: bytes, expect_calendar_invite: bool) -> list[str]:
    """What the standard library's MIME parser and `icalendar` find: the expensive structural checks."""
    parsed = message_from_bytes(raw, policy=email_policy.compat32)  # structure only: 10x faster than default
    problems: list[str] = []
    defects = sorted({type(defect).__name__ for part in parsed.walk() for defect in part.defects})
    if defects:
        problems.append(f"MIME structure is broken: {', '.join(defects)}")
    problems.extend(_calendar_problems(parsed, expect_calendar_invite))
    return problems


def wire_problems(raw: bytes, *, expect_calendar_invite: bool) -> list[str]:
    """What makes these email bytes unfit to send, as a mailbox provider reads them (every check, every time).

    Line ends and lengths (RFC 5321/5322), 7-bit data, the required headers, MIME structure, a plain one-click
    List-Unsubscribe (RFC 2369/8058: `<https://…>` first, a `mailto:` too, no RFC 2047) with
    `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and a calendar invite that parses.
    """
    fields: dict[str, list[bytes]] = {}
    for name, value in raw_header_fields(raw):
        fields.setdefault(name.lower(), []).append(value)
    counts = [len(fields.get(name.lower(), [])) for name in _REQUIRED_HEADERS]
    unsubscribe, post = fields.get("list-unsubscribe", []), fields.get("list-unsubscribe-post", [])
    header_problems = _header_problems(counts, unsubscribe, post)
    return _line_problems(raw) + header_problems + _parsed_problems(raw, expect_calendar_invite)


# ---- per message: the checks above on the bytes, the parsers once per shape ----------------------

# Message shapes whose wire form passed the parsers -> the content lines of their invites.
_CHECKED_SHAPES: dict[tuple[object, ...], tuple[CheckedInvite, ...]] = {}
_MAX_SHAPES = 4096


def message_shape(message: OutboundMessage) -> tuple[object, ...]:
    """What the MIME structure `email_wire_bytes` writes for a message depends on: the names of
    its headers, whether it has HTML, its attachments' types and names. Messages of one shape
    differ only in header values (one line each, `one_line`, folded with a leading space) and in
    bodies encoded by quoted-printable and base64, which cannot contain a boundary (`=_`)."""
    attachments = tuple((attachment.content_type, attachment.filename) for attachment in message.attachments)
    return tuple(message.headers), bool(message.body_html), attachments


@lru_cache(maxsize=256)
def _calendar_method(content_type: str) -> str | None:
    """The `method=` of a text/calendar content type ("" without one); None for other types."""
    mime, _, params = content_type.partition(";")
    if mime.strip().lower() != "text/calendar":
        return None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "method":
            return value.strip().strip('"')
    return ""


def _checked_shape(raw: bytes, message: OutboundMessage, expect_calendar_invite: bool) -> list[str]:
    """Each invite checked by `calendar_invite.ics_problems` (against the invite of the message
    that passed for this shape, when there is one); the standard library's MIME parser and
    `icalendar` (`_parsed_problems`) on the bytes, once per shape that has not passed them yet."""
    shape = (message_shape(message), expect_calendar_invite)
    references = _CHECKED_SHAPES.get(shape)
    invites = [
        (a.data, method) for a in message.attachments if (method := _calendar_method(a.content_type)) is not None
    ]
    problems = ["missing calendar invite"] if expect_calendar_invite and not invites else []
    for number, (invite, method) in enumerate(invites):
        reference = references[number] if references is not None and number < len(references) else None
        problems.extend(ics_problems(invite, method, reference))
    if references is not None:
        return problems
    parsed = _parsed_problems(raw, expect_calendar_invite)
    if not parsed and not problems:
        if len(_CHECKED_SHAPES) >= _MAX_SHAPES:
            _CHECKED_SHAPES.clear()
        _CHECKED_SHAPES[shape] = tuple(checked_reference(invite_lines(invite)) for invite, _ in invites)
    return parsed + [problem for problem in problems if problem not in parsed]


class CheckedEmail(NamedTuple):
    """An email's wire bytes (None when it cannot be serialized) and what makes it unfit to send."""

    data: bytes | None
    problems: list[str]


def checked_email(message: OutboundMessage, *, expect_calendar_invite: bool) -> CheckedEmail:
    """Serialize once and check those bytes; a fit message's bytes are kept for the channel.

    Checked for every message, on its bytes: CRLF line ends (no bare CR or LF), lines of at most
    998 octets, 7-bit, each required header exactly once, the one-click List-Unsubscribe form and
    List-Unsubscribe-Post (as `wire_problems`); and each `.ics` (the attachment the writer
    base64-encodes) by `calendar_invite.ics_problems`: content-line syntax, METHOD REQUEST/CANCEL
    naming the part's `method=`, a VEVENT with a UID, DTSTART in UTC, date-time and SEQUENCE
    values (reading only the lines that differ from the invite of the message that passed for
    this shape, when they differ only in recipient values).

    Checked once per message shape (`message_shape`: header names, HTML or not, the attachments'
    types and names, which is all the writer's MIME structure depends on): the standard
    library's MIME parser (defects) and `icalendar` on the bytes, as `wire_problems` does on every
    call. A shape that failed them is parsed again for each message.

    `email_wire_bytes(message)` then returns these bytes for this message object (once, while its
    headers are unchanged, if it is among the last SENDABLE_KEPT fit ones): validation and sending
    share one serialization, and what is sent is what was checked.
    """
    try:
        raw = _serialize(message)
    except ValueError as error:
        return CheckedEmail(None, [f"cannot be serialized: {error}"])
    blank = raw.find(b"\r\n\r\n")
    head = raw[:blank] if blank >= 0 else raw
    problems = _line_problems(raw) + _checked_headers(head)
    problems += _checked_shape(raw, message, expect_calendar_invite)
    if not problems:
        _keep_sendable(message, raw)
    return CheckedEmail(raw, problems)


def email_problems(message: OutboundMessage, *, expect_calendar_invite: bool) -> list[str]:
    """What makes an email unfit to send, checked on the exact bytes the channels send (`checked_email`).

    Large mailbox providers reject bulk mail without one-click unsubscribe, and a calendar
    invite that does not parse is worse than none.
    """
    return checked_email(message, expect_calendar_invite=expect_calendar_invite).problems
