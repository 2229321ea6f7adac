"""What one feed batch did, and the one way a feed batch is ingested.

Every feed but registrations (tracking, attendance, survey, provider feedback) has the same
shape: parse the records, judge them, act on the accepted rows, store them, and hand back the
rejected rows (QUARANTINE_SCHEMA) for the caller to quarantine. Summaries are counts only (no
ids, emails or comments).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from eventreach_assets.domain.feed_records import Validation, records_frame

Records = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class EngagementOutcome:
    """What one feed batch did: `accepted` rows (the store's schema), `rejected` rows
    (QUARANTINE_SCHEMA, malformed lines included), how many rows were new in the store, and other
    counts worth reporting (customers unsubscribed, comments truncated, records left for another
    event's run). `summary()["records"]` counts the rows judged: accepted + rejected."""

    feed: str
    accepted: pl.DataFrame
    rejected: pl.DataFrame
    stored: int
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        """Counts per outcome and per rejection reason (run metadata and logs: no PII)."""
        reasons = dict(self.rejected.group_by("reason").len().sort("reason").iter_rows())
        totals = {
            "records": self.accepted.height + self.rejected.height,
            "accepted": self.accepted.height,
            "rejected": self.rejected.height,
            "stored": self.stored,
        }
        return {**totals, **self.counts, **reasons}


def sorted_rejections(*parts: pl.DataFrame) -> pl.DataFrame:
    """Rejected rows of every stage of a batch, in the order of the feed's files and lines."""
    return pl.concat(parts).sort("source", "line", nulls_last=True, maintain_order=True)


def ingest_records(
    feed: str,
    records: Records,
    record_schema: Mapping[str, pl.DataType],
    *,
    judge: Callable[[pl.DataFrame], Validation],
    store: Callable[[pl.DataFrame], int],
    act: Callable[[pl.DataFrame], dict[str, int]] | None = None,
) -> EngagementOutcome:
    """Parse `records` into `record_schema`, `judge` the rows, `act` on the accepted ones (effects
    that must come before storing, returning counts to report), then `store` them (skipped when
    none was accepted). The outcome's counts are the judge's notes and what `act` reported."""
    rows, malformed = records_frame(records, record_schema)
    result = judge(rows)
    counts = {**result.notes, **(act(result.accepted) if act is not None else {})}
    stored = store(result.accepted) if result.accepted.height else 0
    return EngagementOutcome(
        feed=feed,
        accepted=result.accepted,
        rejected=sorted_rejections(malformed, result.rejected),
        stored=stored,
        counts=counts,
    )
