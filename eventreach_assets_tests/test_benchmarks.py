"""Every `make bench…` command runs at a tiny size in the suite, so it cannot rot.

These assert that the commands finish and print their figures, never how fast anything is
(speed is what the benchmarks themselves print, at full size).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eventreach_assets import bench

pytestmark = pytest.mark.integration


def run_python(*args: str, env: dict[str, str] | None = None) -> str:
    """`python args…` in a fresh process; its stdout, once it exited 0 (else its output's tail fails the test)."""
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, check=False,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2_000:] + done.stderr[-3_000:]
    return done.stdout


def run_module(*args: str) -> str:
    return run_python("-m", *args)


def test_make_bench_prints_the_batch_figures_at_a_tiny_size():
    out = run_module("eventreach_assets.bench", "--sizes", "3000", "--runs", "1")
    lines = out.splitlines()
    [size] = json.loads(lines[-1])["sizes"]
    assert size["profiles"] == 3000
    for runner in ("dagster", "bare"):  # the Dagster run and its bare reference, same work, same figures
        [row] = [line for line in lines if re.match(rf"\s+3,000 {runner}\s", line)]
        extracted, eligible, wall, _per_minute, peak = row.split()[2:7]
        assert int(extracted.replace(",", "")) >= int(eligible.replace(",", "")) > 0
        assert float(wall) > 0 and float(peak.replace(",", "")) > 0
        assert all(f"{stage}=" in row for stage in ("extract", "filter", "score", "store", "export"))
        # the checks' work is a stage of the bare run's own (through Dagster it is in the check steps)
        assert ("checks=" in row) == (runner == "bare")
        figures = size[runner]
        assert (figures["extracted"], figures["eligible"]) == (int(extracted.replace(",", "")), int(eligible))
        assert figures["wall_s"] > 0 and figures["peak_rss_mb"] > 0 and len(figures["walls_s"]) == 1
    assert size["dagster"]["extracted"] == size["bare"]["extracted"]
    assert size["dagster_over_bare"] == pytest.approx(size["dagster"]["wall_s"] / size["bare"]["wall_s"], rel=1e-2)
    assert f"ratio dagster/bare {size['dagster_over_bare']:.2f}" in out
    # ... and over bare without the checks' work (the reference before it did them), for each pair
    without = size["without_checks"]
    for ratio, (dagster, bare) in bench.RATIOS.items():
        checks = size[bare]["stages_s"]["checks"]
        assert checks > 0 and size[bare]["wall_without_checks_s"] == pytest.approx(size[bare]["wall_s"] - checks)
        assert without[ratio] == pytest.approx(size[dagster]["wall_s"] / (size[bare]["wall_s"] - checks), rel=1e-2)
        assert without[ratio] > size[ratio]
    over = ", ".join(f"{without[ratio]:.2f}" for ratio in bench.RATIOS)
    assert f"over bare without the checks' work {over}" in out
    # The week: one profile snapshot, then three events read from it, through Dagster (in one process,
    # and as deployed: a run worker per run) and as bare code.
    assert len(size["week_events"]) == 3
    for runner in ("week-dagster", "week-bare", "week-deployed"):
        [row] = [line for line in lines if re.match(rf"\s+3,000 {runner}\s", line)]
        extracted, eligible, wall, _per_minute, peak = row.split()[2:7]
        assert all(f"{stage}=" in row for stage in ("snapshot", "extract", "filter", "score", "store", "export"))
        assert ("checks=" in row) == (runner == "week-bare")
        figures = size[runner.replace("-", "_")]
        assert (figures["extracted"], figures["eligible"]) == (int(extracted.replace(",", "")), int(eligible))
        # three events' rows and candidates: more than the one event's alone
        assert figures["extracted"] > size["dagster"]["extracted"] and figures["eligible"] > size["dagster"]["eligible"]
        assert float(wall) > 0 and float(peak.replace(",", "")) > 0 and len(figures["walls_s"]) == 1
        assert figures["stages_s"]["snapshot"] > 0
    week = size["week_dagster"]["wall_s"] / size["week_bare"]["wall_s"]
    assert size["week_dagster_over_bare"] == pytest.approx(week, rel=1e-2)
    assert f"week {size['week_dagster_over_bare']:.2f}" in out
    assert f"week deployed {size['week_deployed_over_bare']:.2f}" in out
    assert (size["week_deployed"]["extracted"], size["week_deployed"]["eligible"]) == (
        size["week_bare"]["extracted"], size["week_bare"]["eligible"]
    )  # fmt: skip
    # As deployed, in the order the schedules launch the runs: the snapshot, then the events' batches,
    # then their exports (a schedule of their own, hours later), each run its own process, never more
    # at once than the instance's run slots (dagster.yaml: max_concurrent_runs).
    [workers] = size["week_deployed"]["workers"]
    slots = bench.run_slots()
    assert slots == 2 and len(workers) == 1 + 2 * 3 and len({worker["pid"] for worker in workers}) == len(workers)
    [snapshot, *event_runs] = sorted(workers, key=lambda worker: worker["started_s"])
    assert snapshot["job"] == "weekly_profile_snapshot" and snapshot["partition"] is None
    assert all(snapshot["ended_s"] <= worker["started_s"] for worker in event_runs)
    batches = [w for w in event_runs if w["job"] == "weekly_batch"]
    exports = [w for w in event_runs if w["job"] == "export_candidates"]
    assert (
        sorted(w["partition"] for w in batches)
        == sorted(w["partition"] for w in exports)
        == sorted(size["week_events"])
    )
    assert max(w["ended_s"] for w in batches) <= min(w["started_s"] for w in exports)  # no export beside a batch
    windows = size["week_deployed"]["windows_s"]
    assert windows["batch"] == max(w["ended_s"] for w in batches)
    assert windows["batch"] + windows["export"] == pytest.approx(size["week_deployed"]["wall_s"], abs=0.01)
    # at each run's start, the runs going (itself included): two at once, never more
    for runs in (batches, exports):
        assert max(sum(w["started_s"] <= run["started_s"] < w["ended_s"] for w in runs) for run in runs) == slots
    # Dagster's share: the time beyond the asset bodies, by where it went, read from the runs' event logs.
    checks = {"dagster": 6, "week_dagster": 18, "week_deployed": 18}  # five on weekly_batch, one on the export
    for runner, check_steps in checks.items():
        figures = size[runner]
        share = figures["share_s"]
        assert share["check_step_count"] == check_steps
        assert all(share[part] > 0 for part in ("asset_steps_beyond_bodies", "check_steps", "runs_outside_steps"))
        outside = "worker_processes" if runner == "week_deployed" else "between_runs"
        assert share[outside] > 0
        [line] = [line for line in lines if line.split(":")[0].split(",")[0].strip() == runner.replace("_", "-")]
        assert "beyond the asset bodies" in line and f"check steps {share['check_steps']:.2f}" in line
        if runner == "week_deployed":
            assert f"batch window {windows['batch']:.2f} s, export window {windows['export']:.2f} s" in line
        else:  # in one process the parts are the wall's: they add up to it
            parts = sum(share[part] for part in bench.SHARE_PARTS if part in share)
            assert parts + sum(figures["stages_s"].values()) == pytest.approx(figures["wall_s"], abs=0.05)
    # Once per invocation: a run worker's start-up beside the framework's own, each a fresh process.
    startup = json.loads(lines[-1])["startup"]
    for name in ("code_location", "framework"):
        assert startup[name]["wall_s"] > 0 and startup[name]["peak_rss_mb"] > 0 and len(startup[name]["walls_s"]) == 1
    assert "start-up of a run worker (import the code location, fresh process; medians of 1): " in out
    assert f"{startup['code_location']['wall_s']:.2f} s" in out


BLOCKING_VERDICTS = ["unique_customer_verdict", "policy_verdict", "valid_scores_verdict", "store_verdict",
                     "export_verdict"]  # fmt: skip


def test_the_bare_reference_does_the_checks_work_and_stops_where_a_blocking_check_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bare run calls the batch checks' own verdict functions, each after its asset as the jobs
    run them, and a failed blocking verdict stops the event before the next asset, as the job does."""
    import dagster as dg

    from eventreach_assets.checks import batch_checks

    event = bench.prepare(tmp_path, 3000)["event"]
    called: list[str] = []

    def recorded(name: str, result: dg.AssetCheckResult) -> dg.AssetCheckResult:
        called.append(name)
        return result

    for name in BLOCKING_VERDICTS:
        real = getattr(batch_checks, name)
        monkeypatch.setattr(batch_checks, name, lambda *args, _n=name, _f=real: recorded(_n, _f(*args)))
    figures = bench.measure_bare(tmp_path, event)
    assert called == BLOCKING_VERDICTS and figures["stages"][bench.CHECKS] > 0
    assert figures["stages"]["candidates_export"] > 0

    called.clear()
    refused = dg.AssetCheckResult(passed=False, metadata={"opted_out": 1})
    monkeypatch.setattr(batch_checks, "policy_verdict", lambda *args: recorded("policy_verdict", refused))
    with pytest.raises(RuntimeError, match=f"filtered_candidates_policy failed for {event}: .*'opted_out': 1"):
        bench.measure_bare(tmp_path, event)
    assert called == ["unique_customer_verdict", "policy_verdict"]  # nothing scored, stored or exported after it


def test_make_bench_serving_prints_the_api_beside_its_reference_at_a_tiny_size():
    out = run_module(
        "eventreach_assets.serving.bench", "--candidates", "500", "--registered", "50", "--seconds", "1",
        "--runs", "1", "--connections", "2", "--workers", "1", "--client", "python", "--registrations-per-second", "5",
    )  # fmt: skip
    lines = out.splitlines()
    targets = ("reference", "api", "api-uncached")  # the API as deployed, and with its page cache off
    rows = {target: next(line for line in lines if re.match(rf"\s+2\s+{target}\s", line)) for target in targets}
    for row in rows.values():
        rps, p50, p95, p99, errors = row.split()[2:7]
        assert float(rps.replace(",", "")) > 0 and 0 < float(p50) <= float(p95) <= float(p99) and errors == "0"
    assert re.search(r"api/reference: \d+% of the reference's req/s", out) and "server peak RSS" in out
    assert re.search(r"api-uncached/reference: \d+% of the reference's req/s", out)
    figures = json.loads(lines[-1])
    two = figures["connections"]["2"]
    assert two["api_share_of_reference_rps"] == pytest.approx(two["api"]["rps"] / two["reference"]["rps"])
    assert two["api_uncached_share_of_reference_rps"] == pytest.approx(
        two["api-uncached"]["rps"] / two["reference"]["rps"]
    )
    assert all(two[target]["errors"] == 0 and len(two[target]["runs"]) == 1 for target in targets)
    assert all(figures["peak_rss_mb"][target] > 0 for target in targets)
    # Registrations were written to the store while the APIs were driven (1 s at 5/s each run).
    assert figures["registrations_per_second"] == 5 and two["api"]["registrations"] >= 2
    assert figures["client"] == "python" and figures["reference_body_bytes"] > 10_000  # a real 100-item page


def test_make_bench_sends_prints_every_scenario_and_the_references_at_a_tiny_size():
    out = run_module(
        "eventreach_assets.bench_sends", "--messages", "200", "--provider-messages", "100", "--moto-messages", "50",
        "--runs", "1",
    )  # fmt: skip
    lines = out.splitlines()
    figures = json.loads(lines[-1])["scenarios"]
    expected = {
        "render+bytes": 200, "moto-writes": 50, "outbox+sqlite": 200, "outbox+dynamodb": 50, "smtp+sqlite": 100,
        "ses+sqlite": 100, "webhook+sqlite": 100, "sns+sqlite": 100, "ses+dynamodb": 50, "ses-calls": 100,
        "sns-calls": 100,
    }  # fmt: skip
    assert set(figures) == set(expected)
    for name, planned in expected.items():
        [row] = [line for line in lines if line.startswith(f"{name} ")]
        messages, wall, per_second, cpu, peak, received, in_flight, target = row.split()[1:9]
        assert int(messages.replace(",", "")) == figures[name]["messages"] == planned
        assert min(float(wall), float(per_second.replace(",", "")), float(cpu), float(peak.replace(",", ""))) > 0
        got = figures[name]
        assert got["messages_per_s"] > 0 and got["cpu_ms_per_message"] > 0 and got["peak_rss_mb"] > 0
        if name in ("render+bytes", "moto-writes", "ses-calls", "sns-calls"):  # the bare references: not counted
            assert received == "-" and got["exactly_once"] is None
            continue
        # What the provider got (outbox files, SMTP/SES recipients, webhook keys, SNS publishes) is the plan, once each.
        assert int(received.replace(",", "")) == planned and got["received"] == [planned]
        assert got["exactly_once"] is True
        assert set(got["phase_cpu_ms_per_message"]) == {"render", "validate", "deliver"}
        if name.startswith(("smtp", "ses", "webhook", "sns")):  # paced by a provider: 32 in flight, 80% of 500/s
            assert int(in_flight) == got["concurrency"] == 32 and got["provider_rate"] == 500
            assert got["target_messages_per_s"] == 400 and target.startswith("400")
        else:
            assert target == "-" and got["target_messages_per_s"] is None
        if name.startswith(("ses", "sns")):  # beside the stand-in's own ceiling, measured in the same run
            ceiling = "ses-calls" if name.startswith("ses") else "sns-calls"
            assert got["ceiling"] == ceiling
            assert got["of_ceiling"] == pytest.approx(got["messages_per_s"] / figures[ceiling]["messages_per_s"])
            assert f"of {ceiling}" in row


WEEK_EVENTS = ["evt-a", "evt-b", "evt-c"]


@pytest.mark.parametrize(
    ("mode", "metadata_keys", "check_evaluations"),
    [
        (  # a run per event: each event's own metadata, each event's check evaluated
            "per_event",
            {event: [event] for event in WEEK_EVENTS},
            [["SUCCEEDED", event, 1] for event in WEEK_EVENTS],
        ),
        (  # one run over the events: every event's metadata on each, the check's result for no partition
            "single",
            {event: WEEK_EVENTS for event in WEEK_EVENTS},
            [*(["PLANNED", event, 1] for event in WEEK_EVENTS), ["SUCCEEDED", None, 1]],
        ),
    ],
)
def test_the_single_run_week_experiment_still_shows_what_docs_speed_says(
    mode: str, metadata_keys: dict[str, list[str]], check_evaluations: list[list], tmp_path: Path
):
    """docs/experiments/single_run_week.py, the reason the week keeps a run per event (docs/speed.md):
    over the week's event partitions in one run, each materialization carries every event's
    metadata and a partitioned check's result is recorded for no partition, its three per-event
    evaluations left planned. If a Dagster upgrade changes that, the docs' reasoning must change."""
    script = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "single_run_week.py"
    figures = json.loads(run_python(str(script), mode, "1", env={"TMPDIR": str(tmp_path)}).splitlines()[-1])
    assert figures["mode"] == mode and len(figures["walls_s"]) == 1
    assert figures["metadata_keys"] == metadata_keys
    assert figures["check_evaluations"] == check_evaluations
    assert list(tmp_path.iterdir()) == []  # its instance removed
