"""Failed-run alerts reach each channel: a local file, SNS (moto over HTTP), a chat webhook (loopback)."""

from __future__ import annotations

import json
import urllib.error
from datetime import datetime
from pathlib import Path

import boto3
import pytest

from eventreach_assets.resources.alerts import FailureAlert, LocalAlertLog, SnsAlert, WebhookAlert, first_line
from eventreach_assets_tests.stand_ins import webhook_receiver

ALERT = FailureAlert(
    run_id="run-1", job_name="weekly_batch", partition="evt-a", stage="weekly-batch",
    failed_at=datetime(2026, 11, 23, 2, 5), error="raw_candidates: the warehouse has no events table",
)  # fmt: skip


def test_first_line_keeps_the_cause_and_caps_it():
    assert first_line("\n  boom: bad thing\nTraceback ...") == "boom: bad thing"
    assert first_line(None) == "unknown error"
    assert len(first_line("x" * 5_000)) == 500


def test_local_alert_log_appends_one_line_per_alert(tmp_path: Path):
    channel = LocalAlertLog(path=str(tmp_path / "alerts.jsonl"))
    channel.send(ALERT)
    channel.send(ALERT)
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["job_name"] == "weekly_batch" and lines[0]["failed_at"].startswith("2026-11-23")


def test_sns_alert_reaches_a_subscriber(aws_endpoint: str):
    region = "us-east-1"
    sns = boto3.client("sns", region_name=region, endpoint_url=aws_endpoint)
    sqs = boto3.client("sqs", region_name=region, endpoint_url=aws_endpoint)
    topic = sns.create_topic(Name="eventreach-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="on-call")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    message_id = SnsAlert(topic_arn=topic, region_name=region, endpoint_url=aws_endpoint).send(ALERT)
    received = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
    body = json.loads(received[0]["Body"])
    assert body["MessageId"] == message_id
    assert body["Subject"] == "[EventReach] weekly_batch for evt-a failed"
    assert "no events table" in body["Message"]


def test_webhook_alert_posts_slack_style_text_and_fails_loudly():
    with webhook_receiver([(500, "down")]) as receiver:
        channel = WebhookAlert(url=receiver.url)
        with pytest.raises(urllib.error.HTTPError):
            channel.send(ALERT)  # a broken channel fails the sensor tick: visible in the UI
        assert channel.send(ALERT) == "webhook 200"
        _, headers, body = receiver.requests[-1]
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["text"].startswith("[EventReach] weekly_batch for evt-a failed")
