"""Email through Amazon SES v2, paced to the account's own sending rate."""

from __future__ import annotations

import logging
import re
from email.utils import parseaddr
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from eventreach_assets.domain.delivery import ChannelUnavailableError, OutboundMessage, PermanentSendError
from eventreach_assets.resources.channels.aws_errors import SendError, aws_send_error, channel_client, send_through_aws
from eventreach_assets.resources.channels.base import EmailChannelResource, EmailWire

log = logging.getLogger(__name__)

_SES_TAG = re.compile(r"[^A-Za-z0-9_.-]")
SES_SANDBOX_RATE = 1.0  # messages/s of a sandboxed SES account: the safe guess when GetAccount cannot answer


class SesEmail(EmailChannelResource):
    """Amazon SES v2 `SendEmail` with `Content.Raw`: the whole MIME message, `.ics` attachment included.

    Paced to the account's sending rate, asked once from SES (`GetAccount`: `SendQuota.MaxSendRate`)
    and capped by `max_messages_per_second` when that is set. When GetAccount is refused or fails,
    it paces to `max_messages_per_second`, else to 1/s (a sandboxed account's rate), and says so in
    a warning. Throttling slows the bucket down and is retried (base.py); a used-up daily quota, a
    paused account or an unverified domain is `ChannelUnavailableError`; 5xx transient;
    MessageRejected and invalid addresses permanent.
    """

    region_name: str = "us-east-1"
    endpoint_url: str | None = Field(default=None, description="Only for a stand-in such as moto.")
    configuration_set: str | None = Field(default=None, description="SES configuration set for event publishing.")
    sender: str = Field(description="Verified SES identity; also From when the message has none.")
    max_messages_per_second: float = Field(
        default=0.0, ge=0.0, description="Cap on the account's rate from GetAccount; 0 = the account's rate."
    )
    timeout: float = 30.0

    def _deliver(self, message: OutboundMessage, payload: EmailWire) -> str:
        request = self._request(message, payload.data)
        return send_through_aws("SES", lambda: self._client().send_email(**request), self._send_error)

    def _client(self) -> Any:
        return channel_client("sesv2", self.region_name, self.endpoint_url, self.timeout, self.concurrency)

    def _discover_rate(self) -> float | None:
        """The account's MaxSendRate (capped by `max_messages_per_second`); see the class docstring when unknown."""
        configured = self.max_messages_per_second or None
        try:  # read-only, so botocore may retry it
            account = channel_client("sesv2", self.region_name, self.endpoint_url, self.timeout, 1, 3).get_account()
            allowed = float(account["SendQuota"]["MaxSendRate"])
        except (ClientError, BotoCoreError, KeyError, TypeError, ValueError) as error:
            fallback, source = (configured, "max_messages_per_second") if configured else (SES_SANDBOX_RATE, "sandbox")
            log.warning("SES GetAccount failed (%s): pacing to %s/s (%s)", _describe(error), fallback, source)
            return fallback
        if not allowed > 0:
            log.warning("SES GetAccount answered MaxSendRate %s: pacing to %s/s", allowed, configured or 1.0)
            return configured or SES_SANDBOX_RATE
        if account.get("SendingEnabled") is False:
            log.warning("SES says sending is disabled for this account: every send will be refused")
        rate = min(allowed, configured) if configured else allowed
        log.info("SES account allows %s messages/s; pacing to %s/s", allowed, rate)
        return rate

    def _request(self, message: OutboundMessage, data: bytes) -> dict[str, Any]:
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
        return request

    def _send_error(self, error: ClientError) -> SendError:
        """SES says MessageRejected for an unverified sender too, and "Throttling" for a used-up daily
        quota: both stop the channel (every further send fails the same way), not one message."""
        classified = aws_send_error(error, "SES")
        text = str(error.response.get("Error", {}).get("Message", "")).lower()
        _, sender = parseaddr(self.sender)
        if "daily message quota exceeded" in text or "daily sending quota" in text:
            return ChannelUnavailableError(f"{classified} (the 24-hour sending quota is used up)")
        if isinstance(classified, PermanentSendError) and (
            "authority to send from" in text or (sender and sender.lower() in text and "not verified" in text)
        ):
            return ChannelUnavailableError(str(classified))
        return classified


def _describe(error: Exception) -> str:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code")
        return f"{code} (HTTP {error.response.get('ResponseMetadata', {}).get('HTTPStatusCode')})"
    return type(error).__name__
