from datetime import datetime, timedelta

import polars as pl
import pytest

from eventreach_assets.assets.filtering import filter_inputs
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.filters import FilterInputs, build_filter_chain, check_program_filters, run_filter_chain
from eventreach_assets.program.config import load_program
from eventreach_assets.resources.ledger import SqliteDeliveryLedger
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.warehouse import DuckDBWarehouse
from eventreach_assets_tests.frames import candidates

AS_OF = datetime(2026, 11, 23, 2, 0)
# 16:00 UTC: 11:00 in New York, 17:00 in Berlin, 01:00 (next day) in Tokyo, 08:00 in Los Angeles.
EVENT = EventContext(
    event_id="evt-cloud-summit",
    name="Cloud Summit",
    topics=["cloud-computing", "devops"],
    start_time_utc=datetime(2026, 12, 1, 16, 0),
    capacity=10_000,
    target_regions=["US", "UK", "DE", "FR"],
)
CHAIN = build_filter_chain(load_program())


def inputs(registered: list[str] = (), invitations: list[tuple[str, datetime]] = (), **event) -> FilterInputs:
    return FilterInputs(
        event=EventContext(**{**EVENT.__dict__, **event}),
        as_of=AS_OF,
        capacity_limit=10_000,
        registrations=pl.LazyFrame({"customer_id": list(registered)}, schema={"customer_id": pl.String}),
        invitations=pl.LazyFrame(
            {"customer_id": [c for c, _ in invitations], "invited_at": [t for _, t in invitations]},
            schema={"customer_id": pl.String, "invited_at": pl.Datetime("us")},
        ),
    )


def outcome_for(row: dict, **kwargs) -> tuple[str | None, str | None]:
    outcome = run_filter_chain(candidates({"customer_id": "X", **row}), CHAIN, inputs(**kwargs))
    if outcome.survivors.height:
        return None, None
    rejected = outcome.rejected.row(0, named=True)
    return rejected["filter_id"], rejected["reason"]


def test_a_good_candidate_survives_every_filter():
    assert outcome_for({}) == (None, None)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"account_status": "suspended"}, ("trust", "account_suspended")),
        ({"account_status": "closed"}, ("trust", "account_closed")),
        ({"is_verified": False}, ("trust", "not_verified")),
        ({"fraud_flag": True}, ("trust", "fraud_flagged")),
        ({"marketing_opt_out": True}, ("eligibility", "opted_out")),
        ({"interest_tags": "devops,security"}, ("interest-match", "interest_match_too_low")),
        ({"interest_tags": ""}, ("interest-match", "interest_match_too_low")),
        ({"geographic_region": "JP", "timezone": "America/New_York"}, ("geographic", "region_not_targeted")),
        ({"geographic_region": "US", "timezone": "Asia/Tokyo"}, ("geographic", "outside_local_hours")),
    ],
)
def test_each_rule_removes_with_its_reason(row, expected):
    assert outcome_for(row) == expected


def test_first_filter_in_order_gets_the_blame():
    assert outcome_for({"account_status": "closed", "marketing_opt_out": True, "interest_tags": ""})[0] == "trust"


def test_already_registered_customers_are_removed():
    assert outcome_for({}, registered=["X"]) == ("eligibility", "already_registered")


def test_full_event_removes_everyone():
    assert outcome_for({}, registered=["A", "B"], capacity=2) == ("eligibility", "event_at_capacity")
    assert outcome_for({}, registered=["A"], capacity=2) == (None, None)


def test_interest_match_threshold_is_inclusive():
    three_topics = ["cloud-computing", "devops", "kubernetes"]
    # 2 of 3 topics = 0.667 < 0.7; 3 of 3 passes.
    assert outcome_for({"interest_tags": "cloud-computing,devops"}, topics=three_topics)[0] == "interest-match"
    assert outcome_for({"interest_tags": "cloud-computing,devops,kubernetes"}, topics=three_topics) == (None, None)


def test_event_target_regions_narrow_the_program_regions():
    assert outcome_for({"geographic_region": "UK", "timezone": "Europe/London"}, target_regions=["US"])[0] == (
        "geographic"
    )
    assert outcome_for({"geographic_region": "UK", "timezone": "Europe/London"}, target_regions=[]) == (None, None)


def test_local_hours_follow_daylight_saving():
    # 06:30 UTC is 07:30 in Berlin in winter (CET) and 08:30 in summer (CEST): both civil.
    # 05:30 UTC is 06:30 in winter (too early) but 07:30 in summer.
    berlin = {"geographic_region": "DE", "timezone": "Europe/Berlin"}
    assert outcome_for(berlin, start_time_utc=datetime(2026, 12, 1, 5, 30))[1] == "outside_local_hours"
    assert outcome_for(berlin, start_time_utc=datetime(2026, 7, 1, 5, 30)) == (None, None)


def test_frequency_cap_counts_only_the_trailing_month():
    two_recent = [("X", AS_OF - timedelta(days=3)), ("X", AS_OF - timedelta(days=20))]
    assert outcome_for({}, invitations=two_recent) == ("frequency-cap", "frequency_cap_reached")
    one_recent_one_old = [("X", AS_OF - timedelta(days=3)), ("X", AS_OF - timedelta(days=45))]
    assert outcome_for({}, invitations=one_recent_one_old) == (None, None)
    other_customer = [("Y", AS_OF - timedelta(days=3)), ("Y", AS_OF - timedelta(days=4))]
    assert outcome_for({}, invitations=other_customer) == (None, None)


def one_removed_by_each_filter() -> tuple[pl.DataFrame, FilterInputs]:
    """Seven candidates: two good ones, then one for each filter of the chain to remove (in order)."""
    frame = candidates(
        {"customer_id": "ok1"},
        {"customer_id": "ok2"},
        {"customer_id": "trust", "fraud_flag": True},
        {"customer_id": "opt", "marketing_opt_out": True},
        {"customer_id": "interest", "interest_tags": "security"},
        {"customer_id": "geo", "geographic_region": "BR", "timezone": "America/Sao_Paulo"},
        {"customer_id": "freq"},
    )
    return frame, inputs(invitations=[("freq", AS_OF - timedelta(days=1)), ("freq", AS_OF - timedelta(days=2))])


def test_funnel_counts_and_remaining():
    frame, chain_inputs = one_removed_by_each_filter()
    outcome = run_filter_chain(frame, CHAIN, chain_inputs)
    assert sorted(outcome.survivors["customer_id"]) == ["ok1", "ok2"]
    assert outcome.funnel.to_dicts() == [
        {"filter_id": "input", "removed": 0, "removed_pct": 0.0, "remaining": 7},
        {"filter_id": "trust", "removed": 1, "removed_pct": 14.29, "remaining": 6},
        {"filter_id": "eligibility", "removed": 1, "removed_pct": 14.29, "remaining": 5},
        {"filter_id": "interest-match", "removed": 1, "removed_pct": 14.29, "remaining": 4},
        {"filter_id": "geographic", "removed": 1, "removed_pct": 14.29, "remaining": 3},
        {"filter_id": "frequency-cap", "removed": 1, "removed_pct": 14.29, "remaining": 2},
    ]
    assert outcome.rejected.height + outcome.survivors.height == frame.height
    assert outcome.survivors.columns == frame.columns


def test_each_filter_decides_only_the_candidates_the_filters_before_it_kept():
    # A filter that looks at the whole set it is given (here: how many candidates) sees the funnel's
    # `remaining`, not the chain's input; judged on all seven, it would remove the two good ones.
    from eventreach_assets.domain import filters

    seen: list[int] = []

    class AudienceSize(filters.CandidateFilter):
        key = "audience-size"

        def prepare(self, candidates: pl.LazyFrame, inputs: FilterInputs) -> pl.LazyFrame:
            seen.append(candidates.select(pl.len()).collect().item())
            return candidates

        def reason(self, inputs: FilterInputs) -> pl.Expr:
            return pl.when(pl.len() > 2).then(pl.lit("audience_too_large"))

    frame, chain_inputs = one_removed_by_each_filter()
    chain = [*CHAIN, AudienceSize("audience-size", filters.NoParameters())]
    outcome = run_filter_chain(frame, chain, chain_inputs)
    assert seen == [2]
    assert outcome.survivors["customer_id"].to_list() == ["ok1", "ok2"]
    assert outcome.funnel.row(-1, named=True) == {
        "filter_id": "audience-size", "removed": 0, "removed_pct": 0.0, "remaining": 2
    }  # fmt: skip
    # Each removed candidate logged once (the input's order is the filters' here; the test below
    # interleaves them).
    assert outcome.rejected["customer_id"].to_list() == ["trust", "opt", "interest", "geo", "freq"]


def test_decisions_stay_with_their_candidates_in_order_over_many_rows():
    # Survivors are taken from the input by the decisions' positions: with enough rows for polars
    # to join in parallel, every decision must still land on its own candidate.
    n = 60_000
    rows = [
        {"customer_id": f"C{i:06d}", "fraud_flag": i % 7 == 0, "marketing_opt_out": i % 11 == 0}
        for i in range(n)
    ]  # fmt: skip
    capped = [f"C{i:06d}" for i in range(0, n, 13)]
    recent = [(customer, AS_OF - timedelta(days=d)) for customer in capped for d in (1, 2)]
    outcome = run_filter_chain(candidates(*rows), CHAIN, inputs(invitations=recent))

    def expected(i: int) -> tuple[str, str] | None:
        if i % 7 == 0:
            return "trust", "fraud_flagged"
        if i % 11 == 0:
            return "eligibility", "opted_out"
        return ("frequency-cap", "frequency_cap_reached") if i % 13 == 0 else None

    kept = [f"C{i:06d}" for i in range(n) if expected(i) is None]
    assert outcome.survivors["customer_id"].to_list() == kept  # the input's order
    rejected = {customer: (filter_id, reason) for customer, filter_id, reason in outcome.rejected.iter_rows()}
    assert rejected == {f"C{i:06d}": expected(i) for i in range(n) if expected(i) is not None}
    # The rejection log in the input's order, not grouped by the filter that removed a candidate.
    assert outcome.rejected["customer_id"].to_list() == [f"C{i:06d}" for i in range(n) if expected(i) is not None]


def test_a_filter_that_changes_the_rows_fails_the_chain_naming_why():
    from eventreach_assets.domain import filters

    class Duplicating(filters.CandidateFilter):
        key = "duplicating"

        def prepare(self, candidates: pl.LazyFrame, inputs: FilterInputs) -> pl.LazyFrame:
            return pl.concat([candidates, candidates.head(1)])

        def reason(self, inputs: FilterInputs) -> pl.Expr:
            return filters.NO_REASON

    frame = candidates({"customer_id": "A"}, {"customer_id": "B"})
    with pytest.raises(RuntimeError, match=r"not one per candidate \(2\) in order.*prepare must keep the rows"):
        run_filter_chain(frame, [*CHAIN, Duplicating("duplicating", filters.NoParameters())], inputs())


def test_a_new_filter_is_one_class_and_one_yaml_entry():
    from eventreach_assets.domain import filters
    from eventreach_assets.program.config import parse_program

    @filters.register_filter
    class JobRoleFilter(filters.CandidateFilter):
        key = "job-role"

        class Parameters(filters.FilterParameters):
            excluded_roles: list[str]

        def reason(self, inputs: FilterInputs) -> pl.Expr:
            return pl.when(pl.col("job_role").is_in(self.parameters.excluded_roles)).then(pl.lit("role_excluded"))

    try:
        import yaml

        from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH

        data = yaml.safe_load(DEFAULT_PROGRAM_PATH.read_text())
        data["filterChain"].append(
            {"filterId": "job-role", "type": "business-rule", "order": 6, "parameters": {"excludedRoles": ["student"]}}
        )
        chain = build_filter_chain(parse_program(data))
        frame = candidates({"customer_id": "S", "job_role": "student"}, {"customer_id": "E"})
        outcome = run_filter_chain(frame, chain, inputs())
        assert outcome.survivors["customer_id"].to_list() == ["E"]
        assert outcome.rejected.row(0) == ("S", "job-role", "role_excluded")
    finally:
        filters.FILTER_REGISTRY.pop("job-role")


# ---- filter parameters are checked where the filters live, when the application loads a program ----


def program_document() -> dict:
    import yaml

    from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH

    return yaml.safe_load(DEFAULT_PROGRAM_PATH.read_text())


def test_chain_order_follows_order_field_not_file_position():
    from eventreach_assets.program.config import parse_program

    data = program_document()
    data["filterChain"].reverse()
    assert [type(f).key for f in build_filter_chain(parse_program(data))] == [
        "trust", "eligibility", "interest-match", "geographic", "frequency-cap"
    ]  # fmt: skip


BAD_FILTER_ENTRIES = [
    (lambda d: d["filterChain"][2]["parameters"].update(minMatchScore="high"), "minMatchScore"),
    (lambda d: d["filterChain"][2]["parameters"].update(minMatchScor=0.5), "minMatchScor"),
    (lambda d: d["filterChain"][4].update(filterId="no-such-rule"), "no-such-rule"),
]


@pytest.mark.parametrize(("mutate", "expected"), BAD_FILTER_ENTRIES)
def test_a_bad_filter_entry_fails_the_program_check_naming_it(mutate, expected):
    from eventreach_assets.program.config import ProgramConfigError, parse_program

    data = program_document()
    mutate(data)
    with pytest.raises(ProgramConfigError) as error:
        check_program_filters(parse_program(data, "test.yaml"), "test.yaml")
    assert expected in str(error.value)
    assert str(error.value).startswith("program config test.yaml is invalid:\n  ")
    assert "filterChain entry" in str(error.value)


def test_a_bad_filter_parameter_fails_when_the_application_loads_the_program(tmp_path):
    import yaml

    from eventreach_assets.program.config import ProgramConfigError
    from eventreach_assets.resources.program import ProgramResource, load_checked_program

    data = program_document()
    data["filterChain"][2]["parameters"]["minMatchScore"] = "high"
    path = tmp_path / "program.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProgramConfigError) as error:
        ProgramResource(path=str(path)).load()
    assert str(error.value).startswith(f"program config {path} is invalid:\n  filterChain entry 'interest-match'")
    with pytest.raises(ProgramConfigError, match="minMatchScore"):
        load_checked_program(path)
    assert load_checked_program(None) == load_program()  # the packaged program passes both checks


def test_every_registered_filter_is_reachable_from_yaml_keys():
    from eventreach_assets.domain.filters import FILTER_REGISTRY

    keys = {spec.registry_key for spec in load_program().filter_chain}
    assert keys == set(FILTER_REGISTRY)


def program_with(tmp_path, mutate) -> ProgramResource:
    import yaml

    data = program_document()
    mutate(data)
    path = tmp_path / "program.yaml"
    path.write_text(yaml.safe_dump(data))
    return ProgramResource(path=str(path))


def frequency_cap_window(days: int):
    def mutate(data: dict) -> None:
        [cap] = [entry for entry in data["filterChain"] if entry["filterId"] == "frequency-cap"]
        cap["parameters"]["windowDays"] = days

    return mutate


@pytest.mark.parametrize("window_days", [30, 90])
def test_the_batch_reads_the_invitation_history_its_frequency_cap_counts_and_no_more(
    small_warehouse, tmp_path, window_days
):
    """A window longer than two months is counted whole; a month's window reads a month, and only
    the two columns the chain counts by (the history has eight)."""
    read_columns: list[list[str]] = []

    class ColumnsRead(DuckDBWarehouse):
        def invitation_history(self, since=None, columns=None):
            history = super().invitation_history(since, columns)
            read_columns.append(history.columns)
            return history

    warehouse = ColumnsRead(path=str(small_warehouse[0]))
    ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
    program = program_with(tmp_path, frequency_cap_window(window_days))
    event_id = warehouse.events()["event_id"][0]
    read = filter_inputs(warehouse, ledger, program, ClockResource(fixed_now=AS_OF.isoformat()), event_id)
    invited_at = read.invitations.collect()["invited_at"]
    assert read_columns == [["customer_id", "invited_at"]]
    history = warehouse.invitation_history()["invited_at"].dt.replace_time_zone(None)
    since = AS_OF - timedelta(days=window_days)
    assert invited_at.len() == history.filter(history >= since).len() > 0
    assert invited_at.min() >= since
    assert history.filter(history < since).len() > 0  # there was older history, left unread
    if window_days > 62:  # what a fixed two-month look-back missed
        assert invited_at.filter(invited_at < AS_OF - timedelta(days=62)).len() > 0


def test_the_filter_inputs_are_read_in_one_warehouse_session(small_warehouse, tmp_path, warehouse_connections):
    """The event, its registrations and the invitation history: three reads, one connection (a login
    on Snowflake), for the filter step and again for its policy check."""
    warehouse = DuckDBWarehouse(path=str(small_warehouse[0]))
    event_id = small_warehouse[1].upcoming_event_ids[0]
    ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
    read = filter_inputs(warehouse, ledger, ProgramResource(), ClockResource(fixed_now=AS_OF.isoformat()), event_id)
    assert read.event.event_id == event_id
    assert read.registrations.collect().height > 0 and read.invitations.collect().height > 0
    assert len(warehouse_connections) == 1


def test_a_chain_without_a_frequency_cap_reads_no_invitation_history(small_warehouse, tmp_path):

    class NoHistoryWarehouse(DuckDBWarehouse):
        def invitation_history(self, since=None, columns=None):
            raise AssertionError("the invitation history was read")

    def drop_cap(data: dict) -> None:
        data["filterChain"] = [entry for entry in data["filterChain"] if entry["filterId"] != "frequency-cap"]

    warehouse = NoHistoryWarehouse(path=str(small_warehouse[0]))
    ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
    program = program_with(tmp_path, drop_cap)
    event_id = warehouse.events()["event_id"][0]
    read = filter_inputs(warehouse, ledger, program, ClockResource(fixed_now=AS_OF.isoformat()), event_id)
    assert read.invitations.collect().height == 0
    assert [f.filter_id for f in build_filter_chain(program.load())] == [
        "trust", "eligibility", "interest-match", "geographic"
    ]  # fmt: skip
