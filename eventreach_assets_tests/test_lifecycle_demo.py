"""The SIMULATED lifecycle: one event from invitation to survey, every run from a schedule or sensor."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from eventreach_assets.demo.generator import seed_warehouse
from eventreach_assets.demo.lifecycle import monday_before, play
from eventreach_assets_tests.conftest import AS_OF

pytestmark = pytest.mark.integration


def test_one_event_plays_from_invitation_to_survey(tmp_path: Path):
    home = tmp_path / "home"
    clock_start = monday_before(AS_OF)
    summary = seed_warehouse(home / "warehouse.duckdb", 6_000, seed=5, as_of=clock_start)
    event_id = summary.upcoming_event_ids[0]
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        # The event moves by 3 hours half-way (a new date for the calendars, no extra simulated day).
        report = play(home, instance, event_id, clock_start, timedelta(hours=3), days_after=2, seed=3,
                      reschedule_by=timedelta(hours=3))  # fmt: skip
        runs = instance.get_runs()

    assert all(run.success for run in report.timeline), [r for r in report.timeline if not r.success]
    launched = {(run.job_name, run.origin) for run in report.timeline}
    for expected in [
        ("train_models", "model_training_schedule"),
        ("weekly_profile_snapshot", "weekly_batch_schedule"),  # Monday's tick: the week's profiles once
        ("weekly_batch", "profile_snapshot_sensor"),  # then the event's batch, read from the snapshot
        ("export_candidates", "candidates_export_schedule"),
        ("email_campaign", "event_lifecycle_sensor"),  # invitation waves at each segment's local time
        ("in_app_campaign", "event_lifecycle_sensor"),
        ("tracking_ingest", "tracking_feed_sensor"),
        ("registration_ingest", "registrations_feed_sensor"),
        ("push_reminder", "event_lifecycle_sensor"),
        ("day_of_reminder", "event_lifecycle_sensor"),
        ("attendance_tracking", "event_lifecycle_sensor"),
        ("post_event_survey", "event_lifecycle_sensor"),
        ("survey_ingest", "survey_feed_sensor"),
        ("event_update", "events_catalog_sensor"),  # the event moved half-way: updates went out
        ("provider_feedback_ingest", "provider_feed_sensor"),  # SES reports: deliveries, bounces
        ("daily_metrics_job", "daily_metrics_schedule"),
        ("campaign_report_job", "campaign_report_schedule"),
    ]:
        assert expected in launched, f"{expected} never launched: {sorted(launched)}"
    # Every run is a real run on the instance, tagged as the daemon would have tagged it.
    assert len(runs) == len(report.timeline)
    origins = [run.tags.get("dagster/schedule_name") or run.tags.get("dagster/sensor_name") for run in runs]
    assert all(origins), [run.tags for run in runs if not (run.tags.keys() & {"dagster/schedule_name"})][:3]
    lifecycle_runs = [run for run in runs if run.job_name in {"push_reminder", "attendance_tracking"}]
    assert all(run.tags["eventreach/event"] == event_id for run in lifecycle_runs)
    # The stages happen in the use case's order, at their times.
    first = {}
    for run in report.timeline:
        first.setdefault(run.job_name, run.at)
    assert first["weekly_profile_snapshot"] < first["weekly_batch"] < first["email_campaign"]
    assert first["email_campaign"] < first["push_reminder"] < first["day_of_reminder"]
    assert first["day_of_reminder"] < first["attendance_tracking"] < first["post_event_survey"]

    funnel = report.funnel.filter(pl.col("channel") == "all")
    counts = dict(zip(funnel["stage"], funnel["count"], strict=True))
    assert counts["invited"] > counts["opened"] > counts["clicked"] > 0
    assert 0 < counts["registered"] <= counts["clicked"]
    assert 0 < counts["attended"] <= counts["reminded"]
    assert 0 < counts["rated"] <= counts["attended"]
    # SES's reports came back through the provider feed: deliveries counted from them, not assumed.
    email = report.deliverability.filter(pl.col("channel") == "email").row(0, named=True)
    assert 0 < email["delivered"] <= email["sent"] and email["delivered"] + email["bounced"] <= email["sent"]
    # The event moved half-way: the update went to the people who had it in their calendar.
    updates = [run for run in report.timeline if run.job_name == "event_update"]
    assert updates and updates[0].success and updates[0].summary.get("sent", 0) > 0
