"""The local run launcher: Dagster's default one, plus the worker health check run monitoring needs.

`DefaultRunLauncher` starts each run in a process of the code server, but cannot tell run
monitoring whether that process still lives, so with it the monitoring daemon never fails a run
whose worker was SIGKILLed (OOM, a `kill -9`): only the code server that started the run notices,
and not at all once that code server was restarted. This launcher answers the health check from
the worker's pid, which the run's "Started process for run (pid: N)" engine event records:
alive (and not a zombie, and not a newer process that reused the pid) means RUNNING, anything
else FAILED, and the daemon marks the run failed (`dagster.yaml`: `run_monitoring`). Only runs
whose code server is on this machine (a unix socket or a loopback host) are judged; others count
as RUNNING. A deployment with remote workers uses a launcher with its own check (ECS, k8s).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster import DefaultRunLauncher
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG

STARTED_PREFIX = "Started process for run"  # the engine event every run worker logs first (dagster/_grpc/impl.py)
PID_REUSE_SLACK_SECONDS = 2.0  # a process started this long after the event cannot be the worker
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def launched_here(run: DagsterRun) -> bool:
    """Whether the run's code server (so its worker) is on this machine: a unix socket or a loopback host."""
    try:
        info = json.loads(run.tags.get(GRPC_INFO_TAG, "{}"))
    except ValueError:
        return False
    return bool(info.get("socket")) or info.get("host") in LOCAL_HOSTS


def _process_started_at(pid: int) -> float | None:
    """When `pid` started (epoch seconds) from /proc, or None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks


def worker_alive(pid: int, started_by: float) -> bool:
    """Whether the process `pid`, started no later than `started_by`, still runs (zombies do not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else: not our worker, but be conservative
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know
    if state in {"Z", "X"}:
        return False
    started = _process_started_at(pid)
    return started is None or started <= started_by + PID_REUSE_SLACK_SECONDS


class LocalProcessRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose runs run monitoring can check (see the module doc)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if not launched_here(run):  # a code server elsewhere: its pids mean nothing here
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker on another machine: not checked")
        records = self._instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ENGINE_EVENT).records
        started = [
            record.event_log_entry
            for record in records
            if (record.event_log_entry.message or "").startswith(STARTED_PREFIX)
        ]
        if not started:  # not started by a local code server (or not yet): nothing to check, assume alive
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no local run worker recorded")
        entry = started[-1]
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        pid_text = data.metadata.get("pid") if data else None
        if pid_text is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker pid not recorded")
        pid = int(str(pid_text.value))
        if worker_alive(pid, entry.timestamp):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone (killed or crashed)")
