"""Push notifications through Amazon SNS."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field

from eventreach_assets.domain.delivery import OutboundMessage, PermanentSendError
from eventreach_assets.resources.channels.aws_errors import channel_client, send_through_aws
from eventreach_assets.resources.channels.base import PushChannelResource, message_document


def sns_platform_message(message: OutboundMessage) -> str:
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
    idempotency key as deduplication id. The boto3 client is shared by the sending threads (it is
    thread-safe; its pool holds a connection per thread); "Throttled" answers slow the channel's
    bucket down and are retried (base.py), and `max_messages_per_second` (0 = unlimited) caps the rate.
    """

    region_name: str = "us-east-1"
    endpoint_url: str | None = Field(default=None, description="Only for a stand-in such as moto.")
    topic_arn: str | None = Field(default=None, description="Topic for recipients that are not endpoint ARNs.")
    platform_endpoint_attribute: str = Field(
        default="recipient", description="Message attribute carrying the recipient on topic publishes."
    )
    timeout: float = 30.0

    def encode(self, message: OutboundMessage) -> dict[str, Any]:
        """The `Publish` request: to the endpoint ARN, else to the topic (PermanentSendError without one)."""
        if message.recipient.startswith("arn:"):
            return {
                "TargetArn": message.recipient,
                "Message": sns_platform_message(message),
                "MessageStructure": "json",
            }
        if not self.topic_arn:
            raise PermanentSendError(f"push recipient {message.recipient!r} is no endpoint ARN and no topic is set")
        attributes = {
            self.platform_endpoint_attribute: message.recipient,
            "campaign_id": message.campaign_id,
            "kind": str(message.key.kind),
        }
        request: dict[str, Any] = {
            "TopicArn": self.topic_arn,
            "Message": json.dumps(message_document(message), default=str),
            "MessageAttributes": {
                name: {"DataType": "String", "StringValue": value}
                for name, value in attributes.items()
                if value  # SNS refuses empty attribute values
            },
        }
        if self.topic_arn.endswith(".fifo"):
            request["MessageGroupId"] = message.key.customer_id
            request["MessageDeduplicationId"] = hashlib.sha256(message.idempotency_key.encode()).hexdigest()
        return request

    def _deliver(self, message: OutboundMessage, payload: dict[str, Any]) -> str:
        return send_through_aws("SNS", lambda: self._client().publish(**payload))

    def _client(self) -> Any:
        return channel_client("sns", self.region_name, self.endpoint_url, self.timeout, self.concurrency)
