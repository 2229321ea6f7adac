"""Event changes after the invitations went out: per-date keys, iTIP updates and cancellations
(parsed from the bytes an email provider receives), who hears about a change, and each notice
sent once with a strictly larger SEQUENCE (real SQLite ledger)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from email import message_from_bytes, policy

import icalendar
import polars as pl
import pytest

from eventreach_assets.domain.calendar_invite import (
    ICS_CANCEL_CONTENT_TYPE,
    ICS_CONTENT_TYPE,
    calendar_invite,
    calendar_uid,
)
from eventreach_assets.domain.delivery import (
    FIRST_CHANGE_SEQUENCE,
    DeliveryKey,
    MessageKind,
    OutboundMessage,
    calendar_sequences,
    change_notice_recipients,
    occurrence_for,
    occurrence_of,
)
from eventreach_assets.domain.email_wire import to_email_message
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.rendering import (
    render_cancellation_email,
    render_cancellation_push,
    render_day_of_email,
    render_invitation_email,
    render_push_reminder,
    render_update_email,
    render_waitlist_confirmation_email,
)
from eventreach_assets.domain.sending import deliver
from eventreach_assets.domain.templates import TemplateSet
from eventreach_assets.resources.ledger import DELIVERY_SCHEMA, SqliteDeliveryLedger

SECRET = b"test-secret"
BASE = "https://go.example.com"
SENDER = "EventReach <events@example.com>"
START = datetime(2026, 1, 20, 16, 0)
MOVED = datetime(2026, 1, 27, 17, 30)
EVENT = EventContext("ev-1", "Data Summit", ["data"], START, 5000, ["US", "DE"])
RESCHEDULED = replace(EVENT, start_time_utc=MOVED)
SEND_AT = datetime(2026, 1, 14, 9, 0)
ROWS = {
    "c1": {"customer_id": "c1", "email": "ann@example.com", "marketplace": "US", "timezone": "America/New_York"},
    "c2": {"customer_id": "c2", "email": "bob@example.de", "marketplace": "DE", "timezone": "Europe/Berlin"},
    "c3": {"customer_id": "c3", "email": "cy@example.fr", "marketplace": "FR", "timezone": "Europe/Paris"},
    "c4": {"customer_id": "c4", "email": "di@example.jp", "marketplace": "JP", "timezone": "Asia/Tokyo"},
}
COMMON = {"templates": TemplateSet(), "secret": SECRET, "base_url": BASE, "sender": SENDER}


def update(row: dict, sequence: int = 1, event: EventContext = RESCHEDULED, **kw) -> OutboundMessage:
    return render_update_email(
        row,
        event=event,
        campaign_id="ev-1:email:update",
        sequence=sequence,
        send_at=SEND_AT,
        previous_start_utc=START,
        **COMMON,
        **kw,
    )


def cancellation(row: dict, sequence: int = 2) -> OutboundMessage:
    return render_cancellation_email(
        row, event=RESCHEDULED, campaign_id="ev-1:email:cancellation", sequence=sequence, send_at=SEND_AT, **COMMON
    )


def wire_calendar(message: OutboundMessage) -> tuple[str, icalendar.Calendar]:
    """(Content-Type, parsed .ics) of the calendar part, from the bytes a provider receives."""
    parsed = message_from_bytes(to_email_message(message).as_bytes(), policy=policy.default)
    parts = [part for part in parsed.walk() if part.get_content_type() == "text/calendar"]
    assert len(parts) == 1
    return str(parts[0]["Content-Type"]), icalendar.Calendar.from_ical(parts[0].get_payload(decode=True))


def vevent(calendar: icalendar.Calendar) -> icalendar.Event:
    events = calendar.walk("VEVENT")
    assert len(events) == 1
    return events[0]


# ---- keys ------------------------------------------------------------------------------------


def test_per_date_kinds_carry_the_event_date_and_the_others_do_not():
    assert occurrence_of(datetime(2026, 1, 27, 17, 30)) == "20260127T1730"
    assert occurrence_for(MessageKind.REMINDER, START) == "20260120T1600"
    for kind in (
        MessageKind.INVITATION,
        MessageKind.SURVEY,
        MessageKind.CANCELLATION,
        MessageKind.WAITLIST_CONFIRMATION,
    ):
        assert occurrence_for(kind, START) == ""
    day_of = render_day_of_email(ROWS["c1"], event=EVENT, campaign_id="k", **COMMON)
    moved_day_of = render_day_of_email(ROWS["c1"], event=RESCHEDULED, campaign_id="k", **COMMON)
    assert day_of.key.occurrence == "20260120T1600" and moved_day_of.key.occurrence == "20260127T1730"
    assert day_of.idempotency_key == "ev-1:email:day-of@20260120T1600:c1"
    assert day_of.idempotency_key != moved_day_of.idempotency_key  # a new date is a new message (and Message-ID)
    push = render_push_reminder(
        ROWS["c1"],
        event=RESCHEDULED,
        title_template="{eventName}",
        body_template="{eventTime}",
        secret=SECRET,
        base_url=BASE,
        campaign_id="k",
    )
    assert push.key == DeliveryKey("c1", "ev-1", "push", MessageKind.REMINDER, "20260127T1730")
    assert update(ROWS["c1"]).key.occurrence == "20260127T1730"
    assert cancellation(ROWS["c1"]).key == DeliveryKey("c1", "ev-1", "email", MessageKind.CANCELLATION)
    invite = render_invitation_email(
        ROWS["c1"],
        event=EVENT,
        organizer_email="events@example.com",
        campaign_id="k",
        include_calendar_invite=True,
        send_at=SEND_AT,
        **COMMON,
    )
    assert invite.idempotency_key == "ev-1:email:invitation:c1"  # unchanged for kinds sent once


# ---- iTIP on the wire -------------------------------------------------------------------------


def test_update_cancellation_and_confirmation_act_on_the_invitations_calendar_entry():
    invite = render_invitation_email(
        ROWS["c1"],
        event=EVENT,
        organizer_email="events@example.com",
        campaign_id="k",
        include_calendar_invite=True,
        send_at=SEND_AT,
        **COMMON,
    )
    _, original = wire_calendar(invite)
    uid = str(vevent(original)["UID"])
    assert uid == calendar_uid("ev-1", "c1") and int(vevent(original)["SEQUENCE"]) == 0

    moved = update(ROWS["c1"], sequence=1)
    content_type, calendar = wire_calendar(moved)
    assert content_type.replace('"', "") == "text/calendar; method=REQUEST; charset=utf-8"
    assert str(calendar["METHOD"]) == "REQUEST"
    event = vevent(calendar)
    assert (str(event["UID"]), int(event["SEQUENCE"]), str(event["STATUS"])) == (uid, 1, "CONFIRMED")
    assert event.decoded("DTSTART").replace(tzinfo=None) == MOVED
    assert event.decoded("DTEND").replace(tzinfo=None) == MOVED + timedelta(minutes=60)
    assert moved.subject == "Updated: Data Summit is now on Tuesday, January 27, 2026 at 12:30 PM EST"
    assert "It was planned for Tuesday, January 20, 2026 at 11:00 AM EST" in moved.body_text
    assert moved.headers["List-Unsubscribe"].startswith("<https://go.example.com/unsubscribe?t=")

    cancelled = cancellation(ROWS["c1"], sequence=2)
    content_type, calendar = wire_calendar(cancelled)
    assert content_type.replace('"', "") == ICS_CANCEL_CONTENT_TYPE == "text/calendar; method=CANCEL; charset=utf-8"
    assert str(calendar["METHOD"]) == "CANCEL"
    event = vevent(calendar)
    assert (str(event["UID"]), int(event["SEQUENCE"]), str(event["STATUS"])) == (uid, 2, "CANCELLED")
    assert str(event["ATTENDEE"]) == "mailto:ann@example.com"
    assert cancelled.subject.startswith("Cancelled: Data Summit")
    assert cancelled.attachments[0].content_type == ICS_CANCEL_CONTENT_TYPE

    confirmed = render_waitlist_confirmation_email(
        ROWS["c1"], event=EVENT, campaign_id="k", sequence=1, send_at=SEND_AT, **COMMON
    )
    content_type, calendar = wire_calendar(confirmed)
    assert confirmed.key.kind == MessageKind.WAITLIST_CONFIRMATION and confirmed.attachments[0].content_type == (
        ICS_CONTENT_TYPE
    )
    assert (str(calendar["METHOD"]), str(vevent(calendar)["UID"]), int(vevent(calendar)["SEQUENCE"])) == (
        "REQUEST",
        uid,
        1,
    )
    assert confirmed.subject.startswith("You're in: a seat opened up for Data Summit")
    assert "/join?t=" in confirmed.body_text


@pytest.mark.parametrize(
    ("customer", "language", "update_subject", "cancel_subject"),
    [
        ("c2", "de", "Aktualisiert: Data Summit findet jetzt am Dienstag, 27. Januar 2026", "Abgesagt: Data Summit am"),
        ("c3", "fr", "Mis à jour : Data Summit a lieu désormais le mardi 27 janvier 2026", "Annulé : Data Summit du"),
        ("c4", "en", "Updated: Data Summit is now on Wednesday, January 28, 2026", "Cancelled: Data Summit on"),
    ],
)
def test_change_notices_are_in_the_customers_language_with_english_fallback(
    customer: str, language: str, update_subject: str, cancel_subject: str
):
    moved, cancelled = update(ROWS[customer]), cancellation(ROWS[customer])
    assert moved.subject.startswith(update_subject) and cancelled.subject.startswith(cancel_subject)
    assert moved.payload["language"] == cancelled.payload["language"] == language
    assert moved.payload["fell_back"] == (customer == "c4")  # no Japanese templates: English
    push = render_cancellation_push(ROWS[customer], event=RESCHEDULED, secret=SECRET, base_url=BASE, campaign_id="k")
    assert push.payload["language"] == language and push.payload["status"] == "cancelled"
    assert push.key == DeliveryKey(customer, "ev-1", "push", MessageKind.CANCELLATION)


def test_cancellation_push_names_the_event_and_its_local_date():
    push = render_cancellation_push(
        ROWS["c2"], event=RESCHEDULED, secret=SECRET, base_url=BASE, campaign_id="k", send_at=SEND_AT
    )
    assert push.subject == "Abgesagt: Data Summit"
    assert (
        push.body_text
        == "Data Summit am Dienstag, 27. Januar 2026 um 18:30 Uhr (CET) findet nicht statt. Das tut uns leid."
    )
    assert push.payload["open_url"].startswith("https://go.example.com/open?t=")
    assert "deep_link" not in push.payload  # nothing to add to a calendar
    assert push.scheduled_at == SEND_AT


def test_calendar_arguments_are_checked():
    with pytest.raises(ValueError, match="method"):
        calendar_invite(EVENT, customer_id="c1", organizer_email="o@example.com", join_url="u", method="PUBLISH")
    with pytest.raises(ValueError, match="status"):
        calendar_invite(EVENT, customer_id="c1", organizer_email="o@example.com", join_url="u", status="MAYBE")
    with pytest.raises(ValueError, match="SEQUENCE"):
        update(ROWS["c1"], sequence=0)


# ---- recipients and sequences -----------------------------------------------------------------


def ledger_rows(*rows: tuple[str, str, str, str, str]) -> pl.DataFrame:
    """(customer, channel, kind, occurrence, status) as ledger deliveries of ev-1."""
    return pl.DataFrame(
        [
            {"customer_id": c, "event_id": "ev-1", "channel": ch, "kind": k, "occurrence": o, "status": s}
            for c, ch, k, o, s in rows
        ],
        schema={
            name: DELIVERY_SCHEMA[name]
            for name in ("customer_id", "event_id", "channel", "kind", "occurrence", "status")
        },
    )


def test_change_notices_go_to_calendar_invitees_and_registrants():
    deliveries = ledger_rows(
        ("a", "email", "invitation", "", "sent"),
        ("b", "email", "invitation", "", "failed_permanent"),  # never reached them
        ("c", "in-app", "invitation", "", "sent"),  # no calendar entry ...
        ("d", "email", "waitlist-confirmation", "", "sent"),
        ("e", "email", "invitation", "", "held_out"),
        ("f", "push", "reminder", "20260120T1600", "sent"),
    )
    registered = pl.DataFrame({"customer_id": ["c", "g"]})  # ... but c registered
    other_event = ledger_rows(("z", "email", "invitation", "", "sent")).with_columns(event_id=pl.lit("ev-2"))
    recipients = change_notice_recipients(deliveries.vstack(other_event), registered, "ev-1")
    assert recipients.rows() == [("a", False), ("c", True), ("d", False), ("g", True)]
    assert change_notice_recipients(deliveries.clear(), registered.clear(), "ev-1").is_empty()


def test_every_later_notice_has_a_strictly_larger_sequence():
    first, second = "20260127T1730", "20260203T1730"
    deliveries = ledger_rows(("a", "email", "invitation", "", "sent"), ("b", "email", "invitation", "", "sent"))
    seq = dict(calendar_sequences(deliveries, "ev-1", first).rows())
    assert seq == {"a": FIRST_CHANGE_SEQUENCE, "b": FIRST_CHANGE_SEQUENCE}
    deliveries = deliveries.vstack(ledger_rows(("a", "email", "update", first, "sent")))
    assert dict(calendar_sequences(deliveries, "ev-1", first).rows()) == {"a": 1, "b": 1}  # a retry: the same
    assert dict(calendar_sequences(deliveries, "ev-1", second).rows()) == {"a": 2, "b": 1}
    deliveries = deliveries.vstack(ledger_rows(("a", "email", "update", second, "sent")))
    assert dict(calendar_sequences(deliveries, "ev-1", "").rows()) == {"a": 3, "b": 1}  # the cancellation
    assert calendar_sequences(deliveries, "ev-2", "").is_empty()


# ---- sent once, through a real ledger -----------------------------------------------------------


def test_each_reschedule_and_the_cancellation_reach_each_calendar_once_in_sequence(tmp_path):
    ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
    wire: list[tuple[str, str, int, str]] = []  # customer, METHOD, SEQUENCE, DTSTART as the provider got them

    def send(message: OutboundMessage) -> str:
        _, calendar = wire_calendar(message)
        event = vevent(calendar)
        start = event.decoded("DTSTART").strftime("%Y%m%dT%H%M")
        wire.append((message.key.customer_id, str(calendar["METHOD"]), int(event["SEQUENCE"]), start))
        return f"provider-{len(wire)}"

    clock = iter(datetime(2026, 1, 15) + timedelta(minutes=m) for m in range(1000))

    def notify(event: EventContext, render) -> None:
        deliveries = ledger.deliveries("ev-1")
        registered = pl.DataFrame({"customer_id": ["c2"]})
        recipients = change_notice_recipients(deliveries, registered, "ev-1")
        occurrence = occurrence_for(MessageKind.UPDATE, event.start_time_utc) if render is update else ""
        plan = recipients.join(calendar_sequences(deliveries, "ev-1", occurrence), on="customer_id", how="left")
        messages = [
            render(ROWS[row["customer_id"]], sequence=row["sequence"] or FIRST_CHANGE_SEQUENCE, event=event)
            for row in plan.iter_rows(named=True)
        ]
        deliver(messages, ledger=ledger, send=send, now=lambda: next(clock), sleep=lambda _: None)

    invites = [
        render_invitation_email(
            ROWS["c1"],
            event=EVENT,
            organizer_email="events@example.com",
            campaign_id="k",
            include_calendar_invite=True,
            send_at=SEND_AT,
            **COMMON,
        )
    ]
    deliver(invites, ledger=ledger, send=send, now=lambda: next(clock), sleep=lambda _: None)
    second_move = replace(EVENT, start_time_utc=MOVED + timedelta(days=7))

    def cancel(row: dict, sequence: int, event: EventContext) -> OutboundMessage:
        return render_cancellation_email(row, event=event, campaign_id="k", sequence=sequence, **COMMON)

    for event, render in [
        (RESCHEDULED, update),
        (RESCHEDULED, update),
        (second_move, update),
        (second_move, cancel),
        (second_move, cancel),
    ]:
        notify(event, render)
    assert wire == [
        ("c1", "REQUEST", 0, "20260120T1600"),  # the invitation
        ("c1", "REQUEST", 1, "20260127T1730"),  # first move (c2 registered elsewhere: no invitation in the ledger)
        ("c2", "REQUEST", 1, "20260127T1730"),
        ("c1", "REQUEST", 2, "20260203T1730"),  # second move; the repeated first move sent nothing
        ("c2", "REQUEST", 2, "20260203T1730"),
        ("c1", "CANCEL", 3, "20260203T1730"),  # the cancellation, once
        ("c2", "CANCEL", 3, "20260203T1730"),
    ]
    sent = ledger.deliveries("ev-1", "email", "update").select("customer_id", "occurrence", "sends").rows()
    assert sorted(sent) == [
        ("c1", "20260127T1730", 1),
        ("c1", "20260203T1730", 1),
        ("c2", "20260127T1730", 1),
        ("c2", "20260203T1730", 1),
    ]
    assert ledger.duplicates("ev-1").is_empty()
    ledger.close()


def test_change_notices_pass_the_wire_validator_and_a_method_mismatch_does_not():
    from eventreach_assets.domain.email_wire import email_problems, email_wire_bytes, wire_problems

    row = {"customer_id": "c1", "email": "c1@example.com", "marketplace": "US", "timezone": "America/New_York"}
    for message in (update(row), cancellation(row)):
        assert email_problems(message, expect_calendar_invite=True) == []
    raw = email_wire_bytes(cancellation(row))
    lying = raw.replace(b'method="CANCEL"', b'method="REQUEST"').replace(b"method=CANCEL", b"method=REQUEST")
    assert lying != raw
    assert any("method=CANCEL" in problem for problem in wire_problems(lying, expect_calendar_invite=True))
