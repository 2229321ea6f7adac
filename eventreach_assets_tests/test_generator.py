"""The synthetic warehouse: contract, determinism, planted defects and the calibrated funnel."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import available_timezones

import duckdb
import polars as pl
import pytest

from eventreach_assets.demo import cli
from eventreach_assets.demo.generator import (
    BAD_ROW_KINDS,
    CAPACITY_LIMIT,
    PAST_EVENTS,
    UPCOMING_EVENTS,
    bad_rows_per_kind,
    generate_warehouse,
    seed_warehouse,
)
from eventreach_assets.domain.events import event_context
from eventreach_assets.domain.extract import TAGS_PATTERN, validate_and_dedupe
from eventreach_assets.domain.filters import FilterInputs, build_filter_chain, run_filter_chain
from eventreach_assets.domain.schema import WAREHOUSE_TABLES
from eventreach_assets.program.config import default_program
from eventreach_assets.resources.warehouse import extraction_sql

AS_OF = datetime(2026, 11, 23, 2, 0)
PROFILES = 30_000
FUNNEL_PROFILES = 200_000
# The use case's funnel, as % of the unique candidates removed by each filter (in order).
TARGET_FUNNEL = {"trust": 8.0, "eligibility": 20.0, "interest-match": 40.0, "geographic": 12.0, "frequency-cap": 16.0}


def read(path: Path, sql: str, params: list | None = None) -> pl.DataFrame:
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.sql(sql, params=params).pl()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("generator") / "warehouse.duckdb"
    seed_warehouse(path, PROFILES, seed=7, as_of=AS_OF)
    return path


@pytest.fixture(scope="module")
def profiles(warehouse: Path) -> pl.DataFrame:
    return read(warehouse, "SELECT * FROM customer_profiles")


def test_tables_and_columns_match_the_contract(warehouse: Path) -> None:
    columns = read(
        warehouse,
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "ORDER BY table_name, ordinal_position",
    )
    for table, expected in WAREHOUSE_TABLES.items():
        found = columns.filter(pl.col("table_name") == table)
        assert list(zip(found["column_name"], found["data_type"], strict=True)) == list(expected.items()), table
    assert set(columns["table_name"]) == set(WAREHOUSE_TABLES)


def test_same_seed_same_data_other_seed_other_data() -> None:
    first = generate_warehouse(5_000, seed=3, as_of=AS_OF)
    again = generate_warehouse(5_000, seed=3, as_of=AS_OF)
    other = generate_warehouse(5_000, seed=4, as_of=AS_OF)
    for table in WAREHOUSE_TABLES:
        assert first[table].equals(again[table]), table
    assert not first["customer_profiles"].equals(other["customer_profiles"])
    assert first["events"].equals(other["events"])  # the catalog depends on as_of only


def test_seed_file_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    first = seed_warehouse(path, 3_000, seed=1, as_of=AS_OF)
    second = seed_warehouse(path, 4_000, seed=1, as_of=AS_OF)
    assert [p.name for p in tmp_path.iterdir()] == ["warehouse.duckdb"]  # no temp files left behind
    assert (first.customer_profiles, second.customer_profiles) == (3_000, 4_000)
    expected = generate_warehouse(4_000, seed=1, as_of=AS_OF)
    for table in WAREHOUSE_TABLES:
        stored = read(path, f"SELECT * FROM {table}")
        assert stored.height == second.table_rows[table]
        assert stored.equals(expected[table]), table


def test_about_one_row_in_six_is_an_extra_snapshot(profiles: pl.DataFrame) -> None:
    valid_ids = profiles["customer_id"].drop_nulls()
    extra = 1 - valid_ids.n_unique() / profiles.height
    assert extra == pytest.approx(1 / 6, abs=0.01)
    snapshots = (
        profiles.drop_nulls("customer_id")
        .group_by("customer_id")
        .agg(pl.len().alias("rows"), pl.col("updated_at").n_unique().alias("times"))
        .filter(pl.col("rows") > 1)
    )
    assert snapshots.height > 0
    assert (snapshots["rows"] == snapshots["times"]).all()  # snapshots differ in updated_at
    assert profiles["updated_at"].min() >= AS_OF - timedelta(days=365)
    assert profiles["updated_at"].max() < AS_OF


def test_each_kind_of_bad_row_is_planted_and_extracted(warehouse: Path, profiles: pl.DataFrame) -> None:
    per_kind = bad_rows_per_kind(PROFILES)
    counts = {
        "null_customer_id": profiles["customer_id"].is_null().sum(),
        "unparseable_interest_tags": (
            profiles["interest_tags"].is_not_null() & ~profiles["interest_tags"].str.contains(TAGS_PATTERN)
        ).sum(),
        "unknown_region": (profiles["geographic_region"] == "XX").sum(),
        "unknown_timezone": (~profiles["timezone"].is_in(sorted(available_timezones()))).sum(),
        "engagement_score_out_of_range": (~profiles["engagement_score"].is_between(0, 1)).sum(),
        "attendance_count_out_of_range": (profiles["event_attendance_history"] < 0).sum(),
    }
    assert set(counts) == set(BAD_ROW_KINDS)
    assert counts == dict.fromkeys(BAD_ROW_KINDS, per_kind)
    # The first event's extraction returns every planted row, so its quarantine sees them all.
    first = UPCOMING_EVENTS[0]
    raw = read(warehouse, extraction_sql(len(first.topics)), list(first.topics))
    quarantined = validate_and_dedupe(raw, default_program().marketplaces).quarantine_counts
    assert {kind: quarantined.get(kind) for kind in BAD_ROW_KINDS} == dict.fromkeys(BAD_ROW_KINDS, per_kind)


def test_valid_rows_use_the_vocabularies(profiles: pl.DataFrame) -> None:
    valid = profiles.filter(
        pl.col("customer_id").is_not_null()
        & (pl.col("geographic_region") != "XX")
        & pl.col("engagement_score").is_between(0, 1)
    )
    assert valid["customer_id"].str.contains(r"^C\d{9}$").all()
    assert (valid["email"] == valid["customer_id"].str.to_lowercase() + "@example.com").all()
    assert set(valid["geographic_region"]) <= set(default_program().marketplaces)
    assert set(valid["account_status"]) == {"active", "suspended", "closed"}
    london = valid.filter(pl.col("geographic_region") == "UK")["timezone"]
    assert set(london) <= {"Europe/London", "Mars/Olympus"}


def test_events_registrations_and_history_are_consistent(warehouse: Path) -> None:
    events = read(warehouse, "SELECT * FROM events")
    upcoming = events.filter(pl.col("start_time_utc") > AS_OF).sort("start_time_utc")
    assert upcoming["event_id"].to_list() == [spec.event_id for spec in UPCOMING_EVENTS]
    days_ahead = [(start - AS_OF).days for start in upcoming["start_time_utc"]]
    assert days_ahead == [8, 15, 22]
    assert [start.hour for start in upcoming["start_time_utc"]] == [16, 15, 17]  # US morning, EU afternoon
    assert (events["created_at"] < AS_OF).all()
    assert set(events["status"]) == {"scheduled"}
    assert events.height == len(UPCOMING_EVENTS) + len(PAST_EVENTS) >= 40

    registrations = read(warehouse, "SELECT * FROM event_registrations")
    assert set(registrations["event_id"]) == set(upcoming["event_id"])
    assert (registrations["registered_at"] < AS_OF).all()
    per_event = registrations.group_by("event_id").agg(pl.col("customer_id").n_unique().alias("n"))
    assert (per_event["n"] < CAPACITY_LIMIT).all()

    history = read(
        warehouse,
        "SELECT h.*, e.start_time_utc FROM invitation_history h JOIN events e USING (event_id)",
    )
    assert history.height == read(warehouse, "SELECT count(*) AS n FROM invitation_history")["n"][0]
    assert (history["invited_at"] < history["start_time_utc"]).all()
    assert (history["start_time_utc"] < AS_OF).all()
    assert (history["invited_at"] >= AS_OF - timedelta(days=180)).all()
    assert history.select(pl.struct("customer_id", "event_id").is_unique().all()).item()
    # Outcomes nest (attended => registered => clicked => opened) and leave room to learn.
    assert not (history["attended"] & ~history["registered"]).any()
    assert not (history["registered"] & ~history["clicked"]).any()
    assert not (history["clicked"] & ~history["opened"]).any()
    assert 0.4 < history["registered"].mean() < 0.7
    assert 0.3 < history["attended"].mean() < 0.6


def test_first_event_funnel_matches_the_use_case(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    summary = seed_warehouse(path, FUNNEL_PROFILES, seed=7, as_of=AS_OF)
    program = default_program()
    event = event_context(read(path, "SELECT * FROM events"), summary.upcoming_event_ids[0])
    raw = read(path, extraction_sql(len(event.topics)), list(event.topics))
    extracted = validate_and_dedupe(raw, program.marketplaces)
    # Use case: 3M extracted, 2.5M unique.
    assert extracted.extracted_rows / FUNNEL_PROFILES == pytest.approx(0.97, abs=0.02)
    assert extracted.candidates.height / FUNNEL_PROFILES == pytest.approx(2.5 / 3, abs=0.02)

    inputs = FilterInputs(
        event=event,
        as_of=AS_OF,
        capacity_limit=program.event_config.capacity_limit,
        registrations=read(path, "SELECT * FROM event_registrations WHERE event_id = ?", [event.event_id]).lazy(),
        invitations=read(path, "SELECT customer_id, invited_at FROM invitation_history").lazy(),
    )
    funnel = run_filter_chain(extracted.candidates, build_filter_chain(program), inputs).funnel
    removed_pct = dict(zip(funnel["filter_id"], funnel["removed_pct"], strict=True))
    for filter_id, target in TARGET_FUNNEL.items():
        assert removed_pct[filter_id] == pytest.approx(target, abs=1.5), (filter_id, removed_pct)
    eligible = funnel["remaining"][-1] / extracted.candidates.height
    assert eligible == pytest.approx(0.04, abs=0.01)  # 100K of 2.5M


def test_cli_seed_writes_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert cli.main(["seed", "--profiles", "2000", "--seed", "5", "--home", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "warehouse.duckdb").exists()
    assert "evt-cloud-summit" in capsys.readouterr().out

    monkeypatch.setenv("EVENTREACH_HOME", str(tmp_path / "b"))
    assert cli.main(["seed", "--profiles", "1500", "--as-of", "2026-11-23T02:00:00"]) == 0
    stored = read(tmp_path / "b" / "warehouse.duckdb", "SELECT count(*) AS n FROM customer_profiles")
    assert stored["n"][0] == 1500

    with pytest.raises(SystemExit):
        cli.main(["seed", "--profiles", "0"])
