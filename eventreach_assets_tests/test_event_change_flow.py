"""When the event changes after the invitations went out, through the real sensors and jobs.

A reschedule sends one update per new date (same calendar UID, SEQUENCE up, METHOD:REQUEST) and
the reminders follow the new date; a cancellation sends one cancellation (METHOD:CANCEL) by email
and a push to registrants, then nothing else; a freed seat promotes the earliest waitlisted
customer, who gets one confirmation. Everything is read back from the outboxes (the bytes sent).
"""

from __future__ import annotations

import email
import json
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

import dagster as dg
import duckdb
import icalendar
import polars as pl
import pytest

from eventreach_assets.assets.campaigns import REASON
from eventreach_assets.definitions import build_definitions
from eventreach_assets.demo.run import run_waves
from eventreach_assets.resources.campaign_services import EVENT_CANCELLED
from eventreach_assets_tests.conftest import AS_OF, BatchedSnapshot, Deployment
from eventreach_assets_tests.test_lifecycle import evaluate

pytestmark = pytest.mark.integration
HEADERS = BytesHeaderParser(policy=policy.default)


def at(deployment: Deployment, now: datetime) -> dg.Definitions:
    return build_definitions(home=deployment.home, fixed_now=now.isoformat())


def launch(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Run what a sensor asked for, as the daemon would (same job, partition, tags)."""
    result = defs.resolve_job_def(request.job_name).execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags
    )
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert all(checks.values()), checks
    return result


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [event] = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def is_kind(campaign: str, kind: str) -> bool:
    """Whether an X-EventReach-Campaign header names this message kind (invitations: channel, no kind)."""
    return f":{kind}:" in campaign or (
        kind == "invitation" and campaign.split(":")[1] == "email" and campaign.count(":") == 4
    )


def emails(deployment: Deployment, kind: str) -> list[EmailMessage]:
    """The .eml files of one message kind in the outbox, parsed from their bytes (the headers of each
    file pick the kind; only those files are parsed whole: the outbox holds every invitation)."""
    chosen = []
    for path in sorted((deployment.home / "outbox" / "email").glob("*.eml")):
        raw = path.read_bytes()
        if is_kind(str(HEADERS.parsebytes(raw)["X-EventReach-Campaign"]), kind):
            chosen.append(email.message_from_bytes(raw, policy=policy.default))
    return chosen


def pushes(deployment: Deployment, kind: str) -> list[dict]:
    documents = [json.loads(p.read_text()) for p in (deployment.home / "outbox" / "push").glob("*.json")]
    return [document for document in documents if document["kind"] == kind]


def calendar(message: EmailMessage) -> icalendar.Calendar:
    part = next(part for part in message.walk() if part.get_content_type() == "text/calendar")
    return icalendar.Calendar.from_ical(part.get_payload(decode=True))


def event_of(message: EmailMessage) -> icalendar.Event:
    return calendar(message).walk("VEVENT")[0]


@pytest.fixture
def deployment(batched_deployment: Deployment) -> Deployment:
    """Every test here starts right after the weekly batch of one event: a copy of the session's batch."""
    return batched_deployment


@pytest.fixture
def batched(deployment: Deployment, batched_snapshot: BatchedSnapshot, tmp_path: Path) -> str:
    """The first event, batched, with a private copy of the warehouse (these tests change its catalog)."""
    private = tmp_path / "warehouse.duckdb"
    private.write_bytes((deployment.home / "warehouse.duckdb").read_bytes())
    (deployment.home / "warehouse.duckdb").unlink()
    (deployment.home / "warehouse.duckdb").symlink_to(private)
    return batched_snapshot.event_id


def send_invitations(deployment: Deployment, event_id: str, until: datetime | None = None) -> None:
    waves = run_waves(deployment.home, deployment.instance, event_id, "email_campaign", AS_OF, until)
    assert all(wave.result.success for wave in waves)


def catalog_cursor(deployment: Deployment) -> str:
    recorded = evaluate(deployment.defs, deployment.instance, "events_catalog_sensor")
    assert recorded.run_requests == []
    return recorded.cursor


def change_catalog(deployment: Deployment, sql: str, event_id: str) -> None:
    with duckdb.connect(str(deployment.home / "warehouse.duckdb")) as connection:
        connection.execute(sql, [event_id])


def start_of(deployment: Deployment, event_id: str) -> datetime:
    events = deployment.defs.resources["warehouse"].events()
    return events.filter(pl.col("event_id") == event_id)["start_time_utc"][0]


def registrants(deployment: Deployment, event_id: str) -> set[str]:
    return set(deployment.defs.resources["services"].registered(event_id, AS_OF)["customer_id"])


def test_a_reschedule_moves_every_calendar_entry_once_and_the_reminder_follows(deployment: Deployment, batched: str):
    event_id = batched
    send_invitations(deployment, event_id, until=AS_OF + timedelta(hours=14))  # the first waves
    cursor = catalog_cursor(deployment)
    invitations = {str(m["To"]): m for m in emails(deployment, "invitation")}
    assert invitations
    old_start = start_of(deployment, event_id)
    reminded = launch(at(deployment, old_start - timedelta(hours=23)), deployment.instance, dg.RunRequest(
        job_name="push_reminder", partition_key=event_id))  # fmt: skip
    assert metadata(reminded)["sent"] == len(registrants(deployment, event_id)) > 0

    change_catalog(deployment, "UPDATE events SET start_time_utc = start_time_utc + INTERVAL 2 DAY WHERE event_id = ?",
                   event_id)  # fmt: skip
    new_start = old_start + timedelta(days=2)
    tick = evaluate(deployment.defs, deployment.instance, "events_catalog_sensor", cursor=cursor)
    [request] = tick.run_requests
    assert request.job_name == "event_update" and request.partition_key == event_id
    assert evaluate(deployment.defs, deployment.instance, "events_catalog_sensor", cursor=tick.cursor).skip_message

    now = old_start - timedelta(hours=20)
    result = launch(at(deployment, now), deployment.instance, request)
    updates = emails(deployment, "update")
    recipients = {str(m["To"]) for m in updates}
    assert len(updates) == len(recipients) == metadata(result)["sent"]
    assert set(invitations) <= recipients  # every invitee; registrants who were never invited too
    for message in updates:
        entry = event_of(message)
        assert str(calendar(message)["METHOD"]) == "REQUEST"
        assert int(entry["SEQUENCE"]) == 1
        assert entry.decoded("DTSTART").replace(tzinfo=None) == new_start
        if str(message["To"]) in invitations:  # the same calendar entry as the invitation's
            assert str(entry["UID"]) == str(event_of(invitations[str(message["To"])])["UID"])
    again = launch(at(deployment, now), deployment.instance, request)
    assert metadata(again)["sent"] == 0 and len(emails(deployment, "update")) == len(updates)

    # The push reminder sent for the old date is sent once more for the new date, once.
    before = len(pushes(deployment, "reminder"))
    for _ in range(2):
        launch(at(deployment, new_start - timedelta(hours=23)), deployment.instance,
               dg.RunRequest(job_name="push_reminder", partition_key=event_id))  # fmt: skip
    assert len(pushes(deployment, "reminder")) == 2 * before


def test_a_cancellation_reaches_everyone_once_and_stops_everything_else(deployment: Deployment, batched: str):
    event_id = batched
    send_invitations(deployment, event_id, until=AS_OF + timedelta(hours=14))  # the first waves only
    cursor = catalog_cursor(deployment)
    invitees = {str(m["To"]) for m in emails(deployment, "invitation")}
    change_catalog(deployment, "UPDATE events SET status = 'cancelled' WHERE event_id = ?", event_id)
    tick = evaluate(deployment.defs, deployment.instance, "events_catalog_sensor", cursor=cursor)
    assert sorted(r.job_name for r in tick.run_requests) == ["event_cancellation_email", "event_cancellation_push"]
    now = AS_OF + timedelta(days=1)
    for request in tick.run_requests:
        launch(at(deployment, now), deployment.instance, request)
        launch(at(deployment, now), deployment.instance, request)  # a repeat sends nothing more

    cancellations = emails(deployment, "cancellation")
    assert invitees <= {str(m["To"]) for m in cancellations}
    assert len(cancellations) == len({str(m["To"]) for m in cancellations})
    for message in cancellations:
        assert str(calendar(message)["METHOD"]) == "CANCEL"
        assert str(event_of(message)["STATUS"]) == "CANCELLED" and int(event_of(message)["SEQUENCE"]) >= 1
    assert {p["customer_id"] for p in pushes(deployment, "cancellation")} == registrants(deployment, event_id)

    # Nothing else goes out for a cancelled event, whatever launches it.
    start = start_of(deployment, event_id)
    late = (("push_reminder", start - timedelta(hours=23)), ("day_of_reminder", start - timedelta(hours=1)))
    for job, moment in (("email_campaign", now), ("in_app_campaign", now), ("event_update", now), *late):
        result = launch(at(deployment, moment), deployment.instance,
                        dg.RunRequest(job_name=job, partition_key=event_id))  # fmt: skip
        assert metadata(result)[REASON] == EVENT_CANCELLED


def test_a_cancelled_registration_promotes_the_earliest_waitlisted_customer_once(deployment: Deployment, batched: str):
    from eventreach_assets.domain.engagement_schemas import REGISTERED, WAITLISTED

    event_id = batched
    engagement = deployment.defs.resources["engagement"]
    seated = sorted(registrants(deployment, event_id))
    # The event is full: capacity = those registered; three customers wait, in this order.
    change_catalog(deployment, f"UPDATE events SET capacity = {len(seated)} WHERE event_id = ?", event_id)
    with duckdb.connect(str(deployment.home / "warehouse.duckdb"), read_only=True) as connection:
        others = [row[0] for row in connection.execute(
            "SELECT DISTINCT customer_id FROM customer_profiles WHERE email IS NOT NULL ORDER BY customer_id LIMIT 50"
        ).fetchall() if row[0] not in seated][:3]  # fmt: skip
    late, first, second = others
    waiting = pl.DataFrame({
        "event_id": [event_id] * 3, "customer_id": [late, first, second], "registration_id": ["r3", "r1", "r2"],
        "registered_at": [AS_OF + timedelta(hours=h) for h in (30, 10, 20)],
    })  # fmt: skip
    engagement.record_registrations(waiting, WAITLISTED, AS_OF + timedelta(days=2))
    # One registered customer cancels through the registrations feed; the ingest run says so.
    canceller = seated[0]
    engagement.record_registrations(
        pl.DataFrame({"event_id": [event_id], "customer_id": [canceller], "registration_id": ["x"],
                      "registered_at": [AS_OF]}), REGISTERED, AS_OF + timedelta(days=2))  # fmt: skip
    feed = deployment.defs.resources["engagement_feed"]
    cancelled_at = (AS_OF + timedelta(days=2, hours=1)).isoformat()
    feed.drop(
        "registrations",
        "20261125T030000Z-0001.jsonl",
        [{"action": "cancel", "event_id": event_id, "customer_id": canceller, "cancelled_at": cancelled_at}],
    )
    now = AS_OF + timedelta(days=2, hours=2)
    tick = evaluate(at(deployment, now), deployment.instance, "registrations_feed_sensor")
    [ingest_request] = tick.run_requests
    ingest = (
        at(deployment, now)
        .resolve_job_def("registration_ingest")
        .execute_in_process(instance=deployment.instance, run_config=ingest_request.run_config)
    )
    assert ingest.success

    sensor = deployment.defs.resolve_sensor_def("waitlist_promotion_sensor")
    run = deployment.instance.get_run_by_id(ingest.run_id)
    success = next(e for e in ingest.all_events if e.event_type_value == "PIPELINE_SUCCESS")
    with dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=success, dagster_instance=deployment.instance, dagster_run=run,
    ) as context:  # fmt: skip
        [request] = sensor(context)
    assert request.partition_key == event_id

    promotion = dg.RunRequest(job_name="waitlist_promotion", partition_key=event_id, tags=request.tags)
    result = launch(at(deployment, now), deployment.instance, promotion)
    assert metadata(result)["promoted"] == 1
    status = engagement.registrations(event_id).filter(pl.col("customer_id").is_in(others))
    assert dict(status.select("customer_id", "status").iter_rows()) == {
        first: REGISTERED, second: WAITLISTED, late: WAITLISTED,
    }  # fmt: skip
    again = launch(at(deployment, now), deployment.instance,
                   dg.RunRequest(job_name="waitlist_promotion", partition_key=event_id))  # fmt: skip
    assert metadata(again)["promoted"] == 0 and metadata(again)[REASON]
    [confirmation] = emails(deployment, "waitlist-confirmation")
    assert metadata(result)["sent"] == 1 and metadata(again)["sent"] == 0
    contact = deployment.defs.resources["warehouse"].contacts([first])
    assert str(confirmation["To"]) == contact["email"][0]
    assert str(calendar(confirmation)["METHOD"]) == "REQUEST"
