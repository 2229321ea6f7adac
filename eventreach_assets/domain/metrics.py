"""The weekly batch's operational metrics as CloudWatch-shaped datums (pure, no Dagster, no I/O).

A metrics frame has one row per datum (METRICS_SCHEMA):

    name        String    metric name, e.g. "EligibleCandidates"
    value       Float64   finite, |value| <= 2**360 (CloudWatch rejects NaN, inf and larger)
    unit        String    a CloudWatch StandardUnit name: Count, Percent, Seconds, None, ...
    dimensions  List(Struct(name: String, value: String))
    timestamp   Datetime(us, UTC)

Dimensions are a *list* of name/value structs rather than one struct column because each
metric has its own dimension set (Filter, Band, Stage come and go): a list maps one to one
onto CloudWatch's `Dimensions=[{"Name", "Value"}]`, needs no all-null struct fields, and
DuckDB/polars can still unnest it (`list.eval`, `UNNEST`). Order is significant only for
readability; CloudWatch identifies a metric by namespace, name and the set of dimensions.

Metrics `batch_metrics_frame` emits (every datum has dimensions Program and Event):

    name                unit     extra dimension   value
    ExtractedRows       Count    -                 warehouse rows the extraction returned
    UniqueCandidates    Count    -                 candidates after validation + dedupe
    QuarantinedRows     Count    -                 rows quarantined with a reason
    EligibleCandidates  Count    -                 candidates surviving the filter chain
    ScoredCandidates    Count    -                 candidates scored
    StoredItems         Count    -                 items written to the candidates table
    ExportedRows        Count    -                 rows in the Parquet export
    RemovedByFilter     Count    Filter=<id>       candidates a filter removed (first filter wins)
    ScoreBandCount      Count    Band=<band>       scored candidates per score band
    DurationSeconds     Seconds  Stage=<stage>     wall time of a stage (asset body)
    FilterPassRate      Percent  -                 EligibleCandidates / UniqueCandidates * 100
    HighScoreRate       Percent  -                 band "high" / all banded candidates * 100

Only the stage counts the caller passes are emitted (the keys of STAGE_COUNT_METRICS); the
two rates are emitted only when their inputs are present and their denominator is positive,
so a missing stage never shows up as a misleading 0 %.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import polars as pl

from eventreach_assets.domain.candidate_items import as_utc

DIMENSION_DTYPE = pl.List(pl.Struct({"name": pl.String(), "value": pl.String()}))
METRICS_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String(),
    "value": pl.Float64(),
    "unit": pl.String(),
    "dimensions": DIMENSION_DTYPE,
    "timestamp": pl.Datetime("us", "UTC"),
}

# CloudWatch StandardUnit values (API reference, MetricDatum.Unit).
CLOUDWATCH_UNITS: frozenset[str] = frozenset(
    {
        "Seconds", "Microseconds", "Milliseconds",
        "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
        "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits",
        "Percent", "Count",
        "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second",
        "Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second",
        "Count/Second", "None",
    }
)  # fmt: skip

# PutMetricData limits (CloudWatch API reference, checked 2026): 1000 datums per request,
# 1 MB per HTTP POST body, 30 dimensions per metric, names up to 255 characters, dimension
# values up to 1024, values within +-2^360 and never NaN/inf.
MAX_DATUMS_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 1_000_000
# What the datums of one request may take by our (query-protocol, i.e. pessimistic) estimate;
# the rest of the 1 MB is headroom for the envelope and for estimate error.
REQUEST_BYTE_BUDGET = 800_000
MAX_DIMENSIONS = 30
MAX_NAME_LENGTH = 255
MAX_DIMENSION_VALUE_LENGTH = 1024
MAX_ABS_VALUE = 2.0**360

# Dimension names every batch datum carries.
PROGRAM_DIMENSION = "Program"
EVENT_DIMENSION = "Event"

# stage_counts key -> metric name.
STAGE_COUNT_METRICS: dict[str, str] = {
    "extracted_rows": "ExtractedRows",
    "unique_candidates": "UniqueCandidates",
    "quarantined_rows": "QuarantinedRows",
    "eligible_candidates": "EligibleCandidates",
    "scored_candidates": "ScoredCandidates",
    "stored_items": "StoredItems",
    "exported_rows": "ExportedRows",
}
REMOVED_BY_FILTER = "RemovedByFilter"
SCORE_BAND_COUNT = "ScoreBandCount"
DURATION_SECONDS = "DurationSeconds"
FILTER_PASS_RATE = "FilterPassRate"
HIGH_SCORE_RATE = "HighScoreRate"
HIGH_BAND = "high"


def _dimensions(program_id: str, event_id: str, **extra: str) -> list[dict[str, str]]:
    dims = [{"name": PROGRAM_DIMENSION, "value": program_id}, {"name": EVENT_DIMENSION, "value": event_id}]
    return dims + [{"name": name, "value": value} for name, value in extra.items()]


def _non_negative(kind: str, values: Mapping[str, float]) -> None:
    bad = {key: value for key, value in values.items() if value is None or not math.isfinite(value) or value < 0}
    if bad:
        raise ValueError(f"{kind} must be finite and non-negative, got {bad}")


def batch_metrics_frame(
    program_id: str,
    event_id: str,
    stage_counts: dict[str, int],
    removed_by_filter: dict[str, int],
    score_bands: dict[str, int],
    durations_s: dict[str, float],
    at: datetime,
    *,
    high_band: str = HIGH_BAND,
) -> pl.DataFrame:
    """The datums of one event's batch (see the module docstring for names and dimensions).

    `stage_counts` keys must be keys of STAGE_COUNT_METRICS (a typo would otherwise vanish
    silently from dashboards); `removed_by_filter` is filter id -> removed, `score_bands`
    band -> candidates, `durations_s` stage (asset name) -> seconds. Naive `at` is UTC.
    """
    unknown = sorted(set(stage_counts) - set(STAGE_COUNT_METRICS))
    if unknown:
        raise ValueError(f"unknown stage_counts keys {unknown}; expected some of {sorted(STAGE_COUNT_METRICS)}")
    for kind, values in (
        ("stage_counts", stage_counts),
        ("removed_by_filter", removed_by_filter),
        ("score_bands", score_bands),
        ("durations_s", durations_s),
    ):
        _non_negative(kind, values)
    rows: list[tuple[str, float, str, list[dict[str, str]]]] = []
    base = _dimensions(program_id, event_id)
    for key, metric in STAGE_COUNT_METRICS.items():
        if key in stage_counts:
            rows.append((metric, float(stage_counts[key]), "Count", base))
    for filter_id, removed in removed_by_filter.items():
        rows.append((REMOVED_BY_FILTER, float(removed), "Count", _dimensions(program_id, event_id, Filter=filter_id)))
    for band, count in score_bands.items():
        rows.append((SCORE_BAND_COUNT, float(count), "Count", _dimensions(program_id, event_id, Band=band)))
    for stage, seconds in durations_s.items():
        rows.append((DURATION_SECONDS, float(seconds), "Seconds", _dimensions(program_id, event_id, Stage=stage)))
    unique, eligible = stage_counts.get("unique_candidates"), stage_counts.get("eligible_candidates")
    if unique and eligible is not None:
        rows.append((FILTER_PASS_RATE, eligible * 100.0 / unique, "Percent", base))
    banded = sum(score_bands.values())
    if banded > 0:
        rows.append((HIGH_SCORE_RATE, score_bands.get(high_band, 0) * 100.0 / banded, "Percent", base))
    timestamp = as_utc(at)
    frame = pl.DataFrame(
        {
            "name": [row[0] for row in rows],
            "value": [row[1] for row in rows],
            "unit": [row[2] for row in rows],
            "dimensions": [row[3] for row in rows],
            "timestamp": [timestamp] * len(rows),
        },
        schema=METRICS_SCHEMA,
    )
    return validate_metrics(frame)


def validate_metrics(metrics: pl.DataFrame) -> pl.DataFrame:
    """The frame in METRICS_SCHEMA, or ValueError naming what CloudWatch would reject.

    Checked here rather than left to the API so the local sink stores only what the AWS
    deployment could publish. A naive `timestamp` column is taken as UTC.
    """
    missing = [name for name in METRICS_SCHEMA if name not in metrics.columns]
    if missing:
        raise ValueError(f"metrics frame lacks columns {missing} (expected {list(METRICS_SCHEMA)})")
    timestamp = pl.col("timestamp")
    ts_dtype = metrics.schema["timestamp"]
    if isinstance(ts_dtype, pl.Datetime):
        timestamp = timestamp.dt.replace_time_zone("UTC") if ts_dtype.time_zone is None else timestamp
    try:
        frame = metrics.select(
            pl.col("name").cast(pl.String),
            pl.col("value").cast(pl.Float64),
            pl.col("unit").cast(pl.String),
            pl.col("dimensions").cast(DIMENSION_DTYPE),
            timestamp.cast(pl.Datetime("us", "UTC")),
        )
    except pl.exceptions.PolarsError as error:
        raise ValueError(f"metrics frame does not fit {METRICS_SCHEMA}: {error}") from error
    problems: list[str] = []
    for index, row in enumerate(frame.iter_rows(named=True)):
        where = f"row {index} ({row['name']!r})"
        name, value, unit, dims = row["name"], row["value"], row["unit"], row["dimensions"]
        if not name or not name.strip() or len(name) > MAX_NAME_LENGTH:
            problems.append(f"{where}: name must be 1..{MAX_NAME_LENGTH} characters")
        if value is None or not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
            problems.append(f"{where}: value {value!r} is not a finite number within +-2^360")
        if unit not in CLOUDWATCH_UNITS:
            problems.append(f"{where}: unit {unit!r} is not a CloudWatch unit")
        if row["timestamp"] is None:
            problems.append(f"{where}: timestamp is null")
        dims = dims or []
        if len(dims) > MAX_DIMENSIONS:
            problems.append(f"{where}: {len(dims)} dimensions, at most {MAX_DIMENSIONS}")
        names = [dim["name"] for dim in dims]
        if len(set(names)) != len(names):
            problems.append(f"{where}: repeated dimension names {names}")
        for dim in dims:
            dim_name, dim_value = dim["name"], dim["value"]
            if not dim_name or not dim_name.strip() or len(dim_name) > MAX_NAME_LENGTH:
                problems.append(f"{where}: dimension name {dim_name!r} must be 1..{MAX_NAME_LENGTH} characters")
            if not dim_value or not dim_value.strip() or len(dim_value) > MAX_DIMENSION_VALUE_LENGTH:
                problems.append(
                    f"{where}: dimension {dim_name!r} value must be 1..{MAX_DIMENSION_VALUE_LENGTH} characters"
                )
        if len(problems) >= 20:
            break
    if problems:
        raise ValueError("invalid metrics: " + "; ".join(problems))
    return frame


def cloudwatch_datums(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    """PutMetricData `MetricData` entries for a validated frame, in frame order."""
    return [
        {
            "MetricName": row["name"],
            "Value": row["value"],
            "Unit": row["unit"],
            "Timestamp": row["timestamp"],
            "Dimensions": [{"Name": dim["name"], "Value": dim["value"]} for dim in row["dimensions"] or []],
        }
        for row in metrics.iter_rows(named=True)
    ]


def estimated_datum_bytes(datum: Mapping[str, Any]) -> int:
    """An upper estimate of one datum's share of a PutMetricData body.

    Uses the query protocol's form encoding (`MetricData.member.1000.Dimensions.member.30.Value=...`,
    every value percent-encoded), the most verbose of the wire formats botocore may pick
    (CBOR and JSON are smaller), with 4-digit member indexes throughout.
    """
    prefix = len("MetricData.member.1000.") + 1  # + "&"
    size = prefix + len("MetricName=") + len(quote(str(datum["MetricName"]), safe=""))
    size += prefix + len("Value=") + 32
    size += prefix + len("Unit=") + len(quote(str(datum.get("Unit", "None")), safe=""))
    size += prefix + len("Timestamp=") + 40
    for dim in datum.get("Dimensions", []):
        dim_prefix = prefix + len("Dimensions.member.30.")
        size += dim_prefix + len("Name=") + len(quote(str(dim["Name"]), safe=""))
        size += dim_prefix + len("Value=") + len(quote(str(dim["Value"]), safe=""))
    return size


def plan_batches(
    datums: Iterable[Mapping[str, Any]],
    max_datums: int = MAX_DATUMS_PER_REQUEST,
    max_bytes: int = REQUEST_BYTE_BUDGET,
) -> Iterator[list[Mapping[str, Any]]]:
    """Consecutive batches of at most `max_datums` datums and `max_bytes` estimated bytes."""
    if max_datums < 1 or max_bytes < 1:
        raise ValueError("batch limits must be positive")
    batch: list[Mapping[str, Any]] = []
    batch_bytes = 0
    for datum in datums:
        size = estimated_datum_bytes(datum)
        if size > max_bytes:
            raise ValueError(f"datum {datum['MetricName']!r} alone exceeds the request budget ({size} bytes)")
        if batch and (len(batch) >= max_datums or batch_bytes + size > max_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(datum)
        batch_bytes += size
    if batch:
        yield batch
