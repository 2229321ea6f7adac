""" "Why was customer X (not) invited to event Y?" — answered from the decision log and the store."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.decision_log import DecisionLogResource


@dataclass(frozen=True)
class Explanation:
    customer_id: str
    event_id: str
    verdict: str  # quarantined | rejected | candidate | not extracted
    detail: str

    def __str__(self) -> str:
        return f"{self.customer_id} / {self.event_id}: {self.verdict} — {self.detail}"


def _first(frame: pl.LazyFrame, customer_id: str) -> dict | None:
    rows = frame.filter(pl.col("customer_id") == customer_id).head(1).collect()
    return rows.row(0, named=True) if rows.height else None


def explain(
    decision_log: DecisionLogResource,
    store: CandidateStoreResource,
    program_id: str,
    event_id: str,
    customer_id: str,
) -> Explanation:
    """The latest batch's decision about one customer for one event, with the reason code."""
    items = store.candidates_for_customer(program_id, customer_id).filter(pl.col("event_id") == event_id)
    if items.height:
        channels = ", ".join(sorted(items["channel"].to_list()))
        row = items.row(0, named=True)
        return Explanation(
            customer_id, event_id, "candidate",
            f"stored for {channels} with score {row['score']:.3f} ({row['score_band']}), status {row['status']}",
        )  # fmt: skip
    try:
        rejection = _first(decision_log.read("rejections", event_id), customer_id)
    except FileNotFoundError:
        rejection = None
    if rejection:
        return Explanation(
            customer_id, event_id, "rejected", f"removed by filter {rejection['filter_id']}: {rejection['reason']}"
        )
    try:
        quarantined = _first(decision_log.read("quarantine", event_id), customer_id)
    except FileNotFoundError:
        quarantined = None
    if quarantined:
        return Explanation(customer_id, event_id, "quarantined", f"warehouse row quarantined: {quarantined['reason']}")
    return Explanation(
        customer_id, event_id, "not extracted",
        "no warehouse row matched the event's topics (no shared interest tag and no past attendance), "
        "or the batch has not run for this event",
    )  # fmt: skip
