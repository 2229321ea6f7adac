"""A failed run's alert, and the interface of the channel that announces it."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

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


class AlertChannelResource(dg.ConfigurableResource, abc.ABC):
    """Where the run-failure sensor sends a `FailureAlert` (the alert already holds run facts only)."""

    @abc.abstractmethod
    def send(self, alert: FailureAlert) -> str:
        """Deliver the alert; returns where it went (a path, a message id) for the run's tags."""
