"""`dagster-daemon` as the console tests start it: the real daemon, its backfill loop waking sooner.

Dagster's backfill daemon sleeps a hard-coded 30 s between iterations
(`dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS`, read by the loop when it starts;
no instance setting or variable reaches it). A test backfill waits for one iteration to pick the
backfill up and another to mark it done: up to a minute of idle waiting per backfill, the
longest wait of the suite's console tests. This launcher sets that constant, then runs Dagster's
own daemon command line (`python -m eventreach_assets_tests.daemon_launcher run -w workspace.yaml`,
the arguments of `dagster-daemon`). Every daemon runs its own code. The constant is also the
asset daemon's wait between evaluations when the instance sets no
`auto_materialize.minimum_interval_seconds` (ours sets none): that daemon checks more often
too, with nothing to evaluate here (no asset has an automation condition). Deployments run
`dagster-daemon` itself, 30 s.

If a Dagster release moves the constant, the launcher fails at start (the tests then say so)
rather than silently waiting 30 s again.
"""

from __future__ import annotations

import sys

BACKFILL_INTERVAL_SECONDS = 3


def shorten_backfill_interval(seconds: int) -> None:
    """Set the backfill loop's sleep for daemons started after this call in this process."""
    from dagster._daemon import controller

    if not isinstance(getattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", None), int):
        raise RuntimeError(
            "dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS is gone: this Dagster release "
            "reads the backfill loop's interval elsewhere; update eventreach_assets_tests/daemon_launcher.py"
        )
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds


def daemon_command(workspace: str) -> list[str]:
    """The command line starting the daemon over `workspace` with this launcher, in this interpreter."""
    return [sys.executable, "-m", __name__, "run", "-w", workspace]


def main() -> None:
    from dagster._daemon.cli import main as dagster_daemon

    shorten_backfill_interval(BACKFILL_INTERVAL_SECONDS)
    sys.argv[0] = "dagster-daemon"
    sys.exit(dagster_daemon())


if __name__ == "__main__":
    main()
