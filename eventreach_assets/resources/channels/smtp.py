"""Email through SMTP submission, one connection reused across sends."""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading

from pydantic import Field, PrivateAttr

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    OutboundMessage,
    PermanentSendError,
    TransientSendError,
)
from eventreach_assets.resources.channels.base import EmailChannelResource, EmailWire

log = logging.getLogger(__name__)


def smtp_error(code: int, reply: bytes | str, what: str) -> TransientSendError | PermanentSendError:
    """A refusal as a send error: 5xx permanent, anything else transient."""
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
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _deliver(self, message: OutboundMessage, payload: EmailWire) -> str:
        """The wire bytes go out as they are: DATA adds only dot-stuffing."""
        with self._lock:
            connection = self._open_envelope(message.recipient)
            self._data(connection, payload.data)
        return payload.message_id

    def close(self) -> None:
        with self._lock:
            self._drop()

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

    def _open_envelope(self, recipient: str) -> smtplib.SMTP:
        """A connection whose envelope is accepted; a reused connection the server closed is reopened once."""
        for attempt in range(2):
            reused = self._connection is not None
            if self._connection is None:
                self._connection = self._connect()
            try:
                self._envelope(self._connection, recipient)
                return self._connection
            except smtplib.SMTPServerDisconnected:
                self._drop()  # e.g. the server's idle timeout closed a reused connection
                if not reused or attempt:
                    break
            except (OSError, smtplib.SMTPException) as error:
                self._drop()
                raise TransientSendError(f"SMTP envelope: {type(error).__name__}") from None
        raise TransientSendError("SMTP server closed the connection before DATA")

    def _envelope(self, connection: smtplib.SMTP, recipient: str) -> None:
        """MAIL FROM + RCPT TO; nothing is delivered yet, so a dropped connection here is safe to redo."""
        code, reply = connection.mail(self.sender)
        if code != 250:
            self._reset_after_refusal()
            error = smtp_error(code, reply, "sender refused")
            # The server will take no mail from this sender: the channel is unusable, not this message.
            raise ChannelUnavailableError(str(error)) if isinstance(error, PermanentSendError) else error
        code, reply = connection.rcpt(recipient)
        if code not in (250, 251):
            self._reset_after_refusal()
            raise smtp_error(code, reply, "recipient refused")

    def _data(self, connection: smtplib.SMTP, data: bytes) -> None:
        """DATA; reconnect after `max_messages_per_connection` sends."""
        try:
            connection.data(data)
        except smtplib.SMTPDataError as error:
            self._reset_after_refusal()
            raise smtp_error(error.smtp_code, error.smtp_error, "message refused") from None
        except (OSError, smtplib.SMTPException) as error:
            self._drop()  # the server may or may not have the message: the ledger knows it as failed
            raise TransientSendError(f"SMTP DATA: {type(error).__name__}") from None
        self._sent_on_connection += 1
        if self._sent_on_connection >= self.max_messages_per_connection:
            self._drop()

    def _reset_after_refusal(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()
