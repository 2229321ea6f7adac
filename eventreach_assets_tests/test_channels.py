"""Channel services against real protocols on loopback: aiosmtpd, moto (SES v2, SNS), an HTTP receiver."""

from __future__ import annotations

import email
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime
from email import policy
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import dagster as dg
import icalendar
import pytest

from eventreach_assets.domain.delivery import (
    Attachment,
    DeliveryKey,
    MessageKind,
    OutboundMessage,
    PermanentSendError,
    TransientSendError,
)
from eventreach_assets.domain.email_wire import email_wire_bytes, wire_problems
from eventreach_assets.resources.channels import (
    ChannelUnavailableError,
    EmailChannelResource,
    LocalOutboxEmail,
    LocalOutboxInApp,
    LocalOutboxPush,
    SesEmail,
    SmtpEmail,
    SnsPush,
    WebhookInApp,
)
from eventreach_assets_tests.stand_ins import REGION, smtp_server, webhook_receiver

SENDER = "EventReach <events@eventreach.example>"
UNSUBSCRIBE = {
    "List-Unsubscribe": "<https://eventreach.example/u/tok>, <mailto:unsubscribe@eventreach.example?subject=u>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}


def _ics(customer_id: str) -> bytes:
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//EventReach//test//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "REQUEST")
    event = icalendar.Event()
    event.add("uid", f"ev-1-{customer_id}@eventreach.example")
    event.add("summary", "Cloud Summit")
    event.add("dtstart", datetime(2026, 12, 3, 17, 0, tzinfo=UTC))
    event.add("dtend", datetime(2026, 12, 3, 18, 0, tzinfo=UTC))
    calendar.add_component(event)
    return calendar.to_ical()


def email_message(customer_id: str, recipient: str | None = None) -> OutboundMessage:
    return OutboundMessage(
        key=DeliveryKey(customer_id, "ev-1", "email", MessageKind.INVITATION),
        campaign_id="ev-1:email:US-America/New_York:2026-11-23",
        recipient=recipient or f"{customer_id}@example.com",
        subject="Join us for Cloud Summit on Dec 3 — Überraschung",
        body_text="Register Now: https://eventreach.example/r/tok",
        body_html='<p><a href="https://eventreach.example/r/tok">Register Now</a></p>',
        headers={"From": SENDER, **UNSUBSCRIBE},
        attachments=(Attachment("invite.ics", "text/calendar; method=REQUEST; charset=utf-8", _ics(customer_id)),),
        scheduled_at=datetime(2026, 11, 23, 15, 0),
    )


def push_message(customer_id: str, recipient: str) -> OutboundMessage:
    return OutboundMessage(
        key=DeliveryKey(customer_id, "ev-1", "push", MessageKind.REMINDER),
        campaign_id="ev-1:push:reminder",
        recipient=recipient,
        subject="Cloud Summit Tomorrow!",
        body_text="Join us at 12:00",
        payload={"action": "add-to-calendar", "event_id": "ev-1"},
    )


def in_app_message(customer_id: str) -> OutboundMessage:
    return OutboundMessage(
        key=DeliveryKey(customer_id, "ev-1", "in-app", MessageKind.INVITATION),
        campaign_id="ev-1:in-app",
        recipient=customer_id,
        subject="Cloud Summit",
        body_text="Register now",
        payload={"placement": "homepage-top", "display_days": 7},
    )


def _check_received_email(raw: bytes, customer_id: str) -> None:
    # The raw bytes first: parsing back decodes RFC 2047, which would hide an encoded List-Unsubscribe.
    assert raw == email_wire_bytes(email_message(customer_id))
    assert wire_problems(raw, expect_calendar_invite=True) == []
    assert (
        b"\r\nList-Unsubscribe: <https://eventreach.example/u/tok>,\r\n"
        b" <mailto:unsubscribe@eventreach.example?subject=u>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    ) in raw
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Join us for Cloud Summit on Dec 3 — Überraschung"
    assert parsed["To"] == f"{customer_id}@example.com"
    assert parsed["From"] == SENDER
    for name, value in UNSUBSCRIBE.items():
        assert parsed[name] == value
    assert parsed["Message-ID"]
    calendars = [part for part in parsed.walk() if part.get_content_type() == "text/calendar"]
    assert len(calendars) == 1
    assert calendars[0].get_filename() == "invite.ics"
    ics = icalendar.Calendar.from_ical(calendars[0].get_content())
    assert ics["METHOD"] == "REQUEST"
    assert str(ics.walk("VEVENT")[0]["UID"]) == f"ev-1-{customer_id}@eventreach.example"
    assert parsed.get_body(("plain",)).get_content().strip().startswith("Register Now")


# ---- email: SMTP --------------------------------------------------------------------------


@pytest.mark.integration
def test_smtp_sends_three_messages_on_one_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with smtp_server(credentials=("mailer", "s3cret-pass")) as (host, port, handler):
        channel = SmtpEmail(
            host=host, port=port, username="mailer", password="s3cret-pass", starttls=False, sender=SENDER,
            max_messages_per_second=50, timeout=5,
        )  # fmt: skip
        ids = [channel.send(email_message(f"c{i}")) for i in range(3)]
        channel.close()
    assert len(handler.messages) == 3
    assert handler.sessions == 1  # one connection, reused
    assert handler.auth_logins == ["mailer"]
    assert len(set(ids)) == 3
    for i, (_, mail_from, rcpt_tos, raw) in enumerate(handler.messages):
        assert mail_from == "events@eventreach.example" or SENDER.endswith(f"<{mail_from}>")
        assert rcpt_tos == [f"c{i}@example.com"]
        _check_received_email(raw, f"c{i}")
        assert email.message_from_bytes(raw, policy=policy.default)["Message-ID"] == ids[i]
    assert "s3cret-pass" not in caplog.text


@pytest.mark.integration
def test_smtp_recipient_refusals_are_classified_and_the_connection_survives() -> None:
    refuse = {"gone@example.com": "550 5.1.1 No such user", "busy@example.com": "451 4.3.0 Try again later"}
    with smtp_server(refuse=refuse) as (host, port, handler):
        channel = SmtpEmail(host=host, port=port, starttls=False, sender=SENDER, max_messages_per_second=0, timeout=5)
        with pytest.raises(PermanentSendError, match="550"):
            channel.send(email_message("c1", "gone@example.com"))
        with pytest.raises(TransientSendError, match="451") as transient:
            channel.send(email_message("c2", "busy@example.com"))
        assert not isinstance(transient.value, PermanentSendError)
        channel.send(email_message("c3"))
        channel.close()
    assert [rcpt for _, _, rcpt, _ in handler.messages] == [["c3@example.com"]]
    assert handler.sessions == 1


@pytest.mark.integration
def test_smtp_reconnects_after_the_server_dropped_the_connection() -> None:
    with smtp_server() as (host, port, handler):
        channel = SmtpEmail(host=host, port=port, starttls=False, sender=SENDER, max_messages_per_second=0, timeout=5)
        channel.send(email_message("c1"))
        handler.drop_connections()  # as the server's idle timeout would
        channel.send(email_message("c2"))
        channel.close()
    assert len(handler.messages) == 2
    assert handler.sessions == 2


@pytest.mark.integration
def test_smtp_wrong_password_and_no_server() -> None:
    with smtp_server(credentials=("mailer", "right")) as (host, port, _):
        channel = SmtpEmail(
            host=host, port=port, username="mailer", password="wrong-pw", starttls=False, sender=SENDER, timeout=5
        )
        with pytest.raises(ChannelUnavailableError) as refused:
            channel.send(email_message("c1"))
        assert "wrong-pw" not in str(refused.value)
        assert "wrong-pw" not in repr(channel)
    closed = SmtpEmail(host=host, port=port, starttls=False, sender=SENDER, timeout=2)
    with pytest.raises(TransientSendError):
        closed.send(email_message("c1"))


def test_every_channel_paces_to_its_rate_and_refuses_before_waiting(tmp_path: Path) -> None:
    from eventreach_assets_tests.test_channel_pacing import FakeClock

    push = LocalOutboxPush(outbox_dir=str(tmp_path / "push"), max_messages_per_second=20.0)
    clock = FakeClock()
    push.use_clock(clock, clock.sleep)
    for number in range(5):
        push.send(push_message(f"c{number}", f"customer-c{number}"))
    assert clock.sleeps == pytest.approx([0.05] * 3)  # a burst of two (a tenth of a second), then 1/20 s apart
    assert len(list((tmp_path / "push").iterdir())) == 5

    slow = SnsPush(region_name=REGION, max_messages_per_second=0.2)  # 5 s apart
    clock = FakeClock()
    slow.use_clock(clock, clock.sleep)
    for number in range(3):  # no topic and no endpoint ARN: refused while encoding, before any wait
        with pytest.raises(PermanentSendError, match="no topic is set"):
            slow.send(push_message(f"c{number}", f"customer-c{number}"))
    assert clock.sleeps == []


# ---- email: SES v2 (moto) -----------------------------------------------------------------


@pytest.mark.integration
def test_ses_sends_the_raw_mime_message(aws_endpoint: str) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    ses = boto3.client("sesv2", region_name=REGION, endpoint_url=aws_endpoint)
    channel = SesEmail(region_name=REGION, endpoint_url=aws_endpoint, sender="events@eventreach.example")
    with pytest.raises(ChannelUnavailableError, match="MessageRejected"):
        channel.send(email_message("c1"))  # sender identity not verified yet: the channel is unusable
    ses.create_email_identity(EmailIdentity="eventreach.example")
    message_id = channel.send(email_message("c1"))
    assert message_id
    sent = ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages  # ThreadedMotoServer runs in this process
    raw = [m for m in sent if getattr(m, "id", None) == message_id]
    assert len(raw) == 1
    _check_received_email(raw[0].raw_data.encode(), "c1")
    with pytest.raises(PermanentSendError):
        channel.send(email_message("c2", "not-an-address"))


# ---- push: SNS (moto) ----------------------------------------------------------------------


@pytest.mark.integration
def test_sns_publishes_to_a_platform_endpoint_and_to_a_topic(aws_endpoint: str) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sns.models import sns_backends

    sns = boto3.client("sns", region_name=REGION, endpoint_url=aws_endpoint)
    app = sns.create_platform_application(Name="eventreach", Platform="GCM", Attributes={"PlatformCredential": "x"})
    device = sns.create_platform_endpoint(PlatformApplicationArn=app["PlatformApplicationArn"], Token="device-token")
    endpoint_arn = device["EndpointArn"]
    topic_arn = sns.create_topic(Name="eventreach-push")["TopicArn"]
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=aws_endpoint)
    queue_url = sqs.create_queue(QueueName="push-fanout")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    channel = SnsPush(region_name=REGION, endpoint_url=aws_endpoint, topic_arn=topic_arn)
    endpoint_id = channel.send(push_message("c1", endpoint_arn))
    stored = sns_backends[DEFAULT_ACCOUNT_ID][REGION].platform_endpoints[endpoint_arn].messages[endpoint_id]
    platforms = json.loads(stored)
    assert json.loads(platforms["GCM"])["notification"] == {
        "title": "Cloud Summit Tomorrow!",
        "body": "Join us at 12:00",
    }
    assert json.loads(platforms["GCM"])["data"]["action"] == "add-to-calendar"

    assert channel.send(push_message("c2", "customer-c2"))
    received = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    envelope = json.loads(received[0]["Body"])
    assert envelope["MessageAttributes"]["recipient"]["Value"] == "customer-c2"
    assert json.loads(envelope["Message"])["idempotency_key"] == "ev-1:push:reminder:c2"

    sns.set_endpoint_attributes(EndpointArn=endpoint_arn, Attributes={"Enabled": "false"})
    with pytest.raises(PermanentSendError):
        channel.send(push_message("c1", endpoint_arn))
    with pytest.raises(PermanentSendError):
        SnsPush(region_name=REGION, endpoint_url=aws_endpoint).send(push_message("c3", "customer-c3"))


@pytest.mark.integration
def test_sns_topic_batches_land_each_message_once_and_an_oversized_one_is_refused_alone(aws_endpoint: str) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sns.models import sns_backends

    sns = boto3.client("sns", region_name=REGION, endpoint_url=aws_endpoint)
    topic_arn = sns.create_topic(Name="eventreach-push-batches")["TopicArn"]
    channel = SnsPush(region_name=REGION, endpoint_url=aws_endpoint, topic_arn=topic_arn)
    operations: list[str] = []  # the SNS calls that leave for the server

    def record(request: Any, **_: Any) -> None:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        operations.append(parse_qs(body)["Action"][0])

    events = channel._client().meta.events  # the client is shared: the hook goes again after the sends
    events.register("before-send.sns", record, unique_id="count-sns-calls")
    messages = [push_message(f"c{i}", f"customer-c{i}") for i in range(12)]
    oversized = replace(push_message("c99", "customer-c99"), body_text="x" * 262_145)  # over SNS's 256 KiB
    try:
        answers = channel.send_many([*messages[:5], oversized, *messages[5:9]]) + channel.send_many(messages[9:])
    finally:
        events.unregister("before-send.sns", unique_id="count-sns-calls")

    notifications = sns_backends[DEFAULT_ACCOUNT_ID][REGION].topics[topic_arn].sent_notifications
    published = {attributes["recipient"]["Value"]: json.loads(text) for _, text, _, attributes, _ in notifications}
    assert len(notifications) == 12 and set(published) == {f"customer-c{i}" for i in range(12)}
    assert published["customer-c7"]["idempotency_key"] == "ev-1:push:reminder:c7"
    assert isinstance(answers[5], PermanentSendError) and "InvalidParameter" in str(answers[5])
    assert len({answer for answer in answers if isinstance(answer, str)}) == 12
    # 5 entries, the oversized one alone (the batch's size limit), 4, then 3: four calls
    assert operations == ["PublishBatch"] * 4


# ---- in-app: webhook -----------------------------------------------------------------------


@pytest.mark.integration
def test_webhook_posts_json_with_idempotency_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with webhook_receiver() as receiver:
        channel = WebhookInApp(url=receiver.url, api_key="key-123-secret", timeout=5, max_retries=2)
        assert channel.send(in_app_message("c1")) == "msg-1"
    path, headers, body = receiver.requests[0]
    assert path == "/v1/banners"
    assert headers["Idempotency-Key"] == "ev-1:in-app:invitation:c1"
    assert headers["Authorization"] == "Bearer key-123-secret"
    assert headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["customer_id"] == "c1"
    assert document["payload"] == {"placement": "homepage-top", "display_days": 7}
    assert "key-123-secret" not in caplog.text


@pytest.mark.integration
def test_webhook_retries_503_then_succeeds_and_gives_up_when_bounded() -> None:
    with webhook_receiver([(503, "busy"), (429, "slow down")]) as receiver:
        channel = WebhookInApp(url=receiver.url, timeout=5, max_retries=3, backoff_seconds=0.01)
        assert channel.send(in_app_message("c1")) == "msg-3"
    assert len(receiver.requests) == 3
    assert len({headers["Idempotency-Key"] for _, headers, _ in receiver.requests}) == 1

    with webhook_receiver([(500, "down")] * 5) as receiver:
        channel = WebhookInApp(url=receiver.url, timeout=5, max_retries=2, backoff_seconds=0.01)
        with pytest.raises(TransientSendError, match="500"):
            channel.send(in_app_message("c1"))
    assert len(receiver.requests) == 3


@pytest.mark.integration
def test_webhook_400_is_permanent_with_the_response_text() -> None:
    with webhook_receiver([(400, '{"error": "unknown customer"}')]) as receiver:
        channel = WebhookInApp(url=receiver.url, timeout=5, max_retries=3, backoff_seconds=0.01)
        with pytest.raises(PermanentSendError, match="unknown customer"):
            channel.send(in_app_message("c1"))
    assert len(receiver.requests) == 1


@pytest.mark.integration
def test_webhook_connection_refused_is_transient() -> None:
    from eventreach_assets_tests.stand_ins import free_port

    channel = WebhookInApp(url=f"http://127.0.0.1:{free_port()}/x", timeout=2, max_retries=1, backoff_seconds=0.01)
    with pytest.raises(TransientSendError):
        channel.send(in_app_message("c1"))


# ---- local outboxes ------------------------------------------------------------------------


def test_local_outboxes_write_one_readable_file_per_message(tmp_path: Path) -> None:
    mail = LocalOutboxEmail(outbox_dir=str(tmp_path / "email"))
    first = mail.send(email_message("c1"))
    assert mail.send(email_message("c1")) == first  # a resend overwrites, same Message-ID
    mail.send(email_message("c2"))
    files = sorted((tmp_path / "email").iterdir())
    assert [f.suffix for f in files] == [".eml", ".eml"]
    _check_received_email(files[0].read_bytes(), "c1")

    push = LocalOutboxPush(outbox_dir=str(tmp_path / "push"))
    push.send(push_message("c1", "customer-c1"))
    push.send(push_message("c1", "customer-c1"))
    (push_file,) = (tmp_path / "push").iterdir()
    assert json.loads(push_file.read_text())["title"] == "Cloud Summit Tomorrow!"

    in_app = LocalOutboxInApp(outbox_dir=str(tmp_path / "in-app"))
    in_app.send(in_app_message("c1"))
    (banner,) = (tmp_path / "in-app").iterdir()
    assert json.loads(banner.read_text())["payload"]["placement"] == "homepage-top"


# ---- as Dagster resources ------------------------------------------------------------------


@pytest.mark.integration
def test_smtp_resource_in_a_dagster_run_reuses_and_closes_its_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTREACH_SMTP_PASSWORD", "from-the-env")

    @dg.asset
    def invitations(email_channel: EmailChannelResource) -> list[str]:
        return [email_channel.send(email_message(f"c{i}")) for i in range(2)]

    with smtp_server(credentials=("mailer", "from-the-env")) as (host, port, handler):
        channel = SmtpEmail(
            host=host, port=port, username="mailer", password=dg.EnvVar("EVENTREACH_SMTP_PASSWORD"), starttls=False,
            sender=SENDER, timeout=5,
        )  # fmt: skip
        result = dg.materialize([invitations], resources={"email_channel": channel})
        assert result.success
        assert handler.sessions == 1 and len(handler.messages) == 2
        assert handler.quits == 1  # teardown closed the connection politely
