"""Where the batch's metrics go: CloudWatch on AWS (`cloudwatch.py`), Parquet files locally (`local.py`).

Both sinks take the frame of eventreach_assets/domain/metrics.py (name, value, unit,
dimensions, timestamp), validate it against CloudWatch's rules first (`base.py`, so the local
deployment stores only what production could publish) and return how many datums they
published.
"""

from eventreach_assets.resources.metrics_sink.base import MetricsSinkResource
from eventreach_assets.resources.metrics_sink.cloudwatch import THROTTLING_CODES, CloudWatchMetricsSink
from eventreach_assets.resources.metrics_sink.local import LocalMetricsSink

__all__ = ["THROTTLING_CODES", "CloudWatchMetricsSink", "LocalMetricsSink", "MetricsSinkResource"]
