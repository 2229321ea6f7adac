"""From warehouse rows to the candidate model: validate, quarantine, dedupe.

Nothing is dropped silently: every row that does not become a candidate is returned in the
quarantine frame with a reason code, so "why is customer X missing?" has an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import available_timezones

import polars as pl

from eventreach_assets.domain.candidate_items import KEY_UNSAFE_CHARACTERS
from eventreach_assets.domain.schema import CANDIDATE_SCHEMA

TAGS_PATTERN = r"^[a-z0-9-]+(,[a-z0-9-]+)*$"
KNOWN_TIMEZONES: frozenset[str] = frozenset(available_timezones())

# Reason codes, in the order they are tested (a row gets the first that applies).
NULL_CUSTOMER_ID = "null_customer_id"
INVALID_CUSTOMER_ID = "invalid_customer_id"  # '#' or whitespace: it could not be a key segment
UNPARSEABLE_TAGS = "unparseable_interest_tags"
UNKNOWN_REGION = "unknown_region"
UNKNOWN_TIMEZONE = "unknown_timezone"
ENGAGEMENT_OUT_OF_RANGE = "engagement_score_out_of_range"
ATTENDANCE_OUT_OF_RANGE = "attendance_count_out_of_range"
DUPLICATE_SUPERSEDED = "duplicate_customer_id_superseded"

# Dedupe rule: one row per customer_id; the newest `updated_at` wins, ties broken by the
# higher engagement_score, then the lexicographically smaller interest_tags string, so the
# choice never depends on the order the warehouse returned rows in.
DEDUPE_ORDER = ("updated_at", "engagement_score", "interest_tags")
DEDUPE_DESCENDING = (True, True, False)
NO_TAGS_RANK = 2**32 - 1  # null tags sort after every tags string
NULL_UPDATED_AT = -(2**63)  # a null `updated_at` sorts after every datetime
ROW = "_row"  # a row's place in the extraction, so results keep the warehouse's order
# Profile text columns with few distinct values (regions, roles, statuses, marketplaces, time
# zones). While extracting they are categoricals, 4 bytes a row instead of a 16-byte string view
# (and the text behind it): at 3M profiles ~200 MB less at the batch's memory peak. The candidate
# model keeps them so (they are its categorical columns); the quarantine, the decision log's, gives
# them back as strings.
FEW_VALUES = tuple(name for name, dtype in CANDIDATE_SCHEMA.items() if dtype == pl.Categorical())
# A row whose customer has no other row among the extracted ones (70% of the rows at 3M profiles):
# it is its customer's newest among any of them an event keeps, so the dedupe hashes only the other
# rows' customer ids (`first_of_customer`). Stored in the week's snapshot (`profile_snapshot_rows`,
# once a week); an event's own extraction computes it for its rows (`single_row`).
SINGLE_ROW = "_single_row"
# The candidate column the dedupe does not take from the customer's row as it is: an opt-out on a
# newer quarantined row is honoured (`_results`).
SET_BY_DEDUPE = ("marketing_opt_out",)


@dataclass(frozen=True)
class ExtractResult:
    candidates: pl.DataFrame
    quarantine: pl.DataFrame  # the raw row plus `reason`
    extracted_rows: int
    # From snapshot rows (`dedupe`): each candidate's row number in them, so a stored result can be
    # those numbers instead of a copy of the rows (`candidates_at` rebuilds it).
    snapshot_rows: pl.Series | None = None

    @property
    def quarantine_counts(self) -> dict[str, int]:
        counts = self.quarantine.group_by("reason").len().sort("reason")
        return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))


def invalid_reason(known_regions: list[str], parseable_tags: pl.Series | None = None) -> pl.Expr:
    """Reason code for a row that cannot become a candidate, or null when it is valid.

    `parseable_tags`, when given, are the frame's tag strings that match `TAGS_PATTERN` (see
    `with_reason`): a hash look-up per row instead of the pattern."""
    score = pl.col("engagement_score")
    attendance = pl.col("event_attendance_history")
    tags = pl.col("interest_tags")
    # `implode()`: the Series is one collection to look each row up in (polars deprecates `is_in`
    # with a bare Series of the column's own type as ambiguous).
    tags_parse = tags.str.contains(TAGS_PATTERN) if parseable_tags is None else tags.is_in(parseable_tags.implode())
    return (
        pl.when(pl.col("customer_id").is_null() | (pl.col("customer_id").str.strip_chars() == ""))
        .then(pl.lit(NULL_CUSTOMER_ID))
        .when(pl.col("customer_id").str.contains(f"[{KEY_UNSAFE_CHARACTERS}]"))
        .then(pl.lit(INVALID_CUSTOMER_ID))
        .when(tags.is_not_null() & ~tags_parse)
        .then(pl.lit(UNPARSEABLE_TAGS))
        .when(~pl.col("geographic_region").is_in(known_regions).fill_null(False))
        .then(pl.lit(UNKNOWN_REGION))
        .when(~pl.col("timezone").is_in(sorted(KNOWN_TIMEZONES)).fill_null(False))
        .then(pl.lit(UNKNOWN_TIMEZONE))
        .when(score.is_null() | score.is_nan() | (score < 0) | (score > 1))
        .then(pl.lit(ENGAGEMENT_OUT_OF_RANGE))
        .when(attendance.is_null() | (attendance < 0))
        .then(pl.lit(ATTENDANCE_OUT_OF_RANGE))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def to_candidate_model(valid: pl.LazyFrame) -> pl.LazyFrame:
    """Map warehouse columns onto the candidate model (tags as a list of categoricals, typed flags).

    Each distinct tag string is split once and joined back: profiles share a few thousand tag
    strings (4,099 among 2.9M rows at 3M profiles). Splitting all 2.47M candidates' strings
    made `validate_and_dedupe` take 4.0-4.2 s at 3M, 3.1-3.2 s with the join (the same frames)."""
    tags = pl.col("interest_tags")
    # Typed here, per distinct string, so the candidates' lists need no cast of their own.
    tag_lists = valid.select(tags.unique()).with_columns(
        _tag_list=tags.fill_null("")
        .str.split(",")
        .list.filter(pl.element() != "")
        .cast(CANDIDATE_SCHEMA["interest_tags"])
    )
    return (
        valid.join(tag_lists, on="interest_tags", how="left", nulls_equal=True, maintain_order="left")
        .with_columns(
            pl.col("_tag_list").alias("interest_tags"),
            pl.col("event_attendance_history").cast(pl.Int32),
            pl.col("is_verified").fill_null(False),
            pl.col("fraud_flag").fill_null(False),
            pl.col("marketing_opt_out").fill_null(False),
            pl.col("updated_at").cast(pl.Datetime("us")),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in CANDIDATE_SCHEMA.items()])
    )


def event_match(rows: pl.DataFrame | pl.LazyFrame, topics: list[str]) -> pl.Expr:
    """The event's extraction predicate over `rows` as an expression: exactly the rows
    `extraction_sql` selects (a tag string containing one of the topics, `CONTAINS` being a plain
    substring test, or past attendance above zero; a null on either side matches nothing, as in
    SQL's WHERE).

    The substring tests run once per distinct tag string of `rows` (4,099 among 2.9M snapshot rows
    at 3M profiles), each row then looking its string up: 0.27-0.34 s -> 0.13-0.16 s an event."""
    tags, attendance = pl.col("interest_tags"), pl.col("event_attendance_history")
    matching = (
        rows.lazy()
        .select(tags.unique())
        .filter(pl.any_horizontal([tags.str.contains(topic, literal=True) for topic in topics] or [pl.lit(False)]))
        .collect()
        .to_series()
    )
    return pl.any_horizontal(tags.is_in(matching.implode()).fill_null(False), (attendance > 0).fill_null(False))


def with_reason(raw: pl.DataFrame | pl.LazyFrame, known_regions: list[str]) -> pl.LazyFrame:
    """Every extracted row with its quarantine `reason` and its place in the extraction (`_row`).

    The tags pattern is tested on the distinct tag strings only (a few thousand among millions of
    rows), then looked up per row. The `FEW_VALUES` columns come back as categoricals."""
    frame, tags = raw.lazy().with_columns(pl.col(FEW_VALUES).cast(pl.Categorical)), pl.col("interest_tags")
    parseable = frame.select(tags.unique()).filter(tags.str.contains(TAGS_PATTERN)).collect().to_series()
    return frame.with_columns(reason=invalid_reason(known_regions, parseable)).with_row_index(ROW)


def sorted_newest_first(frame: pl.LazyFrame) -> pl.LazyFrame:
    """`frame` (any columns that include the dedupe keys) newest first by the dedupe rule.

    One sort of four null-free numeric keys (polars sorts those fast; nulls or a fifth key take
    a path ten times slower): the tags string is replaced by its rank among the few distinct tag
    strings, null scores go last through their own key, a null `updated_at` becomes the smallest
    int64 (no datetime a warehouse holds). Customer ids are never sorted."""
    tag_ranks = frame.select(pl.col("interest_tags").unique().drop_nulls().sort()).with_row_index("_tag_rank")
    updated_at, score = (pl.col(name) for name in DEDUPE_ORDER[:2])
    return (
        frame.join(tag_ranks, on="interest_tags", how="left")
        .sort(
            [
                updated_at.cast(pl.Int64).fill_null(NULL_UPDATED_AT),
                score.is_null().cast(pl.UInt8),
                score.fill_null(0.0),
                pl.col("_tag_rank").fill_null(NO_TAGS_RANK),
            ],
            descending=[True, False, True, False],
        )
        .drop("_tag_rank")
    )


def newest_flags(ordered: pl.LazyFrame, selected: pl.Expr | None = None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """`ordered` (newest first, with `SINGLE_ROW`) with `_newest`: the customer's newest valid row;
    and the customers whose newest row of all is quarantined and opts out. With `selected` (an
    event's predicate), only the rows it selects count, the others flagged as neither, so the rows
    need not be gathered first.

    An opt-out must be honoured even when it arrives on a row that is quarantined for some
    other defect (say an unknown timezone): falling back to an older valid row would otherwise
    resurrect a customer who said no. The first row of a customer in newest-first order is
    their newest, found by hashing customer ids, not by sorting them; the first among the valid
    rows only (the ids of other rows masked) is their newest valid row. A filter keeps the
    order, so this works on any subset of a snapshot.
    """
    quarantined = pl.col("reason").is_not_null()
    selected = pl.lit(True) if selected is None else selected
    valid = selected & ~quarantined
    flagged = ordered.with_columns(_newest_of_all=first_of_customer(selected), _newest=first_of_customer(valid))
    opted_out = flagged.filter(pl.col("_newest_of_all") & quarantined & pl.col("marketing_opt_out").fill_null(False))
    return flagged.drop("_newest_of_all"), opted_out.select("customer_id")


def single_row() -> pl.Expr:
    """`SINGLE_ROW`: whether a row is its customer's only one among the frame's rows. By the ids'
    64-bit hashes (0.4 s for 2.9M rows against 1.0 s for the strings): two rows of a customer share
    their hash, so a row marked single is; a collision only sends two customers' rows the hashing way."""
    return pl.col("customer_id").hash().is_unique().alias(SINGLE_ROW)


def first_of_customer(rows: pl.Expr) -> pl.Expr:
    """Whether a row is among `rows` and the first of its customer's there (ids of other rows
    masked). A `SINGLE_ROW` row (its customer's only one) is first wherever it is kept, so only the
    other rows' ids are hashed: at 3M profiles an event's flags 0.8-1.2 s -> 0.3-0.4 s."""
    single = pl.col(SINGLE_ROW)
    return rows & (single | pl.when(rows & ~single).then(pl.col("customer_id")).is_first_distinct())


def dedupe(ordered: pl.DataFrame | pl.LazyFrame, selected: pl.Expr | None = None) -> ExtractResult:
    """One candidate per customer and a quarantine with reasons, from snapshot rows
    (`profile_snapshot_rows`, or any filter of them; `selected`: the rows an event's predicate
    selects, `event_extract`): no sort at all here, only a hash of customer ids.

    The flags are found on the three columns they read and select the wide rows where they are,
    once for the candidates and once for the quarantine: filtering an event's 2.9M rows out of the
    3M snapshot first, then its candidates out of those, moved every column twice (an event's
    `event_extract` 3.0 s, 1.9-2.0 s so; docs/speed.md). Candidates and quarantined rows come back
    in the order they are given (newest first), the same rows `validate_and_dedupe` gives in the
    warehouse's order. Putting them back in the warehouse's order (a sort by `_row`) moved every
    column of 2.5M rows, for an order nothing downstream reads (a warehouse without ORDER BY
    promises none either): at 3M profiles an event took 3.6-4.5 s with it, 2.9-3.6 s without."""
    frame = ordered.lazy()
    # A snapshot written before rows carried the flag has it computed here (for these rows).
    flag = pl.col(SINGLE_ROW) if SINGLE_ROW in frame.collect_schema() else single_row()
    keys = frame.select(
        "customer_id", "reason", "marketing_opt_out", flag, _selected=pl.lit(True) if selected is None else selected
    )
    flagged, opted_out = newest_flags(keys, pl.col("_selected"))
    flags, opted_out = pl.collect_all([flagged.select("_selected", "_newest"), opted_out], engine="in-memory")
    newest = flags["_newest"]
    return _results(frame.filter(newest), frame.filter(flags["_selected"] & ~newest), opted_out, newest.arg_true())


def candidates_at(rows: pl.DataFrame, set_by_dedupe: pl.DataFrame) -> pl.DataFrame:
    """The candidates again from their snapshot rows (`ExtractResult.snapshot_rows` of the snapshot,
    in that order) and their `SET_BY_DEDUPE` columns: how a later run loads an event's stored
    candidates without the week's snapshot rows copied into them."""
    return to_candidate_model(rows.lazy().with_columns(set_by_dedupe.get_columns())).collect(engine="in-memory")


def _results(
    newest: pl.LazyFrame, quarantined: pl.LazyFrame, opted_out: pl.DataFrame, snapshot_rows: pl.Series | None = None
) -> ExtractResult:
    """The candidate model of the customers' newest valid rows, an opt-out on a quarantined newer
    row honoured (`opted_out`: their ids, a few among millions: looked up, not joined); and every
    other row with its reason (valid ones were superseded). Lazy inputs, so each result is made
    in one pass, with no intermediate copy of the rows. Every extracted row is in one of the two,
    so together they count the extraction."""
    opted_out_ids = opted_out["customer_id"].implode()
    candidates, quarantine = pl.collect_all(
        [
            to_candidate_model(
                newest.with_columns(
                    pl.col("marketing_opt_out").fill_null(False) | pl.col("customer_id").is_in(opted_out_ids)
                )
            ),
            quarantined.with_columns(
                pl.col(FEW_VALUES).cast(pl.String), reason=pl.col("reason").fill_null(pl.lit(DUPLICATE_SUPERSEDED))
            ).drop(ROW, SINGLE_ROW, strict=False),
        ],
        engine="in-memory",
    )
    return ExtractResult(
        candidates=candidates,
        quarantine=quarantine,
        extracted_rows=candidates.height + quarantine.height,
        snapshot_rows=snapshot_rows,
    )


def profile_snapshot_rows(raw: pl.DataFrame | pl.LazyFrame, known_regions: list[str]) -> pl.DataFrame:
    """The week's snapshot, all it stores: every extracted row with its quarantine `reason`, its
    place in the extraction (`_row`) and whether it is its customer's only row (`SINGLE_ROW`, so
    each event's dedupe hashes the other rows' ids only), newest first by the dedupe rule (the one
    expensive step), collected in memory (polars' default streaming engine runs this sort two to
    three times slower).

    The validated rows are collected before the sort and `raw` let go, so a caller that passes the
    warehouse's frame on (as to `validate_and_dedupe`) has its text columns replaced by categoricals
    freed before the sort copies every row: at 3M profiles the snapshot run's peak 120-180 MB lower,
    in the same time, the same rows (sorting `with_reason(raw)` in one plan kept the extract alive
    throughout)."""
    validated = with_reason(raw, known_regions).collect(engine="in-memory")
    del raw  # the last reference when the caller passed its frame on
    return sorted_newest_first(validated.lazy().with_columns(single_row())).collect(engine="in-memory")


def event_extract(snapshot: pl.DataFrame | pl.LazyFrame, topics: list[str]) -> ExtractResult:
    """An event's candidates and quarantine from the week's snapshot (`profile_snapshot_rows`): the
    rows the event's own extraction would have selected, deduplicated as that extraction is."""
    return dedupe(snapshot, event_match(snapshot, topics))


def validate_and_dedupe(raw: pl.DataFrame | pl.LazyFrame, known_regions: list[str]) -> ExtractResult:
    """Split extracted rows into one candidate per customer and a quarantine with reasons: the
    rows of `dedupe(profile_snapshot_rows(raw))`, without moving the wide rows.

    Only the dedupe keys, ids, reasons and opt-outs are sorted newest first; the flags they give
    come back in the warehouse's order (a sort of row numbers) and select the rows where they are.
    Sorting every column newest first and back moved every row twice (1M rows: 2.8-3.8 CPU s ->
    2.1-2.4, the same frames). Candidates and quarantined rows keep the warehouse's order (here it
    costs nothing: the flags are put back in that order, not the rows)."""
    frame = with_reason(raw, known_regions).collect(engine="in-memory")  # the extract's columns, not copied
    del raw  # the last reference (callers pass the warehouse's frame itself): its `FEW_VALUES` strings go
    keys = frame.lazy().select(ROW, "customer_id", "reason", "marketing_opt_out", *DEDUPE_ORDER, single_row())
    flagged, opted_out = newest_flags(sorted_newest_first(keys))
    in_order, opted_out = pl.collect_all([flagged.select(ROW, "_newest").sort(ROW), opted_out], engine="in-memory")
    newest = in_order["_newest"]
    return _results(frame.lazy().filter(newest), frame.lazy().filter(~newest), opted_out)


def batch_week_start(now: datetime) -> datetime:
    """Monday 00:00 of `now`'s week: a snapshot taken before it belongs to an earlier batch."""
    return datetime.combine((now - timedelta(days=now.weekday())).date(), time())


def snapshot_unusable(
    as_of: datetime | None, covered_topics: list[str], topics: list[str], now: datetime
) -> str | None:
    """Why an event must not read the stored snapshot (None when it may): none stored, one from an
    earlier batch week, or one whose extraction did not cover all of the event's topics."""
    if as_of is None:
        return "no profile snapshot stored"
    if as_of < batch_week_start(now):
        return f"profile snapshot of {as_of:%Y-%m-%d %H:%M} is older than this batch week"
    missing = sorted(set(topics) - set(covered_topics))
    if missing:
        return f"profile snapshot does not cover topic(s) {', '.join(missing)}"
    return None
