"""The metrics sink interface: every sink validates against CloudWatch's rules first."""

from __future__ import annotations

import abc

import dagster as dg
import polars as pl

from eventreach_assets.domain.metrics import validate_metrics


class MetricsSinkResource(dg.ConfigurableResource, abc.ABC):
    """Publishes metric datums; `publish` returns the number published."""

    def publish(self, metrics: pl.DataFrame) -> int:
        """Publish every row of `metrics` (domain.metrics.METRICS_SCHEMA); ValueError if invalid.

        Validated here for every sink, so the local deployment stores only what production could publish.
        """
        frame = validate_metrics(metrics)
        if frame.is_empty():
            return 0
        return self._write(frame)

    @abc.abstractmethod
    def _write(self, frame: pl.DataFrame) -> int:
        """Store the validated, non-empty `frame`; how many datums were published."""
