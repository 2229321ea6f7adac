"""Issue 10, defect 1: the bytes each email provider receives (outbox file, SMTP relay, SES v2).

Mailbox providers read `List-Unsubscribe` raw: an RFC 2047-encoded one is ignored and RFC 8058
one-click unsubscribe silently stops working. Parsing the mail back with `email`'s default policy
decodes encoded-words and hides the defect, so these tests look at the raw header lines.
"""

from __future__ import annotations

import binascii
import random
import re
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import boto3
import icalendar
import pytest

from eventreach_assets.domain import email_wire
from eventreach_assets.domain.calendar_invite import ICS_CONTENT_TYPE
from eventreach_assets.domain.delivery import Attachment, OutboundMessage, PermanentSendError
from eventreach_assets.domain.email_wire import (
    MAX_LINE_OCTETS,
    QuotedPrintablePieces,
    checked_email,
    email_problems,
    email_wire_bytes,
    fold_verbatim_header,
    message_id,
    quoted_printable,
    raw_header_fields,
    to_email_message,
    wire_problems,
)
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.link_tokens import verify_link_token
from eventreach_assets.domain.rendering import (
    render_cancellation_email,
    render_invitation_email,
    render_survey_email,
    render_update_email,
)
from eventreach_assets.domain.templates import TemplateSet
from eventreach_assets.resources.channels import LocalOutboxEmail, SesEmail, SmtpEmail, outbox_file_stem
from eventreach_assets_tests.stand_ins import REGION, smtp_server

SECRET = b"wire-secret"
BASE = "https://go.eventreach.example"
SENDER = "EventReach <events@eventreach.example>"
SEND_AT = datetime(2026, 11, 23, 9, 0)
# A non-ASCII event name: the Subject must stay RFC 2047-encoded while List-Unsubscribe must not be.
EVENT = EventContext("ev-7", "Cloud-Gipfel Zürich", ["cloud"], datetime(2026, 12, 3, 16, 0), 500, ["DE"])
ROW = {"customer_id": "c42", "email": "ann@example.com", "marketplace": "DE", "timezone": "Europe/Berlin"}


def invitation(row: dict | None = None) -> OutboundMessage:
    """Rendered as the email_invitations asset renders it (template, signed links, .ics)."""
    return render_invitation_email(
        row or ROW,
        event=EVENT,
        templates=TemplateSet(),
        secret=SECRET,
        base_url=BASE,
        sender=SENDER,
        organizer_email="events@eventreach.example",
        campaign_id="ev-7:email:DE:Europe/Berlin:2026-11-23",
        include_calendar_invite=True,
        send_at=SEND_AT,
    )


def unsubscribe_uris(message: OutboundMessage) -> tuple[str, str]:
    https, mailto = re.findall(r"<([^>]+)>", message.headers["List-Unsubscribe"])
    return https, mailto


def raw_field(raw: bytes, name: str) -> bytes:
    (value,) = [value for field, value in raw_header_fields(raw) if field.lower() == name.lower()]
    return value


def assert_sent_as_on_the_wire(raw: bytes, message: OutboundMessage) -> None:
    """What a provider must receive, checked on its bytes; shared by the three channels."""
    https, mailto = unsubscribe_uris(message)
    assert https.startswith(f"{BASE}/unsubscribe?t=") and mailto.startswith("mailto:unsubscribe@eventreach.example")
    # The exact byte form: plain URIs, folded once, at the comma, before the second "<".
    assert f"\r\nList-Unsubscribe: <{https}>,\r\n <{mailto}>\r\n".encode() in raw
    assert b"=?" not in raw_field(raw, "List-Unsubscribe")
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    # CRLF everywhere, no line over 998 octets, 7-bit.
    assert raw.count(b"\n") == raw.count(b"\r\n") and raw.count(b"\r") == raw.count(b"\r\n")
    assert max(len(line) for line in raw.split(b"\r\n")) <= MAX_LINE_OCTETS
    assert raw.isascii()
    # The non-ASCII Subject stays RFC 2047-encoded, and decodes to the rendered one.
    assert raw_field(raw, "Subject").count(b"=?utf-8?") >= 1
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == message.subject and "Zürich" in parsed["Subject"]
    assert parsed["List-Unsubscribe"] is not None
    assert re.findall(r"<([^>]+)>", parsed["List-Unsubscribe"]) == [https, mailto]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = parse_qs(urlparse(https).query)["t"][0]
    assert verify_link_token(SECRET, token, action="unsubscribe").customer_id == "c42"
    assert parsed["To"] == "ann@example.com" and parsed["From"] == SENDER
    assert parsed["Message-ID"] == message_id(message)
    assert parsed["Date"].datetime == SEND_AT.replace(tzinfo=UTC)
    # MIME structure: alternative text + HTML, and the .ics alongside.
    assert parsed.get_content_type() == "multipart/mixed"
    assert parsed.get_body(("html",)) is not None and parsed.get_body(("plain",)) is not None
    (ics_part,) = [part for part in parsed.walk() if part.get_content_type() == "text/calendar"]
    assert ics_part.get_filename() == "invite.ics" and ics_part.get_param("method") == "REQUEST"
    assert ics_part.get_content().encode() == message.attachments[0].data
    calendar = icalendar.Calendar.from_ical(ics_part.get_content())
    assert str(calendar["METHOD"]) == "REQUEST"
    assert b"METHOD:REQUEST" in message.attachments[0].data
    # The validator the assets run agrees, and every channel sends the same bytes.
    assert wire_problems(raw, expect_calendar_invite=True) == []
    assert raw == email_wire_bytes(message)


# ---- the defect, reproduced ------------------------------------------------------------------


def test_the_old_wire_serialization_encoded_list_unsubscribe_and_the_validator_says_so() -> None:
    """What the channels did before issue 10: `as_bytes(policy=SMTP.clone(cte_type="7bit"))`."""
    message = invitation()
    old = to_email_message(message).as_bytes(policy=policy.SMTP.clone(cte_type="7bit"))
    assert raw_field(old, "List-Unsubscribe").startswith(b"=?utf-8?q?=3Chttps")
    # Parsing decodes the encoded-words, which is why the old tests did not see it.
    assert re.findall(r"<([^>]+)>", message_from_bytes(old, policy=policy.default)["List-Unsubscribe"]) == list(
        unsubscribe_uris(message)
    )
    problems = wire_problems(old, expect_calendar_invite=True)
    assert "List-Unsubscribe is RFC 2047-encoded: mailbox providers read it raw and ignore it" in problems


def test_wire_bytes_are_reproducible_and_validated_as_sent() -> None:
    message = invitation()
    first = email_wire_bytes(message)
    assert first == email_wire_bytes(invitation())  # boundaries from the Message-ID, Date from the send time
    assert email_problems(message, expect_calendar_invite=True) == []
    assert_sent_as_on_the_wire(first, message)


# ---- what each provider receives -------------------------------------------------------------


def test_outbox_eml_is_the_wire_form(tmp_path: Path) -> None:
    message = invitation()
    channel = LocalOutboxEmail(outbox_dir=str(tmp_path))
    assert channel.send(message) == message_id(message)
    raw = (tmp_path / f"{outbox_file_stem(message)}.eml").read_bytes()
    assert_sent_as_on_the_wire(raw, message)


@pytest.mark.integration
def test_smtp_relay_receives_the_wire_form() -> None:
    message = invitation()
    with smtp_server() as (host, port, handler):
        channel = SmtpEmail(host=host, port=port, starttls=False, sender=SENDER, max_messages_per_second=0, timeout=5)
        assert channel.send(message) == message_id(message)
        channel.close()
    ((_, mail_from, rcpt_tos, raw),) = handler.messages  # DATA as the server received it, dot-unstuffed
    assert (mail_from, rcpt_tos) == ("events@eventreach.example", ["ann@example.com"])
    assert_sent_as_on_the_wire(raw, message)


@pytest.mark.integration
def test_ses_v2_receives_the_wire_form(aws_endpoint: str) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    boto3.client("sesv2", region_name=REGION, endpoint_url=aws_endpoint).create_email_identity(
        EmailIdentity="eventreach.example"
    )
    message = invitation()
    channel = SesEmail(region_name=REGION, endpoint_url=aws_endpoint, sender=SENDER)
    ses_id = channel.send(message)
    # What SES v2 SendEmail stored of Content.Raw (ThreadedMotoServer serves from this process).
    (stored,) = [m for m in ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages if m.id == ses_id]
    assert_sent_as_on_the_wire(stored.raw_data.encode("utf-8"), message)


# ---- folding and validation ------------------------------------------------------------------


def test_list_unsubscribe_folds_only_at_the_comma_and_refuses_what_cannot_fit() -> None:
    short = "<https://e.example/u?t=1>, <mailto:u@e.example>"
    assert fold_verbatim_header("List-Unsubscribe", short) == f"List-Unsubscribe: {short}\r\n"
    long_https = "https://e.example/u?t=" + "a" * 900
    folded = fold_verbatim_header("List-Unsubscribe", f"<{long_https}>, <mailto:u@e.example>")
    assert folded == f"List-Unsubscribe: <{long_https}>,\r\n <mailto:u@e.example>\r\n"
    assert fold_verbatim_header("List-Unsubscribe", "<a>,\r\n <b>", "\n") == "List-Unsubscribe: <a>, <b>\n"
    with pytest.raises(ValueError, match="998"):
        fold_verbatim_header("List-Unsubscribe", "<https://e.example/u?t=" + "a" * 980 + ">")
    with pytest.raises(ValueError, match="printable ASCII"):
        fold_verbatim_header("List-Unsubscribe", "<https://bücher.example/u>")


def test_an_unsendable_list_unsubscribe_is_a_problem_and_a_permanent_send_error(tmp_path: Path) -> None:
    message = invitation()
    https, mailto = unsubscribe_uris(message)
    huge = replace(message, headers={**message.headers, "List-Unsubscribe": f"<{https}{'x' * 990}>, <{mailto}>"})
    (problem,) = email_problems(huge, expect_calendar_invite=True)
    assert problem.startswith("cannot be serialized: List-Unsubscribe needs a line of")
    with pytest.raises(PermanentSendError, match="cannot be serialized"):
        LocalOutboxEmail(outbox_dir=str(tmp_path)).send(huge)
    assert not list(tmp_path.iterdir())


def test_wire_problems_names_each_defect_on_the_bytes() -> None:
    message = invitation()
    good = email_wire_bytes(message)
    https, mailto = unsubscribe_uris(message)
    field = f"List-Unsubscribe: <{https}>,\r\n <{mailto}>\r\n".encode()

    def swapped(new: bytes) -> list[str]:
        return wire_problems(good.replace(field, new), expect_calendar_invite=True)

    assert swapped(f"List-Unsubscribe: <{mailto}>, <{https}>\r\n".encode()) == [
        "List-Unsubscribe does not start with an <https://...> one-click URI"
    ]
    assert swapped(f"List-Unsubscribe: <{https}>\r\n".encode()) == ["List-Unsubscribe has no <mailto:...> URI"]
    assert swapped(b"") == ["missing List-Unsubscribe"]
    assert wire_problems(good.replace(b"\r\n", b"\n"), expect_calendar_invite=True) == [
        "bare CR or LF: SMTP and SES need CRLF line ends"
    ]
    no_id = re.sub(rb"\r\nMessage-ID: [^\r]+", b"", good, count=1)
    assert wire_problems(no_id, expect_calendar_invite=True) == ["missing Message-ID header"]
    long_line = good.replace(b"\r\nTo: ", b"\r\nX-Long: " + b"x" * 1000 + b"\r\nTo: ", 1)
    assert wire_problems(long_line, expect_calendar_invite=True) == ["a line of 1008 octets, over RFC 5322's 998"]
    eight_bit = good.replace(b"Subject: ", "Subject: Zürich ".encode(), 1)
    assert wire_problems(eight_bit, expect_calendar_invite=True) == [
        "8-bit data: headers and bodies must be 7-bit (RFC 2047, quoted-printable, base64)"
    ]
    no_post = good.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b"")
    assert wire_problems(no_post, expect_calendar_invite=True) == [
        "missing List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    ]
    truncated = good.rsplit(b"\r\n--=_er0_", 1)[0]
    assert wire_problems(truncated, expect_calendar_invite=True) == [
        "MIME structure is broken: CloseBoundaryNotFoundDefect"
    ]
    assert email_problems(replace(message, attachments=()), expect_calendar_invite=True) == ["missing calendar invite"]


def test_a_long_ascii_subject_folds_between_words_and_reads_back_without_a_leading_space() -> None:
    message = replace(invitation(), subject="Join us for the Cloud Summit on Thursday, December 3, 2026 at 5:00 PM")
    raw = email_wire_bytes(message)
    subject = raw_field(raw, "Subject")
    assert subject.startswith(b"Join us for") and b"=?" not in subject
    head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert all(len(line) <= 78 for line in head if b"<https://" not in line and b"<mailto:" not in line)
    assert message_from_bytes(raw, policy=policy.default)["Subject"] == message.subject


# ---- issue 12: the bytes written directly, read back by the standard library ------------------

CORPUS_EVENTS = {
    "ascii": EventContext("ev-a", "Cloud Summit", ["cloud"], datetime(2026, 12, 3, 16, 0), 500, ["US"]),
    "umlauts": EVENT,
    "long": EventContext(
        "ev-l",
        "The Very Long Annual EventReach Cloud, Data & AI Practitioners' Summit — Édition spéciale",
        ["ai"],
        datetime(2026, 12, 3, 16, 0),
        500,
        ["FR"],
    ),
}
CORPUS_ROWS = [
    {"customer_id": "c1", "email": "ann@example.com", "marketplace": "US", "timezone": "America/New_York"},
    {"customer_id": "c2", "email": "jorg@example.de", "marketplace": "DE", "timezone": "Europe/Berlin",
     "first_name": "Jörg"},
    {"customer_id": "c3", "email": "elo@example.fr", "marketplace": "FR", "timezone": "Europe/Paris",
     "first_name": "Éloïse"},
    {"customer_id": "c4", "email": "aki@example.jp", "marketplace": "JP", "timezone": "Asia/Tokyo",
     "first_name": "明"},
]  # fmt: skip


def corpus() -> list[tuple[str, OutboundMessage, bool]]:
    """(what, message, has an .ics): every kind and language the renderer sends, non-ASCII
    names, subjects and sender, a long subject, with and without .ics and HTML, REQUEST and CANCEL."""
    common = {"templates": TemplateSet(), "secret": SECRET, "base_url": BASE, "sender": SENDER}
    messages: list[tuple[str, OutboundMessage, bool]] = []
    for label, event in CORPUS_EVENTS.items():
        for row in CORPUS_ROWS:
            for invite in (True, False):
                message = render_invitation_email(
                    row, event=event, organizer_email="events@eventreach.example", campaign_id=f"{event.event_id}:c",
                    include_calendar_invite=invite, send_at=SEND_AT, **common,
                )  # fmt: skip
                messages.append((f"invitation {label} {row['marketplace']} ics={invite}", message, invite))
            update = render_update_email(row, event=event, campaign_id="u", sequence=2, send_at=SEND_AT,
                                         previous_start_utc=datetime(2026, 11, 30, 9, 0), **common)  # fmt: skip
            cancel = render_cancellation_email(row, event=event, campaign_id="x", sequence=3, send_at=SEND_AT, **common)
            survey = render_survey_email(row, event=event, campaign_id="s", send_at=SEND_AT, **common)
            messages += [(f"update {label}", update, True), (f"cancel {label}", cancel, True)]
            messages += [
                (f"survey {label}", survey, False),
                (f"text only {label}", replace(survey, body_html=""), False),
            ]
    named = replace(
        messages[0][1], headers={**messages[0][1].headers, "From": "Événements Zürich <events@eventreach.example>"}
    )
    return [*messages, ("non-ASCII sender name", named, True)]


def test_the_standard_library_reads_back_exactly_what_was_rendered_for_a_corpus() -> None:
    """The wire bytes are written by hand now: whatever the language, kind, subject or parts,
    `email`'s parser reads back the rendered message (line breaks CRLF on the wire), no defects."""
    for what, message, has_invite in corpus():
        raw = email_wire_bytes(message)
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        assert [defect for part in parsed.walk() for defect in part.defects] == [], what
        assert (parsed["From"], parsed["To"], parsed["Subject"]) == (
            message.headers["From"], message.recipient, message.subject,
        ), what  # fmt: skip
        assert parsed["Date"].datetime == SEND_AT.replace(tzinfo=UTC), what
        assert parsed["Message-ID"] == message_id(message), what
        assert parsed["List-Unsubscribe"] == message.headers["List-Unsubscribe"], what
        assert parsed["Content-Language"] == message.headers["Content-Language"], what
        text = parsed.get_body(("plain",))
        assert text.get_content().replace("\r\n", "\n") == message.body_text, what
        html = parsed.get_body(("html",))
        if message.body_html:
            assert html.get_content().replace("\r\n", "\n") == message.body_html, what
        else:
            assert html is None and parsed.get_content_type() in ("text/plain", "multipart/mixed"), what
        attachments = list(parsed.iter_attachments())
        assert [(a.get_filename(), a.get_content_type(), a.get_payload(decode=True)) for a in attachments] == [
            (a.filename, a.content_type.split(";")[0], a.data) for a in message.attachments
        ], what
        assert [a.get_param("method") for a in attachments] == [
            "CANCEL" if "CANCEL" in a.content_type else "REQUEST" for a in message.attachments
        ], what
        assert wire_problems(raw, expect_calendar_invite=has_invite) == [], what
        assert email_problems(message, expect_calendar_invite=has_invite) == [], what
        assert raw.isascii() and all(len(line) <= 78 for line in raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")), what


def test_a_non_ascii_subject_and_sender_are_encoded_words_and_long_ascii_ones_fold_at_spaces() -> None:
    german = render_invitation_email(
        {**ROW, "customer_id": "c9"}, event=CORPUS_EVENTS["long"], templates=TemplateSet(), secret=SECRET,
        base_url=BASE, sender="Événements <events@eventreach.example>", organizer_email="events@eventreach.example",
        campaign_id="c", include_calendar_invite=False, send_at=SEND_AT,
    )  # fmt: skip
    raw = email_wire_bytes(german)
    subject = raw_field(raw, "Subject")
    assert subject.startswith(b"=?utf-8?q?") and subject.count(b"\r\n ") >= 1
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert all(len(line) <= 78 for line in head if not line.startswith((b"List-Unsubscribe: <https:", b" <mailto:")))
    assert raw_field(raw, "From").startswith(b"=?utf-8?")
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == german.subject and parsed["From"].addresses[0].display_name == "Événements"
    english = replace(german, subject="Join us for " + "the summit of " * 12 + "2026")
    assert raw_field(email_wire_bytes(english), "Subject").startswith(b"Join us for the summit")
    assert b"=?" not in raw_field(email_wire_bytes(english), "Subject")


def test_bodies_are_quoted_printable_of_the_text_whatever_the_lines() -> None:
    """The writer's quoted-printable (by hand for printable ASCII, binascii otherwise, and a
    template's pieces encoded once with the values between them) decodes to the text, in lines
    of at most 76 characters with no trailing whitespace."""
    chance = random.Random(12)
    alphabet = "abcXYZ09=?&<>\"' .:/-_\tüé—\n."
    for _ in range(3000):
        text = "".join(chance.choice(alphabet) for _ in range(chance.randint(0, 300)))
        literals = tuple(text.split("b"))
        values = ["".join(chance.choice(alphabet) for _ in range(chance.randint(0, 200))) for _ in literals[1:]]
        joined = QuotedPrintablePieces(literals).join(values)
        assert str(joined) == "".join(piece for pair in zip(literals, [*values, ""], strict=True) for piece in pair)
        for encoded, decoded in ((quoted_printable(text), text), (joined.quoted_printable, str(joined))):  # type: ignore[attr-defined]
            assert binascii.a2b_qp(encoded).decode() == decoded.replace("\n", "\r\n")
            assert encoded.isascii() and max(map(len, encoded.split(b"\r\n"))) <= 76
            assert not any(line.endswith((b" ", b"\t")) for line in encoded.split(b"\r\n"))


# ---- issue 12: validation per message, the parsers per shape, one serialization ------------------


def test_the_parsers_run_once_per_message_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """`email_problems` parses (email + icalendar) the first message of a shape, then checks the
    bytes and the .ics of every message without a parser."""
    parsed: list[bytes] = []
    original = email_wire._parsed_problems
    monkeypatch.setattr(email_wire, "_parsed_problems", lambda raw, expect: parsed.append(raw) or original(raw, expect))
    monkeypatch.setattr(email_wire, "_CHECKED_SHAPES", {})
    rows = [{**ROW, "customer_id": f"c{n}", "email": f"c{n}@example.com"} for n in range(20)]
    assert all(email_problems(invitation(row), expect_calendar_invite=True) == [] for row in rows)
    assert len(parsed) == 1
    without_html = replace(invitation(rows[0]), body_html="")
    assert email_problems(without_html, expect_calendar_invite=True) == []
    assert len(parsed) == 2  # another shape: parsed once more


def test_a_broken_message_of_a_known_shape_is_still_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the per-message checks catch once the shape is known: an injected header, an
    over-long List-Unsubscribe element, a non-ASCII byte in a header, a broken .ics."""
    good = invitation()
    assert email_problems(good, expect_calendar_invite=True) == []  # the shape has passed the parsers
    https, mailto = unsubscribe_uris(good)
    injected = replace(good, recipient="ann@example.com\r\nBcc: everyone@example.com")
    assert email_problems(injected, expect_calendar_invite=True) == [
        "cannot be serialized: recipient is not a plain ASCII address: 'ann@example.com\\r\\nBcc: everyone@example.com'"
    ]
    named = replace(good, headers={**good.headers, "X-Note\r\nBcc": "everyone@example.com"})
    assert email_problems(named, expect_calendar_invite=True)[0].startswith("cannot be serialized: not a header name")
    folded = replace(good, headers={**good.headers, "X-EventReach-Campaign": "c\r\nBcc: everyone@example.com"})
    assert email_problems(folded, expect_calendar_invite=True) == []  # one line: the value, not a header
    assert b"\r\nBcc:" not in email_wire_bytes(folded)
    long_element = replace(good, headers={**good.headers, "List-Unsubscribe": f"<{https}{'x' * 990}>, <{mailto}>"})
    (problem,) = email_problems(long_element, expect_calendar_invite=True)
    assert problem.startswith("cannot be serialized: List-Unsubscribe needs a line of")
    ics = good.attachments[0].data
    for damaged, problem in (
        (ics.replace(b"UID:", b"UID;X"), "calendar invite does not parse: not a content line: 'UID;X"),
        (ics.replace(b"METHOD:REQUEST", b"METHOD:CANCEL"), "calendar part's content type does not say method=CANCEL"),
        (ics.replace(b"DTSTART:20261203T160000Z", b"DTSTART:20261203T160000"), "calendar invite DTSTART is not in UTC"),
        (ics.replace(b"DTSTAMP:2026", b"DTSTAMP:x2026"), "calendar invite does not parse: DTSTAMP value 'x2026"),
        (ics.replace(b"\r\nURL:", b"\r\nURL:\x07"), "calendar invite does not parse: not a content line: 'URL:"),
    ):
        attachment = Attachment("invite.ics", ICS_CONTENT_TYPE, damaged)
        (found,) = email_problems(replace(good, attachments=(attachment,)), expect_calendar_invite=True)
        assert found.startswith(problem), (problem, found)
    # A writer that let an 8-bit byte, a second To or a blank line into the header block: caught per message too.
    serialize = email_wire._serialize
    for damage, problem in (
        (lambda raw: raw.replace(b"\r\nTo: ", "\r\nTo: Zoë ".encode(), 1), "8-bit data"),
        (lambda raw: raw.replace(b"\r\nTo: ", b"\r\nTo: x@example.com\r\nTo: ", 1), "2 To headers"),
        (lambda raw: raw.replace(b"\r\nMIME-Version: 1.0\r\n", b"\r\n\r\nMIME-Version: 1.0\r\n", 1), "missing MIME"),
    ):
        monkeypatch.setattr(email_wire, "_serialize", lambda message, damage=damage: damage(serialize(message)))
        problems = email_problems(good, expect_calendar_invite=True)
        assert any(found.startswith(problem) for found in problems), (problem, problems)
    monkeypatch.setattr(email_wire, "_serialize", serialize)


def test_validation_and_the_channel_share_one_serialization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message `checked_email` found fit is sent as the very bytes it checked: the channel
    does not serialize it again (unless its headers changed since)."""
    written: list[bytes] = []
    serialize = email_wire._serialize
    monkeypatch.setattr(email_wire, "_serialize", lambda message: written.append(serialize(message)) or written[-1])
    message = invitation()
    checked = checked_email(message, expect_calendar_invite=True)
    assert checked.problems == [] and checked.data is not None and len(written) == 1
    channel = LocalOutboxEmail(outbox_dir=str(tmp_path))
    channel.send(message)
    assert len(written) == 1  # the outbox got the checked bytes, written once
    assert (tmp_path / f"{outbox_file_stem(message)}.eml").read_bytes() == checked.data
    assert email_wire_bytes(message) == checked.data and len(written) == 2  # asked again: written again, the same
    changed = invitation()
    assert checked_email(changed, expect_calendar_invite=True).problems == []
    changed.headers["X-EventReach-Campaign"] = "changed after validation"
    assert b"changed after validation" in email_wire_bytes(changed)  # not the stale bytes
