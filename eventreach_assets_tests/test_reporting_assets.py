"""The daily metrics and the campaign report through Dagster, on a hand-built campaign with known numbers."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from eventreach_assets.definitions import build_definitions
from eventreach_assets.domain.delivery import DeliveryKey, MessageKind
from eventreach_assets.partitions import events_partitions
from eventreach_assets.resources.ledger import keys_frame

EVENT = "evt-report"
SENT_AT = datetime(2026, 11, 23, 10, 0)


@pytest.fixture
def campaign(tmp_path: Path) -> tuple[dg.Definitions, dg.DagsterInstance]:
    """10 emails and 4 banners sent; 4 opens, 3 clicks, 2 registrations (1 email, 1 in-app), 1 attendee."""
    (tmp_path / "dagster_home").mkdir()
    defs = build_definitions(home=tmp_path / "home", fixed_now=(SENT_AT + timedelta(days=10)).isoformat())
    ledger, store = defs.resources["ledger"], defs.resources["engagement"]
    customers = [f"c{n:02d}" for n in range(10)]

    def send(channel: str, who: list[str]) -> None:
        keys = [DeliveryKey(c, EVENT, channel, MessageKind.INVITATION) for c in who]
        ledger.reserve(keys_frame(keys, f"{EVENT}:{channel}:US"), now=SENT_AT)
        for key in keys:
            ledger.mark_sent(key, f"id-{channel}-{key.customer_id}", now=SENT_AT)

    send("email", customers)
    send("in-app", customers[:4])
    at = SENT_AT + timedelta(hours=1)
    store.record_interactions(pl.DataFrame({
        "event_id": [EVENT] * 5, "customer_id": ["c00", "c01", "c02", "c03", "c01"],
        "channel": ["email", "email", "email", "in-app", "email"],
        "campaign_id": [f"{EVENT}:email:US"] * 3 + [f"{EVENT}:in-app:US", f"{EVENT}:email:US"],
        "action": ["open", "open", "open", "click", "click"], "occurred_at": [at] * 5,
    }))  # fmt: skip
    store.record_registrations(pl.DataFrame({
        "event_id": [EVENT, EVENT], "customer_id": ["c01", "c03"], "registration_id": ["r1", "r2"],
        "registered_at": [at + timedelta(hours=1)] * 2, "channel": ["email", "in-app"],
        "campaign_id": [f"{EVENT}:email:US", f"{EVENT}:in-app:US"],
    }), "registered", now=at)  # fmt: skip
    store.record_attendance(pl.DataFrame({
        "event_id": [EVENT], "customer_id": ["c01"], "joined_at": [at + timedelta(days=2)], "minutes_watched": [40],
    }))  # fmt: skip
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        instance.add_dynamic_partitions(events_partitions.name, [EVENT])
        yield defs, instance


def values(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    event = next(e for e in result.get_asset_materialization_events()
                 if e.materialization.asset_key.to_user_string() == asset)  # fmt: skip
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_campaign_report_from_the_ledger_and_engagement(campaign: tuple[dg.Definitions, dg.DagsterInstance]):
    defs, instance = campaign
    result = defs.resolve_job_def("campaign_report_job").execute_in_process(instance=instance, partition_key=EVENT)
    assert result.success
    metadata = values(result, "campaign_report")
    rows = {record.data["channel"]: record.data for record in metadata["channels"].records}
    assert (rows["email"]["sent"], rows["email"]["registered"]) == (10, 1)
    assert (rows["in-app"]["sent"], rows["in-app"]["registered"]) == (4, 1)
    assert rows["all"]["registered"] == 2 and rows["all"]["attended"] == 1
    assert metadata["attribution_rule"] == "last-touch"
    assert "not enough data" in str(metadata["lift"])  # no held-out arm in this campaign
    assert str(metadata["funnel_chart"]).startswith("![funnel](data:image/png;base64,")
    html = Path(str(metadata["report"])).read_text()
    assert EVENT in html and "<img" in html
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"funnel_monotone": True, "attribution_sums_to_registrations": True,
                      "attendance_within_registrations": True}  # fmt: skip


def test_daily_metrics_count_the_day_and_the_freshness_check(campaign: tuple[dg.Definitions, dg.DagsterInstance]):
    defs, instance = campaign
    day = SENT_AT.date().isoformat()
    result = defs.resolve_job_def("daily_metrics_job").execute_in_process(instance=instance, partition_key=day)
    assert result.success
    metadata = values(result, "daily_metrics")
    assert metadata["datums_published"] > 0
    published = defs.resources["metrics_sink"].read()
    assert not published.is_empty()
    freshness = defs.resolve_job_def("daily_metrics_freshness")
    later = build_definitions(home=Path(defs.resources["ledger"].path).parent,
                              fixed_now=(SENT_AT + timedelta(days=1, minutes=30)).isoformat())  # fmt: skip
    [present] = (
        later.resolve_job_def("daily_metrics_freshness")
        .execute_in_process(instance=instance, raise_on_error=False)
        .get_asset_check_evaluations()
    )
    assert present.passed
    [missing] = freshness.execute_in_process(instance=instance, raise_on_error=False).get_asset_check_evaluations()
    assert not missing.passed  # ten days later, yesterday's metrics were never run


def test_a_report_before_anything_was_sent(campaign: tuple[dg.Definitions, dg.DagsterInstance]):
    defs, instance = campaign
    instance.add_dynamic_partitions(events_partitions.name, ["evt-quiet"])
    job = defs.resolve_job_def("campaign_report_job")
    result = job.execute_in_process(instance=instance, partition_key="evt-quiet")
    assert result.success
    rows = {record.data["channel"]: record.data for record in values(result, "campaign_report")["channels"].records}
    assert rows["all"]["sent"] == 0 and rows["all"]["registered"] == 0
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_a_quiet_day_publishes_nothing_and_says_so(campaign: tuple[dg.Definitions, dg.DagsterInstance]):
    defs, instance = campaign
    quiet_day = (SENT_AT - timedelta(days=3)).date().isoformat()
    result = defs.resolve_job_def("daily_metrics_job").execute_in_process(instance=instance, partition_key=quiet_day)
    assert result.success
    metadata = values(result, "daily_metrics")
    assert metadata["datums_published"] == 0 and metadata["events"] == 1
