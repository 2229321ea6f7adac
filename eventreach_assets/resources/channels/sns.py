"""Push notifications through Amazon SNS."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field

from eventreach_assets.domain.delivery import (
    OutboundMessage,
    PermanentSendError,
    ThrottledSendError,
    TransientSendError,
)
from eventreach_assets.resources.channels.aws_errors import aws_call, aws_error_of, channel_client, send_through_aws
from eventreach_assets.resources.channels.base import PushChannelResource, message_document

PUBLISH_BATCH_MAX_ENTRIES = 10  # SNS PublishBatch: entries per call
PUBLISH_BATCH_MAX_BYTES = 262_144  # SNS PublishBatch: all entries' messages and attributes together


def publish_batches(entries: list[tuple[int, dict[str, Any]]]) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Consecutive groups within PublishBatch's limits (an entry over the size limit alone: SNS refuses it)."""
    batch: list[tuple[int, dict[str, Any]]] = []
    size = 0
    for entry in entries:
        entry_size = _publish_size(entry[1])
        if batch and (len(batch) == PUBLISH_BATCH_MAX_ENTRIES or size + entry_size > PUBLISH_BATCH_MAX_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry_size
    if batch:
        yield batch


def _publish_size(request: dict[str, Any]) -> int:
    """Bytes SNS counts towards its size limit: the message and each attribute's name, type and value."""
    attributes = request.get("MessageAttributes", {})
    return len(request["Message"].encode()) + sum(
        len(name.encode()) + len(value["DataType"]) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


def _entry_error(failed: dict[str, Any]) -> BaseException:
    """A PublishBatch entry's failure as the send error a refused Publish would be (SenderFault: permanent)."""
    status = 400 if failed.get("SenderFault") else 500
    return aws_error_of(str(failed.get("Code", "")), str(failed.get("Message", "")), status, "SNS")


def _without_topic(request: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in request.items() if key != "TopicArn"}


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
    publish_batch_size: int = Field(
        default=PUBLISH_BATCH_MAX_ENTRIES,
        ge=1,
        le=PUBLISH_BATCH_MAX_ENTRIES,
        description="Topic publishes per PublishBatch call (1: one Publish each). Endpoint ARNs are always one each.",
    )

    @property
    def batch_size(self) -> int:
        """Messages the send loop hands over per call: a PublishBatch's worth when there is a topic."""
        return self.publish_batch_size if self.topic_arn else 1

    def send_many(self, messages: Sequence[OutboundMessage]) -> list[str | BaseException]:
        """Topic messages in `PublishBatch` calls (up to 10 entries and 256 KiB each), paced per message;
        endpoint ARNs one `Publish` each (SNS has no batch call for them). Per message its MessageId or
        the error it met: an entry SNS failed is classified like a refused Publish (its `SenderFault`
        deciding permanent or transient); an error of the whole call is every entry's."""
        answers: list[str | BaseException] = [PermanentSendError("not sent")] * len(messages)
        topic_entries: list[tuple[int, dict[str, Any]]] = []
        for slot, message in enumerate(messages):
            try:
                if message.recipient.startswith("arn:"):
                    answers[slot] = self.send(message)
                else:
                    topic_entries.append((slot, self.encode(message)))
            except Exception as error:  # the send loop sorts the answers out
                answers[slot] = error
        for batch in publish_batches(topic_entries):
            for (slot, _), answer in zip(batch, self._publish_batch([request for _, request in batch]), strict=True):
                answers[slot] = answer
        return answers

    def _publish_batch(self, requests: list[dict[str, Any]]) -> list[str | BaseException]:
        entries = [{"Id": f"m{index}", **_without_topic(request)} for index, request in enumerate(requests)]
        call = {"TopicArn": self.topic_arn, "PublishBatchRequestEntries": entries}
        try:
            response = self._paced(lambda: aws_call("SNS", lambda: self._client().publish_batch(**call)), len(entries))
        except Exception as error:  # the whole call: every entry met it
            return [error] * len(entries)
        published = {entry["Id"]: str(entry["MessageId"]) for entry in response.get("Successful", [])}
        failed = {entry["Id"]: _entry_error(entry) for entry in response.get("Failed", [])}
        if any(isinstance(error, ThrottledSendError) for error in failed.values()):
            self._pacer().throttled()  # some entries were "too fast": slow down before they are retried
        return [
            published.get(entry["Id"])
            or failed.get(entry["Id"])
            or TransientSendError(f"SNS PublishBatch answered nothing for entry {entry['Id']}")
            for entry in entries
        ]

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
