"""Batch metrics: the pure datum builder, the local Parquet sink and CloudWatch (moto, real HTTP)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3
import duckdb
import polars as pl
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from polars.testing import assert_frame_equal

from eventreach_assets.domain.metrics import (
    MAX_DATUMS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    METRICS_SCHEMA,
    REQUEST_BYTE_BUDGET,
    batch_metrics_frame,
    cloudwatch_datums,
    estimated_datum_bytes,
    plan_batches,
    validate_metrics,
)
from eventreach_assets.resources.metrics_sink import CloudWatchMetricsSink, LocalMetricsSink
from eventreach_assets_tests.stand_ins import REGION

PROGRAM = "event-invitations"
AT = datetime(2026, 11, 23, 2, 7, 30, tzinfo=UTC)
STAGES = {
    "extracted_rows": 2_913_002,
    "unique_candidates": 2_472_685,
    "quarantined_rows": 440_317,
    "eligible_candidates": 98_525,
    "scored_candidates": 98_525,
    "stored_items": 197_050,
}
REMOVED = {"trust": 197_815, "eligibility": 494_537, "interest-match": 0}
BANDS = {"high": 20_000, "medium": 50_000, "low": 28_525}
DURATIONS = {"raw_candidates": 8.7, "filtered_candidates": 3.18}


def batch_frame(event_id: str = "evt-cloud-summit", at: datetime = AT) -> pl.DataFrame:
    return batch_metrics_frame(PROGRAM, event_id, STAGES, REMOVED, BANDS, DURATIONS, at)


def dims(row: dict) -> dict[str, str]:
    return {dim["name"]: dim["value"] for dim in row["dimensions"]}


def synthetic(count: int, at: datetime, *, dimension_value: str | None = None, extra_dims: int = 0) -> pl.DataFrame:
    """`count` distinct metrics (an Index dimension each), value = index."""
    rows = []
    for index in range(count):
        dimensions = [
            {"name": "Program", "value": PROGRAM},
            {"name": "Event", "value": "evt-load"},
            {"name": "Index", "value": str(index)},
        ]
        dimensions += [{"name": f"D{n}", "value": dimension_value or "x"} for n in range(extra_dims)]
        rows.append({"name": "LoadTest", "value": float(index), "unit": "Count", "dimensions": dimensions})
    return pl.DataFrame(rows).with_columns(timestamp=pl.lit(at, dtype=pl.Datetime("us", "UTC")))


# ---- the pure datum builder ------------------------------------------------------------------


def test_batch_metrics_frame_names_units_dimensions():
    frame = batch_frame()
    assert frame.schema == pl.Schema(METRICS_SCHEMA)
    rows = frame.to_dicts()
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
        assert dims(row)["Program"] == PROGRAM and dims(row)["Event"] == "evt-cloud-summit"
        assert row["timestamp"] == AT

    counts = {
        "ExtractedRows": 2_913_002,
        "UniqueCandidates": 2_472_685,
        "QuarantinedRows": 440_317,
        "EligibleCandidates": 98_525,
        "ScoredCandidates": 98_525,
        "StoredItems": 197_050,
    }
    for name, value in counts.items():
        (row,) = by_name[name]
        assert row["value"] == value and row["unit"] == "Count" and set(dims(row)) == {"Program", "Event"}
    assert "ExportedRows" not in by_name  # not passed, so not invented
    assert {dims(row)["Filter"]: row["value"] for row in by_name["RemovedByFilter"]} == REMOVED
    assert {dims(row)["Band"]: row["value"] for row in by_name["ScoreBandCount"]} == BANDS
    assert {dims(row)["Stage"]: row["value"] for row in by_name["DurationSeconds"]} == DURATIONS
    assert {row["unit"] for row in by_name["DurationSeconds"]} == {"Seconds"}
    (pass_rate,) = by_name["FilterPassRate"]
    assert pass_rate["unit"] == "Percent" and math.isclose(pass_rate["value"], 98_525 * 100 / 2_472_685)
    (high,) = by_name["HighScoreRate"]
    assert high["unit"] == "Percent" and math.isclose(high["value"], 20_000 * 100 / 98_525)
    assert frame.height == 6 + 3 + 3 + 2 + 2


def test_batch_metrics_frame_edges():
    naive = batch_metrics_frame(PROGRAM, "e", {"exported_rows": 5}, {}, {}, {}, datetime(2026, 1, 1, 3))
    assert naive.to_dicts() == [
        {
            "name": "ExportedRows",
            "value": 5.0,
            "unit": "Count",
            "dimensions": [{"name": "Program", "value": PROGRAM}, {"name": "Event", "value": "e"}],
            "timestamp": datetime(2026, 1, 1, 3, tzinfo=UTC),
        }
    ]  # no rates without their inputs; naive time is UTC
    empty_run = batch_metrics_frame(PROGRAM, "e", {"unique_candidates": 0, "eligible_candidates": 0}, {}, {}, {}, AT)
    assert "FilterPassRate" not in empty_run["name"].to_list()
    with pytest.raises(ValueError, match=r"unknown stage_counts keys \['exported'\]"):
        batch_metrics_frame(PROGRAM, "e", {"exported": 1}, {}, {}, {}, AT)
    with pytest.raises(ValueError, match="durations_s must be finite and non-negative"):
        batch_metrics_frame(PROGRAM, "e", {}, {}, {}, {"raw_candidates": float("nan")}, AT)
    with pytest.raises(ValueError, match="dimension 'Filter' value must be"):
        batch_metrics_frame(PROGRAM, "e", {}, {"": 3}, {}, {}, AT)


def test_validate_metrics_rejects_what_cloudwatch_would():
    good = batch_frame().head(1)
    with pytest.raises(ValueError, match="unit 'Rows' is not a CloudWatch unit"):
        validate_metrics(good.with_columns(unit=pl.lit("Rows")))
    with pytest.raises(ValueError, match="not a finite number"):
        validate_metrics(good.with_columns(value=pl.lit(float("inf"))))
    with pytest.raises(ValueError, match="31 dimensions, at most 30"):
        validate_metrics(synthetic(1, AT, extra_dims=28))
    with pytest.raises(ValueError, match="lacks columns"):
        validate_metrics(good.drop("unit"))
    repeated = good.with_columns(
        dimensions=pl.lit(
            [{"name": "Event", "value": "a"}, {"name": "Event", "value": "b"}], dtype=METRICS_SCHEMA["dimensions"]
        )
    )
    with pytest.raises(ValueError, match="repeated dimension names"):
        validate_metrics(repeated)


def test_plan_batches_respects_count_and_size():
    small = cloudwatch_datums(synthetic(2_500, AT))
    assert [len(batch) for batch in plan_batches(small)] == [1000, 1000, 500]
    big = cloudwatch_datums(synthetic(100, AT, dimension_value="v" * 1024, extra_dims=27))
    batches = list(plan_batches(big))
    assert len(batches) > 1 and sum(map(len, batches)) == 100
    for batch in batches:
        assert sum(estimated_datum_bytes(datum) for datum in batch) <= REQUEST_BYTE_BUDGET
    assert [datum["Dimensions"][2]["Value"] for batch in batches for datum in batch] == [str(i) for i in range(100)]


# ---- local sink ------------------------------------------------------------------------------


def test_local_sink_round_trip(tmp_path):
    sink = LocalMetricsSink(base_dir=str(tmp_path / "metrics"))
    first = batch_frame("evt-1")
    second = batch_frame("evt-2", at=AT + timedelta(days=7))
    assert sink.publish(first) == first.height
    assert sink.publish(second) == second.height
    assert sink.publish(first.head(0)) == 0
    files = sorted(
        path.relative_to(tmp_path / "metrics").parts[0] for path in (tmp_path / "metrics").rglob("*.parquet")
    )
    assert files == ["dt=2026-11-23"] * 1 + ["dt=2026-11-30"]
    assert not list((tmp_path / "metrics").rglob(".*"))  # no temp files left behind

    everything = sink.read()
    assert everything.height == first.height + second.height
    assert_frame_equal(sink.read(end=date(2026, 11, 23)), first.sort("timestamp", "name", maintain_order=True))
    assert sink.read(start=date(2026, 12, 1)).height == 0

    # The directory is a hive dataset for SQL users too.
    eligible = duckdb.sql(
        f"SELECT dt, value FROM read_parquet('{tmp_path / 'metrics'}/*/*.parquet', hive_partitioning=true) "
        "WHERE name = 'EligibleCandidates' ORDER BY dt"
    ).fetchall()
    assert [value for _, value in eligible] == [98_525.0, 98_525.0]
    with pytest.raises(ValueError, match="not a CloudWatch unit"):
        sink.publish(first.with_columns(unit=pl.lit("rows")))


# ---- CloudWatch over moto --------------------------------------------------------------------


@contextmanager
def client_hooks(hooks: dict[str, Callable[..., Any]]) -> Iterator[None]:
    """While inside, every client `CloudWatchMetricsSink.get_client` returns has `hooks` (event -> handler)
    registered once; they are taken off again after, as the client is shared by the whole process."""
    original = CloudWatchMetricsSink.get_client
    hooked_clients: list[Any] = []

    def hooked(self):
        client = original(self)
        for event, handler in hooks.items():
            client.meta.events.register(event, handler, unique_id=f"{event}-{id(hooks)}")
        hooked_clients.append(client)
        return client

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CloudWatchMetricsSink, "get_client", hooked)
        try:
            yield
        finally:
            for client in hooked_clients:
                for event in hooks:
                    client.meta.events.unregister(event, unique_id=f"{event}-{id(hooks)}")


@pytest.fixture
def calls():
    """Records, per PutMetricData call the sink makes, the datum count and the request body size.

    The size is taken at `before-call`, i.e. before botocore gzips the body (PutMetricData has
    the requestcompression trait): even uncompressed, each request must fit in 1 MB.
    """
    record: dict[str, list[int]] = {"datums": [], "body_bytes": []}

    def count(params, **_):
        record["datums"].append(len(params["MetricData"]))

    def size(params, **_):
        record["body_bytes"].append(len(params["body"] or b""))

    hooks = {
        "provide-client-params.cloudwatch.PutMetricData": count,
        "before-call.cloudwatch.PutMetricData": size,
    }
    with client_hooks(hooks):
        yield record


@pytest.mark.integration
def test_cloudwatch_publishes_2500_datums_in_three_calls(aws_endpoint, calls):
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    sink = CloudWatchMetricsSink(namespace="EventReach/Test", region_name=REGION, endpoint_url=aws_endpoint)
    assert sink.publish(synthetic(2_500, now)) == 2_500
    assert calls["datums"] == [1000, 1000, 500]
    assert max(calls["datums"]) <= MAX_DATUMS_PER_REQUEST
    assert len(calls["body_bytes"]) == 3 and max(calls["body_bytes"]) < MAX_REQUEST_BYTES

    cloudwatch = boto3.client("cloudwatch", endpoint_url=aws_endpoint, region_name=REGION)
    metrics = [
        metric
        for page in cloudwatch.get_paginator("list_metrics").paginate(Namespace="EventReach/Test")
        for metric in page["Metrics"]
    ]
    indexes = sorted(int(next(d["Value"] for d in m["Dimensions"] if d["Name"] == "Index")) for m in metrics)
    assert indexes == list(range(2_500))

    sample = [0, 999, 1000, 1999, 2000, 2499]
    queries = [
        {
            "Id": f"m{index}",
            "MetricStat": {
                "Metric": {
                    "Namespace": "EventReach/Test",
                    "MetricName": "LoadTest",
                    "Dimensions": [
                        {"Name": "Program", "Value": PROGRAM},
                        {"Name": "Event", "Value": "evt-load"},
                        {"Name": "Index", "Value": str(index)},
                    ],
                },
                "Period": 60,
                "Stat": "Sum",
            },
        }
        for index in sample
    ]
    results = cloudwatch.get_metric_data(
        MetricDataQueries=queries, StartTime=now - timedelta(minutes=1), EndTime=now + timedelta(minutes=1)
    )["MetricDataResults"]
    assert {result["Id"]: result["Values"] for result in results} == {f"m{i}": [float(i)] for i in sample}


@pytest.mark.integration
def test_cloudwatch_splits_large_requests_by_size(aws_endpoint, calls):
    now = datetime.now(UTC).replace(microsecond=0)
    sink = CloudWatchMetricsSink(namespace="EventReach/Big", region_name=REGION, endpoint_url=aws_endpoint)
    frame = synthetic(120, now, dimension_value="v" * 1024, extra_dims=27)  # 30 dimensions, ~31 KB each
    assert sink.publish(frame) == 120
    assert len(calls["datums"]) >= 4 and sum(calls["datums"]) == 120
    assert max(calls["body_bytes"]) < MAX_REQUEST_BYTES


@pytest.mark.integration
def test_cloudwatch_batch_metrics_and_throttling_retry(aws_endpoint, calls):
    now = datetime.now(UTC).replace(microsecond=0)
    sink = CloudWatchMetricsSink(
        namespace="EventReach",
        region_name=REGION,
        endpoint_url=aws_endpoint,
        sdk_max_attempts=1,
        throttle_base_delay_s=0.001,
    )
    throttled = {"left": 2}

    def throttle_first_calls(**_):
        if throttled["left"]:
            throttled["left"] -= 1
            error = {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}, "ResponseMetadata": {}}
            return AWSResponse(aws_endpoint, 400, {}, None), error
        return None

    throttling = {"before-call.cloudwatch.PutMetricData": throttle_first_calls}

    frame = batch_frame(at=now)
    with client_hooks(throttling):
        assert sink.publish(frame) == frame.height
    assert throttled["left"] == 0 and calls["datums"] == [frame.height] * 3  # two throttled, one through

    cloudwatch = boto3.client("cloudwatch", endpoint_url=aws_endpoint, region_name=REGION)
    names = {metric["MetricName"] for metric in cloudwatch.list_metrics(Namespace="EventReach")["Metrics"]}
    assert {"EligibleCandidates", "RemovedByFilter", "ScoreBandCount", "FilterPassRate"} <= names
    filters = cloudwatch.list_metrics(
        Namespace="EventReach", MetricName="RemovedByFilter", Dimensions=[{"Name": "Filter", "Value": "trust"}]
    )["Metrics"]
    assert len(filters) == 1

    throttled["left"] = 10  # more throttling than retries: the error surfaces
    with client_hooks(throttling), pytest.raises(ClientError, match="Rate exceeded"):
        sink.model_copy(update={"throttle_retries": 2}).publish(frame)
