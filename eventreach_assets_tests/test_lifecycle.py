"""The event lifecycle: when each step is due (pure), and the sensors that launch it (real instance)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from eventreach_assets.definitions import build_definitions
from eventreach_assets.domain.lifecycle import (
    ATTENDANCE,
    DAY_OF_EMAIL,
    PUSH_REMINDER,
    SURVEY,
    WAVE_STAGES,
    due_stages,
    lifecycle_schedule,
    stage_run_key,
)
from eventreach_assets.partitions import events_partitions
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, load_program
from eventreach_assets_tests.conftest import AS_OF, Deployment

START = datetime(2026, 12, 1, 16, 0)
REMINDERS = load_program(DEFAULT_PROGRAM_PATH).event_config.reminder_schedule


def events_frame(**overrides: object) -> pl.DataFrame:
    row = {
        "event_id": "evt-a", "name": "A", "topics": "devops", "target_regions": "US", "start_time_utc": START,
        "duration_minutes": 90, "status": "scheduled", "capacity": 100, **overrides,
    }  # fmt: skip
    return pl.DataFrame([row])


def windows(events: pl.DataFrame) -> dict[str, tuple[datetime, datetime]]:
    schedule = lifecycle_schedule(events, REMINDERS)
    return {row["stage"]: (row["due_at"], row["until"]) for row in schedule.iter_rows(named=True)}


def test_stages_follow_the_use_case_and_the_reminder_schedule():
    stages = windows(events_frame())
    assert stages[PUSH_REMINDER] == (START - timedelta(days=1), START)
    # 09:00 local on the event's local date is at most 15 hours before a start anywhere.
    assert stages[DAY_OF_EMAIL] == (START - timedelta(hours=15), START)
    ended = START + timedelta(minutes=90)
    assert stages[ATTENDANCE][0] == ended + timedelta(minutes=30)
    assert stages[SURVEY][0] == START + timedelta(days=1)
    # Invitation waves: open (the sensor waits for the batch) until registration closes a day before.
    for stage in WAVE_STAGES:
        assert stages[stage][1] == START - timedelta(days=1)


def test_due_stages_respect_their_windows():
    schedule = lifecycle_schedule(events_frame(), REMINDERS)
    assert set(due_stages(schedule, START - timedelta(days=2))["stage"]) == set(WAVE_STAGES)
    assert due_stages(schedule, START - timedelta(days=90)).height == 0
    assert due_stages(schedule, START - timedelta(hours=20))["stage"].to_list() == [PUSH_REMINDER]
    assert set(due_stages(schedule, START - timedelta(hours=1))["stage"]) == {PUSH_REMINDER, DAY_OF_EMAIL}
    after = due_stages(schedule, START + timedelta(days=1, hours=1))["stage"].to_list()
    assert after == [ATTENDANCE, SURVEY]  # reminders are over once the event started
    assert due_stages(schedule, START + timedelta(days=30)).height == 0
    assert due_stages(schedule, START - timedelta(hours=1), event_ids=["other"]).height == 0


def test_cancelled_events_get_nothing_and_rescheduled_events_get_new_keys():
    assert lifecycle_schedule(events_frame(status="cancelled"), REMINDERS).height == 0
    moved = START + timedelta(days=7)
    before = windows(events_frame())
    after = windows(events_frame(start_time_utc=moved))
    assert after[PUSH_REMINDER][0] == before[PUSH_REMINDER][0] + timedelta(days=7)
    key_before = stage_run_key("evt-a", PUSH_REMINDER, START, before[PUSH_REMINDER][0])
    key_after = stage_run_key("evt-a", PUSH_REMINDER, moved, after[PUSH_REMINDER][0])
    assert key_before != key_after


# ---- sensors against a real instance ------------------------------------------------------


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, name: str, cursor: str | None = None):
    """One tick as the daemon evaluates it (run requests resolved against the instance's partitions)."""
    sensor = defs.resolve_sensor_def(name)
    with (
        dg.partition_loading_context(dynamic_partitions_store=instance),
        dg.build_sensor_context(
            instance=instance, cursor=cursor, sensor_name=name, resources=defs.resources, definitions=defs
        ) as context,
    ):
        return sensor.evaluate_tick(context)


def at(deployment: Deployment, now: datetime) -> dg.Definitions:
    return build_definitions(home=deployment.home, deployment="local", fixed_now=now.isoformat())


def event_start(deployment: Deployment, event_id: str) -> datetime:
    events = deployment.defs.resources["warehouse"].events()
    return events.filter(pl.col("event_id") == event_id)["start_time_utc"][0]


@pytest.fixture
def registered(deployment: Deployment) -> str:
    """The first sample event, registered as a partition by the catalog sensor."""
    data = evaluate(deployment.defs, deployment.instance, "events_catalog_sensor")
    for request in data.dynamic_partitions_requests:
        deployment.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return deployment.seed.upcoming_event_ids[0]


def test_lifecycle_sensor_launches_each_stage_once_with_tags(deployment: Deployment, registered: str):
    start = event_start(deployment, registered)
    data = evaluate(at(deployment, AS_OF), deployment.instance, "event_lifecycle_sensor")
    assert data.run_requests == [] and "nothing due" in (data.skip_message or "")

    day_before = at(deployment, start - timedelta(hours=23))
    first = evaluate(day_before, deployment.instance, "event_lifecycle_sensor").run_requests
    again = evaluate(day_before, deployment.instance, "event_lifecycle_sensor").run_requests
    push = [r for r in first if r.partition_key == registered]
    assert [r.job_name for r in push] == ["push_reminder"]
    expected = {"eventreach/event": registered, "eventreach/stage": PUSH_REMINDER, "eventreach/channel": "push"}
    assert expected.items() <= push[0].tags.items()
    assert [r.run_key for r in again] == [r.run_key for r in first]  # a repeated tick asks for the same runs

    after = evaluate(at(deployment, start + timedelta(days=1, minutes=5)), deployment.instance,
                     "event_lifecycle_sensor").run_requests  # fmt: skip
    assert {r.job_name for r in after if r.partition_key == registered} == {"attendance_tracking", "post_event_survey"}


def test_day_of_runs_follow_the_next_due_time_the_last_run_reported(deployment: Deployment, registered: str):
    from eventreach_assets.assets.campaigns import NEXT_DUE_AT, PLANNED_AT

    start = event_start(deployment, registered)
    opened = start - timedelta(hours=15)
    defs = at(deployment, opened + timedelta(minutes=1))
    [first] = [r for r in evaluate(defs, deployment.instance, "event_lifecycle_sensor").run_requests
               if r.job_name == "day_of_reminder"]  # fmt: skip
    # The first run found customers whose 09:00 is later: it says when (as the asset does).
    next_due = opened + timedelta(hours=7)
    planned = {PLANNED_AT: (opened + timedelta(minutes=2)).isoformat()}
    deployment.instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "day_of_reminders", partition=registered, metadata={**planned, NEXT_DUE_AT: next_due.isoformat()}
        )
    )
    too_early = evaluate(at(deployment, next_due - timedelta(minutes=5)), deployment.instance,
                         "event_lifecycle_sensor").run_requests  # fmt: skip
    assert not [r for r in too_early if r.job_name == "day_of_reminder"]
    due = evaluate(at(deployment, next_due + timedelta(minutes=1)), deployment.instance,
                   "event_lifecycle_sensor").run_requests  # fmt: skip
    [second] = [r for r in due if r.job_name == "day_of_reminder"]
    assert second.run_key != first.run_key and next_due.strftime("%Y%m%dT%H%M") in second.run_key
    # A run that left nobody waiting (no next_due_at) ends the day-of stage.
    deployment.instance.report_runless_asset_event(
        dg.AssetMaterialization("day_of_reminders", partition=registered, metadata=planned)
    )
    done = evaluate(at(deployment, next_due + timedelta(hours=1)), deployment.instance,
                    "event_lifecycle_sensor").run_requests  # fmt: skip
    assert not [r for r in done if r.job_name == "day_of_reminder"]


def test_catalog_sensor_records_a_cancellation_and_a_reschedule(
    deployment: Deployment, registered: str, tmp_path: Path
) -> None:
    first = evaluate(deployment.defs, deployment.instance, "events_catalog_sensor")
    cursor = first.cursor
    others = [e for e in deployment.seed.upcoming_event_ids if e != registered]
    # The event platform cancels one event and moves another: a copy of the warehouse says so.
    warehouse = tmp_path / "changed.duckdb"
    warehouse.write_bytes((deployment.home / "warehouse.duckdb").read_bytes())
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute("UPDATE events SET status = 'cancelled' WHERE event_id = ?", [registered])
        connection.execute(
            "UPDATE events SET start_time_utc = start_time_utc + INTERVAL 2 DAY WHERE event_id = ?", [others[0]]
        )
    (deployment.home / "warehouse.duckdb").unlink()
    (deployment.home / "warehouse.duckdb").symlink_to(warehouse)
    data = evaluate(deployment.defs, deployment.instance, "events_catalog_sensor", cursor=cursor)
    changes = {event.partition: event.metadata["change"].value for event in data.asset_events}
    assert changes[registered] == "cancelled: notices go out, nothing else"
    assert changes[others[0]].startswith("rescheduled from ")
    launched = {(r.partition_key, r.job_name) for r in data.run_requests}
    assert launched == {
        (registered, "event_cancellation_email"), (registered, "event_cancellation_push"),
        (others[0], "event_update"),
    }  # fmt: skip
    assert evaluate(deployment.defs, deployment.instance, "events_catalog_sensor", cursor=data.cursor).skip_message
    # Nothing more is launched for the cancelled event.
    start = event_start(deployment, others[0])
    later = evaluate(at(deployment, start - timedelta(hours=1)), deployment.instance,
                     "event_lifecycle_sensor").run_requests  # fmt: skip
    assert registered not in {r.partition_key for r in later}
    assert registered in deployment.instance.get_dynamic_partitions(events_partitions.name)  # history kept


def test_feed_sensor_hands_new_files_to_one_run_and_moves_its_cursor(deployment: Deployment):
    feed = deployment.defs.resources["engagement_feed"]
    empty = evaluate(deployment.defs, deployment.instance, "registrations_feed_sensor")
    assert empty.run_requests == [] and "no new registrations files" in empty.skip_message
    for name in ("20261123T100000Z-0001.jsonl", "20261123T101500Z-0002.jsonl"):
        feed.drop("registrations", name, [{"registration_id": name}])
    data = evaluate(deployment.defs, deployment.instance, "registrations_feed_sensor")
    [request] = data.run_requests
    assert request.run_key == "registrations:20261123T101500Z-0002.jsonl"
    assert request.run_config["ops"]["ingested_registrations"]["config"]["files"] == [
        "20261123T100000Z-0001.jsonl", "20261123T101500Z-0002.jsonl",
    ]  # fmt: skip
    assert data.cursor == "20261123T101500Z-0002.jsonl"
    assert evaluate(deployment.defs, deployment.instance, "registrations_feed_sensor", cursor=data.cursor).skip_message
    feed.drop("registrations", "20261123T110000Z-0003.jsonl", [{"registration_id": "3"}])
    later_tick = evaluate(deployment.defs, deployment.instance, "registrations_feed_sensor", cursor=data.cursor)
    [later] = later_tick.run_requests
    assert later.run_config["ops"]["ingested_registrations"]["config"]["files"] == ["20261123T110000Z-0003.jsonl"]


def test_a_failed_run_is_alerted_and_tagged(deployment: Deployment):
    import json

    deployment.instance.add_dynamic_partitions(events_partitions.name, ["evt-does-not-exist"])
    result = deployment.defs.resolve_job_def("weekly_batch").execute_in_process(
        instance=deployment.instance, partition_key="evt-does-not-exist", raise_on_error=False,
        tags={"eventreach/stage": "weekly-batch"},
    )  # fmt: skip
    assert not result.success
    run = deployment.instance.get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    sensor = deployment.defs.resolve_sensor_def("run_failure_alert_sensor")
    with dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=failure, dagster_instance=deployment.instance, dagster_run=run,
        resources=deployment.defs.resources,
    ) as context:  # fmt: skip
        sensor(context.for_run_failure())
    [alert] = [json.loads(line) for line in (deployment.home / "alerts.jsonl").read_text().splitlines()]
    assert alert["run_id"] == result.run_id and alert["job_name"] == "weekly_batch"
    assert alert["partition"] == "evt-does-not-exist" and alert["stage"] == "weekly-batch"
    assert "not a known event" in alert["error"]  # the root cause, not "steps failed"
    assert deployment.instance.get_run_by_id(result.run_id).tags["eventreach/alerted"] == "yes"
