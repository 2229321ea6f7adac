"""Email through Amazon SES v2."""

from __future__ import annotations

import re
from email.utils import parseaddr
from typing import Any

from botocore.exceptions import ClientError
from pydantic import Field

from eventreach_assets.domain.delivery import ChannelUnavailableError, OutboundMessage, PermanentSendError
from eventreach_assets.resources.channels.aws_errors import SendError, aws_send_error, channel_client, send_through_aws
from eventreach_assets.resources.channels.base import EmailChannelResource, EmailWire

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

    def _deliver(self, message: OutboundMessage, payload: EmailWire) -> str:
        request = self._request(message, payload.data)
        return send_through_aws("SES", lambda: self._client().send_email(**request), self._send_error)

    def _client(self) -> Any:
        return channel_client("sesv2", self.region_name, self.endpoint_url, self.timeout)

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
        """SES says MessageRejected for an unverified sender too: that stops the channel, not one message."""
        classified = aws_send_error(error, "SES")
        text = str(error.response.get("Error", {}).get("Message", "")).lower()
        _, sender = parseaddr(self.sender)
        if isinstance(classified, PermanentSendError) and (
            "authority to send from" in text or (sender and sender.lower() in text and "not verified" in text)
        ):
            return ChannelUnavailableError(str(classified))
        return classified
