import random
import weakref
from collections.abc import Callable
from datetime import datetime
from itertools import product

import duckdb
import polars as pl

from eventreach_assets.domain import extract
from eventreach_assets.domain.events import normalize_events
from eventreach_assets.domain.extract import validate_and_dedupe
from eventreach_assets.domain.schema import CANDIDATE_SCHEMA
from eventreach_assets.resources.warehouse import DuckDBWarehouse
from eventreach_assets_tests.frames import no_deprecation_warnings, profiles

REGIONS = ["US", "UK", "DE", "FR", "JP", "IN", "BR", "AU"]


def test_valid_rows_become_candidates_with_tags_as_lists():
    result = validate_and_dedupe(profiles({"customer_id": "A"}, {"customer_id": "B", "interest_tags": None}), REGIONS)
    assert result.candidates["customer_id"].to_list() == ["A", "B"]
    assert result.candidates["interest_tags"].to_list() == [["cloud-computing", "devops"], []]
    assert result.quarantine.height == 0
    assert result.extracted_rows == 2


def test_the_candidate_model_splits_each_rows_own_tags_in_row_order():
    """Tag strings are split once per distinct string and joined back: every row must still get
    its own list, in its own place (the training path also sees unvalidated strings)."""
    tags = ["b,a", None, "", "x,,y", "b,a", "devops", None]
    raw = profiles(*({"customer_id": f"C{i}", "interest_tags": t} for i, t in enumerate(tags)))
    model = extract.to_candidate_model(raw.lazy()).collect()
    assert model["customer_id"].to_list() == [f"C{i}" for i in range(len(tags))]
    assert model["interest_tags"].to_list() == [["b", "a"], [], [], ["x", "y"], ["b", "a"], ["devops"], []]


def test_each_bad_row_is_quarantined_with_its_reason_and_good_rows_flow():
    raw = profiles(
        {"customer_id": "GOOD"},
        {"customer_id": None},
        {"customer_id": "  "},
        {"customer_id": "A#PROGRAM#B"},
        {"customer_id": "C 1"},
        {"customer_id": "C2\t"},
        {"customer_id": "T", "interest_tags": "{{cloud"},
        {"customer_id": "T2", "interest_tags": "cloud computing!!"},
        {"customer_id": "R", "geographic_region": "XX"},
        {"customer_id": "Z", "timezone": "Mars/Olympus"},
        {"customer_id": "E", "engagement_score": 1.5},
        {"customer_id": "E2", "engagement_score": float("nan")},
        {"customer_id": "H", "event_attendance_history": -1},
    )
    result = validate_and_dedupe(raw, REGIONS)
    assert result.candidates["customer_id"].to_list() == ["GOOD"]
    reasons = dict(zip(result.quarantine["customer_id"].fill_null("<null>"), result.quarantine["reason"], strict=True))
    assert reasons == {
        "<null>": extract.NULL_CUSTOMER_ID,
        "  ": extract.NULL_CUSTOMER_ID,
        "A#PROGRAM#B": extract.INVALID_CUSTOMER_ID,
        "C 1": extract.INVALID_CUSTOMER_ID,
        "C2\t": extract.INVALID_CUSTOMER_ID,
        "T": extract.UNPARSEABLE_TAGS,
        "T2": extract.UNPARSEABLE_TAGS,
        "R": extract.UNKNOWN_REGION,
        "Z": extract.UNKNOWN_TIMEZONE,
        "E": extract.ENGAGEMENT_OUT_OF_RANGE,
        "E2": extract.ENGAGEMENT_OUT_OF_RANGE,
        "H": extract.ATTENDANCE_OUT_OF_RANGE,
    }
    assert sum(result.quarantine_counts.values()) + result.candidates.height == result.extracted_rows


def test_dedupe_keeps_newest_row_and_quarantines_the_superseded_one():
    raw = profiles(
        {"customer_id": "A", "updated_at": datetime(2026, 1, 1), "engagement_score": 0.1},
        {"customer_id": "A", "updated_at": datetime(2026, 3, 1), "engagement_score": 0.2},
        {"customer_id": "A", "updated_at": datetime(2026, 2, 1), "engagement_score": 0.3},
    )
    result = validate_and_dedupe(raw, REGIONS)
    assert result.candidates["engagement_score"].to_list() == [0.2]
    assert result.quarantine["reason"].to_list() == [extract.DUPLICATE_SUPERSEDED] * 2


def test_dedupe_ties_do_not_depend_on_row_order():
    rows = [
        {"customer_id": "A", "engagement_score": 0.4, "interest_tags": "devops"},
        {"customer_id": "A", "engagement_score": 0.9, "interest_tags": "security"},
        {"customer_id": "A", "engagement_score": 0.9, "interest_tags": "devops"},
    ]
    forward = validate_and_dedupe(profiles(*rows), REGIONS).candidates
    backward = validate_and_dedupe(profiles(*reversed(rows)), REGIONS).candidates
    assert forward.equals(backward)
    assert forward["interest_tags"].to_list() == [["devops"]]


def test_a_bad_duplicate_does_not_shadow_a_good_row():
    raw = profiles(
        {"customer_id": "A", "updated_at": datetime(2026, 5, 1), "timezone": "Mars/Olympus"},
        {"customer_id": "A", "updated_at": datetime(2026, 1, 1)},
    )
    result = validate_and_dedupe(raw, REGIONS)
    assert result.candidates.height == 1
    assert result.candidates["timezone"].to_list() == ["America/New_York"]
    assert result.quarantine["reason"].to_list() == [extract.UNKNOWN_TIMEZONE]


def test_empty_extract():
    result = validate_and_dedupe(profiles({"customer_id": "A"}).clear(), REGIONS)
    assert result.candidates.height == 0
    assert result.quarantine.height == 0
    assert result.candidates.schema == pl.Schema(CANDIDATE_SCHEMA)


def test_an_opt_out_on_a_quarantined_newer_row_is_still_honoured():
    raw = profiles(
        {"customer_id": "A", "updated_at": datetime(2026, 5, 1), "timezone": "Mars/Olympus", "marketing_opt_out": True},
        {"customer_id": "A", "updated_at": datetime(2026, 1, 1), "marketing_opt_out": False},
        {"customer_id": "B", "updated_at": datetime(2026, 1, 1), "timezone": "Mars/Olympus", "marketing_opt_out": True},
        {"customer_id": "B", "updated_at": datetime(2026, 5, 1), "marketing_opt_out": False},
    )
    result = validate_and_dedupe(raw, REGIONS).candidates.sort("customer_id")
    # A's newest word is "no"; B opted back in after the bad row.
    assert result["marketing_opt_out"].to_list() == [True, False]


def sorting_rule(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The dedupe rule written the plain way (what the code did before issue 15): sort each
    customer's rows newest first by string keys, keep the first valid one, honour the opt-out of
    the newest row of all. The reference the fast version must match row for row."""
    order = {"by": ["customer_id", *extract.DEDUPE_ORDER], "descending": [False, *extract.DEDUPE_DESCENDING]}
    frame = raw.with_columns(reason=extract.invalid_reason(REGIONS))
    newest_word = (
        frame.filter(pl.col("customer_id").is_not_null())
        .sort(**order, nulls_last=True)
        .group_by("customer_id", maintain_order=True)
        .agg(_word=pl.col("marketing_opt_out").first().fill_null(False))
    )
    ranked = frame.filter(pl.col("reason").is_null()).sort(**order, nulls_last=True)
    kept = ranked.filter(pl.col("customer_id").is_first_distinct()).join(newest_word, on="customer_id", how="left")
    candidates = extract.to_candidate_model(
        kept.with_columns(pl.col("marketing_opt_out").fill_null(False) | pl.col("_word")).lazy()
    ).collect()
    superseded = ranked.filter(~pl.col("customer_id").is_first_distinct())
    quarantine = pl.concat([frame.filter(pl.col("reason").is_not_null()), superseded.with_columns(reason=pl.lit("x"))])
    return candidates, quarantine.with_columns(reason=pl.col("reason").replace("x", extract.DUPLICATE_SUPERSEDED))


def tricky_profiles() -> pl.DataFrame:
    """Customers with several rows: ties on every dedupe key, nulls, NaN and out-of-range scores,
    bad tags, quarantined newest rows, opt-outs on them; never a full tie. Shuffled."""
    keys = list(  # ties on every key, nulls, NaN and out-of-range scores, bad tags; never a full tie
        product([datetime(2026, 3, 1), datetime(2026, 4, 1), None], [0.5, 0.9, None, float("nan"), float("-inf"), 1.5],
                ["devops", "ai,devops", None, "a", "{{bad"])
    )  # fmt: skip
    pick = random.Random(15)
    rows = [
        {"customer_id": customer, "updated_at": updated_at, "engagement_score": score, "interest_tags": tags,
         "marketing_opt_out": pick.choice([False, True, None]),
         "timezone": pick.choice(["America/New_York", "America/New_York", "Mars/Olympus"]),
         "email": f"{customer}-{n}@example.com"}
        for n, customer in enumerate([f"C{i}" for i in range(60)] + [None, "  "])
        for updated_at, score, tags in pick.sample(keys, pick.randint(1, 9))
    ]  # fmt: skip
    rows += [  # a null score is older than -inf: this customer's newest word is "yes"
        {"customer_id": "N", "updated_at": datetime(2026, 4, 1), "engagement_score": float("-inf"), "email": "n1"},
        {"customer_id": "N", "updated_at": datetime(2026, 4, 1), "engagement_score": None, "marketing_opt_out": True,
         "email": "n2"},
        {"customer_id": "N", "updated_at": datetime(2026, 3, 1), "email": "n3"},
    ]  # fmt: skip
    return profiles(*rows).sample(fraction=1.0, shuffle=True, seed=15)


def test_dedupe_keeps_exactly_what_the_sorting_rule_keeps_on_ties_nulls_and_quarantined_newest_rows():
    raw = tricky_profiles()
    expected_candidates, expected_quarantine = sorting_rule(raw)
    result = validate_and_dedupe(raw, REGIONS)
    assert result.candidates.height == expected_candidates.height > 30
    assert result.candidates.sort("customer_id").equals(expected_candidates.sort("customer_id"))
    by_row = ["email", "updated_at", "engagement_score", "interest_tags"]
    assert result.quarantine.sort(by_row).equals(expected_quarantine.sort(by_row))
    assert result.candidates["marketing_opt_out"].any() and not result.candidates["marketing_opt_out"].all()


def test_the_event_predicate_selects_exactly_the_rows_the_extraction_sql_selects(tmp_path):
    """`event_match` against `extraction_sql` on DuckDB: substrings of longer tags, null tags,
    past attendance 0, negative or null, and a topic nobody has."""
    tags = ["devops", "devops-tools", "cloud-computing,devops", "ai", "a", "machine-learning", "", None, "{{bad"]
    rows = [
        {"customer_id": f"C{n}", "interest_tags": tag, "event_attendance_history": attendance, "email": f"c{n}"}
        for n, (tag, attendance) in enumerate(product(tags, [0, 1, -1, None]))
    ]
    warehouse = DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))
    with duckdb.connect(warehouse.path) as connection:
        frame = profiles(*rows)  # noqa: F841 - read by DuckDB's replacement scan
        connection.execute("CREATE TABLE customer_profiles AS SELECT * FROM frame")
    raw = profiles(*rows)
    for topics in (["devops"], ["ai", "cloud"], ["learning"], ["nobody-has-this"], ["a", "devops"]):
        expected = sorted(warehouse.extract_candidates(topics)["email"].to_list())
        assert sorted(raw.filter(extract.event_match(raw, topics))["email"].to_list()) == expected, topics
    assert len(expected) < raw.height  # rows left out, and rows selected
    assert expected


def same_rows(left: extract.ExtractResult, right: extract.ExtractResult) -> bool:
    """The same candidates and quarantined rows, each with every value, whatever their order
    (`dedupe` keeps the snapshot's newest-first order, `validate_and_dedupe` the warehouse's)."""
    quarantine_order = left.quarantine.columns
    return (
        left.candidates.sort("customer_id").equals(right.candidates.sort("customer_id"))
        and left.quarantine.sort(quarantine_order, nulls_last=True).equals(
            right.quarantine.sort(quarantine_order, nulls_last=True)
        )
        and left.extracted_rows == right.extracted_rows
    )


def test_validate_and_dedupe_is_the_dedupe_of_the_snapshot_rows():
    raw = profiles(
        {"customer_id": "A", "updated_at": datetime(2026, 1, 1), "email": "old"},
        {"customer_id": "A", "updated_at": datetime(2026, 3, 1), "email": "new", "timezone": "Mars/Olympus"},
        {"customer_id": "B", "email": "b"},
    )
    composed = extract.dedupe(extract.profile_snapshot_rows(raw, REGIONS))
    direct = validate_and_dedupe(raw, REGIONS)
    assert same_rows(composed, direct)
    assert direct.candidates["email"].to_list() == ["old", "b"]  # the warehouse's order
    assert composed.candidates["email"].to_list() == ["b", "old"]  # the snapshot's: newest first, not sorted back


def test_validate_and_dedupe_sorting_only_the_keys_equals_the_wide_snapshot_path_row_for_row():
    """`validate_and_dedupe` sorts the keys alone and flags the rows where they are; `dedupe` of
    the snapshot's rows (`profile_snapshot_rows`) moves whole rows: the same frames, in the same order."""
    raw = tricky_profiles()
    wide = extract.dedupe(extract.profile_snapshot_rows(raw, REGIONS))
    narrow = validate_and_dedupe(raw, REGIONS)
    assert same_rows(narrow, wide)
    assert narrow.extracted_rows == wide.extracted_rows == raw.height
    assert set(narrow.quarantine["reason"]) > {extract.DUPLICATE_SUPERSEDED, extract.UNKNOWN_TIMEZONE}
    assert narrow.candidates["marketing_opt_out"].any() and not narrow.candidates["marketing_opt_out"].all()
    # And an event read from the snapshot gives the rows of the event's own extraction.
    snapshot = extract.profile_snapshot_rows(raw, REGIONS)
    for topics in (["devops"], ["ai", "a"]):
        own = validate_and_dedupe(raw.filter(extract.event_match(raw, topics)), REGIONS)
        shared = extract.event_extract(snapshot, topics)
        assert same_rows(shared, own), topics
        assert 0 < own.candidates.height <= narrow.candidates.height and own.extracted_rows == shared.extracted_rows


def test_an_event_read_from_the_snapshot_keeps_an_older_row_that_matches_the_event():
    """Today's semantics: the dedupe runs on the rows the event's extraction selects, so a
    customer whose newest row no longer matches keeps their older matching row."""
    raw = profiles(
        {"customer_id": "A", "updated_at": datetime(2026, 1, 1), "interest_tags": "devops", "email": "old"},
        {"customer_id": "A", "updated_at": datetime(2026, 3, 1), "interest_tags": "security", "email": "new"},
    ).with_columns(event_attendance_history=pl.lit(0, pl.Int32))
    snapshot = extract.profile_snapshot_rows(raw, REGIONS)
    assert extract.event_extract(snapshot, ["devops"]).candidates["email"].to_list() == ["old"]
    assert extract.event_extract(snapshot, ["security"]).candidates["email"].to_list() == ["new"]
    assert extract.event_extract(snapshot, ["ai"]).candidates.height == 0


def test_an_event_read_from_the_snapshot_honours_only_opt_outs_on_rows_it_selects():
    """The opt-out on a quarantined newer row counts where the event's own extraction would see
    that row: A's newer opt-out row matches only `security`, B's matches `devops` too (and neither has a
    valid row that matches `security`)."""
    raw = profiles(
        {"customer_id": "A", "updated_at": datetime(2026, 1, 1), "interest_tags": "devops"},
        {"customer_id": "A", "updated_at": datetime(2026, 5, 1), "interest_tags": "security",
         "timezone": "Mars/Olympus", "marketing_opt_out": True},
        {"customer_id": "B", "updated_at": datetime(2026, 1, 1), "interest_tags": "devops"},
        {"customer_id": "B", "updated_at": datetime(2026, 5, 1), "interest_tags": "devops,security",
         "timezone": "Mars/Olympus", "marketing_opt_out": True},
    ).with_columns(event_attendance_history=pl.lit(0, pl.Int32))  # fmt: skip
    snapshot = extract.profile_snapshot_rows(raw, REGIONS)
    for topics, opted_out in ((["devops"], {"A": False, "B": True}), (["security"], {})):
        own = validate_and_dedupe(raw.filter(extract.event_match(raw, topics)), REGIONS)
        shared = extract.event_extract(snapshot, topics)
        assert same_rows(shared, own), topics
        assert dict(shared.candidates.select("customer_id", "marketing_opt_out").iter_rows()) == opted_out, topics


def test_an_event_read_from_the_snapshot_is_rebuilt_from_its_row_numbers_and_opt_outs():
    """What a stored event keeps of its candidates (their rows' numbers in the snapshot and the
    column the dedupe sets) rebuilds them exactly, B's opt-out from a newer quarantined row included."""
    raw = pl.concat([tricky_profiles(), profiles(
        {"customer_id": "B", "updated_at": datetime(2026, 1, 1), "interest_tags": "devops"},
        {"customer_id": "B", "updated_at": datetime(2026, 5, 1), "interest_tags": "devops",
         "timezone": "Mars/Olympus", "marketing_opt_out": True},
    ).select(tricky_profiles().columns)], how="vertical_relaxed")  # fmt: skip
    snapshot = extract.profile_snapshot_rows(raw, REGIONS)
    result = extract.event_extract(snapshot, ["devops"])
    assert result.snapshot_rows is not None and result.snapshot_rows.len() == result.candidates.height > 2
    assert not snapshot[result.snapshot_rows].filter(pl.col("customer_id") == "B")["marketing_opt_out"].item()
    rebuilt = extract.candidates_at(snapshot[result.snapshot_rows], result.candidates.select(extract.SET_BY_DEDUPE))
    assert rebuilt.equals(result.candidates)  # values, types and order
    assert rebuilt.filter(pl.col("customer_id") == "B")["marketing_opt_out"].item()
    assert validate_and_dedupe(raw, REGIONS).snapshot_rows is None  # the event's own extraction: rows, not numbers


def test_the_snapshot_path_gives_each_event_what_its_own_extraction_gives(small_warehouse):
    """On the generated warehouse: one snapshot over the union of the events' topics, then each
    event read from it, equals each event extracted, validated and deduplicated on its own."""
    path, summary = small_warehouse
    warehouse = DuckDBWarehouse(path=str(path))
    events = normalize_events(warehouse.events())
    topics_by_event = dict(zip(events["event_id"], events["topics"].to_list(), strict=True))
    chosen = [*summary.upcoming_event_ids, next(iter(topics_by_event))]  # and a past event
    union = sorted({topic for event_id in chosen for topic in topics_by_event[event_id]})
    snapshot = extract.profile_snapshot_rows(warehouse.extract_candidates(union), REGIONS)
    by_row = ["email", "updated_at", "engagement_score", "interest_tags", "customer_id"]
    for event_id in chosen:
        topics = topics_by_event[event_id]
        own = validate_and_dedupe(warehouse.extract_candidates(topics), REGIONS)
        shared = extract.event_extract(snapshot, topics)
        assert shared.extracted_rows == own.extracted_rows < snapshot.height and own.candidates.height > 1000
        assert shared.candidates.sort("customer_id").equals(own.candidates.sort("customer_id")), event_id
        assert shared.quarantine.sort(by_row).equals(own.quarantine.sort(by_row)), event_id
        assert set(own.quarantine["reason"]) > {extract.DUPLICATE_SUPERSEDED}


def test_a_snapshot_serves_an_event_only_from_this_batch_week_and_covering_its_topics():
    monday, now = datetime(2026, 11, 23, 2, 0), datetime(2026, 11, 25, 9, 0)  # read on Wednesday
    assert extract.batch_week_start(now) == datetime(2026, 11, 23)
    assert extract.snapshot_unusable(monday, ["ai", "devops"], ["devops"], now) is None
    assert extract.snapshot_unusable(None, [], ["devops"], now) == "no profile snapshot stored"
    assert extract.snapshot_unusable(datetime(2026, 11, 22, 23, 59), ["devops"], ["devops"], now) == (
        "profile snapshot of 2026-11-22 23:59 is older than this batch week"
    )
    assert extract.snapshot_unusable(monday, ["devops"], ["security", "devops", "ai"], now) == (
        "profile snapshot does not cover topic(s) ai, security"
    )


def test_the_few_valued_columns_are_categoricals_only_inside_the_extraction():
    """Regions, roles, statuses, marketplaces and time zones are categoricals while extracting (the
    batch's memory peak), never outside it: from either path the candidates have the candidate
    model's types and the quarantine the warehouse's, with the same values."""
    raw = tricky_profiles()
    inside = extract.with_reason(raw, REGIONS).collect_schema()
    assert all(inside[name] == pl.Categorical for name in extract.FEW_VALUES)
    snapshot = extract.profile_snapshot_rows(raw, REGIONS)
    for result in (validate_and_dedupe(raw, REGIONS), extract.event_extract(snapshot, ["devops"])):
        assert dict(result.candidates.schema) == CANDIDATE_SCHEMA
        assert dict(result.quarantine.schema) == {**raw.schema, "reason": pl.String()}
        assert result.quarantine.height > 0 and result.candidates.height > 0
        regions = set(raw["geographic_region"])
        assert set(result.candidates["geographic_region"]) <= regions and set(result.quarantine["timezone"]) <= set(
            raw["timezone"]
        )


def test_the_extraction_calls_no_deprecated_polars_api():
    """No deprecated polars call in the extraction (`is_in` with a bare Series, ambiguous since
    polars 2.1, was one): it fails here before a release changes what it means."""
    raw = tricky_profiles()
    with no_deprecation_warnings():
        validate_and_dedupe(raw, REGIONS)
        snapshot = extract.profile_snapshot_rows(raw, REGIONS)
        extract.event_extract(snapshot, ["devops"])


def extract_alive_at_sort(monkeypatch) -> tuple[Callable[[], pl.DataFrame], list[bool]]:
    """A warehouse extract to pass on (no reference kept, as the assets pass it), and whether it was
    still alive each time `sorted_newest_first` ran: the sort copies every row (or every key)."""
    passed_on: list[weakref.ref[pl.DataFrame]] = []
    alive_at_sort: list[bool] = []
    sort = extract.sorted_newest_first

    def watched_sort(frame: pl.LazyFrame) -> pl.LazyFrame:
        alive_at_sort.append(passed_on[0]() is not None)
        return sort(frame)

    def extracted() -> pl.DataFrame:
        frame = tricky_profiles()
        passed_on.append(weakref.ref(frame))
        return frame

    monkeypatch.setattr(extract, "sorted_newest_first", watched_sort)
    return extracted, alive_at_sort


def test_the_snapshot_lets_the_extract_go_before_its_sort_copies_every_row(monkeypatch):
    """Passed its frame on, `profile_snapshot_rows` holds the extract only while validating: the
    sort (which copies every row) runs without it, the snapshot run's memory peak ~120-180 MB
    lower at 3M profiles. The rows and each customer's order are those of sorting the validated
    extract in one plan."""
    expected = extract.sorted_newest_first(extract.with_reason(tricky_profiles(), REGIONS)).collect()  # one plan
    extracted, alive_at_sort = extract_alive_at_sort(monkeypatch)
    snapshot = extract.profile_snapshot_rows(extracted(), REGIONS)
    assert alive_at_sort == [False]
    # The same rows, each customer's in the same order (rows of different customers that tie on
    # every key may come in either order from polars' sort, which is not stable), so the same dedupe.
    assert snapshot.drop(extract.SINGLE_ROW).sort(extract.ROW).equals(expected.sort(extract.ROW))
    assert rows_of_each_customer(snapshot).equals(rows_of_each_customer(expected))
    # A snapshot stored before rows said whether they are their customer's only one dedupes the same.
    assert same_rows(extract.dedupe(snapshot), extract.dedupe(expected))


def test_the_validation_lets_the_extract_go_once_its_few_valued_columns_are_categoricals(monkeypatch):
    """Passed its frame on (as `extract_event` does), `validate_and_dedupe` holds the extract only
    while replacing its few-valued text columns: the dedupe and the candidates are made without
    its strings (one event's peak ~200 MiB lower at 3M profiles). The same result."""
    expected = validate_and_dedupe(tricky_profiles(), REGIONS)
    extracted, alive_at_sort = extract_alive_at_sort(monkeypatch)
    result = validate_and_dedupe(extracted(), REGIONS)  # not inside an assert: pytest would keep the argument
    assert alive_at_sort == [False]
    assert same_rows(result, expected)


def test_a_snapshot_row_says_whether_it_is_its_customers_only_row():
    """`SINGLE_ROW` is what lets an event's dedupe skip hashing most customer ids: true exactly for
    the customers with one row in the snapshot, whatever the row's validity."""
    snapshot = extract.profile_snapshot_rows(tricky_profiles(), REGIONS)
    rows_per_customer = snapshot.group_by("customer_id").len()
    got = snapshot.join(rows_per_customer, on="customer_id").select(extract.SINGLE_ROW, single=pl.col("len") == 1)
    assert got[extract.SINGLE_ROW].equals(got["single"], check_names=False)
    assert got["single"].any() and not got["single"].all()
    assert snapshot.filter(pl.col(extract.SINGLE_ROW) & pl.col("reason").is_not_null()).height > 0


def rows_of_each_customer(frame: pl.DataFrame) -> pl.DataFrame:
    """Each customer's `_row`s in the order the frame holds them."""
    return frame.group_by("customer_id").agg(extract.ROW).sort("customer_id", nulls_last=True)
