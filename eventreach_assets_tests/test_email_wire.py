"""Issue 10, defect 1: the bytes each email provider receives (outbox file, SMTP relay, SES v2).

Mailbox providers read `List-Unsubscribe` raw: an RFC 2047-encoded one is ignored and RFC 8058
one-click unsubscribe silently stops working. Parsing the mail back with `email`'s default policy
decodes encoded-words and hides the defect, so these tests look at the raw header lines.
"""

from __future__ import annotations

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

from eventreach_assets.domain.delivery import OutboundMessage, PermanentSendError
from eventreach_assets.domain.email_wire import (
    MAX_LINE_OCTETS,
    email_problems,
    email_wire_bytes,
    fold_verbatim_header,
    message_id,
    raw_header_fields,
    to_email_message,
    wire_problems,
)
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.link_tokens import verify_link_token
from eventreach_assets.domain.rendering import render_invitation_email
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
