"""Rejected feed and webhook rows are kept with their reason, never dropped."""

from __future__ import annotations

import io

import polars as pl

from eventreach_assets.resources.decision_log import DecisionLogResource

QUARANTINE_STAGE = "feed-quarantine"


def quarantine(decision_log: DecisionLogResource, feed: str, batch: str, rejected: pl.DataFrame) -> str | None:
    """Keep rejected rows with their reason (Parquet next to the decision log); None when there are none."""
    if rejected.height == 0:
        return None
    buffer = io.BytesIO()
    rejected.write_parquet(buffer)
    return decision_log.write_file(QUARANTINE_STAGE, feed, f"{batch}.parquet", buffer.getvalue())
