"""Channel services: the only code that hands a rendered message to a provider.

One base resource per channel (email, push, in-app), each with a local outbox for the local
deployment and tests, and real providers (SMTP / Amazon SES v2, Amazon SNS, an HTTP webhook).
Every `send(message)` returns the provider's message id, or raises

- `TransientSendError` when trying again later may work (timeouts, throttling, 4xx SMTP
  replies, 5xx HTTP, lost connections). `ChannelUnavailableError`, a subclass, says the
  channel itself is unusable (bad credentials, account paused): every further send would fail
  the same way, so a caller may stop the campaign instead of burning through it;
- `PermanentSendError` when this message will never be accepted (invalid recipient, 5xx SMTP
  replies, rejected content): record the reason and carry on with the rest.

Providers that deduplicate get the message's idempotency key (webhook `Idempotency-Key`,
a stable email Message-ID, SNS FIFO deduplication id). Secrets (SMTP password, webhook API
key) come from `dg.EnvVar` in production and are never logged or put into an error message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import smtplib
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    OutboundMessage,
    PermanentSendError,
    TransientSendError,
)
from eventreach_assets.domain.email_wire import email_wire_bytes, message_id, to_email_message

__all__ = [
    "ChannelUnavailableError",
    "EmailChannelResource",
    "InAppChannelResource",
    "LocalOutboxEmail",
    "LocalOutboxInApp",
    "LocalOutboxPush",
    "PushChannelResource",
    "SesEmail",
    "SmtpEmail",
    "SnsPush",
    "WebhookInApp",
    "build_email",
    "email_bytes",
    "outbox_file_stem",
]

log = logging.getLogger(__name__)

# ---- shared helpers ---------------------------------------------------------------------------


def outbox_file_stem(message: OutboundMessage) -> str:
    """A file name from the idempotency key: readable, filesystem-safe, and unique (a resend overwrites)."""
    key = message.idempotency_key
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:100]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader (or a crash) never sees half a message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def message_document(message: OutboundMessage) -> dict[str, Any]:
    """The JSON shape of a push or in-app message (local outboxes and the webhook body)."""
    return {
        "idempotency_key": message.idempotency_key,
        "campaign_id": message.campaign_id,
        "customer_id": message.key.customer_id,
        "event_id": message.key.event_id,
        "channel": message.key.channel,
        "kind": str(message.key.kind),
        "recipient": message.recipient,
        "title": message.subject,
        "body": message.body_text,
        "payload": message.payload,
        "scheduled_at": message.scheduled_at.isoformat() if message.scheduled_at else None,
    }


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, sort_keys=True, default=str).encode()


# AWS error codes, shared by SES and SNS.
_AWS_TRANSIENT = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "Throttled",
        "TooManyRequestsException",
        "LimitExceededException",
        "KMSThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
_AWS_UNAVAILABLE = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "AccountSuspendedException",
        "SendingPausedException",
        "MailFromDomainNotVerifiedException",
        "ConfigurationSetDoesNotExist",
        "PlatformApplicationDisabled",
        "KMSDisabled",
        "KMSAccessDenied",
    }
)


def _aws_send_error(error: ClientError, provider: str) -> TransientSendError | PermanentSendError:
    """Classify an AWS error: throttling and 5xx retry, account/credential problems stop, the rest is this message."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    text = str(error.response.get("Error", {}).get("Message", ""))[:300]
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    reason = f"{provider} {code or status}: {text}"
    if code in _AWS_UNAVAILABLE:
        return ChannelUnavailableError(reason)
    if code in _AWS_TRANSIENT or status >= 500 or status == 429:
        return TransientSendError(reason)
    return PermanentSendError(reason)


def _aws_client(service: str, region_name: str, endpoint_url: str | None, timeout: float) -> Any:
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "max_attempts": 3})
    return boto3.client(service, region_name=region_name, endpoint_url=endpoint_url or None, config=config)


class _RateLimiter:
    """At most `per_second` calls per second, evenly spaced (providers count sends per second)."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            time.sleep(delay)


# ---- email ------------------------------------------------------------------------------------


def _with_sender(message: OutboundMessage, sender: str | None) -> OutboundMessage:
    if sender and not any(name.lower() == "from" for name in message.headers):
        return replace(message, headers={"From": sender, **message.headers})
    return message


def build_email(message: OutboundMessage, sender: str | None = None) -> EmailMessage:
    """The RFC 5322 message (domain.email_wire.to_email_message); `sender` fills a missing From header."""
    return to_email_message(_with_sender(message, sender))


def email_bytes(message: OutboundMessage, sender: str | None = None) -> tuple[bytes, str]:
    """(wire bytes, Message-ID) of an email: what every email channel sends, byte for byte.

    The bytes come from `domain.email_wire.email_wire_bytes` only, so the outbox file, SMTP DATA
    and SES `Content.Raw` are identical and are what `email_problems` validated. A message that
    cannot be serialized (e.g. a List-Unsubscribe URI over the line limit) is a PermanentSendError.
    """
    message = _with_sender(message, sender)
    try:
        return email_wire_bytes(message), message_id(message)
    except ValueError as error:
        raise PermanentSendError(f"email cannot be serialized: {error}") from None


class EmailChannelResource(dg.ConfigurableResource):
    """Sends one rendered email; returns the provider's message id."""

    def send(self, message: OutboundMessage) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release any connection kept between sends (no-op where none is kept)."""

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()


class LocalOutboxEmail(EmailChannelResource):
    """One `.eml` file per message in `outbox_dir`, openable in any mail client.

    The file name comes from the idempotency key, so a resend overwrites instead of
    duplicating; the returned id is the message's Message-ID.
    """

    outbox_dir: str = Field(description="Directory the .eml files go to, e.g. $EVENTREACH_HOME/outbox/email.")
    sender: str = Field(default="EventReach <events@eventreach.invalid>", description="From, when not rendered.")
    send_delay_seconds: float = Field(
        default=0.0, ge=0.0, description="How long each message's answer takes, like a provider's latency (tests)."
    )

    def send(self, message: OutboundMessage) -> str:
        data, sent_id = email_bytes(message, self.sender)
        _write_atomically(Path(self.outbox_dir, f"{outbox_file_stem(message)}.eml"), data)
        if self.send_delay_seconds:  # accepted, the answer still on its way
            time.sleep(self.send_delay_seconds)
        return sent_id


def _smtp_error(code: int, reply: bytes | str, what: str) -> TransientSendError | PermanentSendError:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    reason = f"SMTP {what} {code}: {text[:300]}"
    return PermanentSendError(reason) if 500 <= code < 600 else TransientSendError(reason)


class SmtpEmail(EmailChannelResource):
    """SMTP submission with one connection reused across sends, at a bounded rate.

    The connection opens on the first send and reopens when the server dropped it. Replies
    4xx are transient and 5xx permanent, for the sender, the recipient and the data alike.
    The password comes from `dg.EnvVar("EVENTREACH_SMTP_PASSWORD")` and is never logged.
    """

    host: str
    port: int = 587
    username: str | None = None
    password: str | None = Field(default=None, repr=False, description='dg.EnvVar("EVENTREACH_SMTP_PASSWORD")')
    starttls: bool = True
    use_ssl: bool = Field(default=False, description="Implicit TLS (port 465) instead of STARTTLS.")
    sender: str = Field(description="Envelope sender (MAIL FROM), and From when the message has none.")
    max_messages_per_second: float = Field(default=10.0, description="0 = unlimited.")
    timeout: float = 30.0
    max_messages_per_connection: int = Field(default=1000, description="Reconnect after this many sends.")

    _connection: smtplib.SMTP | None = PrivateAttr(default=None)
    _sent_on_connection: int = PrivateAttr(default=0)
    _limiter: _RateLimiter | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        try:
            if self.use_ssl:
                connection: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            connection.ehlo()
            if self.starttls and not self.use_ssl:
                connection.starttls(context=context)
                connection.ehlo()
            if self.username:
                connection.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as error:
            raise ChannelUnavailableError(f"SMTP login as {self.username!r} refused ({error.smtp_code})") from None
        except smtplib.SMTPNotSupportedError as error:
            raise ChannelUnavailableError(f"SMTP server at {self.host}:{self.port}: {error}") from None
        except (OSError, smtplib.SMTPException) as error:
            raise TransientSendError(f"SMTP connect to {self.host}:{self.port}: {type(error).__name__}") from None
        log.info("SMTP connection to %s:%s opened", self.host, self.port)
        return connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._sent_on_connection = 0
        if connection is not None:
            try:
                connection.quit()
            except (OSError, smtplib.SMTPException):
                connection.close()

    def _envelope(self, connection: smtplib.SMTP, recipient: str) -> None:
        """MAIL FROM + RCPT TO; nothing is delivered yet, so a dropped connection here is safe to redo."""
        code, reply = connection.mail(self.sender)
        if code != 250:
            self._reset_after_refusal()
            error = _smtp_error(code, reply, "sender refused")
            # The server will take no mail from this sender: the channel is unusable, not this message.
            raise ChannelUnavailableError(str(error)) if isinstance(error, PermanentSendError) else error
        code, reply = connection.rcpt(recipient)
        if code not in (250, 251):
            self._reset_after_refusal()
            raise _smtp_error(code, reply, "recipient refused")

    def send(self, message: OutboundMessage) -> str:
        data, sent_id = email_bytes(message, self.sender)  # sent as they are: DATA adds only dot-stuffing
        if self._limiter is None:
            self._limiter = _RateLimiter(self.max_messages_per_second)
        self._limiter.wait()
        with self._lock:
            for attempt in range(2):
                reused = self._connection is not None
                if self._connection is None:
                    self._connection = self._connect()
                try:
                    self._envelope(self._connection, message.recipient)
                    break
                except smtplib.SMTPServerDisconnected:
                    self._drop()  # e.g. the server's idle timeout closed a reused connection
                    if not reused or attempt:
                        raise TransientSendError("SMTP server closed the connection before DATA") from None
                except (OSError, smtplib.SMTPException) as error:
                    self._drop()
                    raise TransientSendError(f"SMTP envelope: {type(error).__name__}") from None
            try:
                connection = self._connection
                assert connection is not None
                connection.data(data)
            except smtplib.SMTPDataError as error:
                self._reset_after_refusal()
                raise _smtp_error(error.smtp_code, error.smtp_error, "message refused") from None
            except (OSError, smtplib.SMTPException) as error:
                self._drop()  # the server may or may not have the message: the ledger knows it as failed
                raise TransientSendError(f"SMTP DATA: {type(error).__name__}") from None
            self._sent_on_connection += 1
            if self._sent_on_connection >= self.max_messages_per_connection:
                self._drop()
        return sent_id

    def _reset_after_refusal(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def close(self) -> None:
        with self._lock:
            self._drop()


_SES_TAG = re.compile(r"[^A-Za-z0-9_.-]")


class SesEmail(EmailChannelResource):
    """Amazon SES v2 `SendEmail` with `Content.Raw`: the whole MIME message, `.ics` attachment included.

    Throttling and 5xx are transient (after boto3's own retries); MessageRejected and invalid
    addresses permanent; a paused account or unverified domain is `ChannelUnavailableError`.
    """

    region_name: str = "us-east-1"
    endpoint_url: str | None = Field(default=None, description="Only for a stand-in such as moto.")
    configuration_set: str | None = Field(default=None, description="SES configuration set for event publishing.")
    sender: str = Field(description="Verified SES identity; also From when the message has none.")
    timeout: float = 30.0

    _client: Any = PrivateAttr(default=None)

    def _ses(self) -> Any:
        if self._client is None:
            self._client = _aws_client("sesv2", self.region_name, self.endpoint_url, self.timeout)
        return self._client

    def send(self, message: OutboundMessage) -> str:
        data, _ = email_bytes(message, self.sender)
        request: dict[str, Any] = {
            "FromEmailAddress": self.sender,
            "Destination": {"ToAddresses": [message.recipient]},
            "Content": {"Raw": {"Data": data}},
            "EmailTags": [
                {"Name": "campaign", "Value": _SES_TAG.sub("_", message.campaign_id)[:256] or "none"},
                {"Name": "kind", "Value": _SES_TAG.sub("_", str(message.key.kind))},
            ],
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        try:
            response = self._ses().send_email(**request)
        except ClientError as error:
            raise self._send_error(error) from None
        except BotoCoreError as error:
            raise TransientSendError(f"SES: {type(error).__name__}") from None
        return str(response["MessageId"])

    def _send_error(self, error: ClientError) -> TransientSendError | PermanentSendError:
        """SES says MessageRejected for an unverified sender too: that stops the channel, not one message."""
        classified = _aws_send_error(error, "SES")
        text = str(error.response.get("Error", {}).get("Message", "")).lower()
        _, sender = parseaddr(self.sender)
        if isinstance(classified, PermanentSendError) and (
            "authority to send from" in text or (sender and sender.lower() in text and "not verified" in text)
        ):
            return ChannelUnavailableError(str(classified))
        return classified

    def close(self) -> None:
        self._client = None


# ---- push -------------------------------------------------------------------------------------


class PushChannelResource(dg.ConfigurableResource):
    """Sends one push notification; returns the provider's message id."""

    def send(self, message: OutboundMessage) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release any connection kept between sends (no-op where none is kept)."""

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()


class LocalOutboxPush(PushChannelResource):
    """One JSON file per message in `outbox_dir`, named from the idempotency key (a resend overwrites)."""

    outbox_dir: str = Field(description="Directory the .json files go to, e.g. $EVENTREACH_HOME/outbox/push.")

    def send(self, message: OutboundMessage) -> str:
        stem = outbox_file_stem(message)
        _write_atomically(Path(self.outbox_dir, f"{stem}.json"), _json_bytes(message_document(message)))
        return f"local-push:{stem}"


def _sns_platform_message(message: OutboundMessage) -> str:
    """SNS `MessageStructure=json`: the notification in each mobile platform's own format."""
    alert = {"title": message.subject, "body": message.body_text}
    apns = json.dumps({"aps": {"alert": alert, "sound": "default"}, **message.payload}, default=str)
    fcm = json.dumps({"notification": alert, "data": {k: str(v) for k, v in message.payload.items()}}, default=str)
    return json.dumps({"default": message.body_text or message.subject, "APNS": apns, "APNS_SANDBOX": apns, "GCM": fcm})


class SnsPush(PushChannelResource):
    """Amazon SNS: to the recipient's platform endpoint, or to a topic tagged with the recipient.

    A recipient that is an ARN is the target (a device's platform endpoint). Otherwise the
    message goes to `topic_arn` (a JSON document) with the recipient in the message attribute
    `platform_endpoint_attribute`, so subscriptions can filter on it. FIFO topics get the
    idempotency key as deduplication id.
    """

    region_name: str = "us-east-1"
    endpoint_url: str | None = Field(default=None, description="Only for a stand-in such as moto.")
    topic_arn: str | None = Field(default=None, description="Topic for recipients that are not endpoint ARNs.")
    platform_endpoint_attribute: str = Field(
        default="recipient", description="Message attribute carrying the recipient on topic publishes."
    )
    timeout: float = 30.0

    _client: Any = PrivateAttr(default=None)

    def _sns(self) -> Any:
        if self._client is None:
            self._client = _aws_client("sns", self.region_name, self.endpoint_url, self.timeout)
        return self._client

    def _request(self, message: OutboundMessage) -> dict[str, Any]:
        if message.recipient.startswith("arn:"):
            return {
                "TargetArn": message.recipient,
                "Message": _sns_platform_message(message),
                "MessageStructure": "json",
            }
        if not self.topic_arn:
            raise PermanentSendError(f"push recipient {message.recipient!r} is no endpoint ARN and no topic is set")
        text = lambda value: {"DataType": "String", "StringValue": value}  # noqa: E731
        request: dict[str, Any] = {
            "TopicArn": self.topic_arn,
            "Message": json.dumps(message_document(message), default=str),
            "MessageAttributes": {
                name: text(value)
                for name, value in {
                    self.platform_endpoint_attribute: message.recipient,
                    "campaign_id": message.campaign_id,
                    "kind": str(message.key.kind),
                }.items()
                if value  # SNS refuses empty attribute values
            },
        }
        if self.topic_arn.endswith(".fifo"):
            request["MessageGroupId"] = message.key.customer_id
            request["MessageDeduplicationId"] = hashlib.sha256(message.idempotency_key.encode()).hexdigest()
        return request

    def send(self, message: OutboundMessage) -> str:
        request = self._request(message)
        try:
            response = self._sns().publish(**request)
        except ClientError as error:
            raise _aws_send_error(error, "SNS") from None
        except BotoCoreError as error:
            raise TransientSendError(f"SNS: {type(error).__name__}") from None
        return str(response["MessageId"])

    def close(self) -> None:
        self._client = None


# ---- in-app -----------------------------------------------------------------------------------


class InAppChannelResource(dg.ConfigurableResource):
    """Hands one in-app banner to the in-app service; returns its message id."""

    def send(self, message: OutboundMessage) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release any connection kept between sends (no-op where none is kept)."""

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()


class LocalOutboxInApp(InAppChannelResource):
    """One JSON file per banner in `outbox_dir`, named from the idempotency key (a resend overwrites)."""

    outbox_dir: str = Field(description="Directory the .json files go to, e.g. $EVENTREACH_HOME/outbox/in-app.")

    def send(self, message: OutboundMessage) -> str:
        stem = outbox_file_stem(message)
        _write_atomically(Path(self.outbox_dir, f"{stem}.json"), _json_bytes(message_document(message)))
        return f"local-in-app:{stem}"


class WebhookInApp(InAppChannelResource):
    """POSTs the banner as JSON to the in-app service, `Idempotency-Key` = the message's idempotency key.

    The service deduplicates on that key, so retrying is safe: 5xx, 429 and connection errors
    are retried with exponential backoff (honouring Retry-After) up to `max_retries` times,
    then raised as `TransientSendError`. Any other 4xx is `PermanentSendError` with the
    response text (401/403: `ChannelUnavailableError`). The API key, from
    `dg.EnvVar("EVENTREACH_IN_APP_API_KEY")`, is sent as a bearer token and never logged.
    """

    url: str
    api_key: str | None = Field(default=None, repr=False, description='dg.EnvVar("EVENTREACH_IN_APP_API_KEY")')
    timeout: float = 10.0
    max_retries: int = Field(default=3, ge=0)
    backoff_seconds: float = Field(default=0.5, ge=0, description="First retry delay; doubles each retry.")
    max_backoff_seconds: float = 30.0

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read(), None
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read(), error.headers.get("Retry-After")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_seconds * 2**attempt * (1 + random.random() / 4)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, float(retry_after))
        return min(delay, self.max_backoff_seconds)

    def send(self, message: OutboundMessage) -> str:
        body = _json_bytes(message_document(message))
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": message.idempotency_key,
            "User-Agent": "eventreach",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                status, text, retry_after = self._post(body, headers)
            except (OSError, urllib.error.URLError) as error:  # refused, reset, timeout
                problem = f"in-app webhook: {type(error).__name__}: {getattr(error, 'reason', error)}"
            else:
                if 200 <= status < 300:
                    return self._message_id(text, message)
                reason = f"in-app webhook HTTP {status}: {text.decode(errors='replace')[:500]}"
                if status in (401, 403):
                    raise ChannelUnavailableError(f"in-app webhook HTTP {status}: credentials refused")
                if status != 429 and status < 500:
                    raise PermanentSendError(reason)
                problem = reason
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                log.info("%s; retry %d/%d in %.2fs", problem, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise TransientSendError(f"{problem} (after {self.max_retries} retries)")

    @staticmethod
    def _message_id(text: bytes, message: OutboundMessage) -> str:
        """The service's id when it answers JSON with one, else the idempotency key (what it deduplicates on)."""
        try:
            answer = json.loads(text or b"null")
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            for name in ("message_id", "messageId", "id"):
                if answer.get(name):
                    return str(answer[name])
        return message.idempotency_key
