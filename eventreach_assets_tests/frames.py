"""Small hand-made frames for unit tests: a profile row with sensible defaults, overridable; and a
guard that fails on polars' deprecation warnings."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import polars as pl

from eventreach_assets.domain.extract import to_candidate_model
from eventreach_assets.domain.schema import PROFILE_COLUMNS

PROFILE_DEFAULTS: dict[str, Any] = {
    "customer_id": "C000000001",
    "interest_tags": "cloud-computing,devops",
    "event_attendance_history": 2,
    "engagement_score": 0.6,
    "geographic_region": "US",
    "job_role": "engineer",
    "account_status": "active",
    "is_verified": True,
    "fraud_flag": False,
    "marketplace": "US",
    "timezone": "America/New_York",
    "marketing_opt_out": False,
    "email": "c1@example.com",
    "updated_at": datetime(2026, 10, 1),
}

PROFILE_SCHEMA = {
    name: {"VARCHAR": pl.String, "INTEGER": pl.Int32, "DOUBLE": pl.Float64, "BOOLEAN": pl.Boolean,
           "TIMESTAMP": pl.Datetime("us")}[sql]
    for name, sql in PROFILE_COLUMNS.items()
}  # fmt: skip


def profiles(*rows: dict[str, Any]) -> pl.DataFrame:
    """Warehouse-shaped profile rows: each dict overrides PROFILE_DEFAULTS."""
    return pl.DataFrame([{**PROFILE_DEFAULTS, **row} for row in rows], schema=PROFILE_SCHEMA)


def candidates(*rows: dict[str, Any]) -> pl.DataFrame:
    """Candidate-model rows (tags as lists), as the filter chain receives them."""
    return to_candidate_model(profiles(*rows).lazy()).collect()


@contextmanager
def no_deprecation_warnings() -> Iterator[None]:
    """Fail if the block warns of a deprecation. Polars warns while a query runs, from its engine,
    where pytest's filters cannot make it an error (printed, not raised): recorded here instead, so
    a deprecated call fails before a release changes what it means."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [str(warning.message) for warning in caught if issubclass(warning.category, DeprecationWarning)] == []
