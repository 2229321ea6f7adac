"""Where the batch's metrics go: CloudWatch on AWS, Parquet files locally.

Both sinks take the frame of eventreach_assets/domain/metrics.py (name, value, unit,
dimensions, timestamp), validate it against CloudWatch's rules first (so the local
deployment stores only what production could publish) and return how many datums they
published.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import polars as pl
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import Field

from eventreach_assets.domain.metrics import (
    MAX_DATUMS_PER_REQUEST,
    METRICS_SCHEMA,
    REQUEST_BYTE_BUDGET,
    cloudwatch_datums,
    plan_batches,
    validate_metrics,
)
from eventreach_assets.resources.files import write_parquet_atomically

__all__ = ["CloudWatchMetricsSink", "LocalMetricsSink", "MetricsSinkResource"]

# Error codes CloudWatch (and the AWS SDKs' shared list) use for request-rate throttling.
THROTTLING_CODES = frozenset(
    {"Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded", "TooManyRequestsException"}
)


class MetricsSinkResource(dg.ConfigurableResource):
    """Publishes metric datums; `publish` returns the number published."""

    def publish(self, metrics: pl.DataFrame) -> int:
        """Publish every row of `metrics` (domain.metrics.METRICS_SCHEMA); ValueError if invalid."""
        raise NotImplementedError


class LocalMetricsSink(MetricsSinkResource):
    """Appends each publish as a Parquet file `<base_dir>/dt=<UTC date>/<uuid>.parquet`.

    One new file per publish (and date) instead of rewriting a table: publishes never
    contend, and the directory is a hive dataset DuckDB reads with hive_partitioning=true.
    """

    base_dir: str = Field(description="Directory of the metrics dataset, e.g. $EVENTREACH_HOME/metrics.")

    def publish(self, metrics: pl.DataFrame) -> int:
        frame = validate_metrics(metrics)
        if frame.is_empty():
            return 0
        dated = frame.with_columns(_dt=pl.col("timestamp").dt.date())
        for (day,), part in dated.group_by("_dt", maintain_order=True):
            path = Path(self.base_dir, f"dt={day.isoformat()}", f"{uuid.uuid4().hex}.parquet")
            write_parquet_atomically(part.drop("_dt"), path)
        return frame.height

    def read(self, start: date | None = None, end: date | None = None) -> pl.DataFrame:
        """All datums published with a timestamp date in [start, end] (inclusive), oldest first."""
        files = sorted(Path(self.base_dir).glob("dt=*/*.parquet"))
        days = [(date.fromisoformat(path.parent.name.removeprefix("dt=")), path) for path in files]
        chosen = [str(path) for day, path in days if (start is None or day >= start) and (end is None or day <= end)]
        if not chosen:
            return pl.DataFrame(schema=METRICS_SCHEMA)
        frame = pl.read_parquet(chosen, hive_partitioning=False)
        return frame.select(list(METRICS_SCHEMA)).sort("timestamp", "name", maintain_order=True)


class CloudWatchMetricsSink(MetricsSinkResource):
    """`cloudwatch:PutMetricData` in batches within the API's limits, retrying throttling.

    Batches hold at most 1000 datums and ~800 KB by a pessimistic size estimate (the limit
    is 1 MB per request). Throttled calls are retried twice over: botocore's standard retry
    mode (`sdk_max_attempts`) first, then this resource's own exponential backoff with
    jitter (`throttle_retries`), because a batch run publishing after a burst elsewhere in
    the account should wait rather than lose its metrics.
    """

    namespace: str = Field(default="EventReach", description="CloudWatch namespace of every datum.")
    region_name: str | None = Field(default=None, description="AWS region; None uses the default chain.")
    endpoint_url: str | None = Field(default=None, description="Override of the CloudWatch endpoint (tests).")
    sdk_max_attempts: int = Field(default=3, ge=1, description="botocore attempts per call (standard mode).")
    throttle_retries: int = Field(default=6, ge=0, description="Extra attempts after throttling outlasts botocore.")
    throttle_base_delay_s: float = Field(default=1.0, ge=0, description="First backoff; doubles per retry.")
    throttle_max_delay_s: float = Field(default=20.0, ge=0, description="Backoff cap.")
    max_datums_per_call: int = Field(default=MAX_DATUMS_PER_REQUEST, ge=1, le=MAX_DATUMS_PER_REQUEST)
    max_request_bytes: int = Field(default=REQUEST_BYTE_BUDGET, ge=1, le=REQUEST_BYTE_BUDGET)

    def get_client(self) -> Any:
        """A CloudWatch client (credentials from the default chain: role, env, profile)."""
        config = Config(retries={"mode": "standard", "max_attempts": self.sdk_max_attempts})
        return boto3.session.Session().client(
            "cloudwatch", region_name=self.region_name, endpoint_url=self.endpoint_url, config=config
        )

    def publish(self, metrics: pl.DataFrame) -> int:
        frame = validate_metrics(metrics)
        if frame.is_empty():
            return 0
        client = self.get_client()
        published = 0
        for batch in plan_batches(cloudwatch_datums(frame), self.max_datums_per_call, self.max_request_bytes):
            self._put(client, batch)
            published += len(batch)
        return published

    def _put(self, client: Any, batch: list[Any]) -> None:
        for attempt in range(self.throttle_retries + 1):
            try:
                client.put_metric_data(Namespace=self.namespace, MetricData=batch)
                return
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code not in THROTTLING_CODES or attempt == self.throttle_retries:
                    raise
                delay = min(self.throttle_max_delay_s, self.throttle_base_delay_s * 2**attempt)
                time.sleep(random.uniform(delay / 2, delay))  # jitter spreads concurrent retries
