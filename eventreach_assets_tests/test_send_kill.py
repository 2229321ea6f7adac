"""32 sends in flight, SIGKILL in the middle: at most the in-flight messages end `in_doubt`, the retry sends
exactly the rest, and no customer gets the invitation twice, counted by the provider, not by us.

The sender is its own process (`send_driver`: `stream_campaign`, the sending assets' path, with real
rendering, validation, ledger and channel) killed the way the OOM killer does it; the providers run
here: aiosmtpd, and SES v2 on moto (which also holds the DynamoDB ledger), each answering a message
after 20 ms, so dozens are in the provider's hands at the moment of the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from eventreach_assets import provider_standins as standins
from eventreach_assets.bench_sends import EVENT, FAKE_AWS_ENV, REGION
from eventreach_assets_tests.send_driver import ledger_for

pytestmark = pytest.mark.integration

# (messages, kill once the provider received this many): a third of the way in, with 32 in flight by then and
# two thirds still to go, so the kill lands mid-stream. Moto (SES and the DynamoDB ledger) is the slow provider,
# ~17 messages/s on a slow machine (1,500 messages took 91 s there, 14 s on aiosmtpd + SQLite; 750 took 76-80 s
# on 2026-12-02), so it sends a fifth as many: still ~200 to go and 32 in flight at the kill.
SIZES = {"smtp+sqlite": (1_500, 500), "ses+dynamodb": (300, 100)}
IN_FLIGHT = 32
LATENCY_S = 0.02


def driver(scenario: str, work: Path, owner: str, wiring: list[str]) -> list[str]:
    return [sys.executable, "-m", "eventreach_assets_tests.send_driver", "--scenario", scenario, "--work", str(work),
            "--messages", str(SIZES[scenario][0]), "--owner", owner, "--table", "kill-ledger",
            "--concurrency", str(IN_FLIGHT), "--rate", "1000", *wiring]  # fmt: skip


def wait_for(what: str, timeout: float, probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.01)


def settled(count: Callable[[], int]) -> int:
    """The provider's count once requests already on the wire have landed (unchanged for 0.5 s; at most 10 s)."""
    last, since, deadline = count(), time.monotonic(), time.monotonic() + 10
    while time.monotonic() - since < 0.5 and time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := count()) != last:
            last, since = now, time.monotonic()
    return last


@pytest.fixture(params=["smtp+sqlite", "ses+dynamodb"])
def provider(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """(scenario, driver wiring args, recipients-received counter) with the stand-in running."""
    scenario = request.param
    if scenario.startswith("smtp"):
        with standins.smtp_server(LATENCY_S) as (port, handler):
            yield scenario, ["--smtp-port", str(port)], lambda: Counter(handler.recipients), None
        return
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    with standins.moto_server(LATENCY_S) as server:
        yield scenario, ["--endpoint", server.endpoint], lambda: server.ses_recipients(REGION), server.endpoint


def test_a_sigkill_with_32_in_flight_leaves_at_most_those_in_doubt_and_the_retry_sends_exactly_the_rest(
    provider, tmp_path: Path
):
    scenario, wiring, recipients, endpoint = provider
    messages, kill_at = SIZES[scenario]
    first = subprocess.Popen(driver(scenario, tmp_path, "run-killed", wiring), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(f"{kill_at} messages at the provider", 120, lambda: sum(recipients().values()) >= kill_at
                 or first.poll() is not None)  # fmt: skip
        assert first.poll() is None, f"the first run ended before the kill: {first.communicate()}"
        os.kill(first.pid, signal.SIGKILL)  # what the OOM killer does: no except, no finally, no atexit
    finally:
        first.wait(timeout=30)
    received_before = settled(lambda: sum(recipients().values()))
    assert kill_at <= received_before < messages

    # What the run-failure sensor does for the dead run: unattempted reservations back, attempted ones in doubt.
    ledger = ledger_for(scenario, tmp_path, endpoint, "kill-ledger")
    released, in_doubt = ledger.release_owner("run-killed", "run failed", None)
    assert 0 < in_doubt <= IN_FLIGHT  # only what was in the provider's hands (or answered, not yet confirmed)

    retry = subprocess.run(driver(scenario, tmp_path, "run-retry", wiring), capture_output=True, text=True,
                           timeout=300, check=False)  # fmt: skip
    assert retry.returncode == 0, retry.stderr[-3000:]
    report = json.loads(retry.stdout.strip().splitlines()[-1])

    got = recipients()
    assert max(got.values()) == 1, [address for address, n in got.items() if n > 1][:5]  # nobody twice
    rows = ledger.deliveries(EVENT.event_id).with_columns(
        address=pl.col("customer_id").str.to_lowercase() + "@example.invalid"
    )
    statuses = Counter(rows["status"].to_list())
    assert statuses == {"sent": messages - in_doubt, "in_doubt": in_doubt}
    sent = set(rows.filter(pl.col("status") == "sent")["address"].to_list())
    doubted = set(rows.filter(pl.col("status") == "in_doubt")["address"].to_list())
    assert sent <= set(got)  # everything the ledger calls sent, the provider has
    assert set(got) - sent <= doubted  # anything else the provider got is one of the in-doubt messages
    confirmed_before = messages - in_doubt - report["sent"]  # the retry sent the rest, skipped these
    assert report["skipped_by_reason"] == {"already_sent": confirmed_before, "in_doubt": in_doubt}
    assert confirmed_before <= received_before <= confirmed_before + in_doubt
    assert report["sent"] >= released  # the dead run's reserved-but-never-attempted rows went out with the retry
    assert report["peak_in_flight"] <= IN_FLIGHT
