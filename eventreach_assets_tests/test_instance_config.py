"""The repository's dagster.yaml loads, and limits what the operators rely on."""

import shutil
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def test_dagster_yaml_loads_with_run_and_pool_limits(tmp_path: Path):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1  # one send per channel pool at a time
        queue = config.run_queue_config
        assert queue.max_concurrent_runs == 2
        assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in (
            queue.tag_concurrency_limits
        )
    finally:
        instance.dispose()


def test_dagster_yaml_monitors_runs_and_frees_a_dead_runs_pool_slots(tmp_path: Path):
    """A hard-killed run must be failed and lose its pool slot (issue 10, defect 4)."""
    from eventreach_assets.run_launcher import LocalProcessRunLauncher

    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.run_monitoring_enabled
        assert isinstance(instance.run_launcher, LocalProcessRunLauncher)
        assert instance.run_launcher.supports_check_run_worker_health  # else monitoring never fails a dead run
        assert instance.run_monitoring_max_resume_run_attempts == 0  # failed (and retried), never resumed
        assert instance.run_monitoring_poll_interval_seconds <= 10
        assert 0 < instance.run_monitoring_settings["free_slots_after_run_end_seconds"] <= 30
        assert "MONITORING" in instance.get_required_daemon_types()
    finally:
        instance.dispose()


def test_the_health_check_sees_a_killed_worker_and_ignores_a_reused_pid():
    import os
    import signal
    import subprocess
    import time

    from eventreach_assets.run_launcher import worker_alive

    worker = subprocess.Popen(["sleep", "30"])
    try:
        assert worker_alive(worker.pid, time.time())
        assert not worker_alive(worker.pid, time.time() - 3600)  # started after the run's event: a reused pid
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while worker_alive(worker.pid, time.time()) and time.monotonic() < deadline:  # a zombie until reaped
            time.sleep(0.05)
        assert not worker_alive(worker.pid, time.time())
    finally:
        worker.kill()
        worker.wait()
    assert not worker_alive(worker.pid, time.time())


def test_run_monitoring_fails_a_started_run_whose_worker_was_killed(tmp_path: Path):
    """The daemon's own check (no code server watching): the pid of the run worker decides."""
    import logging
    import signal
    import subprocess

    from dagster._core.events import EngineEventData
    from dagster._core.launcher import WorkerStatus
    from dagster._core.test_utils import create_run_for_test
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    worker = subprocess.Popen(["sleep", "60"])  # stands in for the run worker process
    try:
        grpc_info = {".dagster/grpc_info": '{"host": "localhost", "socket": "/tmp/grpc-socket"}'}
        run = create_run_for_test(
            instance, job_name="email_campaign", status=dg.DagsterRunStatus.STARTED, tags=grpc_info
        )
        remote = create_run_for_test(
            instance, job_name="email_campaign", status=dg.DagsterRunStatus.STARTED,
            tags={".dagster/grpc_info": '{"host": "code-server.internal", "port": 4000}'},
        )  # fmt: skip
        launcher = instance.run_launcher
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING  # no worker recorded yet
        instance.report_engine_event(
            f"Started process for run (pid: {worker.pid}).", run, EngineEventData.in_process(worker.pid)
        )
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        record = instance.get_run_record_by_id(run.run_id)
        monitor_started_run(instance, None, record, logging.getLogger("test"))  # alive: left alone
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

        worker.send_signal(signal.SIGKILL)
        worker.wait()
        for other in (remote, run):  # the same pid on another machine's code server is not ours to judge
            instance.report_engine_event(
                f"Started process for run (pid: {worker.pid}).", other, EngineEventData.in_process(worker.pid)
            )
        assert launcher.check_run_worker_health(remote).status == WorkerStatus.RUNNING
        health = launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.FAILED and str(worker.pid) in health.msg
        monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), logging.getLogger("test"))
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    finally:
        worker.kill()
        worker.wait()
        instance.dispose()


def test_campaign_assets_declare_their_channel_pool():
    from eventreach_assets.definitions import defs

    pools = {
        spec.key.to_user_string(): assets_def.op.pool
        for assets_def in defs.resolve_asset_graph().assets_defs
        for spec in assets_def.specs
        if spec.group_name == "campaigns"
    }
    assert pools == {
        "email_invitations": "channel-email",
        "in_app_invitations": "channel-in-app",
        "push_reminders": "channel-push",
        "day_of_reminders": "channel-email",
        "post_event_surveys": "channel-email",
        "event_update_emails": "channel-email",
        "cancellation_emails": "channel-email",
        "cancellation_pushes": "channel-push",
        "waitlist_confirmations": "channel-email",
    }
