"""Feature expressions shared by the filter chain and the scoring models."""

from __future__ import annotations

import polars as pl

from eventreach_assets.domain.schema import CANDIDATE_TAG


def interest_match(tags: pl.Expr, topics: list[str]) -> pl.Expr:
    """Share of the event's topics that appear in the customer's interest tags (0..1).

    Used by the interest-match filter (>= minMatchScore) and as the `interest_affinity`
    feature of the attendance model, so both agree on what "matches" means.
    """
    unique_topics = sorted(set(topics))
    if not unique_topics:
        return pl.lit(0.0)
    # One membership test per topic (a few) rather than a set intersection per customer's list:
    # the filter's decisions over 2.47M candidates at 3M profiles 1.66 -> 1.57 s (medians of 6).
    # Each topic a candidate's tag (categorical): a list of categoricals compares it by category,
    # against text it compares every tag's text (0.065 s against 0.28 s over those candidates).
    matched = pl.sum_horizontal(
        [tags.list.contains(pl.lit(topic, dtype=CANDIDATE_TAG)) for topic in unique_topics], ignore_nulls=False
    )
    return matched.cast(pl.Float64) / len(unique_topics)


def interest_match_rows(tags: pl.Expr, topics: pl.Expr) -> pl.Expr:
    """`interest_match` when every row has its own topic list (training rows span many events).

    Same definition, so the model's `interest_affinity` means at training time what the
    filter and the scorer mean for one event: |tags ∩ unique(topics)| / |unique(topics)|,
    0.0 when the event has no topics, null when the tags are null.
    """
    unique_topics = topics.list.unique()
    n_topics = unique_topics.list.len().fill_null(0)
    matched = tags.list.set_intersection(unique_topics).list.len().cast(pl.Float64)
    return pl.when(n_topics == 0).then(pl.lit(0.0)).otherwise(matched / n_topics.cast(pl.Float64))


def split_tags(text: pl.Expr) -> pl.Expr:
    """Warehouse comma-separated slugs (interest_tags, topics) → list[str], null → [].

    The same parse the extraction applies to `interest_tags`, for the columns it does not
    touch (an event's `topics`), so a topic and a tag compare equal when their slugs do.
    """
    return text.fill_null("").str.split(",").list.eval(pl.element().filter(pl.element() != ""))
