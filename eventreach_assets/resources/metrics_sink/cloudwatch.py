"""Metrics published to Amazon CloudWatch."""

from __future__ import annotations

import random
import time
from typing import Any

import polars as pl
from botocore.exceptions import ClientError
from pydantic import Field

from eventreach_assets.domain.metrics import (
    MAX_DATUMS_PER_REQUEST,
    REQUEST_BYTE_BUDGET,
    cloudwatch_datums,
    plan_batches,
)
from eventreach_assets.resources.aws import aws_client
from eventreach_assets.resources.metrics_sink.base import MetricsSinkResource

# Error codes CloudWatch (and the AWS SDKs' shared list) use for request-rate throttling.
THROTTLING_CODES = frozenset(
    {"Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded", "TooManyRequestsException"}
)


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
    sdk_max_attempts: int = Field(
        default=3, ge=1, description="botocore's retries per call after the first (its `max_attempts`, standard mode)."
    )
    throttle_retries: int = Field(default=6, ge=0, description="Extra attempts after throttling outlasts botocore.")
    throttle_base_delay_s: float = Field(default=1.0, ge=0, description="First backoff; doubles per retry.")
    throttle_max_delay_s: float = Field(default=20.0, ge=0, description="Backoff cap.")
    max_datums_per_call: int = Field(default=MAX_DATUMS_PER_REQUEST, ge=1, le=MAX_DATUMS_PER_REQUEST)
    max_request_bytes: int = Field(default=REQUEST_BYTE_BUDGET, ge=1, le=REQUEST_BYTE_BUDGET)

    def get_client(self) -> Any:
        """A CloudWatch client (credentials from the default chain: role, env, profile)."""
        return aws_client(
            "cloudwatch",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            max_attempts=self.sdk_max_attempts + 1,
        )

    def _write(self, frame: pl.DataFrame) -> int:
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
