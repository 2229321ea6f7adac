"""`make bench-sends`: today's sending path for N invitation emails, end to end, per ledger and channel.

The measuring stick of issue 12, before anything changes. Each measured run is its own child
process (so its peak RSS is its own) that synthesizes N customers (email, marketplace, timezone)
in memory, plans them with the real `domain.campaigns.plan_invitation_wave`, and then does what
the `email_invitations` asset does (`assets.campaigns.send_campaign`, minus Dagster): render every
row with the real `render_invitation_email` and `TemplateSet` (an `.ics` in each), validate every
email (`validated_emails`), and `domain.sending.deliver` them through a real ledger and channel:

* `outbox+sqlite`   — `LocalOutboxEmail` into a temporary folder, `SqliteDeliveryLedger` (the local deployment);
* `outbox+dynamodb` — the same outbox, `DynamoDBDeliveryLedger` on a moto server this bench starts on 127.0.0.1;
* `smtp+sqlite`     — `SmtpEmail` to an aiosmtpd server this bench starts on 127.0.0.1, answering each
  message after `--smtp-latency-ms` (a provider's round trip), unlimited send rate.

The servers (moto, aiosmtpd) run in this parent process and stand in for remote providers: their
CPU is not in the figures. Beside the end-to-end figures, the same run measures the bare cost of a
message (`render+bytes`: rendering and the wire bytes only, no validation, ledger or provider).
Per scenario: messages/s and ms of CPU per message (the child's user + system time over the timed
section, every thread), medians of `--runs`; wall time; peak RSS (the child's `ru_maxrss`, imports
included); and what the provider received (`.eml` files in the outbox, messages at the SMTP
server), which must equal the planned count. A scenario too slow for N with today's sequential
loop (every message waits for its DynamoDB or SMTP round trips) is capped at `--slow-messages`, and
the table says so. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from eventreach_assets.domain.campaign_kinds import CAMPAIGN_KINDS
from eventreach_assets.domain.delivery import OutboundMessage
from eventreach_assets.domain.events import EventContext

SCENARIOS = ("outbox+sqlite", "outbox+dynamodb", "smtp+sqlite")
# One provider or DynamoDB round trip after another per message: 20-50 messages/s today, capped at --slow-messages.
SLOW = frozenset({"outbox+dynamodb", "smtp+sqlite"})
REFERENCE = "render+bytes"
OWNER = "bench-sends"  # the reservations' owner, as a Dagster run id would be
REGION = "us-east-1"
FAKE_AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION}
EVENT = EventContext(
    event_id="evt-bench-sends",
    name="EventReach Summit: Data & AI",
    topics=["ai", "data"],
    start_time_utc=datetime(2026, 12, 17, 16, 0),
    capacity=1_000_000,
    target_regions=["US", "UK", "DE", "FR", "JP", "IN", "BR", "AU"],
    duration_minutes=90,
)
PLANNED_AT = datetime(2026, 11, 30, 9, 0)  # when the wave is planned (a Monday): before the registration deadline
# Marketplace, timezone: English, German and French templates, and markets that fall back to English.
SEGMENTS = (("US", "America/New_York"), ("US", "America/Los_Angeles"), ("UK", "Europe/London"),
            ("DE", "Europe/Berlin"), ("FR", "Europe/Paris"), ("JP", "Asia/Tokyo"), ("IN", "Asia/Kolkata"),
            ("BR", "America/Sao_Paulo"), ("AU", "Australia/Sydney"))  # fmt: skip
PHASES = ("render", "validate", "deliver")
INVITE = CAMPAIGN_KINDS["email_invitations"].calendar_invite  # the .ics, and the validator requiring it


@dataclass(frozen=True)
class Settings:
    messages: int
    slow_messages: int
    runs: int
    scenarios: tuple[str, ...]
    smtp_latency_ms: float

    def size(self, scenario: str) -> int:
        return min(self.messages, self.slow_messages) if scenario in SLOW else self.messages


# ---- the child: one measured run ------------------------------------------------------------------


def planned_rows(messages: int, now: datetime) -> pl.DataFrame:
    """`messages` planned invitations, as the weekly batch + `plan_invitation_wave` give them
    (campaign id per segment); every segment is due now (no local send time: the bench measures
    sending, not waiting for 10:00)."""
    from eventreach_assets.domain import campaigns

    segments = [SEGMENTS[n % len(SEGMENTS)] for n in range(messages)]
    customers = pl.DataFrame(
        {
            "customer_id": [f"C{n:09d}" for n in range(messages)],
            "score": [0.99 - n / (2 * messages) for n in range(messages)],
            "marketplace": [marketplace for marketplace, _ in segments],
            "timezone": [timezone for _, timezone in segments],
            "first_name": "Alex",
        }
    ).with_columns(email=pl.col("customer_id").str.to_lowercase() + "@example.invalid")
    wave = campaigns.plan_invitation_wave(
        customers, prior=pl.DataFrame(schema=campaigns.PRIOR_SCHEMA), outstanding=0, event=EVENT, channel="email",
        limit=messages, remaining_capacity=messages, send_time=None, batch_ready_at=now, now=now,
        deadline=EVENT.start_time_utc - timedelta(days=1),
    )  # fmt: skip
    if wave.due.height != messages:
        raise RuntimeError(f"planned {wave.due.height} of {messages}: {wave.reason}")
    return wave.due


def utc_now() -> datetime:
    """Naive UTC, like `ClockResource.now` unpinned."""
    return datetime.now(UTC).replace(tzinfo=None)


def invitation_renderer() -> Callable[[dict[str, Any]], OutboundMessage]:
    """Render one plan row exactly as `email_invitations` does (program YAML, real templates, signed links)."""
    from functools import partial

    from eventreach_assets.domain import rendering
    from eventreach_assets.domain.templates import TemplateSet
    from eventreach_assets.program.config import default_program

    config = default_program()
    render = partial(
        rendering.render_invitation_email, event=EVENT, templates=TemplateSet(), secret=os.urandom(32),
        base_url=config.campaigns.link_base_url, sender=config.campaigns.sender,
        organizer_email=config.campaigns.organizer,
        include_calendar_invite=INVITE,
        template_id=config.channel("email").config["templateId"], duration_minutes=EVENT.duration_minutes,
    )  # fmt: skip
    return lambda row: render(row, campaign_id=row["campaign_id"], send_at=utc_now())


class Phases:
    """Wall and CPU seconds per named phase of the timed section."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu


def _ledger(scenario: str, work: Path, endpoint: str | None) -> Any:
    from eventreach_assets.resources.ledger import DynamoDBDeliveryLedger, SqliteDeliveryLedger

    if scenario.endswith("+dynamodb"):
        table = f"bench-ledger-{uuid.uuid4().hex[:8]}"
        ledger = DynamoDBDeliveryLedger(table_name=table, region_name=REGION, endpoint_url=endpoint)
        ledger.create_table()
        return ledger
    return SqliteDeliveryLedger(path=str(work / "candidates.sqlite"))


def _channel(scenario: str, work: Path, smtp_port: int | None) -> Any:
    from eventreach_assets.resources.channels import LocalOutboxEmail, SmtpEmail

    if scenario.startswith("smtp+"):
        return SmtpEmail(host="127.0.0.1", port=smtp_port or 25, starttls=False, sender="events@eventreach.invalid",
                         max_messages_per_second=0.0)  # fmt: skip
    return LocalOutboxEmail(outbox_dir=str(work / "outbox"))


def send_today(scenario: str, plan: pl.DataFrame, work: Path, endpoint: str | None, smtp_port: int | None,
               phases: Phases) -> int:  # fmt: skip
    """What `send_campaign` does for `email_invitations`: render all, validate all, deliver; returns sent."""
    from eventreach_assets.assets.campaigns import validated_emails
    from eventreach_assets.domain.sending import deliver

    ledger, channel = _ledger(scenario, work, endpoint), _channel(scenario, work, smtp_port)
    render = invitation_renderer()
    try:
        started = time.perf_counter(), time.process_time()
        with phases.phase("render"):
            rendered = [render(row) for row in plan.iter_rows(named=True)]
        with phases.phase("validate"):
            sendable, invalid = validated_emails(rendered, ledger, expect_calendar_invite=INVITE)
        with phases.phase("deliver"):
            report = deliver(sendable, ledger=ledger, send=channel.send, now=utc_now, owner=OWNER)
        phases.wall["total"] = time.perf_counter() - started[0]
        phases.cpu["total"] = time.process_time() - started[1]
    finally:
        channel.close()
    if invalid or report.sent != plan.height:
        raise RuntimeError(f"sent {report.sent} of {plan.height} ({invalid} invalid): {report.as_metadata()}")
    return report.sent


def render_bytes(plan: pl.DataFrame, phases: Phases) -> int:
    """The reference: each message rendered and turned into its wire bytes, nothing kept or sent."""
    from eventreach_assets.resources.channels import email_bytes

    render = invitation_renderer()
    size = 0
    with phases.phase("total"):
        for row in plan.iter_rows(named=True):
            size += len(email_bytes(render(row)).data)
    return plan.height if size else 0


def measure(scenario: str, messages: int, work: Path, endpoint: str | None, smtp_port: int | None) -> dict[str, Any]:
    """One run of one scenario (or the reference) in this process; the figures of its timed section."""
    plan = planned_rows(messages, PLANNED_AT)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    phases = Phases()
    if scenario == REFERENCE:
        sent = render_bytes(plan, phases)
    else:
        sent = send_today(scenario, plan, work, endpoint, smtp_port, phases)
    wall, cpu = phases.wall["total"], phases.cpu["total"]
    return {
        "planned": plan.height,
        "sent": sent,
        "wall_s": wall,
        "messages_per_s": plan.height / wall,
        "cpu_ms_per_message": 1000 * cpu / plan.height,
        "phase_cpu_ms_per_message": {
            name: 1000 * phases.cpu[name] / plan.height for name in PHASES if name in phases.cpu
        },
        "phase_wall_s": {name: phases.wall[name] for name in PHASES if name in phases.wall},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": base_rss,
    }


# ---- the stand-in providers (this process) -------------------------------------------------------


class LatentSmtpHandler:
    """An aiosmtpd handler that counts every message it receives and answers it after `latency_s`."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        self.received += 1
        await asyncio.sleep(self.latency_s)
        return "250 2.0.0 Ok: queued"


@contextmanager
def smtp_server(latency_s: float) -> Iterator[tuple[int, LatentSmtpHandler]]:
    """aiosmtpd on a free loopback port; yields (port, handler)."""
    from aiosmtpd.controller import Controller

    from eventreach_assets.serving.bench import free_port

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = LatentSmtpHandler(latency_s)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's ThreadedMotoServer on a free loopback port (fake credentials in this process's environment,
    which the children inherit); yields its endpoint."""
    from moto.server import ThreadedMotoServer

    os.environ.update(FAKE_AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()  # port 0: the one the OS chose
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset_moto(endpoint: str) -> None:
    """Forget every table (moto's reset API), so runs do not accumulate 50,000 items each."""
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30):
        pass


@dataclass
class Providers:
    """The stand-ins one bench run needs, started once."""

    endpoint: str | None = None
    smtp_port: int | None = None
    smtp: LatentSmtpHandler | None = None

    def args(self) -> list[str]:
        return [*(["--endpoint", self.endpoint] if self.endpoint else []),
                *(["--smtp-port", str(self.smtp_port)] if self.smtp_port else [])]  # fmt: skip


def start_providers(stack: ExitStack, scenarios: tuple[str, ...], latency_s: float) -> Providers:
    providers = Providers()
    if any(s.endswith("+dynamodb") for s in scenarios):
        providers.endpoint = stack.enter_context(moto_server())
    if any(s.startswith("smtp+") for s in scenarios):
        providers.smtp_port, providers.smtp = stack.enter_context(smtp_server(latency_s))
    return providers


# ---- the parent: runs, medians, table, JSON --------------------------------------------------------


def _child(scenario: str, messages: int, work: Path, providers: Providers) -> dict[str, Any]:
    command = [sys.executable, "-m", "eventreach_assets.bench_sends", "--measure", scenario, "--work", str(work),
               "--messages", str(messages), *providers.args()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{scenario} run failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def received(scenario: str, work: Path, providers: Providers) -> int | None:
    """What the provider got: `.eml` files in the outbox, messages at the SMTP server (None: reference)."""
    if scenario == REFERENCE:
        return None
    if scenario.startswith("smtp+") and providers.smtp is not None:
        return providers.smtp.received
    return sum(1 for _ in (work / "outbox").glob("*.eml"))


def one_run(scenario: str, messages: int, providers: Providers) -> dict[str, Any]:
    """One child run in a fresh folder (and a fresh SMTP count / moto state); adds `received`."""
    work = Path(tempfile.mkdtemp(prefix="eventreach-bench-sends-"))
    if providers.smtp is not None:
        providers.smtp.received = 0
    try:
        sample = _child(scenario, messages, work, providers)
        sample["received"] = received(scenario, work, providers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if providers.endpoint and scenario.endswith("+dynamodb"):
            reset_moto(providers.endpoint)
    return sample


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs (peak RSS: the highest); `exactly_once` when every run's provider got the plan."""
    median = {
        name: statistics.median(s[name] for s in samples) for name in ("wall_s", "messages_per_s", "cpu_ms_per_message")
    }
    phases = {name: statistics.median(s["phase_cpu_ms_per_message"][name] for s in samples)
              for name in samples[0]["phase_cpu_ms_per_message"]}  # fmt: skip
    counts = [s["received"] for s in samples]
    return {
        "messages": samples[0]["planned"],
        **median,
        "phase_cpu_ms_per_message": phases,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
        "rss_before_mb": max(s["rss_before_mb"] for s in samples),
        "received": counts,
        "exactly_once": None if counts[0] is None else all(s["received"] == s["planned"] == s["sent"] for s in samples),
        "runs": samples,
    }


COLUMNS = (("scenario", -16), ("messages", 9), ("wall s", 8), ("msg/s", 8), ("CPU ms/msg", 11), ("peak MB", 8),
           ("received", 9))  # fmt: skip


def row(name: str, figures: dict[str, Any], settings: Settings) -> str:
    counts = figures["received"]
    got = "-" if counts[0] is None else f"{min(counts):,}" + ("" if figures["exactly_once"] else " MISMATCH")
    phases = " ".join(f"{phase}={ms:.2f}" for phase, ms in figures["phase_cpu_ms_per_message"].items())
    note = phases or "reference: render + wire bytes only"
    if name in SLOW and figures["messages"] < settings.messages:
        note += f"  (capped at --slow-messages {settings.slow_messages:,})"
    return (
        f"{name:<16} {figures['messages']:>9,} {figures['wall_s']:>8.2f} {figures['messages_per_s']:>8,.0f} "
        f"{figures['cpu_ms_per_message']:>11.2f} {figures['peak_rss_mb']:>8,.0f} {got:>9}  {note}"
    )


def run(settings: Settings) -> dict[str, Any]:
    """Every scenario and the reference, `runs` times each; prints the table and returns all figures."""
    print(
        f"sending {settings.messages:,} invitation emails (.ics included): render, validate, reserve, send, confirm; "
        f"medians of {settings.runs} runs, each its own process; SMTP answers after {settings.smtp_latency_ms:g} ms",
        flush=True,
    )
    print(" ".join(f"{n:<{-w}}" if w < 0 else f"{n:>{w}}" for n, w in COLUMNS) + "  CPU ms/msg by phase", flush=True)
    figures: dict[str, Any] = {}
    with ExitStack() as stack:
        providers = start_providers(stack, settings.scenarios, settings.smtp_latency_ms / 1000)
        for name in (REFERENCE, *settings.scenarios):
            size = settings.messages if name == REFERENCE else settings.size(name)
            figures[name] = summarize([one_run(name, size, providers) for _ in range(settings.runs)])
            print(row(name, figures[name], settings), flush=True)
    return figures


def profile(settings: Settings, scenario: str, top: int = 25) -> str:
    """One run of `scenario` in this process under cProfile; the top entries by cumulative time."""
    with ExitStack() as stack:
        providers = start_providers(stack, (scenario,), settings.smtp_latency_ms / 1000)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eventreach-bench-sends-")))
        profiler = cProfile.Profile()
        profiler.enable()
        measure(scenario, settings.size(scenario), work, providers.endpoint, providers.smtp_port)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(prog="eventreach-bench-sends", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="invitation emails per run (default 50000)")
    parser.add_argument(
        "--slow-messages", type=int, default=2_000, help=f"cap for {', '.join(sorted(SLOW))} (default 2000)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; medians are reported (default 3)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated of {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--smtp-latency-ms", type=float, default=20.0, help="the SMTP server's answer delay (default 20)"
    )
    parser.add_argument("--profile", metavar="SCENARIO", help="one run of SCENARIO under cProfile instead of the table")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # a child process: one run of one scenario
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.messages, args.work, args.endpoint, args.smtp_port)))
        return 0
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or args.profile not in (None, REFERENCE, *SCENARIOS):
        parser.error(f"unknown scenario ({', '.join(unknown) or args.profile}); known: {', '.join(SCENARIOS)}")
    settings = Settings(args.messages, args.slow_messages, args.runs, scenarios, args.smtp_latency_ms)
    if args.profile:
        print(profile(settings, args.profile))
        return 0
    figures = run(settings)
    summary = {name: {key: value for key, value in f.items() if key != "runs"} for name, f in figures.items()}
    print(json.dumps({"messages": settings.messages, "slow_messages": settings.slow_messages, "runs": settings.runs,
                      "smtp_latency_ms": settings.smtp_latency_ms, "rss": "ru_maxrss of each run's process",
                      "scenarios": summary}))  # fmt: skip
    return 0 if all(f["exactly_once"] is not False for f in figures.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
