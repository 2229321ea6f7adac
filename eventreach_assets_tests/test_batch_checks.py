"""Batch checks on frames, invoked directly (the weekly batch's tests run them through Dagster)."""

from __future__ import annotations

import polars as pl
import pytest

from eventreach_assets.checks.batch_checks import raw_candidates_unique_customer


def test_unique_customers_pass_and_duplicates_or_null_ids_fail_naming_them() -> None:
    unique = raw_candidates_unique_customer(pl.DataFrame({"customer_id": ["c1", "c2", "c3"]}))
    assert unique.passed and unique.metadata["duplicated_customers"].value == 0

    repeated = raw_candidates_unique_customer(pl.DataFrame({"customer_id": ["c1", "c2", "c1", "c3", "c2", "c1"]}))
    assert not repeated.passed
    assert repeated.metadata["duplicated_customers"].value == 2
    assert sorted(repeated.metadata["sample"].value.split(", ")) == ["c1", "c2"]

    null_id = raw_candidates_unique_customer(pl.DataFrame({"customer_id": ["c1", None, "c2"]}))
    assert not null_id.passed and null_id.metadata["null_customer_ids"].value == 1
    assert null_id.metadata["duplicated_customers"].value == 0


def test_ids_whose_hashes_collide_are_compared_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check counts hashes first; hashes that meet must not make distinct ids duplicates."""
    monkeypatch.setattr(pl.Series, "hash", lambda self, *_: pl.Series(self.name, [7] * self.len(), pl.UInt64))
    distinct = raw_candidates_unique_customer(pl.DataFrame({"customer_id": ["c1", "c2", "c3"]}))
    assert distinct.passed and distinct.metadata["duplicated_customers"].value == 0
    repeated = raw_candidates_unique_customer(pl.DataFrame({"customer_id": ["c1", "c2", "c1"]}))
    assert not repeated.passed and repeated.metadata["sample"].value == "c1"
