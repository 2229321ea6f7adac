"""Provider feedback, pure: SES event records and RFC 3464 DSNs normalized, bad records quarantined,
suppression decisions, campaign counts and the circuit breaker."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from email.message import EmailMessage, Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime

import polars as pl
import pytest

from eventreach_assets.domain import feedback as fb
from eventreach_assets.program.config import DeliverabilityConfig
from eventreach_assets_tests.frames import no_deprecation_warnings

NOW = datetime(2026, 12, 1, 12, 0)
POLICY = DeliverabilityConfig()

# An SES event publishing record as SES documents it (Bounce), written out by hand.
SES_BOUNCE = json.loads("""
{"eventType": "Bounce",
 "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "Recipient@Example.com", "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": "2026-12-01T10:15:27.371Z", "feedbackId": "0100-bounce",
            "reportingMTA": "dsn; e226-55.smtp-out.us-east-1.amazonses.com"},
 "mail": {"timestamp": "2026-12-01T10:15:26.500Z", "source": "events@eventreach.example",
          "sendingAccountId": "123456789012", "messageId": "0100018c-ses-message-1",
          "destination": ["Recipient@Example.com"], "headersTruncated": false,
          "tags": {"ses:configuration-set": ["eventreach"], "campaign": ["evt-1_email"]}}}
""")
SES_COMPLAINT = json.loads("""
{"eventType": "Complaint",
 "complaint": {"complainedRecipients": [{"emailAddress": "fan@example.org"}],
               "timestamp": "2026-12-01T11:00:00.000Z", "feedbackId": "0100-complaint",
               "complaintFeedbackType": "abuse", "userAgent": "Yahoo!-Mail-Feedback/2.0",
               "arrivalDate": "2026-12-01T10:59:00.000Z"},
 "mail": {"timestamp": "2026-12-01T10:15:26.500Z", "messageId": "0100018c-ses-message-2",
          "destination": ["fan@example.org"], "source": "events@eventreach.example"}}
""")
SES_DELIVERY = json.loads("""
{"eventType": "Delivery",
 "mail": {"timestamp": "2026-12-01T10:15:26.500Z", "messageId": "0100018c-ses-message-2",
          "destination": ["fan@example.org"], "source": "events@eventreach.example"},
 "delivery": {"timestamp": "2026-12-01T10:15:28.000Z", "processingTimeMillis": 1500,
              "recipients": ["fan@example.org"], "smtpResponse": "250 ok",
              "reportingMTA": "a8-70.smtp-out.amazonses.com"}}
""")


def test_ses_records_become_one_normalized_row_per_message_recipient_and_outcome():
    batch = fb.normalize_feedback([SES_BOUNCE, SES_DELIVERY, SES_COMPLAINT, SES_DELIVERY], NOW)
    rows = batch.accepted.sort("feedback").to_dicts()
    assert [(r["provider_message_id"], r["recipient"], r["feedback"], r["bounce_type"]) for r in rows] == [
        ("0100018c-ses-message-1", "recipient@example.com", "bounced", "permanent"),
        ("0100018c-ses-message-2", "fan@example.org", "complained", None),
        ("0100018c-ses-message-2", "fan@example.org", "delivered", None),  # the repeated delivery: once
    ]
    assert rows[0]["occurred_at"] == datetime(2026, 12, 1, 10, 15, 27, 371000)
    assert rows[0]["bounce_subtype"] == "General" and rows[0]["source"] == "ses"
    assert batch.rejected.height == 0
    assert batch.accepted.schema == pl.Schema(fb.FEEDBACK_SCHEMA)


def test_bad_records_are_quarantined_with_a_reason_and_valid_noise_is_ignored():
    records = [
        {"_error": "not JSON: Expecting value", "_raw": "{oops", "_source": "f.jsonl", "_line": 1},
        {"eventType": "Bounced", "mail": {"messageId": "m"}, "_source": "f.jsonl", "_line": 2},
        {"mail": {"messageId": "m"}, "_source": "f.jsonl", "_line": 3},
        {**SES_BOUNCE, "mail": {**SES_BOUNCE["mail"], "messageId": ""}, "_source": "f.jsonl", "_line": 4},
        {**SES_BOUNCE, "bounce": {**SES_BOUNCE["bounce"], "bounceType": "Hard"}, "_source": "f.jsonl", "_line": 5},
        {
            **SES_DELIVERY,
            "delivery": {"recipients": ["not an address"], "timestamp": "2026-12-01T10:00:00Z"},
            "_source": "f.jsonl",
            "_line": 6,
        },
        {
            **SES_DELIVERY,
            "delivery": {"recipients": ["a@b.c"], "timestamp": "yesterday"},
            "_source": "f.jsonl",
            "_line": 7,
        },
        {
            **SES_DELIVERY,
            "delivery": {"recipients": ["a@b.c"], "timestamp": "2027-01-01T00:00:00Z"},
            "_source": "f.jsonl",
            "_line": 8,
        },
        {"dsn": "From: x\n\nnot a report", "_source": "f.jsonl", "_line": 9},
        {"eventType": "Open", "mail": {"messageId": "m"}, "_source": "f.jsonl", "_line": 10},
        {
            **SES_COMPLAINT,
            "complaint": {**SES_COMPLAINT["complaint"], "complaintFeedbackType": "not-spam"},
            "_source": "f.jsonl",
            "_line": 11,
        },
    ]
    batch = fb.normalize_feedback(records, NOW)
    assert batch.accepted.height == 0
    assert dict(zip(batch.rejected["line"], batch.rejected["reason"], strict=True)) == {
        1: "malformed_record",
        2: "unknown_event_type",
        3: "unknown_event_type",
        4: "missing_message_id",
        5: "invalid_bounce_type",
        6: "invalid_address",
        7: "invalid_timestamp",
        8: "timestamp_in_future",
        9: fb.NOT_A_DSN,
    }
    assert batch.ignored == 2  # an open and a not-spam report are valid, and no feedback
    assert set(batch.rejected["source"]) == {"f.jsonl"}
    assert json.loads(batch.rejected.filter(pl.col("line") == 2)["raw"].item())["eventType"] == "Bounced"


def build_dsn(action: str, status: str, headers_only: bool = False) -> bytes:
    """A DSN as a relay's MTA writes it (RFC 3464), built with the email package."""
    original = EmailMessage()
    original["From"] = "EventReach <events@eventreach.example>"
    original["To"] = "Gone@Example.com"
    original["Subject"] = "You're invited"
    original["Message-ID"] = "<3f2a9c@eventreach.example>"
    original.set_content("Join us")
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "Mail Delivery System <MAILER-DAEMON@relay.example>"
    report["To"] = "bounces@eventreach.example"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(datetime(2026, 12, 1, 10, 30, tzinfo=None).astimezone())
    report.attach(MIMEText("This is the mail system at host relay.example. Your message could not be delivered."))
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; relay.example"
    per_message["Arrival-Date"] = "Tue, 1 Dec 2026 10:20:00 +0000"
    per_recipient["Final-Recipient"] = "rfc822; Gone@Example.com"
    per_recipient["Original-Recipient"] = "rfc822; gone@example.com"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = f"smtp; 550 {status} mailbox unavailable"
    per_recipient["Last-Attempt-Date"] = "Tue, 1 Dec 2026 11:21:30 +0100"
    status_part = Message()
    status_part.set_type("message/delivery-status")
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    if headers_only:
        headers = MIMEText(str(original).split("\n\n", 1)[0] + "\n", "rfc822-headers")
        report.attach(headers)
    else:
        report.attach(MIMEMessage(original))
    return report.as_bytes()


def test_a_real_dsn_is_parsed_into_a_bounce_of_the_original_message():
    data = build_dsn("failed", "5.1.1")
    assert b"message/delivery-status" in data and b"Final-Recipient: rfc822; Gone@Example.com" in data
    assert fb.parse_dsn(data) == [
        {
            "provider_message_id": "<3f2a9c@eventreach.example>",
            "recipient": "Gone@Example.com",
            "feedback": "bounced",
            "bounce_type": "permanent",
            "bounce_subtype": "5.1.1",
            "occurred_at": "2026-12-01T11:21:30+01:00",
            "source": "dsn",
        }
    ]
    soft = fb.parse_dsn(build_dsn("failed", "4.2.2", headers_only=True))
    assert soft[0]["bounce_type"] == "transient" and soft[0]["provider_message_id"] == "<3f2a9c@eventreach.example>"
    assert fb.parse_dsn(build_dsn("delayed", "4.4.1")) == []  # still retrying: no outcome yet
    with pytest.raises(fb.DsnError, match="multipart/report"):
        fb.parse_dsn(b"From: a@b.c\r\nSubject: hi\r\n\r\nhello")


def test_dsn_records_in_the_feed_normalize_like_ses_events():
    batch = fb.normalize_feedback([fb.dsn_record(build_dsn("failed", "5.1.1"))], NOW)
    row = batch.accepted.row(0, named=True)
    assert (row["provider_message_id"], row["recipient"], row["feedback"], row["bounce_type"]) == (
        "<3f2a9c@eventreach.example>", "gone@example.com", "bounced", "permanent",
    )  # fmt: skip
    assert row["occurred_at"] == datetime(2026, 12, 1, 10, 21, 30)  # +01:00 as UTC


def bounce(message: str, address: str, at: datetime, kind: str) -> dict:
    return fb.ses_event("Bounce", message, address, at, bounce_type=kind)


def test_hard_bounces_and_complaints_suppress_at_once_soft_ones_after_three_in_thirty_days():
    day = datetime(2026, 11, 1, 9)
    history = fb.normalize_feedback(
        [bounce("old-1", "soft@x.com", day - timedelta(days=40), "Transient"),  # outside the window
         bounce("s-1", "soft@x.com", day, "Transient"), bounce("t-1", "two@x.com", day, "Transient")],
        NOW,
    ).accepted  # fmt: skip
    batch = fb.normalize_feedback(
        [bounce("h-1", "hard@x.com", day + timedelta(days=3), "Permanent"),
         fb.ses_event("Complaint", "c-1", "angry@x.com", day + timedelta(days=3)),
         bounce("s-2", "soft@x.com", day + timedelta(days=10), "Undetermined"),
         bounce("s-3", "soft@x.com", day + timedelta(days=25), "Transient"),
         bounce("s-3", "soft@x.com", day + timedelta(days=25), "Transient"),  # the same report twice: once
         bounce("t-2", "two@x.com", day + timedelta(days=2), "Transient")],
        NOW,
    ).accepted  # fmt: skip
    decided = fb.suppressions(batch, history, POLICY)
    assert decided.select("address", "reason", "provider_message_id").rows() == [
        ("angry@x.com", "complaint", "c-1"),
        ("hard@x.com", "hard_bounce", "h-1"),
        ("soft@x.com", "repeated_soft_bounces", "s-3"),  # s-1, s-2, s-3 within 30 days
    ]
    assert decided.filter(pl.col("address") == "soft@x.com")["suppressed_at"].item() == day + timedelta(days=25)
    late = fb.normalize_feedback([bounce("s-9", "soft@x.com", day + timedelta(days=70), "Transient")], NOW).accepted
    assert fb.suppressions(late, pl.concat([history, batch]), POLICY).height == 0  # the window slid past


def deliveries(n_sent: int, channel: str = "email", event: str = "evt-1", start: datetime = NOW) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n_sent)],
            "event_id": event,
            "channel": channel,
            "kind": "invitation",
            "campaign_id": f"{event}-{channel}",
            "status": "sent",
            "provider_message_id": [f"m{i}" for i in range(n_sent)],
            "sent_at": [start + timedelta(minutes=i) for i in range(n_sent)],
        }
    )


def reports(event_type: str, ids: range, **kwargs) -> list[dict]:
    return [fb.ses_event(event_type, f"m{i}", f"c{i}@x.com", NOW + timedelta(hours=2), **kwargs) for i in ids]


def test_campaign_counts_and_outcomes_count_each_message_once():
    sent = deliveries(10)
    feedback = fb.normalize_feedback(
        reports("Delivery", range(0, 8)) + reports("Delivery", range(0, 2)) + reports("Bounce", range(8, 10))
        + reports("Complaint", range(0, 1)) + reports("Bounce", range(7, 8), bounce_type="Transient"),
        NOW + timedelta(days=1),
    ).accepted  # fmt: skip
    with no_deprecation_warnings():
        counts = fb.campaign_counts(sent, feedback)
    assert counts.row(0, named=True) == {
        "event_id": "evt-1", "channel": "email", "sent": 10, "delivered": 8, "bounced": 2, "soft_bounced": 1,
        "complained": 1, "rejected": 0,
    }  # fmt: skip
    since = fb.campaign_counts(sent, feedback, since=NOW + timedelta(minutes=8))
    assert since.select("sent", "delivered", "bounced").row(0) == (2, 0, 2)
    outcomes = fb.message_outcomes(sent, feedback)
    assert outcomes["bounced_at"].is_not_null().sum() == 2 and outcomes["status"].unique().to_list() == ["sent"]


def test_the_breaker_stops_at_the_stop_thresholds_warns_at_review_and_ignores_small_samples():
    assert fb.breaker(sent=3, delivered=2, bounced=1, complained=0, policy=POLICY).level == fb.OK  # 1 of 3
    assert fb.breaker(sent=150, delivered=100, bounced=60, complained=5, policy=POLICY).level == fb.OK
    warn = fb.breaker(sent=1000, delivered=950, bounced=50, complained=0, policy=POLICY)
    assert (warn.level, warn.stop, warn.warn, warn.bounce_rate) == (fb.WARN, False, True, 0.05)
    assert "review threshold 5.00 %" in warn.reasons[0]
    bounces = fb.breaker(sent=1000, delivered=920, bounced=80, complained=0, policy=POLICY)
    assert bounces.stop and "bounce rate 8.00 % >= stop threshold" in bounces.reasons[0]
    complaints = fb.breaker(sent=2000, delivered=2000, bounced=0, complained=6, policy=POLICY)
    assert complaints.stop and complaints.complaint_rate == 0.003
    review = fb.breaker(sent=2000, delivered=2000, bounced=0, complained=2, policy=POLICY)
    assert review.level == fb.WARN  # 0.1 %: SES review, not yet Gmail's 0.3 %
    tighter = DeliverabilityConfig(min_sent_for_bounce_rate=2, bounce_stop_rate=0.3, bounce_warn_rate=0.2)
    assert fb.breaker(sent=3, delivered=2, bounced=1, complained=0, policy=tighter).stop


def test_breaker_for_reads_one_campaign_of_a_counts_frame():
    counts = pl.DataFrame(
        [("evt-1", "email", 1000, 900, 100, 0, 0, 0), ("evt-2", "email", 1000, 1000, 0, 0, 0, 0)],
        schema=fb.COUNTS_SCHEMA,
        orient="row",
    )
    assert fb.breaker_for(counts, "evt-1", "email", POLICY).stop
    assert not fb.breaker_for(counts, "evt-2", "email", POLICY).warn
    assert fb.breaker_for(counts, "evt-3", "email", POLICY).sent == 0


def test_addresses_normalize_the_same_everywhere():
    assert fb.normalize_addresses([" Ana <Ana.B@Example.COM> ", "x@y.z", "no-at-sign", None]).to_list() == [
        "ana.b@example.com", "x@y.z", None, None,
    ]  # fmt: skip


def test_an_sns_envelope_is_unwrapped():
    envelope = {"Type": "Notification", "MessageId": "sns-1", "Message": json.dumps(SES_BOUNCE)}
    batch = fb.normalize_feedback([envelope, {"Type": "Notification", "Message": "[1, 2]"}], NOW)
    assert batch.accepted["provider_message_id"].to_list() == ["0100018c-ses-message-1"]
    assert batch.rejected["reason"].to_list() == ["malformed_record"]
