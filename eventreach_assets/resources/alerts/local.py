"""Alerts that stay on this machine: a JSON-lines file, or only the log."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from eventreach_assets.resources.alerts.base import AlertChannelResource, FailureAlert


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


class LoggedAlert(AlertChannelResource):
    """No channel configured: the alert goes to the daemon's log (and the sensor's tick log) only."""

    def send(self, alert: FailureAlert) -> str:
        logging.getLogger("eventreach.alerts").error(alert.text())
        return "log"
