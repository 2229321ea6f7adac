"""Where a failed run is announced: an alert channel the on-call data team watches.

The run-failure sensor builds one `FailureAlert` per failed run and hands it to the
deployment's channel: a JSON-lines file in the local data dir (`local.py`, which also holds
the log-only fallback), an SNS topic (email/SMS/chat subscriptions; `sns.py`) or a chat
webhook (Slack-compatible `{"text": ...}` body; `webhook.py`) in production.
Alerts carry run facts only (job, partition, stage, the error's first line), never customer data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.alerts.base import ERROR_CHARS, AlertChannelResource, FailureAlert, first_line
from eventreach_assets.resources.alerts.local import LocalAlertLog, LoggedAlert
from eventreach_assets.resources.alerts.webhook import WebhookAlert
from eventreach_assets.resources.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from eventreach_assets.resources.alerts.sns import SnsAlert

__all__ = [
    "ERROR_CHARS",
    "AlertChannelResource",
    "FailureAlert",
    "LocalAlertLog",
    "LoggedAlert",
    "SnsAlert",
    "WebhookAlert",
    "first_line",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(__name__, {"SnsAlert": "sns"})
