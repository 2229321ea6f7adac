"""Channels sending from 32 threads at once, and slowing down when the provider throttles.

Every provider is a real server on 127.0.0.1: aiosmtpd (connections counted by the server), a
keep-alive HTTP/1.1 webhook receiver, moto for SES v2 / SNS. moto 5.2.5 has no SES v2
`GetAccount` (it answers 404) and never throttles, so the account-rate discovery and the
throttling answers come from `AwsStandIn`: a loopback HTTP server speaking the SES v2 REST JSON
and SNS query protocols botocore uses. Pacing and backoff run on a fake clock: nothing here
waits for real, and nothing is timed.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest

from eventreach_assets.domain.delivery import PermanentSendError, ThrottledSendError, TransientSendError
from eventreach_assets.provider_standins import LoopbackHTTPServer, serving
from eventreach_assets.resources.channels import (
    ChannelUnavailableError,
    LocalOutboxEmail,
    SesEmail,
    SmtpEmail,
    SnsPush,
    WebhookInApp,
    outbox_file_stem,
)
from eventreach_assets_tests.stand_ins import FAKE_AWS_ENV, REGION, RecordingSmtpHandler, free_port
from eventreach_assets_tests.test_channel_pacing import FakeClock
from eventreach_assets_tests.test_channels import SENDER, email_message, in_app_message, push_message

THREADS = 32
MESSAGES = 200


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Bounded wait for something another thread does (a server noticing a closed connection)."""
    for _ in range(500):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"still not true after 5 s: {what}")


def send_all(channel: Any, messages: list[Any]) -> list[str]:
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(channel.send, messages))


def fake_time(channel: Any) -> FakeClock:
    """Pace and back off on a clock that never moves: every wait is recorded, none is slept."""
    clock = FakeClock(advance_on_sleep=False)
    channel.use_clock(clock, clock.sleep, rng=lambda: 1.0)
    return clock


# ---- SMTP: aiosmtpd, connections counted by the server ----------------------------------------


class ScriptedSmtpHandler(RecordingSmtpHandler):
    """Records like RecordingSmtpHandler, after `delay` s per message; the first replies can be scripted."""

    def __init__(self, rcpt_replies: list[str] | None = None, data_replies: list[str] | None = None) -> None:
        super().__init__()
        self.rcpt_replies = list(rcpt_replies or [])
        self.data_replies = list(data_replies or [])
        self.delay = 0.002

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        if self.data_replies:
            return self.data_replies.pop(0)
        return await super().handle_DATA(server, session, envelope)


class ConnectionCount:
    def __init__(self) -> None:
        self.opened = 0
        self.open_now = 0
        self.most_open = 0


@contextmanager
def counting_smtp_server(handler: RecordingSmtpHandler) -> Iterator[tuple[str, int, ConnectionCount]]:
    """An aiosmtpd server on a free loopback port that counts the connections it accepts and loses."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    count = ConnectionCount()

    class CountingSmtp(SMTP):
        def connection_made(self, transport: Any) -> None:  # runs on the server's event loop thread
            count.opened += 1
            count.open_now += 1
            count.most_open = max(count.most_open, count.open_now)
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            super().connection_lost(error)
            count.open_now -= 1

    class CountingController(Controller):
        def factory(self) -> SMTP:
            return CountingSmtp(self.handler, **self.SMTP_kwargs)

    controller = CountingController(handler, hostname="127.0.0.1", port=free_port())
    controller.start()  # start() opens and closes one connection itself, to see the server is up
    handler.loop = controller.loop
    wait_until(lambda: count.open_now == 0, "the start-up probe connection closed")
    count.opened = count.most_open = 0
    try:
        yield "127.0.0.1", controller.port, count
    finally:
        controller.stop()


@pytest.mark.integration
def test_smtp_from_32_threads_each_message_once_over_at_most_concurrency_connections() -> None:
    handler = ScriptedSmtpHandler()
    with counting_smtp_server(handler) as (host, port, connections):
        channel = SmtpEmail(
            host=host, port=port, starttls=False, sender=SENDER, max_messages_per_second=0, timeout=10, concurrency=8
        )
        ids = send_all(channel, [email_message(f"c{i}") for i in range(MESSAGES)])
        assert 1 < connections.opened <= 8  # sent side by side, never over more than `concurrency` connections
        assert connections.open_now == connections.opened  # kept open for the next sends
        channel.close()
        wait_until(lambda: connections.open_now == 0, "every SMTP connection closed after close()")
    received = Counter(rcpt for _, _, rcpts, _ in handler.messages for rcpt in rcpts)
    assert received == {f"c{i}@example.com": 1 for i in range(MESSAGES)}
    assert len(set(ids)) == MESSAGES
    assert handler.quits == connections.opened  # closed politely, each of them
    assert handler.sessions == connections.opened  # and each one carried messages


@pytest.mark.integration
def test_smtp_rate_answers_slow_the_channel_down_and_are_retried_until_accepted() -> None:
    rate = "421 4.7.28 Our system has detected an unusual rate of mail from your IP"
    handler = ScriptedSmtpHandler(rcpt_replies=[rate] * 2, data_replies=["452 4.3.1 Too many messages, slow down"])
    with counting_smtp_server(handler) as (host, port, connections):
        channel = SmtpEmail(host=host, port=port, starttls=False, sender=SENDER, timeout=10, max_messages_per_second=20)
        clock = fake_time(channel)
        channel.send(email_message("c1"))
        channel.close()
    assert [rcpts for _, _, rcpts, _ in handler.messages] == [["c1@example.com"]]  # once, in the end
    assert channel.throttled_count() == 3
    assert channel.pacing_stats().rate_now == 10.0  # halved once (the cooldown holds back the rest)
    assert connections.opened == 3  # "421" closes the connection: reopened, twice; "452" keeps it
    assert clock.sleeps[:1] == [0.25]  # full jitter at its top (rng = 1): 0.25 s, then 0.5 s, ...


@pytest.mark.integration
def test_smtp_replies_at_the_end_of_data_are_honoured() -> None:
    handler = ScriptedSmtpHandler(data_replies=["554 5.6.0 Message content rejected", "451 4.3.0 Try again later"])
    with counting_smtp_server(handler) as (host, port, _):
        channel = SmtpEmail(host=host, port=port, starttls=False, sender=SENDER, timeout=10, max_messages_per_second=0)
        with pytest.raises(PermanentSendError, match="554"):
            channel.send(email_message("c1"))
        with pytest.raises(TransientSendError, match="451") as later:
            channel.send(email_message("c2"))
        assert not isinstance(later.value, ThrottledSendError)  # "try again later" is no rate answer
        channel.send(email_message("c3"))
        channel.close()
    assert [rcpts for _, _, rcpts, _ in handler.messages] == [["c3@example.com"]]
    assert channel.throttled_count() == 0


@pytest.mark.integration
def test_smtp_throttling_that_does_not_stop_gives_up_as_transient() -> None:
    handler = ScriptedSmtpHandler(rcpt_replies=["451 4.7.1 Rate limit exceeded"] * 10)
    with counting_smtp_server(handler) as (host, port, _):
        channel = SmtpEmail(host=host, port=port, starttls=False, sender=SENDER, timeout=10, max_throttle_retries=2)
        fake_time(channel)
        with pytest.raises(TransientSendError, match="Rate limit exceeded") as gave_up:
            channel.send(email_message("c1"))
        channel.close()
    assert type(gave_up.value) is TransientSendError  # the loop records failed_transient; the next run sends it
    assert handler.messages == []
    assert channel.pacing_stats().as_metadata() | {"rate_now": None} == {
        "concurrency": 32,
        "provider_rate": 10.0,
        "rate_now": None,
        "throttled": 3,
        "throttle_gave_up": 1,
    }


# ---- in-app webhook: a keep-alive HTTP/1.1 receiver -------------------------------------------


class KeepAliveReceiver:
    """What the receiver saw: connections, requests and accepted banners per Idempotency-Key."""

    def __init__(self, throttle: int, retry_after: str, close_after_each: bool) -> None:
        self.throttle_left = throttle
        self.retry_after = retry_after
        self.close_after_each = close_after_each
        self.opened = 0
        self.closed = 0
        self.requests: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.url = ""


@contextmanager
def keep_alive_receiver(
    throttle: int = 0, retry_after: str = "2", close_after_each: bool = False
) -> Iterator[KeepAliveReceiver]:
    """A ThreadingHTTPServer speaking HTTP/1.1 (connections stay open) that answers 429 + Retry-After
    to its first `throttle` requests, and with `close_after_each` drops the connection after each
    answer without saying so (as an idle timeout does)."""
    receiver = KeepAliveReceiver(throttle, retry_after, close_after_each)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def setup(self) -> None:
            super().setup()
            with receiver.lock:
                receiver.opened += 1

        def finish(self) -> None:
            super().finish()
            with receiver.lock:
                receiver.closed += 1

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers["Idempotency-Key"]
            with receiver.lock:
                receiver.requests[key] += 1
                throttled = receiver.throttle_left > 0
                receiver.throttle_left -= throttled
                if not throttled:
                    receiver.accepted[key] += 1
            status, body = (429, b'{"error": "slow down"}') if throttled else (200, b'{"id": "%s"}' % key.encode())
            self.send_response(status)
            if throttled:
                self.send_header("Retry-After", receiver.retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = receiver.close_after_each

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/v1/banners"
    with serving(server):
        yield receiver


@pytest.mark.integration
def test_webhook_from_32_threads_keeps_connections_alive_and_each_banner_lands_once_through_429s() -> None:
    with keep_alive_receiver(throttle=5, retry_after="2") as receiver:
        channel = WebhookInApp(url=receiver.url, timeout=10, max_retries=0)
        clock = fake_time(channel)
        ids = send_all(channel, [in_app_message(f"c{i}") for i in range(MESSAGES)])
        assert clock.sleeps  # paced once throttled
        assert receiver.opened <= THREADS  # one kept-alive connection per sending thread at most
        assert receiver.closed == 0
        channel.close()
        wait_until(lambda: receiver.closed == receiver.opened, "every webhook connection closed after close()")
    keys = [in_app_message(f"c{i}").idempotency_key for i in range(MESSAGES)]
    assert receiver.accepted == dict.fromkeys(keys, 1)
    assert sum(receiver.requests.values()) == MESSAGES + 5  # five 429s, each retried once
    assert sorted(ids) == sorted(keys)
    assert channel.throttled_count() == 5


@pytest.mark.integration
def test_webhook_429_waits_for_its_retry_after() -> None:
    with keep_alive_receiver(throttle=1, retry_after="2") as receiver:
        channel = WebhookInApp(url=receiver.url, timeout=10)
        clock = fake_time(channel)
        channel.send(in_app_message("c1"))
        channel.close()
    assert receiver.accepted == {in_app_message("c1").idempotency_key: 1}
    assert clock.sleeps[0] == 2.0  # Retry-After: 2 outweighs the first jittered backoff (0.25 s)


@pytest.mark.integration
def test_webhook_reopens_a_kept_alive_connection_the_server_closed_without_counting_a_retry() -> None:
    with keep_alive_receiver(close_after_each=True) as receiver:
        channel = WebhookInApp(url=receiver.url, timeout=10, max_retries=0)
        for number in range(3):
            channel.send(in_app_message(f"c{number}"))
        channel.close()
    assert sum(receiver.accepted.values()) == 3
    assert receiver.opened == 3


@pytest.mark.integration
def test_webhook_retry_after_longer_than_the_longest_backoff_gives_up_at_once() -> None:
    with keep_alive_receiver(throttle=1, retry_after="3600") as receiver:
        channel = WebhookInApp(url=receiver.url, timeout=10)
        clock = fake_time(channel)
        with pytest.raises(TransientSendError, match="429"):
            channel.send(in_app_message("c1"))
        channel.close()
    assert sum(receiver.requests.values()) == 1
    assert not [wait for wait in clock.sleeps if wait >= 3600]


# ---- SES v2 and SNS on moto -------------------------------------------------------------------


@pytest.mark.integration
def test_ses_on_moto_from_32_threads_each_message_once(aws_endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    boto3.client("sesv2", region_name=REGION, endpoint_url=aws_endpoint).create_email_identity(
        EmailIdentity="eventreach.example"
    )
    channel = SesEmail(
        region_name=REGION, endpoint_url=aws_endpoint, sender="events@eventreach.example", max_messages_per_second=500
    )
    with caplog.at_level(logging.WARNING):
        assert channel.provider_rate() == 500.0  # moto has no GetAccount: the configured rate, and a warning
    assert "GetAccount failed" in caplog.text and "max_messages_per_second" in caplog.text
    ids = send_all(channel, [email_message(f"c{i}") for i in range(MESSAGES)])
    sent = [m for m in ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages if m.id in set(ids)]
    assert Counter(m.destinations[0] for m in sent) == {f"c{i}@example.com": 1 for i in range(MESSAGES)}
    assert len(set(ids)) == MESSAGES


@pytest.mark.integration
def test_sns_on_moto_from_32_threads_each_push_once(aws_endpoint: str) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sns.models import sns_backends

    topic_arn = boto3.client("sns", region_name=REGION, endpoint_url=aws_endpoint).create_topic(Name="push")["TopicArn"]
    channel = SnsPush(region_name=REGION, endpoint_url=aws_endpoint, topic_arn=topic_arn)
    assert channel.provider_rate() is None  # unlimited unless configured; throttling still slows it down
    ids = send_all(channel, [push_message(f"c{i}", f"customer-c{i}") for i in range(MESSAGES)])
    notifications = sns_backends[DEFAULT_ACCOUNT_ID][REGION].topics[topic_arn].sent_notifications
    recipients = Counter(attributes["recipient"]["Value"] for _, _, _, attributes, _ in notifications)
    assert recipients == {f"customer-c{i}": 1 for i in range(MESSAGES)}
    assert len(set(ids)) == MESSAGES


# ---- SES v2 GetAccount and AWS throttling: a loopback server speaking the AWS protocols --------


class AwsStandIn:
    """SES v2 (GetAccount, SendEmail; REST JSON) and SNS (Publish; query/XML), as botocore calls them."""

    def __init__(self) -> None:
        self.account: tuple[int, dict[str, Any]] = (200, {"SendQuota": {"MaxSendRate": 14.0}})
        self.account_requests = 0
        self.throttle_left = 0
        self.refusal: tuple[int, str, str] | None = None  # (status, code, message) for every send
        self.sends = 0
        self.calls = 0  # PublishBatch calls
        self.accepted: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.endpoint = ""

    def send_answer(self, recipient: str, throttling: tuple[str, str]) -> tuple[int, str, str] | None:
        """(status, code, message) of a refusal, or None: accepted (and counted)."""
        with self.lock:
            self.sends += 1
            if self.refusal:
                return self.refusal
            if self.throttle_left > 0:
                self.throttle_left -= 1
                return 429, *throttling
            self.accepted[recipient] += 1
            return None


def _aws_handler(stand_in: AwsStandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def do_GET(self) -> None:
            if self.path.startswith("/v2/email/account"):
                with stand_in.lock:
                    stand_in.account_requests += 1
                status, body = stand_in.account
                self._answer(status, json.dumps(body).encode(), "application/json", body.get("__type"))
            else:
                self._answer(404, b"{}", "application/json")

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/v2/email/outbound-emails"):
                recipient = json.loads(raw)["Destination"]["ToAddresses"][0]
                refused = stand_in.send_answer(
                    recipient, ("TooManyRequestsException", "Maximum sending rate exceeded.")
                )
                if refused is None:
                    body = json.dumps({"MessageId": str(uuid.uuid4())}).encode()
                    return self._answer(200, body, "application/json")
                status, code, message = refused
                return self._answer(status, json.dumps({"message": message}).encode(), "application/json", code)
            form = {name: values[0] for name, values in parse_qs(raw.decode()).items()}
            if form["Action"] == "PublishBatch":
                return self._publish_batch(form)
            refused = stand_in.send_answer(form["TargetArn"], ("Throttled", "Rate exceeded"))
            if refused is None:
                result = f"<PublishResult><MessageId>{uuid.uuid4()}</MessageId></PublishResult>"
                body = f'<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">{result}</PublishResponse>'
                return self._answer(200, body.encode(), "text/xml")
            self._sns_error(*refused)

        def _sns_error(self, status: int, code: str, message: str) -> None:
            error = f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            self._answer(status, f"<ErrorResponse>{error}<RequestId>r</RequestId></ErrorResponse>".encode(), "text/xml")

        def _publish_batch(self, form: dict[str, str]) -> None:
            """SNS PublishBatch (query protocol): the whole call throttled like a Publish, else every entry
            accepted and counted under its `recipient` attribute."""
            entries = sorted(
                (key.split(".")[2], form[key.replace(".Name", ".Value.StringValue")])
                for key, value in form.items()
                if key.startswith("PublishBatchRequestEntries.member.")
                and key.endswith(".Name")
                and value == "recipient"
            )
            with stand_in.lock:
                stand_in.calls += 1
                throttled = stand_in.throttle_left > 0
                stand_in.throttle_left -= throttled
            if throttled:
                return self._sns_error(429, "Throttled", "Rate exceeded")
            members = ""
            for member, recipient in entries:
                with stand_in.lock:
                    stand_in.accepted[recipient] += 1
                entry_id = form[f"PublishBatchRequestEntries.member.{member}.Id"]
                members += f"<member><Id>{entry_id}</Id><MessageId>{uuid.uuid4()}</MessageId></member>"
            result = f"<PublishBatchResult><Successful>{members}</Successful><Failed/></PublishBatchResult>"
            body = f'<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">{result}</PublishBatchResponse>'
            self._answer(200, body.encode(), "text/xml")

        def _answer(self, status: int, body: bytes, content_type: str, error_type: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-amzn-RequestId", "r")
            if error_type:
                self.send_header("x-amzn-ErrorType", error_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def aws_stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsStandIn]:
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    stand_in = AwsStandIn()
    server = LoopbackHTTPServer(("127.0.0.1", 0), _aws_handler(stand_in))
    stand_in.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stand_in
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _ses(stand_in: AwsStandIn, **settings: Any) -> SesEmail:
    return SesEmail(region_name=REGION, endpoint_url=stand_in.endpoint, sender="events@eventreach.example", **settings)


def account_answer(max_send_rate: float) -> tuple[int, dict[str, Any]]:
    """GetAccount's answer, shaped as AWS documents it."""
    quota = {"Max24HourSend": 50000.0, "MaxSendRate": max_send_rate, "SentLast24Hours": 120.0}
    return 200, {
        "DedicatedIpAutoWarmupEnabled": False,
        "EnforcementStatus": "HEALTHY",
        "ProductionAccessEnabled": True,
        "SendQuota": quota,
        "SendingEnabled": True,
        "SuppressionAttributes": {"SuppressedReasons": ["BOUNCE", "COMPLAINT"]},
    }


@pytest.mark.integration
def test_ses_paces_to_the_accounts_rate_from_get_account_asked_once(aws_stand_in: AwsStandIn) -> None:
    aws_stand_in.account = account_answer(14.0)
    channel = _ses(aws_stand_in)
    with ThreadPoolExecutor(THREADS) as pool:
        rates = set(pool.map(lambda _: channel.provider_rate(), range(THREADS)))
    assert rates == {14.0}
    assert aws_stand_in.account_requests == 1  # worked out once, however many threads ask
    assert _ses(aws_stand_in, max_messages_per_second=5).provider_rate() == 5.0  # a lower cap wins
    assert _ses(aws_stand_in, max_messages_per_second=500).provider_rate() == 14.0  # never above the account's


@pytest.mark.integration
def test_ses_without_get_account_falls_back_to_the_configured_rate_else_one_per_second(
    aws_stand_in: AwsStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    aws_stand_in.account = (403, {"__type": "AccessDeniedException", "message": "not authorized: ses:GetAccount"})
    with caplog.at_level(logging.WARNING):
        assert _ses(aws_stand_in, max_messages_per_second=50).provider_rate() == 50.0
        assert _ses(aws_stand_in).provider_rate() == 1.0
    assert "AccessDeniedException" in caplog.text and "(sandbox)" in caplog.text
    assert aws_stand_in.account_requests == 2  # a 403 is not retried


@pytest.mark.integration
def test_ses_throttling_from_32_threads_is_retried_through_the_bucket_and_each_message_lands_once(
    aws_stand_in: AwsStandIn,
) -> None:
    aws_stand_in.account = account_answer(200.0)
    aws_stand_in.throttle_left = 3
    channel = _ses(aws_stand_in)
    clock = fake_time(channel)
    send_all(channel, [email_message(f"c{i}") for i in range(MESSAGES)])
    assert aws_stand_in.accepted == {f"c{i}@example.com": 1 for i in range(MESSAGES)}
    # botocore retries nothing (max_attempts=1): the channel saw each of the three 429s itself
    assert aws_stand_in.sends == MESSAGES + 3
    stats = channel.pacing_stats()
    assert (stats.provider_rate, stats.throttled, stats.gave_up) == (200.0, 3, 0)
    assert stats.rate_now == 100.0  # halved once (all three came within the cooldown)
    assert max(clock.sleeps) >= (MESSAGES - 20) / 200  # paced to 200/s after its burst of 20


@pytest.mark.integration
def test_ses_daily_quota_used_up_stops_the_channel_without_retrying(aws_stand_in: AwsStandIn) -> None:
    aws_stand_in.refusal = (400, "LimitExceededException", "Daily message quota exceeded.")
    channel = _ses(aws_stand_in)
    fake_time(channel)
    with pytest.raises(ChannelUnavailableError, match="24-hour sending quota"):
        channel.send(email_message("c1"))
    assert aws_stand_in.sends == 1


@pytest.mark.integration
def test_sns_throttled_publishes_are_retried_and_land_once(aws_stand_in: AwsStandIn) -> None:
    aws_stand_in.throttle_left = 2
    aws_stand_in.refusal = None
    channel = SnsPush(region_name=REGION, endpoint_url=aws_stand_in.endpoint, max_messages_per_second=50)
    fake_time(channel)
    arns = [f"arn:aws:sns:{REGION}:123456789012:endpoint/GCM/eventreach/c{i}" for i in range(20)]
    send_all(channel, [push_message(f"c{i}", arn) for i, arn in enumerate(arns)])
    assert aws_stand_in.accepted == dict.fromkeys(arns, 1)
    assert aws_stand_in.sends == 22
    assert channel.throttled_count() == 2


@pytest.mark.integration
def test_sns_topic_publishes_go_ten_per_call_and_a_throttled_batch_is_retried_whole(
    aws_stand_in: AwsStandIn,
) -> None:
    aws_stand_in.throttle_left = 2
    topic_arn = f"arn:aws:sns:{REGION}:123456789012:eventreach-push"
    channel = SnsPush(region_name=REGION, endpoint_url=aws_stand_in.endpoint, topic_arn=topic_arn)
    fake_time(channel)
    assert channel.batch_size == 10
    messages = [push_message(f"c{i}", f"customer-c{i}") for i in range(25)]
    answers = [answer for start in range(0, 25, 10) for answer in channel.send_many(messages[start : start + 10])]
    assert aws_stand_in.accepted == {f"customer-c{i}": 1 for i in range(25)}  # each once, after the throttling
    assert aws_stand_in.calls == 2 + 3  # two throttled answers, then 10 + 10 + 5 entries
    assert len(set(answers)) == 25 and all(isinstance(answer, str) for answer in answers)
    assert channel.throttled_count() == 2


# ---- local outboxes ---------------------------------------------------------------------------


def test_local_outbox_from_32_threads_one_whole_file_per_message_resends_included(tmp_path: Path) -> None:
    outbox = LocalOutboxEmail(outbox_dir=str(tmp_path / "email"))
    messages = [email_message(f"c{i % 50}") for i in range(MESSAGES)]  # every message four times
    send_all(outbox, messages)
    reference = LocalOutboxEmail(outbox_dir=str(tmp_path / "one-by-one"))
    for message in messages[:50]:
        reference.send(message)
    written = {f.name: f.read_bytes() for f in (tmp_path / "email").iterdir()}
    assert written == {f.name: f.read_bytes() for f in (tmp_path / "one-by-one").iterdir()}
    assert len(written) == 50 and all(name.endswith(".eml") for name in written)  # no temporary file left
    assert (outbox.concurrency, outbox.batch_size) == (64, 32)  # two batches of 32 in flight


def test_local_outbox_batches_from_threads_write_what_send_writes_behind_one_barrier_each(tmp_path: Path) -> None:
    outbox = LocalOutboxEmail(outbox_dir=str(tmp_path / "email"))
    messages = [email_message(f"c{i}") for i in range(96)]
    with ThreadPoolExecutor(3) as pool:
        answers = [a for batch in pool.map(outbox.send_many, [messages[i : i + 32] for i in range(0, 96, 32)])
                   for a in batch]  # fmt: skip
    reference = LocalOutboxEmail(outbox_dir=str(tmp_path / "one-by-one"))
    assert answers == [reference.send(message) for message in messages]  # the Message-IDs, in order
    written = {f.name: f.read_bytes() for f in (tmp_path / "email").iterdir()}
    assert written == {f.name: f.read_bytes() for f in (tmp_path / "one-by-one").iterdir()}
    assert len(written) == 96  # no temporary file left


def test_local_outbox_batch_answers_each_message_a_bad_one_does_not_keep_the_others_out(tmp_path: Path) -> None:
    outbox = LocalOutboxEmail(outbox_dir=str(tmp_path))
    good, bad = email_message("c1"), email_message("c2", recipient="not an address")
    first, refused, again = outbox.send_many([good, bad, good])  # a resend in the same batch overwrites
    assert first == again == LocalOutboxEmail(outbox_dir=str(tmp_path / "ref")).send(good)
    assert isinstance(refused, PermanentSendError)
    assert [f.name for f in tmp_path.glob("*.eml")] == [f"{outbox_file_stem(good)}.eml"]
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []


def test_local_outbox_batch_names_appear_only_after_their_data_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash safety: at the barrier nothing has its name yet; after it, every name is durable before the
    answers; a failed barrier leaves no file at all (the send loop records the batch failed)."""
    from eventreach_assets.resources.channels import outbox as module

    flush, fsynced, seen_at_barrier = module._flush_to_disk, [], []
    real_fsync = module.os.fsync

    def watched_flush(folder: int, descriptors: list[int]) -> None:
        seen_at_barrier.append(sorted(f.name for f in tmp_path.iterdir()))
        flush(folder, descriptors)

    def watched_fsync(descriptor: int) -> None:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):  # the folder (files are fsynced only without syncfs)
            fsynced.append(sorted(os.listdir(descriptor)))
        real_fsync(descriptor)

    monkeypatch.setattr(module, "_flush_to_disk", watched_flush)
    monkeypatch.setattr(module.os, "fsync", watched_fsync)
    channel = LocalOutboxEmail(outbox_dir=str(tmp_path))
    messages = [email_message(f"c{i}") for i in range(3)]
    channel.send_many(messages)
    [before] = seen_at_barrier
    assert len(before) == 3 and all(name.startswith(".") and name.endswith(".tmp") for name in before)
    names = sorted(f"{outbox_file_stem(m)}.eml" for m in messages)
    assert fsynced[-1] == names  # the folder, fsynced with every name in it, before the answers

    def failing_flush(folder: int, descriptors: list[int]) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(module, "_flush_to_disk", failing_flush)
    with pytest.raises(OSError, match="Input/output"):
        LocalOutboxEmail(outbox_dir=str(tmp_path / "failing")).send_many(messages)
    assert list((tmp_path / "failing").iterdir()) == []


# ---- the deployments' settings ----------------------------------------------------------------


def test_deployments_take_concurrency_and_rates_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from eventreach_assets.deployments import aws_campaign_resources, local_resources
    from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, default_program

    region = dg.EnvVar("AWS_DEFAULT_REGION")
    defaults = aws_campaign_resources(default_program(), region, None)
    assert (defaults["email_channel"].concurrency, defaults["email_channel"].max_messages_per_second) == (32, 0.0)
    assert defaults["push_channel"].provider_rate() is None and defaults["in_app_channel"].concurrency == 32
    assert local_resources(tmp_path, DEFAULT_PROGRAM_PATH)["email_channel"].concurrency == 64

    for name, value in {
        "EVENTREACH_EMAIL_CONCURRENCY": "16",
        "EVENTREACH_SES_MAX_RATE": "40",
        "EVENTREACH_PUSH_CONCURRENCY": "64",
        "EVENTREACH_PUSH_MAX_RATE": "300",
        "EVENTREACH_IN_APP_CONCURRENCY": "4",
        "EVENTREACH_IN_APP_MAX_RATE": "25.5",
        "EVENTREACH_SMTP_MAX_RATE": "12",
    }.items():
        monkeypatch.setenv(name, value)
    ses = aws_campaign_resources(default_program(), region, None)
    assert (ses["email_channel"].concurrency, ses["email_channel"].max_messages_per_second) == (16, 40.0)
    assert (ses["push_channel"].concurrency, ses["push_channel"].max_messages_per_second) == (64, 300.0)
    assert (ses["in_app_channel"].concurrency, ses["in_app_channel"].max_messages_per_second) == (4, 25.5)
    monkeypatch.setenv("EVENTREACH_EMAIL_PROVIDER", "smtp")
    smtp = aws_campaign_resources(default_program(), region, None)["email_channel"]
    assert (type(smtp).__name__, smtp.concurrency, smtp.max_messages_per_second) == ("SmtpEmail", 16, 12.0)
    assert local_resources(tmp_path, DEFAULT_PROGRAM_PATH)["push_channel"].concurrency == 64
