"""The weekly batch end to end through Dagster on a small generated warehouse."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pytest
import yaml

from eventreach_assets.definitions import build_definitions
from eventreach_assets.demo.run import (
    QUIET,
    collect_report,
    register_event_partitions,
    run_weekly_batch,
    train_models,
)
from eventreach_assets.domain.events import normalize_events, upcoming_topics
from eventreach_assets.domain.extract import event_extract
from eventreach_assets.domain.schema import CANDIDATE_SCHEMA, CANDIDATE_TAG
from eventreach_assets.partitions import events_partitions
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH
from eventreach_assets.resources.parquet_io.base import ROWS_OF, SOURCE_ROW
from eventreach_assets.why import explain
from eventreach_assets_tests.conftest import AS_OF, SMALL_PROFILES, Deployment, assert_writable

pytestmark = pytest.mark.integration
PROGRAM = "event-invitations"


def test_definitions_load_and_validate():
    from eventreach_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"raw_candidates", "filtered_candidates", "scored_candidates", "candidates_table", "candidates_export",
            "event_attendance_model", "interest_affinity_model"} <= keys  # fmt: skip
    assert defs.resolve_schedule_def("weekly_batch_schedule").cron_schedule == "0 2 * * 1"
    assert defs.resolve_schedule_def("candidates_export_schedule").cron_schedule == "30 4 * * 1"


def test_whole_graph_for_two_events(deployment: Deployment):
    """Funnel, checks, store and export for two events, all from one real Dagster run each."""
    reports, models = run_weekly_batch(deployment.home, deployment.instance, fixed_now=AS_OF.isoformat(), limit=2)
    assert len(reports) == 2
    assert {m["holdout_auc"] > 0.6 for m in models.values() if "holdout_auc" in m} == {True}
    store = deployment.defs.resources["candidate_store"]
    warehouse = duckdb.connect(str(deployment.home / "warehouse.duckdb"), read_only=True)
    # Independent of the pipeline: the newest profile row per customer says whether they opted out.
    opted_out = set(
        warehouse.sql(
            "select customer_id from (select *, row_number() over (partition by customer_id "
            "order by updated_at desc, engagement_score desc, interest_tags) as newest from customer_profiles) "
            "where newest = 1 and marketing_opt_out"
        ).pl()["customer_id"]
    )
    assert opted_out

    for report in reports:
        assert report.checks and all(report.checks.values()), report.checks
        raw, filtered = report.metadata["raw_candidates"], report.metadata["filtered_candidates"]
        funnel = pl.DataFrame([r.data for r in filtered["funnel"].records])
        assert funnel["filter_id"].to_list() == ["input", "trust", "eligibility", "interest-match", "geographic",
                                                 "frequency-cap"]  # fmt: skip
        assert funnel["remaining"][0] == raw["unique_candidates"]
        assert funnel["remaining"][-1] == filtered["eligible_candidates"] > 0
        assert (funnel["removed"][1:] > 0).all(), "every filter removes someone on generated data"
        assert raw["extracted_rows"] == raw["unique_candidates"] + raw["quarantined_rows"]

        items = store.event_items(PROGRAM, report.event_id, now=AS_OF)
        assert items.height == 2 * filtered["eligible_candidates"]
        assert set(items["channel"]) == {"email", "in-app"}
        assert items["customer_id"].n_unique() == filtered["eligible_candidates"]
        assert items["score"].is_between(0, 1).all()
        assert not (set(items["customer_id"]) & opted_out)
        registered = set(
            warehouse.sql("select customer_id from event_registrations where event_id = ?", params=[report.event_id])
            .pl()["customer_id"]
        )  # fmt: skip
        assert not (set(items["customer_id"]) & registered)
        ttl = int((AS_OF + timedelta(days=14)).timestamp())
        assert (items["expires_at"] - ttl).abs().max() <= 1
        assert report.metadata["candidates_export"]["rows"] == items.height

        export_root = deployment.home / "export"
        exported = duckdb.sql(
            f"select * from read_parquet('{export_root}/**/*.parquet', hive_partitioning=true) "
            f"where event = '{report.event_id}'"
        ).pl()  # fmt: skip
        assert exported.height == items.height
        assert "email" not in exported.columns

        published = deployment.defs.resources["metrics_sink"].read()
        mine = published.filter(pl.col("dimensions").list.contains({"name": "Event", "value": report.event_id}))
        by_name = dict(zip(mine["name"], mine["value"], strict=False))
        assert by_name["ExtractedRows"] == raw["extracted_rows"]
        assert by_name["EligibleCandidates"] == filtered["eligible_candidates"]

        top = store.top_candidates_for_channel(PROGRAM, report.event_id, "email", min_score=0.5, limit=50, now=AS_OF)
        assert top.items["score"].to_list() == sorted(top.items["score"].to_list(), reverse=True)
        assert (top.items["score"] >= 0.5).all()


def test_rerunning_a_partition_leaves_the_store_identical(deployment: Deployment):
    reports, _ = run_weekly_batch(deployment.home, deployment.instance, fixed_now=AS_OF.isoformat(), limit=1)
    event_id = reports[0].event_id
    store = deployment.defs.resources["candidate_store"]
    before = store.event_items(PROGRAM, event_id, now=AS_OF)
    rerun = deployment.defs.resolve_job_def("weekly_batch").execute_in_process(
        instance=deployment.instance, partition_key=event_id
    )
    after = store.event_items(PROGRAM, event_id, now=AS_OF)
    assert before.height > 0
    assert after.equals(before)
    scored = next(
        e.materialization for e in rerun.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "scored_candidates"
    )  # fmt: skip
    assert scored.metadata["cache_hit_rate"].value == 1.0
    drift = [e for e in rerun.get_asset_check_evaluations() if e.check_name == "scored_candidates_band_drift"]
    assert drift[0].passed and drift[0].metadata["max_drift_points"].value == 0.0


def test_unknown_event_partition_is_refused_with_a_clear_error(deployment: Deployment):
    deployment.instance.add_dynamic_partitions(events_partitions.name, ["evt-does-not-exist"])
    result = deployment.defs.resolve_job_def("weekly_batch").execute_in_process(
        instance=deployment.instance, partition_key="evt-does-not-exist", raise_on_error=False
    )
    assert not result.success
    failure = result.failure_data_for_node("raw_candidates")
    assert "'evt-does-not-exist' is not a known event" in failure.error.message


def test_why_was_a_customer_not_invited(deployment: Deployment):
    reports, _ = run_weekly_batch(deployment.home, deployment.instance, fixed_now=AS_OF.isoformat(), limit=1)
    event_id = reports[0].event_id
    resources = deployment.defs.resources
    rejected = resources["decision_log"].read("rejections", event_id).head(1).collect().row(0, named=True)
    answer = explain(
        resources["decision_log"], resources["candidate_store"], PROGRAM, event_id, rejected["customer_id"]
    )
    assert answer.verdict == "rejected" and rejected["reason"] in answer.detail
    invited = resources["candidate_store"].event_items(PROGRAM, event_id, now=AS_OF)["customer_id"][0]
    assert explain(resources["decision_log"], resources["candidate_store"], PROGRAM, event_id, invited).verdict == (
        "candidate"
    )
    quarantined = resources["decision_log"].read("quarantine", event_id).filter(pl.col("customer_id").is_not_null())
    bad = quarantined.filter(pl.col("reason") == "unknown_timezone").head(1).collect()
    if bad.height:  # the generator plants a handful; their ids may also have a good row
        verdict = explain(
            resources["decision_log"], resources["candidate_store"], PROGRAM, event_id, bad["customer_id"][0]
        ).verdict
        assert verdict in {"quarantined", "rejected", "candidate"}


def test_catalog_sensor_adds_upcoming_events_once(deployment: Deployment):
    added = register_event_partitions(deployment.defs, deployment.instance)
    assert added == list(deployment.seed.upcoming_event_ids)
    assert register_event_partitions(deployment.defs, deployment.instance) == []
    past = duckdb.connect(str(deployment.home / "warehouse.duckdb"), read_only=True).execute(
        "select count(*) from events where start_time_utc < TIMESTAMP '2026-11-23 02:00:00'"
    ).fetchone()[0]  # fmt: skip
    assert past > 0
    assert set(deployment.instance.get_dynamic_partitions("events")) == set(deployment.seed.upcoming_event_ids)


def per_event_defs(deployment: Deployment, tmp_path: Path) -> dg.Definitions:
    """The deployment's definitions over the same program with `extraction: per_event`."""
    program = yaml.safe_load(DEFAULT_PROGRAM_PATH.read_text())
    path = tmp_path / "per-event-program.yaml"
    path.write_text(yaml.safe_dump({**program, "extraction": "per_event"}))
    return build_definitions(home=deployment.home, program_path=path, fixed_now=AS_OF.isoformat())


def evaluate_schedule(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    schedule = defs.resolve_schedule_def("weekly_batch_schedule")
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=AS_OF, resources=defs.resources,
        repository_def=defs.get_repository_def(),
    ) as context:  # fmt: skip
        return list(schedule.evaluate_tick(context).run_requests or [])


def test_weekly_schedule_requests_one_run_per_upcoming_event(deployment: Deployment, tmp_path: Path):
    defs = per_event_defs(deployment, tmp_path)
    register_event_partitions(defs, deployment.instance)
    requests = evaluate_schedule(defs, deployment.instance)
    assert sorted(r.partition_key for r in requests) == sorted(deployment.seed.upcoming_event_ids)
    assert len({r.run_key for r in requests}) == len(requests)
    assert all(r.tags["eventreach/event"] == r.partition_key for r in requests)


def test_dagster_cli_validates_the_workspace(tmp_path):
    """What `make dev` loads: the workspace file, through Dagster's own CLI."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "EVENTREACH_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "eventreach_assets.definitions" in result.stdout + result.stderr


def test_the_use_case_schedules_in_one_place_with_their_timezone(deployment: Deployment):
    schedules = {s.name: s for s in deployment.defs.schedules}
    expected = {
        "model_training_schedule": "0 1 * * 1",
        "weekly_batch_schedule": "0 2 * * 1",
        "candidates_export_schedule": "30 4 * * 1",
        "daily_metrics_schedule": "59 23 * * *",
        "campaign_report_schedule": "59 23 * * *",
        "daily_metrics_freshness_schedule": "30 0 * * *",
    }
    assert {name: s.cron_schedule for name, s in schedules.items()} == expected
    assert {s.execution_timezone for s in schedules.values()} == {"UTC"}
    daily = deployment.defs.resolve_schedule_def("daily_metrics_schedule")
    with dg.build_schedule_context(
        instance=deployment.instance, scheduled_execution_time=datetime(2026, 11, 23, 23, 59, tzinfo=UTC),
        repository_def=deployment.defs.get_repository_def(),
    ) as context:  # fmt: skip
        [request] = daily.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-23" and request.run_key == "daily-metrics:2026-11-23"


def evaluate_snapshot_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None
) -> dg.SensorExecutionData:
    """One tick as the daemon evaluates it (run requests resolved against the instance's partitions)."""
    sensor = defs.resolve_sensor_def("profile_snapshot_sensor")
    with (
        dg.partition_loading_context(dynamic_partitions_store=instance),
        dg.build_sensor_context(
            instance=instance, cursor=cursor, sensor_name=sensor.name, resources=defs.resources, definitions=defs
        ) as context,
    ):
        return sensor.evaluate_tick(context)


def run_batch(defs: dg.Definitions, instance: dg.DagsterInstance, event_id: str) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("weekly_batch").execute_in_process(
        instance=instance, partition_key=event_id, run_config=QUIET
    )


def test_the_weekly_tick_takes_one_snapshot_whose_materialization_runs_every_event_on_it(
    deployment: Deployment, tmp_path: Path
):
    """Program `extraction: weekly_snapshot` through the real schedule and sensor: the tick asks for
    the snapshot once, its materialization launches one weekly_batch run per upcoming event, and
    each event's funnel and checks are the ones its own extraction gives (per_event program)."""
    defs, instance = deployment.defs, deployment.instance
    assert defs.resources["program"].load().extraction == "weekly_snapshot"  # the repo's program
    register_event_partitions(defs, instance)
    [request] = evaluate_schedule(defs, instance)
    assert request.job_name in (None, "weekly_profile_snapshot") and request.partition_key is None
    assert defs.resolve_schedule_def("weekly_batch_schedule").job_name == "weekly_profile_snapshot"
    assert request.run_key == "profile-snapshot:2026-11-23T0200"
    assert evaluate_snapshot_sensor(defs, instance).run_requests == []  # nothing before the snapshot

    snapshot_run = defs.resolve_job_def("weekly_profile_snapshot").execute_in_process(
        instance=instance, tags=request.tags, run_config=QUIET
    )
    [materialization] = [e.materialization for e in snapshot_run.get_asset_materialization_events()]
    events = deployment.defs.resources["warehouse"].events()
    assert materialization.metadata["covered_topics"].value == upcoming_topics(events, AS_OF)
    assert materialization.metadata["rows"].value > SMALL_PROFILES // 2
    assert materialization.metadata["as_of"].value == AS_OF.isoformat()

    ticked = evaluate_snapshot_sensor(defs, instance)
    launched = ticked.run_requests
    assert sorted(r.partition_key for r in launched) == sorted(deployment.seed.upcoming_event_ids)
    assert {r.run_key for r in launched} == {
        f"weekly-batch:{event_id}:{snapshot_run.run_id}" for event_id in deployment.seed.upcoming_event_ids
    }
    assert evaluate_snapshot_sensor(defs, instance, ticked.cursor).run_requests == []  # once per snapshot

    per_event = per_event_defs(deployment, tmp_path)
    train_models(defs, instance)
    with dg.instance_for_test() as own_instance:
        own_instance.add_dynamic_partitions(events_partitions.name, list(deployment.seed.upcoming_event_ids))
        for event_id in deployment.seed.upcoming_event_ids[:2]:
            shared = collect_report(event_id, run_batch(defs, instance, event_id))
            own = collect_report(event_id, run_batch(per_event, own_instance, event_id))
            assert shared.metadata["raw_candidates"]["extraction"] == "weekly_snapshot (as of 2026-11-23 02:00)"
            assert own.metadata["raw_candidates"]["extraction"] == "per_event"
            assert shared.checks == own.checks and all(shared.checks.values()) and shared.checks
            for asset, key in [
                ("raw_candidates", "extracted_rows"),
                ("raw_candidates", "unique_candidates"),
                ("raw_candidates", "quarantined_rows"),
                ("filtered_candidates", "eligible_candidates"),
            ]:
                assert shared.metadata[asset][key] == own.metadata[asset][key], (asset, key)  # fmt: skip
            funnels = [r.metadata["filtered_candidates"]["funnel"].records for r in (shared, own)]
            assert [row.data for row in funnels[0]] == [row.data for row in funnels[1]]


def test_an_event_read_from_the_snapshot_is_stored_as_row_numbers_and_rebuilt_for_a_step_run_alone(
    deployment: Deployment,
):
    """raw_candidates drawn from the snapshot are stored as their row numbers in it, not a copy of
    the rows; a later run re-executing filtered_candidates alone loads them rebuilt, the same frame;
    once the snapshot is written again that load fails, naming what to materialize."""
    defs, instance = deployment.defs, deployment.instance
    register_event_partitions(defs, instance)
    train_models(defs, instance)
    defs.resolve_job_def("weekly_profile_snapshot").execute_in_process(instance=instance, run_config=QUIET)
    event_id = deployment.seed.upcoming_event_ids[0]
    batch = collect_report(event_id, run_batch(defs, instance, event_id)).metadata
    assets = deployment.home / "assets"
    stored = assets / "raw_candidates" / f"{event_id}.parquet"
    candidates = batch["raw_candidates"]["unique_candidates"]
    assert pl.read_parquet_metadata(stored)[ROWS_OF] == "profile_snapshot.parquet"
    assert pl.read_parquet(stored).columns == ["marketing_opt_out", SOURCE_ROW]
    assert pl.read_parquet(stored).height == candidates > 0
    assert batch["raw_candidates"]["stored_as"] == f"row numbers in profile_snapshot.parquet ({candidates:,})"

    # What the batch's steps were handed: the event's candidates read from the stored snapshot.
    topics = normalize_events(defs.resources["warehouse"].events()).filter(pl.col("event_id") == event_id)["topics"]
    expected = event_extract(pl.read_parquet(assets / "profile_snapshot.parquet"), topics[0].to_list()).candidates
    assert expected["marketing_opt_out"].any()  # opt-outs are among what the stored numbers carry
    loaded = defs.load_asset_value("raw_candidates", partition_key=event_id, instance=instance)
    assert loaded.equals(expected)  # values, types and row order

    filtered_alone = [dg.AssetKey("filtered_candidates")]
    job = defs.resolve_job_def("weekly_batch")
    alone = job.execute_in_process(
        instance=instance, partition_key=event_id, run_config=QUIET, asset_selection=filtered_alone
    )
    [materialization] = [e.materialization for e in alone.get_asset_materialization_events()]
    assert materialization.metadata["input_candidates"].value == candidates
    assert materialization.metadata["eligible_candidates"].value == batch["filtered_candidates"]["eligible_candidates"]

    defs.resolve_job_def("weekly_profile_snapshot").execute_in_process(instance=instance, run_config=QUIET)
    stale = job.execute_in_process(
        instance=instance, partition_key=event_id, run_config=QUIET, asset_selection=filtered_alone,
        raise_on_error=False,
    )  # fmt: skip
    assert not stale.success
    assert (
        f"raw_candidates ({event_id}) is stored as row numbers in profile_snapshot.parquet, which has been written "
        f"again since (they would index other rows): materialize raw_candidates ({event_id}) again"
    ) in str(stale.all_events)
    again = collect_report(event_id, run_batch(defs, instance, event_id)).metadata
    assert again["filtered_candidates"]["eligible_candidates"] == batch["filtered_candidates"]["eligible_candidates"]


def test_an_events_own_extraction_is_stored_in_the_candidate_models_types_for_a_step_run_alone(
    deployment: Deployment,
):
    """Extracted on its own (no snapshot), raw_candidates is written whole in the candidate model's
    types, its few-valued text as categoricals (dictionary pages, the cheap write); a later run
    re-executing filtered_candidates alone loads that file, the same frame, and decides the same."""
    defs, instance = deployment.defs, deployment.instance
    register_event_partitions(defs, instance)
    train_models(defs, instance)
    event_id = deployment.seed.upcoming_event_ids[0]
    batch = collect_report(event_id, run_batch(defs, instance, event_id)).metadata
    assert batch["raw_candidates"]["extraction"].startswith("per_event")
    stored = pl.read_parquet(deployment.home / "assets" / "raw_candidates" / f"{event_id}.parquet")
    assert stored.schema == pl.Schema(CANDIDATE_SCHEMA)
    assert stored.schema["timezone"] == pl.Categorical() and stored.schema["interest_tags"] == pl.List(pl.Categorical())
    assert stored.height == batch["raw_candidates"]["unique_candidates"] > 0
    topics = normalize_events(defs.resources["warehouse"].events()).filter(pl.col("event_id") == event_id)["topics"]
    assert stored["interest_tags"].list.contains(pl.lit(topics[0][0], dtype=CANDIDATE_TAG)).any()

    alone = defs.resolve_job_def("weekly_batch").execute_in_process(
        instance=instance, partition_key=event_id, run_config=QUIET,
        asset_selection=[dg.AssetKey("filtered_candidates")],
    )  # fmt: skip
    [materialization] = [e.materialization for e in alone.get_asset_materialization_events()]
    assert materialization.metadata["input_candidates"].value == stored.height
    assert materialization.metadata["eligible_candidates"].value == batch["filtered_candidates"]["eligible_candidates"]
    assert materialization.metadata["funnel"].value == batch["filtered_candidates"]["funnel"]


def test_an_event_without_a_usable_snapshot_extracts_on_its_own_and_says_why(deployment: Deployment):
    defs, instance = deployment.defs, deployment.instance
    register_event_partitions(defs, instance)
    event_id = deployment.seed.upcoming_event_ids[0]
    train_models(defs, instance)
    missing = collect_report(event_id, run_batch(defs, instance, event_id)).metadata["raw_candidates"]
    assert missing["extraction"] == "per_event (fallback: no profile snapshot stored)"

    last_week = build_definitions(home=deployment.home, fixed_now=(AS_OF - timedelta(days=7)).isoformat())
    last_week.resolve_job_def("weekly_profile_snapshot").execute_in_process(instance=instance, run_config=QUIET)
    stale = collect_report(event_id, run_batch(defs, instance, event_id)).metadata["raw_candidates"]
    assert stale["extraction"] == (
        "per_event (fallback: profile snapshot of 2026-11-16 02:00 is older than this batch week)"
    )
    assert stale["extracted_rows"] == missing["extracted_rows"] and stale["unique_candidates"] > 0
    topics = normalize_events(defs.resources["warehouse"].events()).filter(pl.col("event_id") == event_id)["topics"]
    assert stale["topics"] == ", ".join(topics[0])


def test_a_week_without_upcoming_events_takes_an_empty_snapshot_and_says_why(deployment: Deployment):
    later = build_definitions(home=deployment.home, fixed_now=datetime(2027, 6, 1).isoformat())
    result = later.resolve_job_def("weekly_profile_snapshot").execute_in_process(
        instance=deployment.instance, run_config=QUIET
    )
    [materialization] = [e.materialization for e in result.get_asset_materialization_events()]
    assert materialization.metadata["rows"].value == 0 and materialization.metadata["covered_topics"].value == []
    assert materialization.metadata["reason"].value == "no upcoming event"
    assert not (deployment.home / "assets" / "profile_snapshot.parquet").exists()


def test_an_events_own_extraction_reads_the_catalog_and_the_profiles_in_one_session(
    small_warehouse, warehouse_connections, monkeypatch
):
    """`extraction: per_event`: the event's catalog read and its extraction share one warehouse
    session (a login on Snowflake), closed before the validation, which holds no session."""
    from eventreach_assets.assets import extraction
    from eventreach_assets.resources.program import ProgramResource
    from eventreach_assets.resources.warehouse import DuckDBWarehouse

    path, summary = small_warehouse
    event_id = summary.upcoming_event_ids[0]
    sessions_at_validation: list[int] = []
    validate = extraction.validate_and_dedupe

    def validate_after_the_session(raw, marketplaces):
        sessions_at_validation.append(len(warehouse_connections))
        assert_writable(path)  # no read session holds the file any more
        return validate(raw, marketplaces)

    monkeypatch.setattr(extraction, "validate_and_dedupe", validate_after_the_session)
    event, result = extraction.extract_event(DuckDBWarehouse(path=str(path)), ProgramResource(), event_id)
    assert event.event_id == event_id and result.candidates.height > 0
    assert len(warehouse_connections) == 1 and sessions_at_validation == [1]


def handed_the_only_reference(function: Callable[..., Any], handed: list[bool]) -> Callable[..., Any]:
    """`function`, recording whether each call's first argument was its only reference (the caller
    kept none); if it was, the frame is gone once dropped, and the call ends with `_Handed`."""

    def wrapped(frame: pl.DataFrame, *args: Any) -> Any:
        alive = weakref.ref(frame)
        del frame
        kept = alive()  # None: the caller held no reference
        handed.append(kept is None)
        if kept is None:
            raise _Handed
        return function(kept, *args)

    return wrapped


class _Handed(Exception):
    """The extract was the callee's alone: the call stops there (the check is all the test needs)."""


def test_both_extractions_hand_the_validation_the_extracts_only_reference(
    deployment: Deployment, small_warehouse: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation replaces the extract's few-valued text columns by categoricals; when no caller
    holds the extract, the strings are freed as it goes (at 3M profiles one event's peak ~200 MiB
    lower). Both the event's own extraction and the week's snapshot pass it on without keeping it."""
    from eventreach_assets.assets import extraction
    from eventreach_assets.resources.program import ProgramResource
    from eventreach_assets.resources.warehouse import DuckDBWarehouse

    path, summary = small_warehouse
    handed: list[bool] = []
    for name in ("validate_and_dedupe", "profile_snapshot_rows"):
        monkeypatch.setattr(extraction, name, handed_the_only_reference(getattr(extraction, name), handed))
    with contextlib.suppress(_Handed):
        extraction.extract_event(DuckDBWarehouse(path=str(path)), ProgramResource(), summary.upcoming_event_ids[0])
    with contextlib.suppress(_Handed):
        deployment.defs.resolve_job_def("weekly_profile_snapshot").execute_in_process(
            instance=deployment.instance, run_config=QUIET
        )
    assert handed == [True, True]  # [own extraction, snapshot]
