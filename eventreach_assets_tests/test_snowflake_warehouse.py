"""SnowflakeWarehouse against fakesnow, checked row for row against DuckDBWarehouse.

One generated warehouse is written to a DuckDB file and, through `load_tables`, into a
fakesnow "Snowflake"; every read and the whole extraction + filter funnel must agree.

fakesnow 0.12.1 has no `cursor.fetch_arrow_batches()`; `stand_ins.fake_snowflake_connector`
supplies it the way the real connector behaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from dagster_snowflake import SnowflakeResource
from fakesnow.cursor import FakeSnowflakeCursor
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from eventreach_assets.assets.filtering import filter_inputs
from eventreach_assets.demo.generator import UPCOMING_EVENTS, generate_warehouse, write_duckdb
from eventreach_assets.domain.events import event_context
from eventreach_assets.domain.extract import validate_and_dedupe
from eventreach_assets.domain.filters import build_filter_chain, run_filter_chain
from eventreach_assets.domain.schema import EVENT_COLUMNS, PROFILE_COLUMNS
from eventreach_assets.resources.ledger import SqliteDeliveryLedger
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.warehouse import (
    DuckDBWarehouse,
    SnowflakeWarehouse,
    WarehouseResource,
    WarehouseSchemaError,
    extraction_sql,
    load_tables,
    snowflake_resource_from_env,
)
from eventreach_assets.resources.warehouse.snowflake import arrow_batches_to_polars, result_schema
from eventreach_assets_tests.stand_ins import fake_snowflake_connector
from eventreach_assets_tests.test_warehouse import one_read_of_each_kind

AS_OF = datetime(2026, 11, 23, 2, 0)  # a Monday, 02:00 UTC
PROFILES = 20_000
SEED = 5
DATABASE = "EVENTREACH"
EVENT_IDS = [spec.event_id for spec in UPCOMING_EVENTS]
# fakesnow's own warning about how it builds Arrow results internally; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

HOSTILE_TOPICS = ["x') OR 1=1 --", "'; DROP TABLE customer_profiles; --", "%s", "?"]

ENV = {
    "SNOWFLAKE_ACCOUNT": "myorg-eventreach",
    "SNOWFLAKE_USER": "eventreach_batch",
    "SNOWFLAKE_PASSWORD": "not-a-real-secret",
    "SNOWFLAKE_WAREHOUSE": "BATCH_WH",
    "SNOWFLAKE_ROLE": "EVENTREACH_READER",
    "SNOWFLAKE_DATABASE": DATABASE,
    "SNOWFLAKE_SCHEMA": "PUBLIC",
}


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_snowflake() -> Iterator[None]:
    """snowflake.connector patched to fakesnow (in-process DuckDB, no network) for this module."""
    with fake_snowflake_connector():
        yield


def snowflake_resource(database: str = DATABASE) -> SnowflakeResource:
    return SnowflakeResource(
        account="fake", user="fake", password="fake", database=database, schema="PUBLIC", paramstyle="qmark"
    )


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    return generate_warehouse(PROFILES, seed=SEED, as_of=AS_OF)


@pytest.fixture(scope="module")
def duck(tables: dict[str, pl.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> DuckDBWarehouse:
    path = tmp_path_factory.mktemp("snowflake_parity") / "warehouse.duckdb"
    write_duckdb(path, tables)
    return DuckDBWarehouse(path=str(path))


@pytest.fixture(scope="module")
def snow(fake_snowflake: None, tables: dict[str, pl.DataFrame]) -> SnowflakeWarehouse:
    resource = snowflake_resource()
    assert load_tables(resource, tables) == {name: frame.height for name, frame in tables.items()}
    return SnowflakeWarehouse(snowflake=resource)


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def assert_same_rows(left: pl.DataFrame, right: pl.DataFrame) -> None:
    """Same rows (as a multiset), same values to the bit, same column names and dtypes."""
    assert_frame_equal(_sorted(left), _sorted(right), check_exact=True)


# ---- parity with DuckDB -----------------------------------------------------------------

READS: dict[str, Callable[[WarehouseResource], pl.DataFrame]] = {
    "events": lambda warehouse: warehouse.events(),
    "registrations": lambda warehouse: warehouse.event_registrations(EVENT_IDS[0]),
    "no_registrations": lambda warehouse: warehouse.event_registrations("evt-nope"),
    "invitation_history": lambda warehouse: warehouse.invitation_history(),
    "recent_invitations": lambda warehouse: warehouse.invitation_history(since=AS_OF - timedelta(days=30)),
    "recent_invitation_keys": lambda warehouse: warehouse.invitation_history(
        since=AS_OF - timedelta(days=30), columns=["customer_id", "invited_at"]
    ),
    "training_profiles": lambda warehouse: warehouse.training_profiles(),
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_reads_are_identical_from_both_engines(duck: DuckDBWarehouse, snow: SnowflakeWarehouse, read: Callable):
    from_duckdb, from_snowflake = read(duck), read(snow)
    assert_same_rows(from_snowflake, from_duckdb)


def test_empty_result_keeps_names_and_dtypes(duck: DuckDBWarehouse, snow: SnowflakeWarehouse):
    empty = snow.event_registrations("evt-nope")
    assert empty.height == 0
    assert empty.schema == duck.event_registrations("evt-nope").schema


@pytest.mark.parametrize("event_id", EVENT_IDS)
def test_extraction_returns_the_same_rows(duck: DuckDBWarehouse, snow: SnowflakeWarehouse, event_id: str):
    topics = event_context(duck.events(), event_id).topics
    from_duckdb, from_snowflake = duck.extract_candidates(topics), snow.extract_candidates(topics)
    assert 0 < from_snowflake.height < PROFILES  # pushed down, not the whole table
    assert from_snowflake.columns == list(PROFILE_COLUMNS)
    assert_same_rows(from_snowflake, from_duckdb)


@pytest.mark.parametrize("event_id", EVENT_IDS)
def test_funnel_is_identical_from_both_engines(
    duck: DuckDBWarehouse, snow: SnowflakeWarehouse, event_id: str, tmp_path: Path
):
    program, clock = ProgramResource(), ClockResource(fixed_now=AS_OF.isoformat())
    ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))  # no sends yet
    config = program.load()
    results = {}
    for name, warehouse in {"duckdb": duck, "snowflake": snow}.items():
        inputs = filter_inputs(warehouse, ledger, program, clock, event_id)  # what the asset does
        extracted = validate_and_dedupe(warehouse.extract_candidates(inputs.event.topics), config.marketplaces)
        outcome = run_filter_chain(extracted.candidates, build_filter_chain(config), inputs)
        results[name] = (inputs, extracted, outcome)
    (duck_inputs, duck_extract, duck_outcome), (snow_inputs, snow_extract, snow_outcome) = results.values()

    assert snow_inputs.event == duck_inputs.event
    assert_same_rows(snow_inputs.registrations.collect(), duck_inputs.registrations.collect())
    assert_same_rows(snow_inputs.invitations.collect(), duck_inputs.invitations.collect())
    assert snow_extract.extracted_rows == duck_extract.extracted_rows
    assert snow_extract.quarantine_counts == duck_extract.quarantine_counts
    assert_same_rows(snow_extract.candidates, duck_extract.candidates)
    assert_frame_equal(snow_outcome.funnel, duck_outcome.funnel, check_exact=True)
    assert_same_rows(snow_outcome.rejected, duck_outcome.rejected)
    assert_same_rows(snow_outcome.survivors, duck_outcome.survivors)
    # The comparison means something: rows were quarantined, filtered and kept.
    assert duck_extract.quarantine.height > 0
    assert 0 < duck_outcome.survivors.height < duck_extract.candidates.height


# ---- bind parameters --------------------------------------------------------------------


def test_topics_are_bound_never_formatted(
    duck: DuckDBWarehouse, snow: SnowflakeWarehouse, monkeypatch: pytest.MonkeyPatch
):
    statements: list[tuple[str, Any]] = []
    execute = FakeSnowflakeCursor.execute

    def spy(self: FakeSnowflakeCursor, command: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        statements.append((command, params))
        return execute(self, command, params, *args, **kwargs)

    monkeypatch.setattr(FakeSnowflakeCursor, "execute", spy)
    attended = snow.extract_candidates(["no-such-topic"])
    for topic in HOSTILE_TOPICS:
        rows = snow.extract_candidates(["devops", topic])
        assert_same_rows(rows, duck.extract_candidates(["devops", topic]))
        assert attended.height <= rows.height < PROFILES
    # The connector received the fixed statement text; every topic travelled as a bind value.
    extractions = [(command, params) for command, params in statements if command.startswith("SELECT customer_id")]
    assert extractions == [
        (extraction_sql(1), ["no-such-topic"]),
        *[(extraction_sql(2), ["devops", topic]) for topic in HOSTILE_TOPICS],
    ]
    assert snow.events().height > 0  # nothing was dropped


def test_the_resource_insists_on_server_side_binding():
    with pytest.raises(ValidationError, match="paramstyle='qmark'"):
        SnowflakeWarehouse(snowflake=SnowflakeResource(account="a", user="u", password="p"))


# ---- schema errors ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken(fake_snowflake: None) -> SnowflakeWarehouse:
    """A Snowflake schema whose profile table lacks engagement_score and has no events table."""
    resource = snowflake_resource("BROKEN")
    with resource.get_connection() as connection:
        connection.cursor().execute(
            "CREATE TABLE customer_profiles (customer_id VARCHAR, interest_tags VARCHAR, "
            "event_attendance_history INTEGER, engagement_score_renamed DOUBLE)"
        )
    return SnowflakeWarehouse(snowflake=resource)


def test_columns_come_back_lower_case(snow: SnowflakeWarehouse):
    with snow._session() as session:
        assert snow._columns(session, "customer_profiles") == set(PROFILE_COLUMNS)
        assert snow._columns(session, "CUSTOMER_PROFILES") == set(PROFILE_COLUMNS)


@pytest.fixture
def logins(snow: SnowflakeWarehouse, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per Snowflake connection the warehouse opens while the test runs."""
    opened: list[int] = []
    get_connection = type(snow.snowflake).get_connection

    def counted(resource: SnowflakeResource, *args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return get_connection(resource, *args, **kwargs)

    monkeypatch.setattr(type(snow.snowflake), "get_connection", counted)
    return opened


def test_a_read_logs_in_once_for_its_column_checks_and_its_queries(snow: SnowflakeWarehouse, logins: list[int]):
    """A Snowflake connection is a login: a read's column checks and its statements share one."""
    reads = one_read_of_each_kind(snow)
    assert len(logins) == reads


def test_reads_in_a_reading_block_log_in_once(snow: SnowflakeWarehouse, logins: list[int]):
    """A step's reads (the batch's filter inputs: the event, registrations, past invitations) in one login."""
    with snow.reading():
        one_read_of_each_kind(snow)
        assert snow.event_registrations("evt-none").height == 0
    assert len(logins) == 1
    assert snow.events().height > 0  # after the block, a login of its own
    assert len(logins) == 2


def test_missing_column_is_named(broken: SnowflakeWarehouse):
    with pytest.raises(WarehouseSchemaError, match=r"customer_profiles.*missing column.*engagement_score"):
        broken.extract_candidates(["devops"])


def test_missing_table_is_named(broken: SnowflakeWarehouse):
    with pytest.raises(WarehouseSchemaError, match="no table 'events'"):
        broken.events()


# ---- configuration from the environment -------------------------------------------------


def test_resource_is_configured_from_env_vars(
    snow: SnowflakeWarehouse, tables: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SNOWFLAKE_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("SNOWFLAKE_PRIVATE_KEY_PATH", raising=False)
    resource = snowflake_resource_from_env()
    # Nothing secret or deployment-specific is baked into the config: Dagster resolves it at launch.
    assert resource.password == dg.EnvVar("SNOWFLAKE_PASSWORD")
    assert resource.database == dg.EnvVar("SNOWFLAKE_DATABASE")
    assert "not-a-real-secret" not in repr(resource)

    seen: dict[str, Any] = {}

    @dg.asset
    def events_seen(warehouse: SnowflakeWarehouse) -> None:
        seen["events"] = warehouse.events().height
        seen["settings"] = {
            key: getattr(warehouse.snowflake, key)
            for key in ("account", "user", "password", "warehouse", "role", "database", "schema_")
        }

    result = dg.materialize([events_seen], resources={"warehouse": SnowflakeWarehouse(snowflake=resource)})
    assert result.success
    assert seen["events"] == tables["events"].height
    assert seen["settings"] == {
        "account": ENV["SNOWFLAKE_ACCOUNT"],
        "user": ENV["SNOWFLAKE_USER"],
        "password": ENV["SNOWFLAKE_PASSWORD"],
        "warehouse": ENV["SNOWFLAKE_WAREHOUSE"],
        "role": ENV["SNOWFLAKE_ROLE"],
        "database": ENV["SNOWFLAKE_DATABASE"],
        "schema_": ENV["SNOWFLAKE_SCHEMA"],
    }


def test_env_chooses_the_authentication_method():
    base = {name: value for name, value in ENV.items() if name != "SNOWFLAKE_PASSWORD"}
    by_key_path = snowflake_resource_from_env(
        {**base, "SNOWFLAKE_PRIVATE_KEY_PATH": "/keys/rsa.p8", "SNOWFLAKE_PRIVATE_KEY_PASSWORD": "x"}
    )
    assert by_key_path.password is None
    assert by_key_path.private_key_path == dg.EnvVar("SNOWFLAKE_PRIVATE_KEY_PATH")
    assert by_key_path.private_key_password == dg.EnvVar("SNOWFLAKE_PRIVATE_KEY_PASSWORD")
    assert snowflake_resource_from_env({**base, "SNOWFLAKE_PRIVATE_KEY": "pem"}).private_key == dg.EnvVar(
        "SNOWFLAKE_PRIVATE_KEY"
    )
    with pytest.raises(ValueError, match="SNOWFLAKE_PASSWORD, SNOWFLAKE_PRIVATE_KEY, SNOWFLAKE_PRIVATE_KEY_PATH"):
        snowflake_resource_from_env(base)


# ---- loading and normalisation ----------------------------------------------------------


def test_load_tables_round_trips_awkward_values(fake_snowflake: None):
    berlin = datetime(2026, 12, 1, 18, 30, 0, 123456, tzinfo=ZoneInfo("Europe/Berlin"))  # aware: stored as UTC
    events = pl.DataFrame(
        {
            "event_id": ["evt-a", "evt-b", "evt-c"],
            "name": ["Quotes ' \" \\ and ünïcødé", None, ""],
            "topics": ["devops", "iot,security", None],
            "event_type": ["webinar"] * 3,
            "speaker_popularity": [float("nan"), float("inf"), 0.1 + 0.2],
            "start_time_utc": [berlin, None, berlin],
            "duration_minutes": pl.Series([60, None, 2**31 - 1], dtype=pl.Int32),
            "capacity": pl.Series([0, -1, 5], dtype=pl.Int32),
            "target_regions": ["US", "UK,DE", "JP"],
            "status": ["scheduled", "cancelled", "scheduled"],
            "created_at": [berlin, berlin, None],
        }
    )
    resource = snowflake_resource("ROUNDTRIP")
    assert load_tables(resource, {"events": events}, chunk_rows=2) == {"events": 3}
    read = SnowflakeWarehouse(snowflake=resource).events()
    expected = events.with_columns(
        pl.col("start_time_utc", "created_at").dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    )
    assert read.columns == list(EVENT_COLUMNS)
    assert_same_rows(read, expected)


def test_arrow_batches_are_normalised_in_one_place():
    class Field:
        def __init__(self, name: str, type_code: int, scale: int | None = None):
            self.name, self.type_code, self.scale = name, type_code, scale

    description = [
        Field("CUSTOMER_ID", 2),
        Field("EVENT_ATTENDANCE_HISTORY", 0, 0),
        Field("UPDATED_AT", 7),  # TIMESTAMP_TZ
        Field("N", 0, 0),
        Field("RATIO", 0, 2),
    ]
    schema = result_schema(description)
    instant = datetime(2026, 1, 1, 12, tzinfo=UTC)
    batches = [
        pa.table(
            {
                "CUSTOMER_ID": ["C1"],
                "EVENT_ATTENDANCE_HISTORY": pa.array([3], pa.int8()),
                "UPDATED_AT": pa.array([instant], pa.timestamp("ns", tz="Europe/Berlin")),
                "N": pa.array([7], pa.decimal128(38, 0)),
                "RATIO": pa.array([1], pa.int8()).cast(pa.decimal128(38, 2)),
            }
        ),
        pa.table(
            {
                "CUSTOMER_ID": ["C2"],
                "EVENT_ATTENDANCE_HISTORY": pa.array([300], pa.int16()),
                "UPDATED_AT": pa.array([instant], pa.timestamp("us", tz="UTC")),
                "N": pa.array([2**40], pa.int64()),
                "RATIO": pa.array([None], pa.decimal128(38, 2)),
            }
        ),
    ]
    frame = arrow_batches_to_polars(batches, schema)
    assert frame.schema == pl.Schema(
        {
            "customer_id": pl.String,
            "event_attendance_history": pl.Int32,
            "updated_at": pl.Datetime("us"),
            "n": pl.Int64,
            "ratio": pl.Float64,
        }
    )
    assert frame["updated_at"].to_list() == [datetime(2026, 1, 1, 12)] * 2
    assert frame["event_attendance_history"].to_list() == [3, 300]
    assert arrow_batches_to_polars([], schema).schema == frame.schema
