"""Feature expressions shared by the filter chain and the scoring models."""

from __future__ import annotations

import polars as pl


def interest_match(tags: pl.Expr, topics: list[str]) -> pl.Expr:
    """Share of the event's topics that appear in the customer's interest tags (0..1).

    Used by the interest-match filter (>= minMatchScore) and as the `interest_affinity`
    feature of the attendance model, so both agree on what "matches" means.
    """
    if not topics:
        return pl.lit(0.0)
    return tags.list.set_intersection(pl.lit(sorted(set(topics)))).list.len().cast(pl.Float64) / len(set(topics))
