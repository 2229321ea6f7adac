"""Where the batch's metrics go: CloudWatch on AWS (`cloudwatch.py`), Parquet files locally (`local.py`).

Both sinks take the frame of eventreach_assets/domain/metrics.py (name, value, unit,
dimensions, timestamp), validate it against CloudWatch's rules first (`base.py`, so the local
deployment stores only what production could publish) and return how many datums they
published.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.lazy_exports import lazy_exports
from eventreach_assets.resources.metrics_sink.base import MetricsSinkResource
from eventreach_assets.resources.metrics_sink.local import LocalMetricsSink

if TYPE_CHECKING:
    from eventreach_assets.resources.metrics_sink.cloudwatch import THROTTLING_CODES, CloudWatchMetricsSink

__all__ = ["THROTTLING_CODES", "CloudWatchMetricsSink", "LocalMetricsSink", "MetricsSinkResource"]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(__name__, {"THROTTLING_CODES": "cloudwatch", "CloudWatchMetricsSink": "cloudwatch"})
