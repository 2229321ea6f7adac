"""The engagement assets through Dagster: feed files in, stored once, bad rows quarantined with reasons."""

from __future__ import annotations

import json
from datetime import timedelta

import dagster as dg
import duckdb
import polars as pl
import pytest

from eventreach_assets.domain.link_tokens import sign_link_token
from eventreach_assets.partitions import events_partitions
from eventreach_assets_tests.conftest import AS_OF, Deployment

pytestmark = pytest.mark.integration


def some_customers(deployment: Deployment, n: int) -> list[str]:
    with duckdb.connect(str(deployment.home / "warehouse.duckdb"), read_only=True) as warehouse:
        rows = warehouse.execute(
            "SELECT DISTINCT customer_id FROM customer_profiles WHERE customer_id IS NOT NULL ORDER BY 1 LIMIT ?", [n]
        ).fetchall()
    return [row[0] for row in rows]


def run_feed(deployment: Deployment, job: str, asset: str, files: list[str]) -> dg.ExecuteInProcessResult:
    return deployment.defs.resolve_job_def(job).execute_in_process(
        instance=deployment.instance, run_config={"ops": {asset: {"config": {"files": files}}}}
    )


def metadata_of(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    event = result.get_asset_materialization_events()[0]
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_registration_feed_stores_good_rows_once_and_quarantines_the_rest(deployment: Deployment):
    event_id = deployment.seed.upcoming_event_ids[0]
    secret = deployment.defs.resources["link_signing"].key()
    alice, bob = some_customers(deployment, 2)

    def registration(customer: str, token_customer: str, number: int) -> dict[str, str]:
        token = sign_link_token(secret, customer_id=token_customer, event_id=event_id, channel="email",
                                campaign_id=f"{event_id}:email:US", action="register")  # fmt: skip
        at = (AS_OF + timedelta(hours=number)).isoformat() + "Z"
        return {"registration_id": f"r{number}", "event_id": event_id, "customer_id": customer,
                "registered_at": at, "token": token}  # fmt: skip

    feed = deployment.defs.resources["engagement_feed"]
    feed.drop("registrations", "20261123T030000Z-0001.jsonl", [registration(alice, alice, 1)])
    folder = deployment.home / "feeds" / "registrations"
    (folder / "20261123T040000Z-0002.jsonl").write_text(
        json.dumps(registration(bob, alice, 2)) + "\n"  # bob with alice's link: forged
        + "{not json\n" + json.dumps(registration(alice, alice, 3)) + "\n"  # alice again: stored once
    )  # fmt: skip
    files = feed.new_files("registrations")
    first = metadata_of(run_feed(deployment, "registration_ingest", "ingested_registrations", files))
    assert first["accepted"] == 1 and first["rejected"] == 3
    stored = deployment.defs.resources["engagement"].registrations(event_id)
    assert stored["customer_id"].to_list() == [alice] and stored["channel"].to_list() == ["email"]
    quarantine = pl.read_parquet(str(first["quarantine"]))
    assert sorted(quarantine["reason"].to_list()) == ["duplicate", "malformed_record", "token_mismatch"]
    assert "{not json" in quarantine["raw"].to_list()
    # A retried run (same files) changes nothing.
    again = metadata_of(run_feed(deployment, "registration_ingest", "ingested_registrations", files))
    assert again["accepted"] == 0 and deployment.defs.resources["engagement"].registrations(event_id).height == 1


def test_an_unsubscribe_click_stops_every_later_send(deployment: Deployment):
    event_id = deployment.seed.upcoming_event_ids[0]
    secret = deployment.defs.resources["link_signing"].key()
    [carol] = some_customers(deployment, 1)
    token = sign_link_token(secret, customer_id=carol, event_id=event_id, channel="email",
                            campaign_id=f"{event_id}:email:US", action="unsubscribe")  # fmt: skip
    feed = deployment.defs.resources["engagement_feed"]
    at = (AS_OF + timedelta(minutes=5)).isoformat() + "Z"
    feed.drop("tracking", "20261123T030000Z-0001.jsonl", [{"token": token, "path": "unsubscribe", "occurred_at": at}])
    result = run_feed(deployment, "tracking_ingest", "link_interactions", ["20261123T030000Z-0001.jsonl"])
    assert metadata_of(result)["accepted"] == 1
    ledger = deployment.defs.resources["ledger"]
    for channel in ("email", "in-app", "push"):
        assert ledger.opted_out(pl.Series([carol]), channel) == {carol}


def test_attendance_waits_for_the_platform_export(deployment: Deployment):
    from eventreach_assets.assets.campaigns import NEXT_DUE_AT

    event_id = deployment.seed.upcoming_event_ids[0]
    deployment.instance.add_dynamic_partitions(events_partitions.name, [event_id])
    result = deployment.defs.resolve_job_def("attendance_tracking").execute_in_process(
        instance=deployment.instance, partition_key=event_id
    )
    metadata = metadata_of(result)
    assert metadata["export_received"] is False and metadata["attended"] == 0
    assert metadata[NEXT_DUE_AT] == (AS_OF + timedelta(hours=1)).isoformat()  # the sensor looks again then
