"""Alerts POSTed to a chat's incoming webhook."""

from __future__ import annotations

import json
import urllib.request

from eventreach_assets.resources.alerts.base import AlertChannelResource, FailureAlert


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
