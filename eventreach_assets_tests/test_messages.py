"""Rendering: signed links, .ics invites, templated emails, push, in-app, RFC 5322 output."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from urllib.parse import parse_qs, urlparse

import icalendar
import pytest

from eventreach_assets.domain.calendar_invite import ICS_CONTENT_TYPE, calendar_invite, calendar_uid
from eventreach_assets.domain.delivery import MessageKind
from eventreach_assets.domain.email_wire import email_wire_bytes, to_email_message
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.link_tokens import (
    LINK_ACTIONS,
    InvalidLinkToken,
    LinkSigner,
    link,
    sign_link_token,
    verify_link_token,
)
from eventreach_assets.domain.rendering import (
    render_day_of_email,
    render_in_app_banner,
    render_invitation_email,
    render_push_reminder,
)
from eventreach_assets.domain.templates import TemplateSet, language_for, local_when

SECRET = b"test-secret"
BASE = "https://go.example.com"
EVENT = EventContext("ev-1", "Data Summit", ["data"], datetime(2026, 1, 20, 16, 0), 5000, ["US", "DE"])
SEND_AT = datetime(2026, 1, 12, 9, 0)
ROW = {"customer_id": "c1", "email": "ann@example.com", "marketplace": "DE", "timezone": "Europe/Berlin"}
CLAIMS = {"customer_id": "c1", "event_id": "ev-1", "channel": "email", "campaign_id": "camp", "action": "register"}


def invitation(row: dict | None = None, event: EventContext = EVENT, include_calendar_invite: bool = True):
    return render_invitation_email(
        row or ROW,
        event=event,
        templates=TemplateSet(),
        secret=SECRET,
        base_url=BASE,
        sender="EventReach <events@example.com>",
        organizer_email="events@example.com",
        campaign_id="ev-1:email:DE:Europe/Berlin:2026-01-12",
        include_calendar_invite=include_calendar_invite,
        send_at=SEND_AT,
    )


def token_of(url: str) -> str:
    return parse_qs(urlparse(url).query)["t"][0]


# ---- tokens ----------------------------------------------------------------------------------


def test_token_round_trip():
    token = sign_link_token(SECRET, **CLAIMS)
    claims = verify_link_token(SECRET, token, action="register")
    assert (claims.customer_id, claims.event_id, claims.channel, claims.campaign_id, claims.action) == (
        "c1",
        "ev-1",
        "email",
        "camp",
        "register",
    )
    assert token == sign_link_token(SECRET, **CLAIMS)  # deterministic: retries render the same links
    assert link(BASE + "/", "register", token) == f"{BASE}/register?t={token}"


def test_tampered_and_foreign_tokens_are_rejected():
    token = sign_link_token(SECRET, **CLAIMS)
    payload, signature = token.split(".")
    other = sign_link_token(SECRET, **{**CLAIMS, "customer_id": "c2"})
    # c2's payload with c1's signature: a token cannot be re-pointed at another customer.
    with pytest.raises(InvalidLinkToken, match="bad signature"):
        verify_link_token(SECRET, f"{other.split('.')[0]}.{signature}")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    with pytest.raises(InvalidLinkToken, match="bad signature"):
        verify_link_token(SECRET, f"{payload}.{flipped}")
    with pytest.raises(InvalidLinkToken, match="bad signature"):
        verify_link_token(b"another-secret", token)
    with pytest.raises(InvalidLinkToken, match="malformed"):
        verify_link_token(SECRET, "not-a-token")
    with pytest.raises(InvalidLinkToken, match="malformed"):
        verify_link_token(SECRET, "a.b.c")
    with pytest.raises(InvalidLinkToken, match="not 'unsubscribe'"):
        verify_link_token(SECRET, token, action="unsubscribe")
    with pytest.raises(ValueError, match="unknown link action"):
        sign_link_token(SECRET, **{**CLAIMS, "action": "delete"})


# ---- calendar ----------------------------------------------------------------------------------


def test_ics_parses_back_with_stable_uid_and_utc_times():
    ics = calendar_invite(
        EVENT, customer_id="c1", organizer_email="events@example.com", join_url=f"{BASE}/join?t=x", duration_minutes=90
    )
    calendar = icalendar.Calendar.from_ical(ics)
    assert str(calendar["method"]) == "REQUEST"
    vevent = calendar.walk("VEVENT")[0]
    assert vevent.decoded("dtstart") == datetime(2026, 1, 20, 16, 0, tzinfo=UTC)
    assert vevent.decoded("dtend") == datetime(2026, 1, 20, 17, 30, tzinfo=UTC)
    assert b"DTSTART:20260120T160000Z" in ics
    assert str(vevent["organizer"]) == "mailto:events@example.com"
    assert f"{BASE}/join?t=x" in str(vevent["description"])
    assert "dtstamp" in vevent
    again = calendar_invite(EVENT, customer_id="c1", organizer_email="o@example.com", join_url="u", duration_minutes=60)
    other = calendar_invite(EVENT, customer_id="c2", organizer_email="o@example.com", join_url="u", duration_minutes=60)
    uid = str(vevent["uid"])
    assert re.fullmatch(r"[0-9a-f]{64}@eventreach", uid)
    assert str(icalendar.Calendar.from_ical(again).walk("VEVENT")[0]["uid"]) == uid
    assert str(icalendar.Calendar.from_ical(other).walk("VEVENT")[0]["uid"]) != uid


# ---- templates and email -------------------------------------------------------------------------


def test_languages_by_marketplace_and_fallback_reported_for_japan():
    assert [language_for(m) for m in ("US", "UK", "DE", "FR", "JP", "BR", None)] == [
        "en",
        "en",
        "de",
        "fr",
        "ja",
        "pt",
        "en",
    ]
    german = invitation()
    assert german.payload["language"] == "de" and not german.payload["fell_back"]
    assert german.subject == "Seien Sie dabei: Data Summit am Dienstag, 20. Januar 2026 um 17:00 Uhr (CET)"
    japanese = invitation({**ROW, "marketplace": "JP", "timezone": "Asia/Tokyo"})
    assert japanese.payload == {
        "template_id": "event-invitation-v3",
        "language": "en",
        "requested_language": "ja",
        "fell_back": True,
    }
    # English wording, Tokyo's local date and time (16:00 UTC = 01:00 JST the next day).
    assert japanese.subject == "Join us for Data Summit on Wednesday, January 21, 2026 at 1:00 AM JST"
    rendered = TemplateSet().render("event-invitation-v3", "ja", _context())
    assert rendered.used_language == "en" and rendered.fell_back


def _context() -> dict:
    return {
        "event_name": "X",
        "event_when": "w",
        "event_time": "t",
        "event_date": "d",
        "register_url": "r",
        "unsubscribe_url": "u",
        "open_pixel_url": "o",
        "first_name": "",
    }


def test_html_autoescapes_a_hostile_event_name_and_subject_stays_one_line():
    hostile = EventContext("ev-1", '<script>alert("x")</script>\r\nBcc: evil@x.com', [], EVENT.start_time_utc, 1, [])
    message = invitation({**ROW, "marketplace": "US", "timezone": "America/New_York"}, event=hostile)
    assert "<script>" not in message.body_html
    assert "&lt;script&gt;" in message.body_html
    assert "\n" not in message.subject and "\r" not in message.subject
    parsed = message_from_bytes(email_wire_bytes(message), policy=policy.default)
    assert parsed["Bcc"] is None


def test_email_parses_back_with_headers_attachment_and_valid_links():
    message = invitation()
    raw = email_wire_bytes(message)
    assert raw == to_email_message(message).as_bytes()  # the message carries the wire policy
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["To"] == "ann@example.com"
    assert parsed["From"] == "EventReach <events@example.com>"
    assert parsed["Subject"] == message.subject
    assert parsed["Message-ID"] == to_email_message(message)["Message-ID"]  # stable across renders
    assert parsed["Date"].datetime == SEND_AT.replace(tzinfo=UTC)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = re.findall(r"<([^>]+)>", parsed["List-Unsubscribe"])
    assert https.startswith(f"{BASE}/unsubscribe?t=") and mailto.startswith("mailto:unsubscribe@example.com")
    assert verify_link_token(SECRET, token_of(https), action="unsubscribe").customer_id == "c1"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert f"\r\nList-Unsubscribe: <{https}>,\r\n <{mailto}>\r\n".encode() in raw  # never RFC 2047-encoded

    html = parsed.get_body(("html",)).get_content()
    text = parsed.get_body(("plain",)).get_content()
    urls = re.findall(r'(?:href|src)="([^"]+)"', html)
    actions = {urlparse(url).path.strip("/"): verify_link_token(SECRET, token_of(url)) for url in urls}
    assert set(actions) == {"register", "unsubscribe", "open"}  # "Register Now" link and the open pixel
    for path, claims in actions.items():
        assert claims.action == path
        assert (claims.customer_id, claims.event_id, claims.channel) == ("c1", "ev-1", "email")
        assert claims.campaign_id == "ev-1:email:DE:Europe/Berlin:2026-01-12"
    assert "Jetzt registrieren" in html and "Jetzt registrieren" in text
    assert 'width="1" height="1"' in html

    attachments = list(parsed.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["invite.ics"]
    assert attachments[0].get_content_type() == "text/calendar"
    assert attachments[0].get_param("method") == "REQUEST"
    calendar = icalendar.Calendar.from_ical(attachments[0].get_content())
    description = str(calendar.walk("VEVENT")[0]["description"])
    join = re.search(r"https://\S+", description).group(0)
    assert verify_link_token(SECRET, token_of(join), action="click").customer_id == "c1"
    assert message.attachments[0].content_type == ICS_CONTENT_TYPE


def test_email_without_calendar_invite_and_missing_address():
    assert invitation(include_calendar_invite=False).attachments == ()
    with pytest.raises(ValueError, match="no email address"):
        invitation({**ROW, "email": None})


def test_day_of_email_has_the_join_link():
    message = render_day_of_email(
        {**ROW, "marketplace": "US", "timezone": "America/New_York"},
        event=EVENT,
        templates=TemplateSet(),
        secret=SECRET,
        base_url=BASE,
        sender="events@example.com",
        organizer_email="events@example.com",
        campaign_id="ev-1:email:day-of:US:America/New_York:2026-01-20",
        send_at=datetime(2026, 1, 20, 14, 0),
    )
    assert message.key.kind == MessageKind.DAY_OF
    assert message.subject == "Today: Data Summit starts at 11:00 AM EST"
    join = re.search(rf"{BASE}/join\?t=\S+", message.body_text).group(0)
    assert verify_link_token(SECRET, token_of(join)).campaign_id.endswith("2026-01-20")
    assert "List-Unsubscribe" in message.headers


# ---- push and in-app ---------------------------------------------------------------------------


def test_push_reminder_uses_yaml_templates_in_customer_timezone():
    message = render_push_reminder(
        {"customer_id": "c9", "marketplace": "US", "timezone": "America/Los_Angeles"},
        event=EVENT,
        title_template="{eventName} Tomorrow!",
        body_template="Join us at {eventTime}",
        secret=SECRET,
        base_url=BASE,
        campaign_id="ev-1:push:reminder:US:America/Los_Angeles:2026-01-19",
        send_at=datetime(2026, 1, 19, 16, 0),
    )
    assert message.subject == "Data Summit Tomorrow!"
    assert message.body_text == "Join us at 8:00 AM PST"
    assert message.payload["action"] == "Add to Calendar"
    claims = verify_link_token(SECRET, token_of(message.payload["deep_link"]))
    assert (claims.customer_id, claims.channel) == ("c9", "push")
    assert message.key.channel == "push" and message.key.kind == MessageKind.REMINDER
    assert message.scheduled_at == datetime(2026, 1, 19, 16, 0)


def test_in_app_banner_window_ends_at_event_start():
    message = render_in_app_banner(
        ROW,
        event=EVENT,
        banner_type="event-invitation",
        placement="home-screen",
        display_days=7,
        secret=SECRET,
        base_url=BASE,
        campaign_id="ev-1:in-app:DE:Europe/Berlin:2026-01-15",
        send_at=datetime(2026, 1, 15, 13, 0),
    )
    payload = message.payload
    assert (payload["banner_type"], payload["placement"]) == ("event-invitation", "home-screen")
    assert payload["display_from"] == "2026-01-15T13:00:00Z"
    assert payload["display_until"] == "2026-01-20T16:00:00Z"  # 7 days would run past the event
    assert verify_link_token(SECRET, token_of(payload["click_url"]), action="click").channel == "in-app"
    assert verify_link_token(SECRET, token_of(payload["cta_url"]), action="register").customer_id == "c1"
    assert message.key.channel == "in-app" and message.recipient == "c1"
    shown_now = render_in_app_banner(
        ROW,
        event=EVENT,
        banner_type="event-invitation",
        placement="home-screen",
        display_days=2,
        secret=SECRET,
        base_url=BASE,
        campaign_id="c",
        now=datetime(2026, 1, 15, 13, 0),
    )
    assert shown_now.payload["display_until"] == "2026-01-17T13:00:00Z"


def test_email_problems_flags_what_providers_and_calendars_reject():
    from dataclasses import replace

    from eventreach_assets.domain.delivery import Attachment
    from eventreach_assets.domain.email_wire import email_problems

    good = invitation()
    assert email_problems(good, expect_calendar_invite=True) == []
    headers = {k: v for k, v in good.headers.items() if k != "List-Unsubscribe-Post"}
    assert email_problems(replace(good, headers=headers), expect_calendar_invite=True) == [
        "missing List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    ]
    assert email_problems(replace(good, attachments=()), expect_calendar_invite=True) == ["missing calendar invite"]
    broken = Attachment("invite.ics", ICS_CONTENT_TYPE, b"BEGIN:VCALENDAR\r\nMETHOD:PUBLISH\r\nEND:VCALENDAR\r\n")
    problems = email_problems(replace(good, attachments=(broken,)), expect_calendar_invite=True)
    assert problems and "calendar invite" in problems[0]


# ---- issue 12: what a segment shares is built once, and renders what it did before --------------


def test_a_campaigns_signer_makes_the_tokens_sign_link_token_makes():
    """LinkSigner (claims prefix, HMAC key schedule computed once) == the canonical signing."""
    for secret in (SECRET, "a str secret", b"k" * 100):  # a key over SHA-256's block is hashed first
        signer = LinkSigner(secret, event_id='ev-"1"', channel="email", campaign_id="camp:Zürich")
        for customer_id in ("c1", 'Jörg "J" \\', ""):
            for action in sorted(LINK_ACTIONS):
                token = signer.token(customer_id, action)
                assert token == sign_link_token(secret, customer_id=customer_id, event_id='ev-"1"', channel="email",
                                                campaign_id="camp:Zürich", action=action)  # fmt: skip
                assert verify_link_token(secret, token, action=action).customer_id == customer_id
                # The signature is HMAC-SHA256 as the standard library computes it, over "v1." + payload.
                payload, signature = token.split(".")
                key = secret.encode() if isinstance(secret, str) else secret
                expected = hmac.new(key, f"v1.{payload}".encode(), hashlib.sha256).digest()
                assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    with pytest.raises(ValueError, match="unknown link action"):
        LinkSigner(SECRET, event_id="e", channel="email", campaign_id="c").token("c1", "delete")


HOSTILE_EVENT = EventContext("ev-9", 'Zürich <b>"&"</b> {x} %s', ["x"], datetime(2026, 1, 20, 16, 0), 1, ["DE"])


def test_a_segment_renderer_renders_what_jinja_renders(tmp_path):
    """Templates rendered once per segment with placeholders, filled per message: the same
    subject, text and HTML as Jinja for every template, language and first name (escaped or
    not, empty, padded, hostile), and bodies carrying their quoted-printable form."""
    templates = TemplateSet()
    shared = {"event_name": HOSTILE_EVENT.name, "event_topics": ["x"], "event_date": "d", "event_time": "t",
              "event_when": "w", "event_timezone": "UTC", "survey_url": "s", "previous_event_when": "p"}  # fmt: skip
    recipient = ("register_url", "join_url", "unsubscribe_url", "open_pixel_url", "calendar_url", "first_name")
    templates_on_disk = [path.name for path in templates.directory.iterdir() if path.is_dir()]
    assert len(templates_on_disk) >= 6
    for template_id in templates_on_disk:
        for language in ("en", "de", "fr", "ja"):
            # Links given as their token, the address up to it being the segment's (rendered in once).
            prefixes = {name: f"https://go.example.com/{name}?a=1&t=" for name in recipient if name != "first_name"}
            renderer = templates.segment_renderer(template_id, language, shared, recipient, prefixes)
            for first_name in ("", "Ann", "  Jörg ", "<script>&", "x" * 90, "a.\n."):
                values = {name: "Q" * 150 + name for name in prefixes} | {"first_name": first_name}
                rendered = renderer.render(values)
                links = {name: prefix + values[name] for name, prefix in prefixes.items()}
                expected = templates.render(template_id, language, {**shared, **values, **links})
                assert rendered == expected, (template_id, language, first_name)
                for body in (rendered.text, rendered.html):
                    encoded = body.quoted_printable  # type: ignore[attr-defined]
                    assert binascii.a2b_qp(encoded) == body.replace("\n", "\r\n").encode()
    # A template that uses a recipient value other than as {{ name }} / {% if name %}: Jinja renders it.
    (tmp_path / "t" / "en").mkdir(parents=True)
    for name, source in (("subject.txt", "Hi {{ first_name|upper }}"), ("body.txt", "{{ register_url }}"),
                         ("body.html", "<a href='{{ register_url }}'>x</a>")):  # fmt: skip
        (tmp_path / "t" / "en" / name).write_text(source)
    custom = TemplateSet(tmp_path).segment_renderer(
        "t", "en", {}, ("first_name", "register_url"), {"register_url": "p/"}
    )
    rendered = custom.render({"first_name": "ann", "register_url": "u"})
    assert rendered == ("Hi ANN", "p/u\n", "<a href='p/u'>x</a>", "en", False)


def test_ics_reads_back_as_the_icalendar_built_one_did():
    """The .ics written from a per-campaign head: icalendar reads it back to the values the
    icalendar-built invite had (UID, times in UTC, SEQUENCE, STATUS, METHOD, organizer CN,
    attendee parameters, the join link), folded at 75 octets, special characters escaped."""
    join = f"{BASE}/join?t=" + "T" * 180
    for event in (EVENT, HOSTILE_EVENT):
        for method, sequence in (("REQUEST", 0), ("REQUEST", 2), ("CANCEL", 3)):
            ics = calendar_invite(event, customer_id="c1", organizer_email="events@example.com", join_url=join,
                                  duration_minutes=90, attendee_email="ann@example.com", stamp=SEND_AT,
                                  sequence=sequence, method=method, organizer_name="Event, Reach")  # fmt: skip
            assert all(len(line) <= 75 for line in ics.split(b"\r\n")) and ics.endswith(b"END:VCALENDAR\r\n")
            calendar = icalendar.Calendar.from_ical(ics)
            reference = icalendar.Calendar.from_ical(
                icalendar_invite(event, join, sequence=sequence, method=method, organizer_name="Event, Reach")
            )
            assert str(calendar["METHOD"]) == str(reference["METHOD"]) == method
            (mine,), (theirs,) = calendar.walk("VEVENT"), reference.walk("VEVENT")
            for name in ("UID", "DTSTART", "DTEND", "DTSTAMP", "SEQUENCE", "STATUS", "SUMMARY", "DESCRIPTION",
                         "LOCATION", "URL"):  # fmt: skip
                assert mine.decoded(name) == theirs.decoded(name), name
            assert mine.decoded("DTSTART").utcoffset() == timedelta(0)
            for name in ("ORGANIZER", "ATTENDEE"):
                assert str(mine[name]) == str(theirs[name]) and dict(mine[name].params) == dict(theirs[name].params)
            assert join in str(mine["DESCRIPTION"])


def icalendar_invite(event: EventContext, join_url: str, *, sequence: int, method: str, organizer_name: str) -> bytes:
    """The invite as the icalendar library built it before issue 12 (the reference)."""
    start = event.start_time_utc.replace(tzinfo=UTC)
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//EventReach//Event Invitations//EN")
    calendar.add("version", "2.0")
    calendar.add("method", method)
    vevent = icalendar.Event()
    vevent.add("uid", calendar_uid(event.event_id, "c1"))
    vevent.add("dtstamp", SEND_AT.replace(tzinfo=UTC))
    vevent.add("dtstart", start)
    vevent.add("dtend", start + timedelta(minutes=90))
    vevent.add("sequence", sequence)
    vevent.add("status", "CANCELLED" if method == "CANCEL" else "CONFIRMED")
    vevent.add("summary", event.name)
    vevent.add("description", f"{event.name}\n\nJoin online: {join_url}")
    vevent.add("location", join_url)
    vevent.add("url", join_url)
    organizer = icalendar.vCalAddress("mailto:events@example.com")
    organizer.params["cn"] = icalendar.vText(organizer_name)
    vevent.add("organizer", organizer)
    attendee = icalendar.vCalAddress("mailto:ann@example.com")
    attendee.params["role"] = icalendar.vText("REQ-PARTICIPANT")
    attendee.params["partstat"] = icalendar.vText("NEEDS-ACTION")
    attendee.params["rsvp"] = icalendar.vText("FALSE")
    vevent.add("attendee", attendee)
    calendar.add_component(vevent)
    return calendar.to_ical()


def test_local_when_is_worked_out_once_but_hands_out_its_own_dict():
    first = local_when(EVENT.start_time_utc, "Europe/Berlin", "de")
    first["event_when"] = "changed"
    again = local_when(EVENT.start_time_utc, "Europe/Berlin", "de")
    assert again["event_when"] == "Dienstag, 20. Januar 2026 um 17:00 Uhr (CET)"
