"""Longest files first on the two pytest-xdist workers (`--dist loadfile`).

xdist's loadfile queue is ordered by test count, so the files that take minutes but hold one or
two tests went last and one worker ran alone at the end. `SlowFilesFirst` orders the work units
by their expected seconds (longest-processing-time-first): the table below, then the files not in
it by test count (xdist's own order), so a new file costs nothing to add.

Refresh the table from a whole run (seconds per file: the sum of its tests' setup, call, teardown):

    PYTHONPATH=$PWD .venv/bin/pytest --durations=0 | tee /tmp/durations.txt
    .venv/bin/python -m eventreach_assets_tests.scheduling /tmp/durations.txt

and paste the printed table over `EXPECTED_SECONDS` (files under a few seconds can stay out).
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict, defaultdict

from xdist.scheduler import LoadFileScheduling
from xdist.workermanage import WorkerController

# Seconds per test file (at least 5), from `--durations=0` of a whole run (see the module docstring);
# this one: 2026-12-02 at cf72b8a, 882 passed in 740 s on the 2-core machine (nothing else running).
EXPECTED_SECONDS: dict[str, float] = {
    "eventreach_assets_tests/test_benchmarks.py": 190,
    "eventreach_assets_tests/test_lifecycle_demo.py": 170,
    "eventreach_assets_tests/test_deploy_instance.py": 166,
    "eventreach_assets_tests/test_event_change_flow.py": 92,
    "eventreach_assets_tests/test_campaign_flow.py": 87,
    "eventreach_assets_tests/test_weekly_batch.py": 73,
    "eventreach_assets_tests/test_operator_console.py": 72,
    "eventreach_assets_tests/test_hard_kill.py": 69,
    "eventreach_assets_tests/test_sending.py": 69,
    "eventreach_assets_tests/test_ledger_batches.py": 53,
    "eventreach_assets_tests/test_serving_api.py": 50,
    "eventreach_assets_tests/test_send_kill.py": 44,
    "eventreach_assets_tests/test_aws_deployment.py": 41,
    "eventreach_assets_tests/test_candidate_store.py": 27,
    "eventreach_assets_tests/test_deploy_images.py": 21,
    "eventreach_assets_tests/test_serving_api_cursors.py": 20,
    "eventreach_assets_tests/test_simulator.py": 17,
    "eventreach_assets_tests/test_engagement_store.py": 15,
    "eventreach_assets_tests/test_channel_concurrency.py": 13,
    "eventreach_assets_tests/test_lifecycle.py": 10,
    "eventreach_assets_tests/test_candidate_store_dynamodb.py": 9,
    "eventreach_assets_tests/test_architecture.py": 9,
    "eventreach_assets_tests/test_snowflake_warehouse.py": 8,
    "eventreach_assets_tests/test_reporting_assets.py": 7,
    "eventreach_assets_tests/test_ledger.py": 6,
    "eventreach_assets_tests/test_serving_page_cache.py": 6,
    "eventreach_assets_tests/test_channels.py": 6,
}
DURATION_LINE = re.compile(r"^\s*([0-9.]+)s (?:setup|call|teardown)\s+(\S+?\.py)::")


class SlowFilesFirst(LoadFileScheduling):
    """xdist's loadfile scheduling with the work queue ordered by expected seconds, longest first."""

    ordered = False

    def _assign_work_unit(self, node: WorkerController) -> None:
        # `schedule()` fills the queue and then assigns the first units: order it once, before that.
        if not self.ordered:
            self.workqueue = OrderedDict(sorted(self.workqueue.items(), key=expected_first))
            self.ordered = True
            self.log("slow files first:", list(self.workqueue)[:8])
        super()._assign_work_unit(node)


def expected_first(unit: tuple[str, dict[str, bool]]) -> tuple[float, int]:
    """Sort key: known files by their seconds (longest first), then unknown ones by test count."""
    scope, tests = unit
    return (-EXPECTED_SECONDS.get(scope, 0.0), -len(tests))


def seconds_per_file(lines: list[str]) -> dict[str, float]:
    """Sum the `--durations=0` lines of a run per test file."""
    totals: dict[str, float] = defaultdict(float)
    for line in lines:
        if match := DURATION_LINE.match(line):
            totals[match[2]] += float(match[1])
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as report:
        for path, seconds in seconds_per_file(report.readlines()).items():
            if seconds >= 5:
                print(f'    "{path}": {seconds:.0f},')
