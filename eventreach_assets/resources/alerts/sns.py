"""Alerts published to an Amazon SNS topic."""

from __future__ import annotations

from eventreach_assets.resources.alerts.base import AlertChannelResource, FailureAlert
from eventreach_assets.resources.aws import aws_client


class SnsAlert(AlertChannelResource):
    """Publishes to an SNS topic (its subscriptions fan out to email, SMS, chat)."""

    topic_arn: str
    region_name: str | None = None
    endpoint_url: str | None = None

    def send(self, alert: FailureAlert) -> str:
        # botocore's defaults: three attempts in all, its own timeouts.
        client = aws_client("sns", region_name=self.region_name, endpoint_url=self.endpoint_url, max_attempts=3)
        response = client.publish(TopicArn=self.topic_arn, Subject=alert.subject[:100], Message=alert.text())
        return str(response["MessageId"])
