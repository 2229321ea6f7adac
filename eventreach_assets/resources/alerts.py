"""Where a failed run is announced: an alert channel the on-call data team watches.

The run-failure sensor builds one `FailureAlert` per failed run and hands it to the
deployment's channel: a JSON-lines file in the local data dir, an SNS topic (email/SMS/chat
subscriptions) or a chat webhook (Slack-compatible `{"text": ...}` body) in production.
Alerts carry run facts only (job, partition, stage, the error's first line), never customer data.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import dagster as dg

ERROR_CHARS = 500  # the first line of the error, capped: enough to triage, no stack dump


@dataclass(frozen=True)
class FailureAlert:
    run_id: str
    job_name: str
    partition: str | None
    stage: str | None
    failed_at: datetime
    error: str
    run_url: str | None = None

    @property
    def subject(self) -> str:
        where = f" for {self.partition}" if self.partition else ""
        return f"[EventReach] {self.job_name}{where} failed"

    def text(self) -> str:
        lines = [self.subject, f"run {self.run_id} at {self.failed_at:%Y-%m-%d %H:%M} UTC", f"error: {self.error}"]
        if self.run_url:
            lines.append(self.run_url)
        return "\n".join(lines)

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "failed_at": self.failed_at.isoformat()}


def first_line(message: str | None) -> str:
    """The error's first non-empty line, capped at ERROR_CHARS."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return (lines[0] if lines else "unknown error")[:ERROR_CHARS]


class AlertChannelResource(dg.ConfigurableResource):
    def send(self, alert: FailureAlert) -> str:
        """Deliver the alert; returns where it went (a path, a message id) for the run's tags."""
        raise NotImplementedError


class LocalAlertLog(AlertChannelResource):
    """Appends one JSON line per alert to a file in the local data dir (`make dev` shows the runs)."""

    path: str

    def send(self, alert: FailureAlert) -> str:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:  # one write per line: appends don't interleave
            handle.write(json.dumps(alert.as_record(), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return str(path)


class SnsAlert(AlertChannelResource):
    """Publishes to an SNS topic (its subscriptions fan out to email, SMS, chat)."""

    topic_arn: str
    region_name: str | None = None
    endpoint_url: str | None = None

    def send(self, alert: FailureAlert) -> str:
        client = boto3.client("sns", region_name=self.region_name, endpoint_url=self.endpoint_url)
        response = client.publish(TopicArn=self.topic_arn, Subject=alert.subject[:100], Message=alert.text())
        return str(response["MessageId"])


class WebhookAlert(AlertChannelResource):
    """POSTs `{"text": ...}` (Slack / Teams / Mattermost incoming-webhook format)."""

    url: str
    timeout_seconds: float = 10.0

    def send(self, alert: FailureAlert) -> str:
        request = urllib.request.Request(
            self.url,
            data=json.dumps({"text": alert.text()}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # raises on 4xx/5xx
            return f"webhook {response.status}"


class LoggedAlert(AlertChannelResource):
    """No channel configured: the alert goes to the daemon's log (and the sensor's tick log) only."""

    def send(self, alert: FailureAlert) -> str:
        logging.getLogger("eventreach.alerts").error(alert.text())
        return "log"
