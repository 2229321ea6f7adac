"""The Dagster UI is the operator's console: the real webserver and daemon, driven through GraphQL.

An operator never runs Python: the daemon's sensor registers the events, the operator launches
training and a backfill of two events from the UI, and reads back materializations, check
results, sensor ticks and tagged runs there. This test does exactly that through the same
GraphQL API the UI uses (and `DagsterGraphQLClient` where it has a method), against
`dagster-webserver` and `dagster-daemon` started from this repository's `workspace.yaml` on
127.0.0.1, with their own DAGSTER_HOME (the repository's `dagster.yaml`) and EVENTREACH_HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient

from eventreach_assets.demo.generator import seed_warehouse
from eventreach_assets_tests.conftest import AS_OF
from eventreach_assets_tests.daemon_launcher import daemon_command
from eventreach_assets_tests.stand_ins import background_process, free_port, wait_for_http

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # .venv/bin: the dagster executables of this environment
PROFILES = 3_000  # small: every run takes seconds, the daemon's loop intervals dominate
SENSOR = "events_catalog_sensor"
BATCH_JOB = "weekly_batch"
TRAINING_JOB = "train_models"
BLOCKING_CHECKS = [
    ("filtered_candidates", "filtered_candidates_policy"),
    ("candidates_table", "candidates_table_matches_scored"),
]
CONSOLE_TAG = ("eventreach/requested-by", "operator-console-test")
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
# Bounds (seconds). The daemon's run queue wakes every 5 s; its backfill loop every 30 s in a deployment,
# every 3 s here (`daemon_launcher`).
START_TIMEOUT, SENSOR_TIMEOUT, TRAINING_TIMEOUT, BACKFILL_TIMEOUT = 120, 90, 120, 180


@dataclass
class Console:
    """The running webserver + daemon: where to reach them and what they logged."""

    port: int
    logs: dict[str, Path]
    client: DagsterGraphQLClient
    location: str = ""
    repository: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def log_tails(self, chars: int = 3_000) -> str:
        return "\n".join(f"--- {name} log (tail) ---\n{path.read_text(errors='replace')[-chars:]}"
                         for name, path in self.logs.items())  # fmt: skip

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """A raw POST to /graphql, as the UI makes it; GraphQL errors fail with the query's own message."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert not answer.get("errors"), f"GraphQL errors: {answer['errors']}"
        return answer["data"]

    @property
    def repository_selector(self) -> dict[str, str]:
        return {"repositoryLocationName": self.location, "repositoryName": self.repository}


def poll(what: str, timeout: float, probe: Callable[[], Any], describe: Callable[[], str], every: float = 2) -> Any:
    """Call `probe` until it returns something truthy, at most `timeout` seconds; fail with `describe()`."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not done after {timeout} s\n{describe()}")
        time.sleep(every)


@contextmanager
def running_console(tmp_path: Path, instance_yaml: str | None = None) -> Iterator[Console]:
    """Webserver and daemon on a fresh instance and data dir over a small seeded warehouse; both stopped after.

    `instance_yaml`: the instance's dagster.yaml text (default: the repository's local one); its
    `env:` settings are read from this process's environment, which both servers inherit.
    """
    dagster_home, home = tmp_path / "dagster_home", tmp_path / "home"
    dagster_home.mkdir()
    home.mkdir()
    if instance_yaml is None:
        shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    else:
        (dagster_home / "dagster.yaml").write_text(instance_yaml)
    seed_warehouse(home / "warehouse.duckdb", PROFILES, seed=11, as_of=AS_OF)
    # Create the instance's storage before the two servers start: left to them, both run the schema
    # migrations of a fresh SQLite storage at once and one dies ("table alembic_version already exists").
    dg.DagsterInstance.from_config(str(dagster_home)).dispose()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "EVENTREACH_HOME": str(home),
        "EVENTREACH_NOW": AS_OF.isoformat(),  # the sample events are upcoming relative to the seed's as_of
        "EVENTREACH_DEPLOYMENT": "local",
    }
    port = free_port()
    workspace = str(REPO / "workspace.yaml")
    logs = {"daemon": tmp_path / "daemon.log", "webserver": tmp_path / "webserver.log"}
    with (
        background_process(daemon_command(workspace), str(REPO), env, str(logs["daemon"])) as daemon,
        background_process(
            [str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(port)],
            str(REPO), env, str(logs["webserver"]),
        ) as webserver,
    ):  # fmt: skip
        started = time.monotonic()
        client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)
        result = Console(port=port, logs=logs, client=client)
        wait_for_http(f"http://127.0.0.1:{port}/server_info", START_TIMEOUT, [daemon, webserver], result.log_tails)
        result.timings["start"] = round(time.monotonic() - started, 1)
        yield result


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    """The console on the repository's local instance (SQLite storage, local run workers)."""
    with running_console(tmp_path) as result:
        yield result


# ---- GraphQL -------------------------------------------------------------------------------------

WORKSPACE = """
query { workspaceOrError { __typename
  ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } }
  ... on PythonError { message } } }"""

REPOSITORIES = """
query { repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
  ... on PythonError { message } } }"""

PARTITION_SETS = """
query($repo: RepositorySelector!, $job: String!) { partitionSetsOrError(repositorySelector: $repo, pipelineName: $job) {
  __typename ... on PartitionSets { results { name partitionsOrError { ... on Partitions { results { name } } } } }
  ... on PythonError { message } } }"""

SENSOR_TICKS = """
query($sensor: SensorSelector!) { sensorOrError(sensorSelector: $sensor) { __typename
  ... on Sensor { sensorState { status ticks(limit: 20) { status skipReason error { message }
    dynamicPartitionsRequestResults { partitionsDefName type partitionKeys } } } }
  ... on PythonError { message } } }"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) { __typename
  ... on LaunchBackfillSuccess { backfillId }
  ... on Error { message } } }"""

BACKFILL = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { status numPartitions error { message }
    runs { runId status tags { key value } } }
  ... on Error { message } } }"""

RUN_EVENTS = """
query($runId: ID!) { logsForRun(runId: $runId, limit: 2000) { __typename
  ... on EventConnection { events { __typename
    ... on MessageEvent { message stepKey }
    ... on ErrorEvent { error { message stack causes { message } } } } }
  ... on Error { message } } }"""

MATERIALIZATIONS = """
query($asset: AssetKeyInput!, $partitions: [String!]) { assetOrError(assetKey: $asset) { __typename
  ... on Asset { assetMaterializations(partitions: $partitions) { partition runId
    metadataEntries { label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } } } }
  ... on AssetNotFoundError { message } } }"""

CHECK_EXECUTIONS = """
query($asset: AssetKeyInput!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: $asset, checkName: $check, partition: $partition, limit: 10) {
    runId status partition evaluation { success severity metadataEntries { label } } } }"""

RUNS_BY_TAGS = """
query($filter: RunsFilter!) { runsOrError(filter: $filter) { __typename
  ... on Runs { results { runId jobName status tags { key value } } }
  ... on PythonError { message } } }"""


def location_loaded(console: Console) -> bool:
    """Whether the webserver finished loading the code location; a load error fails at once with its message."""
    answer = console.graphql(WORKSPACE)["workspaceOrError"]
    assert answer["__typename"] == "Workspace", answer
    entries = answer["locationEntries"]
    for entry in entries:
        assert (entry["locationOrLoadError"] or {}).get("__typename") != "PythonError", entry
    return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)


def discover_repository(console: Console) -> None:
    """The code location and repository that hold the batch job, as the UI lists them."""
    poll("code location loaded", START_TIMEOUT, lambda: location_loaded(console), console.log_tails)
    answer = console.graphql(REPOSITORIES)["repositoriesOrError"]
    assert answer["__typename"] == "RepositoryConnection", answer
    holding = [repo for repo in answer["nodes"] if BATCH_JOB in {job["name"] for job in repo["jobs"]}]
    assert len(holding) == 1, answer
    console.location, console.repository = holding[0]["location"]["name"], holding[0]["name"]


def partition_set(console: Console) -> tuple[str, list[str]]:
    """The batch job's partition set: its name (what a backfill targets) and its partition keys."""
    answer = console.graphql(PARTITION_SETS, {"repo": console.repository_selector, "job": BATCH_JOB})
    sets = answer["partitionSetsOrError"]
    assert sets["__typename"] == "PartitionSets" and len(sets["results"]) == 1, sets
    partitions = sets["results"][0]["partitionsOrError"].get("results", [])
    return sets["results"][0]["name"], [p["name"] for p in partitions]


def sensor_ticks(console: Console) -> list[dict[str, Any]]:
    selector = {**console.repository_selector, "sensorName": SENSOR}
    answer = console.graphql(SENSOR_TICKS, {"sensor": selector})["sensorOrError"]
    assert answer["__typename"] == "Sensor", answer
    return answer["sensorState"]["ticks"]


def run_errors(console: Console, run_id: str) -> str:
    """What went wrong in a run, from its event log: every error event's message, stack and causes."""
    answer = console.graphql(RUN_EVENTS, {"runId": run_id})["logsForRun"]
    if answer["__typename"] != "EventConnection":
        return f"no event log for {run_id}: {answer}"
    lines = []
    for event in answer["events"]:
        if event.get("error"):
            error = event["error"]
            causes = "".join(f"\n  caused by: {cause['message']}" for cause in error.get("causes") or [])
            lines.append(f"{event['__typename']} {event.get('stepKey') or ''}: {error['message']}{causes}\n"
                         f"{''.join(error.get('stack') or [])[-2_000:]}")  # fmt: skip
        elif event["__typename"] in {"RunFailureEvent", "ExecutionStepFailureEvent", "EngineEvent"}:
            lines.append(f"{event['__typename']} {event.get('stepKey') or ''}: {event.get('message')}")
    return f"run {run_id}:\n" + "\n".join(lines[-20:])


def metadata_values(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {entry["label"]: entry.get("intValue", entry.get("floatValue")) for entry in entries}


def tag_dict(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}


# ---- the test --------------------------------------------------------------------------------


@dataclass
class ConsoleSession:
    """What the operator's session produced: the batch job's partition set and the backfill's runs."""

    set_name: str
    backfill_id: str
    run_by_event: dict[str, str]


def test_operator_runs_the_weekly_batch_from_the_console(console: Console):
    """Sensor → partitions, training run, two-event backfill, then everything an operator reads back."""
    operate_weekly_batch(console)


def operate_weekly_batch(console: Console) -> ConsoleSession:
    """The operator's session, asserted step by step (shared with the production-instance test)."""
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        console.timings[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    discover_repository(console)
    expected_events = ["evt-cloud-summit", "evt-kubernetes-launch", "evt-mlops-training"]  # the seed's upcoming events

    # a. The daemon evaluates the catalog sensor (default RUNNING) and registers the events.
    set_name, keys = poll(
        "events partitions registered by the daemon's sensor",
        SENSOR_TIMEOUT,
        lambda: (found := partition_set(console))[1] and found,
        lambda: f"sensor ticks: {sensor_ticks(console)}\n{console.log_tails()}",
    )
    assert sorted(keys) == sorted(expected_events)
    lap("sensor")

    # b. Training, launched the way the UI's launchpad does.
    training_run = console.client.submit_job_execution(
        TRAINING_JOB, console.location, console.repository, tags=dict([CONSOLE_TAG])
    )
    training_status = poll(
        "train_models run finished",
        TRAINING_TIMEOUT,
        lambda: (status := console.client.get_run_status(training_run).value) in FINISHED and status,
        lambda: f"{run_errors(console, training_run)}\n{console.log_tails()}",
    )
    assert training_status == "SUCCESS", run_errors(console, training_run)
    lap("training")

    # c. A backfill of two events, with tags, run by the daemon.
    events = expected_events[:2]
    backfill_tag = ("eventreach/backfill-reason", "console-test")
    launched = console.graphql(LAUNCH_BACKFILL, {"params": {
        "selector": {"partitionSetName": set_name, "repositorySelector": console.repository_selector},
        "partitionNames": events,
        "tags": [{"key": k, "value": v} for k, v in (CONSOLE_TAG, backfill_tag)],
        "title": "operator console test",
    }})["launchPartitionBackfill"]  # fmt: skip
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def backfill() -> dict[str, Any]:
        answer = console.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert answer["__typename"] == "PartitionBackfill", answer
        return answer

    def backfill_failures() -> str:
        state = backfill()
        failed = [run["runId"] for run in state["runs"] if run["status"] != "SUCCESS"]
        return f"backfill {state}\n" + "\n".join(run_errors(console, run_id) for run_id in failed) + console.log_tails()

    done = poll(
        "backfill completed",
        BACKFILL_TIMEOUT,
        lambda: (state := backfill())["status"] not in {"REQUESTED", "CANCELING", "FAILING"} and state,
        backfill_failures,
        every=3,
    )
    assert done["status"] == "COMPLETED_SUCCESS", backfill_failures()
    lap("backfill")

    runs = done["runs"]
    assert len(runs) == 2 and {run["status"] for run in runs} == {"SUCCESS"}, runs
    run_by_event = {tag_dict(run)["dagster/partition"]: run["runId"] for run in runs}
    assert sorted(run_by_event) == sorted(events)

    # d. What the operator reads back.
    # Materializations of candidates_table for both events, each from its backfill run, with its metadata.
    answer = console.graphql(MATERIALIZATIONS, {"asset": {"path": ["candidates_table"]}, "partitions": events})
    materializations = answer["assetOrError"]["assetMaterializations"]
    assert sorted(m["partition"] for m in materializations) == sorted(events), materializations
    for materialization in materializations:
        assert materialization["runId"] == run_by_event[materialization["partition"]]
        metadata = metadata_values(materialization["metadataEntries"])
        assert metadata["items_written"] > 0, metadata
        assert metadata["customers"] > 0, metadata
        assert metadata["items_written"] == metadata["dagster/row_count"], metadata

    # Blocking checks: one passed execution per event, from that event's backfill run.
    for asset, check in BLOCKING_CHECKS:
        for event in events:
            variables = {"asset": {"path": [asset]}, "check": check, "partition": event}
            executions = console.graphql(CHECK_EXECUTIONS, variables)["assetCheckExecutions"]
            assert len(executions) == 1, (asset, check, event, executions)
            execution = executions[0]
            assert execution["status"] == "SUCCEEDED", execution
            assert execution["evaluation"]["success"] is True, execution
            assert execution["partition"] == event and execution["runId"] == run_by_event[event], execution

    # The sensor's history: the tick that added exactly the upcoming events, and no failed tick. Dagster
    # 1.13 records a tick that launched no run as SKIPPED even when it added partitions, so the sensor
    # says what it did in the skip reason, and the tick's partition requests are the evidence.
    ticks = sensor_ticks(console)
    added = [
        (tick["status"], sorted(request["partitionKeys"]))
        for tick in ticks
        for request in tick["dynamicPartitionsRequestResults"]
        if request["partitionsDefName"] == "events" and request["type"] == "ADD_PARTITIONS"
    ]
    assert [keys for _, keys in added] == [sorted(expected_events)], ticks
    assert added[0][0] in {"SUCCESS", "SKIPPED"} and "FAILURE" not in {tick["status"] for tick in ticks}, ticks
    assert any((tick["skipReason"] or "").startswith("added partitions evt-") for tick in ticks), ticks

    # Runs are findable by event and stage (a backfill's runs too), and carry the backfill's tags.
    for event in events:
        tags = [{"key": "eventreach/event", "value": event}, {"key": "eventreach/stage", "value": "weekly-batch"}]
        found = console.graphql(RUNS_BY_TAGS, {"filter": {"tags": tags}})["runsOrError"]["results"]
        assert [run["runId"] for run in found] == [run_by_event[event]], found
        run_tags = tag_dict(found[0])
        assert run_tags["dagster/backfill"] == backfill_id
        assert (run_tags.get(CONSOLE_TAG[0]), run_tags.get(backfill_tag[0])) == (CONSOLE_TAG[1], backfill_tag[1])
    tagged = console.graphql(RUNS_BY_TAGS, {"filter": {"tags": [{"key": backfill_tag[0], "value": backfill_tag[1]}]}})
    assert sorted(run["runId"] for run in tagged["runsOrError"]["results"]) == sorted(run_by_event.values())
    by_console = console.graphql(RUNS_BY_TAGS, {"filter": {"tags": [{"key": CONSOLE_TAG[0], "value": CONSOLE_TAG[1]}]}})
    assert {run["jobName"] for run in by_console["runsOrError"]["results"]} == {TRAINING_JOB, BATCH_JOB}
    lap("read-back")
    print(f"operator console timings (s): {console.timings}")
    return ConsoleSession(set_name, backfill_id, run_by_event)
