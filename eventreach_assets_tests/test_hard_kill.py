"""A send killed with SIGKILL mid-campaign: detected, failed, alerted, its slot freed, finished by the retry.

Issue 10, defect 4. The real `dagster-daemon` and `dagster-webserver` run this repository's
`workspace.yaml` and `dagster.yaml` (run monitoring, pools, run retries) on 127.0.0.1 with their
own DAGSTER_HOME and EVENTREACH_HOME. The weekly batch runs in this process first; then the
operator launches `email_campaign` for one event, its local outbox slowed to 0.1 s per message,
and once a few messages are out the run worker gets SIGKILL, as from the OOM killer. Nothing in
the run can react. Then, within bounds: run monitoring marks the run FAILURE, the run-failure
sensor alerts and gives the run's unattempted reservations back, the channel-email pool slot is
freed, and the automatic retry (run_retries) sends everyone else; each customer's .eml exists
once, the ones written before the kill untouched (nobody messaged twice), at most the in-flight ones in doubt.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from dagster._core.events import DagsterEventType
from dagster_graphql import DagsterGraphQLClient

from eventreach_assets.demo.generator import seed_warehouse
from eventreach_assets.demo.run import run_weekly_batch
from eventreach_assets.deployments import CAMPAIGN_SQLITE
from eventreach_assets.resources.ledger import SqliteDeliveryLedger
from eventreach_assets.run_launcher import STARTED_PREFIX
from eventreach_assets_tests.conftest import AS_OF, Deployment
from eventreach_assets_tests.stand_ins import background_process, free_port, wait_for_http
from eventreach_assets_tests.test_operator_console import (
    BIN,
    REPO,
    START_TIMEOUT,
    Console,
    discover_repository,
    poll,
    run_errors,
)

pytestmark = pytest.mark.integration

PROFILES = 12_000  # New York's segment (the wave the test kills) is a few dozen emails
JOB = "email_campaign"
DELAY = 0.1  # seconds per message in the outbox: the kill lands mid-send
KILL_AFTER = 5  # .eml files written before the SIGKILL
IN_FLIGHT = 4  # the channel's concurrency: at most this many messages in the provider's hands at the kill
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
# Bounds (seconds): run monitoring polls every 5 s, the failure sensor every 5 s, the run queue every 5 s.
DETECT_TIMEOUT, ALERT_TIMEOUT, RETRY_TIMEOUT = 45, 60, 120


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Console, Path, dg.DagsterInstance, str]]:
    """A batch-scored event in a fresh instance, then the daemon and webserver over it."""
    dagster_home, home = tmp_path / "dagster_home", tmp_path / "home"
    dagster_home.mkdir()
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    seed_warehouse(home / "warehouse.duckdb", PROFILES, seed=11, as_of=AS_OF)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "EVENTREACH_HOME": str(home),
            # The send runs when New York's segment is due (10:00 EST): invitations go out in local waves.
            "EVENTREACH_NOW": (AS_OF + timedelta(hours=13)).isoformat(),
            "EVENTREACH_DEPLOYMENT": "local",
        }
        port = free_port()
        workspace = str(REPO / "workspace.yaml")
        logs = {"daemon": tmp_path / "daemon.log", "webserver": tmp_path / "webserver.log"}
        with (
            background_process([str(BIN / "dagster-daemon"), "run", "-w", workspace], str(REPO), env,
                               str(logs["daemon"])) as daemon,
            background_process(
                [str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(port)],
                str(REPO), env, str(logs["webserver"]),
            ) as webserver,
        ):  # fmt: skip
            started = time.monotonic()
            console = Console(port=port, logs=logs, client=DagsterGraphQLClient("127.0.0.1", port_number=port))
            wait_for_http(f"http://127.0.0.1:{port}/server_info", START_TIMEOUT, [daemon, webserver],
                          console.log_tails)  # fmt: skip
            discover_repository(console)
            console.timings["servers_ready"] = round(time.monotonic() - started, 1)
            # The test launches the send itself: the event-date sensor would launch its own wave as soon
            # as the batch is ready, so it is stopped (as an operator would, in the UI) before the batch.
            stop_sensor(console, "event_lifecycle_sensor")
            reports, _ = run_weekly_batch(home, instance, fixed_now=AS_OF.isoformat(), limit=1)
            event_id = reports[0].event_id
            console.timings["batch"] = round(time.monotonic() - started, 1)
            yield console, home, instance, event_id
    finally:
        instance.dispose()


SENSOR_ID = """query($sensor: SensorSelector!) { sensorOrError(sensorSelector: $sensor) { __typename
  ... on Sensor { id } ... on PythonError { message } } }"""
STOP_SENSOR = """mutation($id: String!) { stopSensor(id: $id) { __typename
  ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }"""


def stop_sensor(console: Console, name: str) -> None:
    """Stop a sensor through the UI's GraphQL API, as an operator's toggle does."""
    found = console.graphql(SENSOR_ID, {"sensor": {**console.repository_selector, "sensorName": name}})
    assert found["sensorOrError"]["__typename"] == "Sensor", found
    stopped = console.graphql(STOP_SENSOR, {"id": found["sensorOrError"]["id"]})["stopSensor"]
    assert stopped["__typename"] == "StopSensorMutationResult", stopped
    assert stopped["instigationState"]["status"] == "STOPPED", stopped


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid, from its "Started process for run (pid: N)" engine event."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    for record in records:
        entry = record.event_log_entry
        if (entry.message or "").startswith(STARTED_PREFIX) and entry.dagster_event:
            return int(entry.dagster_event.engine_event_data.metadata["pid"].value)
    return None


def outbox(home: Path) -> dict[Path, Any]:
    """Every .eml in the outbox, parsed (a file being renamed into place is skipped)."""
    parsed = {}
    for path in sorted((home / "outbox" / "email").glob("*.eml")):
        parsed[path] = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    return parsed


def test_a_sigkilled_send_is_failed_alerted_freed_and_finished_by_the_retry_without_duplicates(stack):
    console, home, instance, event_id = stack
    run_config = {
        "resources": {
            "email_channel": {
                "config": {
                    "outbox_dir": str(home / "outbox" / "email"),
                    "send_delay_seconds": DELAY,
                    "concurrency": IN_FLIGHT,
                }
            }
        }
    }
    run_id = console.client.submit_job_execution(
        JOB, console.location, console.repository, run_config=run_config,
        tags={"dagster/partition": event_id, "eventreach/event": event_id},
    )  # fmt: skip
    pid = poll(
        "run worker started", 60, lambda: worker_pid(instance, run_id),
        lambda: f"{run_errors(console, run_id)}\n{console.log_tails()}", every=0.2,
    )  # fmt: skip
    poll(
        f"{KILL_AFTER} messages in the outbox", 90,
        lambda: len(list((home / "outbox" / "email").glob("*.eml"))) >= KILL_AFTER,
        lambda: f"{run_errors(console, run_id)}\n{console.log_tails()}", every=0.05,
    )  # fmt: skip
    holding = instance.event_log_storage.get_concurrency_info("channel-email")
    assert run_id in {slot.run_id for slot in holding.claimed_slots}  # the send holds the channel's one slot
    os.kill(pid, signal.SIGKILL)  # what the OOM killer does: no except, no finally, no atexit
    killed_at = time.monotonic()
    before = {path: str(message["Message-ID"]) for path, message in outbox(home).items()}
    assert len(before) >= KILL_AFTER

    # 1. Detected and ended: run monitoring (or the code server) marks the dead run FAILURE.
    poll(
        "killed run marked FAILURE", DETECT_TIMEOUT,
        lambda: instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE,
        lambda: f"status {instance.get_run_by_id(run_id).status}\n{console.log_tails()}", every=0.5,
    )  # fmt: skip
    detected_after = time.monotonic() - killed_at

    # 2. The operator is alerted, and the sensor released the run's unattempted reservations.
    alerts = home / "alerts.jsonl"

    def alerted() -> list[dict[str, Any]]:
        lines = alerts.read_text().splitlines() if alerts.exists() else []
        return [alert for alert in map(json.loads, lines) if alert["run_id"] == run_id]

    [alert] = poll("failure alert written", ALERT_TIMEOUT, alerted, console.log_tails, every=0.5)
    assert alert["job_name"] == JOB and alert["partition"] == event_id

    # The sensor tags the run just after the alert is written: wait for the tags, not only the file.
    def tagged_alerted() -> dict[str, str] | None:
        tags = instance.get_run_by_id(run_id).tags
        return tags if tags.get("eventreach/alerted") == "yes" else None

    tags = poll("run tagged alerted", ALERT_TIMEOUT, tagged_alerted, console.log_tails, every=0.2)
    assert int(tags["eventreach/in_doubt"]) <= IN_FLIGHT, tags

    # 3. The pool slot is free: the automatic retry's email step gets it and finishes the campaign.
    def retry() -> dg.DagsterRun | None:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))
        return runs[0] if runs and runs[0].status.value in FINISHED else None

    retried = poll("retry run finished", RETRY_TIMEOUT, retry, console.log_tails, every=1)
    assert retried.status == dg.DagsterRunStatus.SUCCESS, run_errors(console, retried.run_id)
    # Only the monitoring daemon frees a dead run's slot (free_slots_after_run_end_seconds): the retry
    # could not have run otherwise, and nothing holds the channel now.
    released_slot = instance.event_log_storage.get_concurrency_info("channel-email")
    assert not released_slot.claimed_slots and not released_slot.pending_steps
    assert len(alerted()) == 1  # once, though monitoring and the code server may both report the failure
    retry_started = instance.get_run_record_by_id(retried.run_id).start_time
    failed_at = instance.get_run_record_by_id(run_id).end_time

    # 4. What left the system: one .eml per planned customer, the ones from before the kill untouched.
    ledger = SqliteDeliveryLedger(path=str(home / CAMPAIGN_SQLITE))
    try:
        rows = ledger.deliveries(event_id, channel="email", kind="invitation")
    finally:
        ledger.close()
    statuses = Counter(rows["status"])
    assert statuses["in_doubt"] <= IN_FLIGHT, statuses
    assert set(statuses) <= {"sent", "in_doubt", "held_out", "suppressed", "failed_permanent"}, statuses
    assert rows.filter(pl.col("sends") > 1).is_empty()
    # The retry's own materialization (the event-date sensor may launch later waves that find nothing to do).
    [record] = instance.get_records_for_run(retried.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    planned = record.event_log_entry.asset_materialization.metadata["planned"].value
    after = outbox(home)
    recipients = Counter(str(message["To"]) for message in after.values())
    assert max(recipients.values()) == 1, recipients.most_common(3)
    reached = statuses["sent"] + statuses["in_doubt"]
    # The retry planned exactly what the killed run never attempted: everything else was the killed run's
    # (the files written before the kill, plus the in-flight ones killed before their file was written).
    in_doubt = statuses["in_doubt"]
    assert planned >= 1
    assert len(before) <= reached - planned <= len(before) + in_doubt, (reached, planned, len(before))
    assert reached - in_doubt <= len(after) <= reached  # each in-doubt message was written, or killed just before
    assert len(after) >= statuses["sent"] > len(before)
    assert {path: str(after[path]["Message-ID"]) for path in before} == before  # none of them sent again
    runs = [(r.job_name, r.status.value, r.tags.get("dagster/partition")) for r in instance.get_runs()]
    print(f"\nSIGKILL → FAILURE in {detected_after:.1f} s, retry started {retry_started - failed_at:.1f} s after "
          f"the failure, retry done {time.monotonic() - killed_at:.1f} s after the "
          f"kill; planned {planned}, {dict(statuses)}; released {tags['eventreach/released']}; "
          f"timings {console.timings}; runs {runs}")  # fmt: skip


def test_the_failure_sensor_releases_the_runs_reservations_and_alerts_once(deployment: Deployment):
    """The sensor alone, invoked as the daemon does, twice for the same failure (as after a SIGKILL)."""
    from eventreach_assets.domain.delivery import DeliveryKey, MessageKind
    from eventreach_assets.partitions import events_partitions
    from eventreach_assets.resources.ledger import keys_frame

    deployment.instance.add_dynamic_partitions(events_partitions.name, ["evt-gone"])
    result = deployment.defs.resolve_job_def("weekly_batch").execute_in_process(
        instance=deployment.instance, partition_key="evt-gone", raise_on_error=False
    )
    assert not result.success
    ledger = deployment.defs.resources["ledger"]
    keys = [DeliveryKey(f"c{i}", "evt-gone", "email", MessageKind.INVITATION) for i in range(4)]
    ledger.reserve(keys_frame(keys, "camp"), now=AS_OF, owner=result.run_id)  # what the killed send left
    ledger.mark_sent(keys[0], "m-0", AS_OF)
    assert ledger.mark_attempting(keys[1], AS_OF, AS_OF)  # in the provider's hands at the kill
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    sensor = deployment.defs.resolve_sensor_def("run_failure_alert_sensor")
    for _ in range(2):
        run = deployment.instance.get_run_by_id(result.run_id)
        with dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_event=failure, dagster_instance=deployment.instance, dagster_run=run,
            resources=deployment.defs.resources,
        ) as context:  # fmt: skip
            sensor(context.for_run_failure())
    lines = (deployment.home / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == [result.run_id]
    tags = deployment.instance.get_run_by_id(result.run_id).tags
    assert (tags["eventreach/released"], tags["eventreach/in_doubt"]) == ("2", "1")
    rows = dict(ledger.deliveries("evt-gone").select("customer_id", "status").iter_rows())
    assert rows == {"c0": "sent", "c1": "in_doubt", "c2": "failed_transient", "c3": "failed_transient"}
