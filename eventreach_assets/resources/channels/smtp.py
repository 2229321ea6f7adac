"""Email through SMTP submission, over a pool of reused connections (one per sending thread)."""

from __future__ import annotations

import logging
import re
import smtplib
import ssl

from pydantic import Field, PrivateAttr

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    OutboundMessage,
    PermanentSendError,
    ThrottledSendError,
    TransientSendError,
)
from eventreach_assets.resources.channels.base import EmailChannelResource, EmailWire
from eventreach_assets.resources.channels.pool import SlotPool

log = logging.getLogger(__name__)

THROTTLING_CODES = frozenset({421, 451, 452})
# What relays say when the client sends too fast ("4.7.28 ... unusual rate", "too many messages",
# "rate limit exceeded", "throttled", "slow down"), as opposed to a plain "try again later".
_THROTTLING_TEXT = re.compile(r"\brate\b|rate.?limit|too many|throttl|slow down|\b4\.7\.28\b", re.IGNORECASE)


def smtp_error(code: int, reply: bytes | str, what: str) -> TransientSendError | PermanentSendError:
    """A refusal as a send error: 5xx permanent, 421/451/452 about rate or "too many" throttled, other 4xx transient."""
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    reason = f"SMTP {what} {code}: {text[:300]}"
    if 500 <= code < 600:
        return PermanentSendError(reason)
    if code in THROTTLING_CODES and _THROTTLING_TEXT.search(text):
        return ThrottledSendError(reason)
    return TransientSendError(reason)


class SmtpSession:
    """One slot of the connection pool: a connection (None until needed or after a drop) and its sends."""

    def __init__(self) -> None:
        self.connection: smtplib.SMTP | None = None
        self.sent = 0

    def drop(self) -> None:
        """QUIT (or just close) the connection, if any."""
        connection, self.connection, self.sent = self.connection, None, 0
        if connection is not None:
            try:
                connection.quit()
            except (OSError, smtplib.SMTPException):
                connection.close()


class SmtpEmail(EmailChannelResource):
    """SMTP submission over at most `concurrency` connections, each reused across sends, at a bounded rate.

    A sending thread takes a connection from the pool (the one returned last), opens it on first
    use and reopens it when the server dropped it. Replies 4xx are transient (421/451/452 about the
    rate: throttled, so the channel slows down) and 5xx permanent, for the sender, the recipient
    and the data alike. `close()` (at teardown) QUITs every connection. The password comes from
    `dg.EnvVar("EVENTREACH_SMTP_PASSWORD")` and is never logged.
    """

    host: str
    port: int = 587
    username: str | None = None
    password: str | None = Field(default=None, repr=False, description='dg.EnvVar("EVENTREACH_SMTP_PASSWORD")')
    starttls: bool = True
    use_ssl: bool = Field(default=False, description="Implicit TLS (port 465) instead of STARTTLS.")
    sender: str = Field(description="Envelope sender (MAIL FROM), and From when the message has none.")
    max_messages_per_second: float = Field(default=10.0, ge=0.0, description="0 = unlimited.")
    timeout: float = 30.0
    max_messages_per_connection: int = Field(default=1000, description="Reconnect after this many sends.")

    _pool: SlotPool[SmtpSession] | None = PrivateAttr(default=None)

    def _deliver(self, message: OutboundMessage, payload: EmailWire) -> str:
        """The wire bytes go out as they are: DATA adds only dot-stuffing."""
        with self._sessions().slot() as session:
            connection = self._open_envelope(session, message.recipient)
            self._data(session, connection, payload.data)
        return payload.message_id

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close_all()

    def _sessions(self) -> SlotPool[SmtpSession]:
        pool = self._pool
        if pool is None:
            with self._setup_lock:
                if self._pool is None:
                    self._pool = SlotPool(self.concurrency, SmtpSession, SmtpSession.drop)
                pool = self._pool
        return pool

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
        except smtplib.SMTPConnectError as error:  # the greeting refused us, e.g. "421 too many connections"
            raise smtp_error(error.smtp_code, error.smtp_error, "connection refused") from None
        except (OSError, smtplib.SMTPException) as error:
            raise TransientSendError(f"SMTP connect to {self.host}:{self.port}: {type(error).__name__}") from None
        log.info("SMTP connection to %s:%s opened", self.host, self.port)
        return connection

    def _open_envelope(self, session: SmtpSession, recipient: str) -> smtplib.SMTP:
        """Connect if needed and get the envelope accepted; a reused connection the server closed is reopened once."""
        for attempt in range(2):
            reused = session.connection is not None
            connection = session.connection = session.connection or self._connect()
            try:
                self._envelope(session, connection, recipient)
                return connection
            except smtplib.SMTPServerDisconnected:
                session.drop()  # e.g. the server's idle timeout closed a reused connection
                if not reused or attempt:
                    break
            except (OSError, smtplib.SMTPException) as error:
                session.drop()
                raise TransientSendError(f"SMTP envelope: {type(error).__name__}") from None
        raise TransientSendError("SMTP server closed the connection before DATA")

    def _envelope(self, session: SmtpSession, connection: smtplib.SMTP, recipient: str) -> None:
        """MAIL FROM + RCPT TO; nothing is delivered yet, so a dropped connection here is safe to redo."""
        code, reply = connection.mail(self.sender)
        if code != 250:
            self._after_refusal(session, code)
            error = smtp_error(code, reply, "sender refused")
            # The server will take no mail from this sender: the channel is unusable, not this message.
            raise ChannelUnavailableError(str(error)) if isinstance(error, PermanentSendError) else error
        code, reply = connection.rcpt(recipient)
        if code not in (250, 251):
            self._after_refusal(session, code)
            raise smtp_error(code, reply, "recipient refused")

    def _data(self, session: SmtpSession, connection: smtplib.SMTP, data: bytes) -> None:
        """DATA, and its final reply (anything but 250 means the server did not take the message);
        reconnect after `max_messages_per_connection` sends."""
        try:
            code, reply = connection.data(data)
        except smtplib.SMTPDataError as error:  # DATA itself refused (no 354)
            self._after_refusal(session, error.smtp_code)
            raise smtp_error(error.smtp_code, error.smtp_error, "message refused") from None
        except (OSError, smtplib.SMTPException) as error:
            session.drop()  # the server may or may not have the message: the ledger knows it as failed
            raise TransientSendError(f"SMTP DATA: {type(error).__name__}") from None
        if code != 250:
            self._after_refusal(session, code)
            raise smtp_error(code, reply, "message refused")
        session.sent += 1
        if session.sent >= self.max_messages_per_connection:
            session.drop()

    @staticmethod
    def _after_refusal(session: SmtpSession, code: int) -> None:
        """RSET so the connection can carry the next message; 421 means the server is closing it: drop it."""
        if session.connection is None:
            return
        if code == 421:
            session.drop()
            return
        try:
            session.connection.rset()
        except (OSError, smtplib.SMTPException):
            session.drop()
