"""`make bench-sends`: the campaign's sending path end to end, per channel and ledger, beside the bare render cost.

Each measured run is its own child process (so its peak RSS is its own) that synthesizes N
customers (email, marketplace, timezone) in memory, plans them with the real
`domain.campaigns.plan_invitation_wave`, and runs exactly what the sending assets run,
`assets.campaigns.stream_campaign` (minus Dagster): each row rendered as the send loop asks for it
(real templates, signed links, an `.ics` in every email), every email validated, reserved in a
real ledger, sent through a real channel at the channel's concurrency and rate, and confirmed:

* `outbox+sqlite`   — `LocalOutboxEmail` (one fsynced `.eml` per message), `SqliteDeliveryLedger`: the local deployment;
* `outbox+dynamodb` — the same outbox, `DynamoDBDeliveryLedger` on moto (beside it, `moto-writes`: moto's bare ceiling);
* `smtp+sqlite`     — `SmtpEmail` to aiosmtpd answering each message after `--latency-ms`;
* `ses+sqlite`      — `SesEmail` (SES v2 `SendEmail`, raw MIME) on moto answering after `--latency-ms`;
* `webhook+sqlite`  — in-app banners POSTed by `WebhookInApp` to an HTTP service answering after `--latency-ms`;
* `sns+sqlite`      — push reminders published by `SnsPush` to an SNS topic on moto answering after `--latency-ms`;
* `ses+dynamodb`    — SES as above with the ledger on the same moto: the aws deployment's pairing.

The provider scenarios send with `--concurrency` in flight at a configured `--rate`; their target is
80% of min(rate, concurrency / latency), printed beside the figure. The servers (moto, aiosmtpd, the
webhook) run in this parent process on 127.0.0.1 and stand in for remote providers: their CPU is
not in the figures, and they count what they received per recipient. The same run measures the
bare cost of a message (`render+bytes`: rendering and the wire bytes only, no validation, ledger or
provider). Per scenario: messages/s, ms of CPU per message (the child's user + system time over the
sending, every thread; render and validate measured on the thread that runs them), medians of
`--runs`; wall time; peak RSS (the child's `ru_maxrss`, imports included); and what the provider
received, which must be the plan, each recipient once. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
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
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from eventreach_assets.domain.campaign_kinds import CAMPAIGN_KINDS
from eventreach_assets.domain.delivery import OutboundMessage
from eventreach_assets.domain.events import EventContext

REFERENCE = "render+bytes"
MOTO_REFERENCE = "moto-writes"  # the DynamoDB stand-in's own ceiling: bare conditional PutItems, no ledger
# The provider stand-ins' own ceilings on this machine: bare calls of one prepared message from as many
# threads as the scenarios keep in flight (no render, validation, ledger or pacing).
PROVIDER_REFERENCES = {"ses+": "ses-calls", "sns+": "sns-calls"}
BARE = {
    REFERENCE: "reference: render + wire bytes only",
    MOTO_REFERENCE: "reference: bare conditional PutItems/s on moto (the ledger makes ~3 writes a message)",
    "ses-calls": "reference: bare SES v2 SendEmail/s on moto (the stand-in's ceiling here)",
    "sns-calls": "reference: bare SNS messages/s on moto in PublishBatch calls of 10 (the stand-in's ceiling here)",
}
SCENARIOS = ("outbox+sqlite", "outbox+dynamodb", "smtp+sqlite", "ses+sqlite", "webhook+sqlite", "sns+sqlite",
             "ses+dynamodb")  # fmt: skip
# Paced by a provider (latency, rate, concurrency): run at --provider-messages.
PROVIDERS = frozenset({"smtp+sqlite", "ses+sqlite", "webhook+sqlite", "sns+sqlite", "ses+dynamodb"})
CHANNEL_OF = {"webhook+sqlite": "in-app", "sns+sqlite": "push"}  # the rest send email
TARGET_SHARE = 0.8  # of min(rate, concurrency / latency)
OWNER = "bench-sends"  # the reservations' owner, as a Dagster run id would be
REGION = "us-east-1"
SENDER = "events@eventreach.invalid"
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
    provider_messages: int
    moto_messages: int
    runs: int
    scenarios: tuple[str, ...]
    latency_ms: float
    concurrency: int
    rate: float

    def size(self, scenario: str) -> int:
        if scenario.endswith("+dynamodb") or scenario == MOTO_REFERENCE:  # moto's own CPU bounds these
            return min(self.messages, self.moto_messages)
        paced = scenario in PROVIDERS or scenario in PROVIDER_REFERENCES.values()
        return min(self.messages, self.provider_messages) if paced else self.messages

    def target(self, scenario: str) -> float | None:
        """80% of what the provider allows: min(rate, concurrency / latency); None where no provider paces."""
        if scenario not in PROVIDERS:
            return None
        bound = self.concurrency / (self.latency_ms / 1000) if self.latency_ms else float("inf")
        return TARGET_SHARE * min(self.rate or float("inf"), bound)


@dataclass(frozen=True)
class Wiring:
    """Where the child finds the stand-in providers (from the parent)."""

    endpoint: str | None = None
    smtp_port: int | None = None
    webhook_url: str | None = None
    concurrency: int = 32
    rate: float = 500.0

    def args(self) -> list[str]:
        return [*(["--endpoint", self.endpoint] if self.endpoint else []),
                *(["--smtp-port", str(self.smtp_port)] if self.smtp_port else []),
                *(["--webhook-url", self.webhook_url] if self.webhook_url else []),
                "--concurrency", str(self.concurrency), "--rate", str(self.rate)]  # fmt: skip


# ---- the child: one measured run ------------------------------------------------------------------


def planned_rows(messages: int, now: datetime, channel: str = "email") -> pl.DataFrame:
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
        customers, prior=pl.DataFrame(schema=campaigns.PRIOR_SCHEMA), outstanding=0, event=EVENT, channel=channel,
        limit=messages, remaining_capacity=messages, send_time=None, batch_ready_at=now, now=now,
        deadline=EVENT.start_time_utc - timedelta(days=1),
    )  # fmt: skip
    if wave.due.height != messages:
        raise RuntimeError(f"planned {wave.due.height} of {messages}: {wave.reason}")
    return wave.due


def utc_now() -> datetime:
    """Naive UTC, like `ClockResource.now` unpinned."""
    return datetime.now(UTC).replace(tzinfo=None)


def renderer(channel: str = "email") -> Callable[[dict[str, Any]], OutboundMessage]:
    """Render one plan row exactly as the channel's sending asset does (program YAML, real templates,
    signed links): the invitation email, the in-app banner, or the push reminder."""
    from eventreach_assets.domain import rendering
    from eventreach_assets.domain.templates import TemplateSet
    from eventreach_assets.program.config import default_program

    config = default_program()
    shared = {"event": EVENT, "secret": os.urandom(32), "base_url": config.campaigns.link_base_url}
    settings = config.channel(channel).config
    if channel == "in-app":
        render = partial(rendering.render_in_app_banner, **shared, banner_type=settings["bannerType"],
                         placement=settings["placement"], display_days=int(settings["displayDuration"]))  # fmt: skip
        return lambda row: render(row, campaign_id=row["campaign_id"], now=utc_now())
    if channel == "push":
        render = partial(rendering.render_push_reminder, **shared, title_template=settings["title"],
                         body_template=settings["body"])  # fmt: skip
        return lambda row: render(row, campaign_id=row["campaign_id"], send_at=utc_now())
    render = partial(
        rendering.render_invitation_email, **shared, templates=TemplateSet(), sender=config.campaigns.sender,
        organizer_email=config.campaigns.organizer, include_calendar_invite=INVITE,
        template_id=settings["templateId"], duration_minutes=EVENT.duration_minutes,
    )  # fmt: skip
    return lambda row: render(row, campaign_id=row["campaign_id"], send_at=utc_now())


@dataclass
class ThreadClock:
    """CPU seconds a wrapped function spends on the thread that calls it (render and validate run on the
    send loop's thread; the senders' threads are not in it)."""

    seconds: float = 0.0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - started

        return timed


def make_ledger(scenario: str, work: Path, endpoint: str | None) -> Any:
    from eventreach_assets.resources.ledger import DynamoDBDeliveryLedger, SqliteDeliveryLedger

    if scenario.endswith("+dynamodb"):
        table = f"bench-ledger-{uuid.uuid4().hex[:8]}"
        ledger = DynamoDBDeliveryLedger(table_name=table, region_name=REGION, endpoint_url=endpoint)
        ledger.create_table()
        return ledger
    return SqliteDeliveryLedger(path=str(work / "ledger.sqlite"))


def make_channel(scenario: str, work: Path, wiring: Wiring) -> Any:
    """The scenario's channel resource, pointed at its stand-in (SES identity and SNS topic created here)."""
    from eventreach_assets.resources import aws
    from eventreach_assets.resources.channels import LocalOutboxEmail, SesEmail, SmtpEmail, SnsPush, WebhookInApp

    paced = {"concurrency": wiring.concurrency, "max_messages_per_second": wiring.rate}
    if scenario.startswith("smtp+"):
        return SmtpEmail(host="127.0.0.1", port=wiring.smtp_port or 25, starttls=False, sender=SENDER, **paced)
    if scenario.startswith("ses+"):
        ses = aws.aws_client("ses", region_name=REGION, endpoint_url=wiring.endpoint)
        ses.verify_domain_identity(Domain=SENDER.rpartition("@")[2])
        return SesEmail(region_name=REGION, endpoint_url=wiring.endpoint, sender=SENDER, **paced)
    if scenario.startswith("webhook+"):
        return WebhookInApp(url=wiring.webhook_url or "", **paced)
    if scenario.startswith("sns+"):
        sns = aws.aws_client("sns", region_name=REGION, endpoint_url=wiring.endpoint)
        topic = sns.create_topic(Name=f"bench-push-{uuid.uuid4().hex[:8]}")["TopicArn"]
        return SnsPush(region_name=REGION, endpoint_url=wiring.endpoint, topic_arn=topic, **paced)
    return LocalOutboxEmail(outbox_dir=str(work / "outbox"))


def send(scenario: str, plan: pl.DataFrame, work: Path, wiring: Wiring, clocks: dict[str, ThreadClock]) -> dict:
    """What the channel's sending asset does (`stream_campaign`); returns the run's figures."""
    from eventreach_assets.assets import campaigns

    channel_name = CHANNEL_OF.get(scenario, "email")
    ledger, channel = make_ledger(scenario, work, wiring.endpoint), make_channel(scenario, work, wiring)
    # The validation's CPU, measured where the send loop calls it (the asset module's own name for it).
    campaigns.email_problems = clocks["validate"].wrap(campaigns.email_problems)  # type: ignore[attr-defined]
    try:
        run = campaigns.stream_campaign(
            plan, clocks["render"].wrap(renderer(channel_name)), ledger=ledger, channel=channel, now=utc_now,
            owner=OWNER, validate_email=INVITE if channel_name == "email" else None,
        )  # fmt: skip
    finally:
        channel.close()
    report = run.report
    if run.tally.invalid or report.sent != plan.height:
        raise RuntimeError(f"sent {report.sent} of {plan.height} ({run.tally.invalid} invalid): {report.as_metadata()}")
    return {"sent": report.sent, "concurrency": report.concurrency, "peak_in_flight": report.peak_in_flight,
            "provider_rate": run.provider_rate}  # fmt: skip


def render_bytes(plan: pl.DataFrame) -> int:
    """The reference: each message rendered and turned into its wire bytes, nothing kept or sent."""
    from eventreach_assets.resources.channels import email_bytes

    render = renderer("email")
    size = sum(len(email_bytes(render(row)).data) for row in plan.iter_rows(named=True))
    return plan.height if size else 0


def moto_writes(writes: int, endpoint: str | None) -> int:
    """The reference for the `+dynamodb` rows: `writes` bare conditional PutItems on moto from the ledger's
    threads and client (what one reservation write costs moto), nothing else. Returns the writes done."""
    ledger = make_ledger("outbox+dynamodb", Path("."), endpoint)
    client = ledger.client()

    def put(number: int) -> None:
        item = {"pk": {"S": "EVENT#bench"}, "sk": {"S": f"DELIVERY#email#invitation#C{number:09d}"},
                "status": {"S": "pending"}}  # fmt: skip
        client.put_item(TableName=ledger.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)")

    return len(ledger._parallel(put, list(range(writes))))


def provider_calls(reference: str, calls: int, wiring: Wiring) -> int:
    """The reference for the `ses+` and `sns+` rows: `calls` messages as bare SendEmail calls (one rendered
    invitation's wire bytes) or PublishBatch calls of the channel's batch size, with as many messages in
    flight as the channel (`wiring.concurrency`), on one client, nothing else: what the stand-in and boto3
    allow on this machine. Returns the messages answered."""
    from concurrent.futures import ThreadPoolExecutor

    from eventreach_assets.resources import aws
    from eventreach_assets.resources.channels import email_bytes

    scenario = "ses+sqlite" if reference == "ses-calls" else "sns+sqlite"
    channel = make_channel(scenario, Path("."), wiring)  # the SES identity, the SNS topic
    if reference == "ses-calls":
        row = planned_rows(1, PLANNED_AT).row(0, named=True)
        data = email_bytes(renderer("email")(row)).data
        client = aws.aws_client("sesv2", region_name=REGION, endpoint_url=wiring.endpoint,
                                max_pool_connections=wiring.concurrency)  # fmt: skip

        def call(number: int) -> Any:
            destination = {"ToAddresses": [f"c{number:09d}@example.invalid"]}
            return client.send_email(FromEmailAddress=SENDER, Destination=destination, Content={"Raw": {"Data": data}})

        threads, per_call = wiring.concurrency, 1
    else:
        client = aws.aws_client("sns", region_name=REGION, endpoint_url=wiring.endpoint,
                                max_pool_connections=wiring.concurrency)  # fmt: skip
        per_call = channel.batch_size  # PublishBatch entries, as the channel sends them
        threads = max(1, wiring.concurrency // per_call)  # the same messages in flight

        def call(number: int) -> Any:
            entries = [{"Id": f"m{entry}", "Message": f"Reminder {number}.{entry}: the summit starts soon"}
                       for entry in range(per_call)]  # fmt: skip
            return client.publish_batch(TopicArn=channel.topic_arn, PublishBatchRequestEntries=entries)

    try:
        with ThreadPoolExecutor(threads) as pool:
            return per_call * sum(1 for _ in pool.map(call, range(-(-calls // per_call))))
    finally:
        channel.close()  # made for the identity or topic only; its pools are closed like every channel's


def measure(scenario: str, messages: int, work: Path, wiring: Wiring) -> dict[str, Any]:
    """One run of one scenario (or the reference) in this process; the figures of its timed section."""
    import eventreach_assets.assets.campaigns  # noqa: F401  (Dagster's imports take seconds: not in the timing)

    plan = planned_rows(messages, PLANNED_AT, CHANNEL_OF.get(scenario, "email"))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    clocks = {name: ThreadClock() for name in ("render", "validate")}
    wall, cpu = time.perf_counter(), time.process_time()
    if scenario == REFERENCE:
        figures: dict[str, Any] = {"sent": render_bytes(plan)}
    elif scenario == MOTO_REFERENCE:
        figures = {"sent": moto_writes(plan.height, wiring.endpoint)}
    elif scenario in BARE:
        figures = {"sent": provider_calls(scenario, plan.height, wiring)}
    else:
        figures = send(scenario, plan, work, wiring, clocks)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    phases = {"render": clocks["render"].seconds, "validate": clocks["validate"].seconds}
    phases["deliver"] = max(0.0, cpu - sum(phases.values()))
    return {
        **figures,
        "planned": plan.height,
        "wall_s": wall,
        "messages_per_s": plan.height / wall,
        "cpu_ms_per_message": 1000 * cpu / plan.height,
        "phase_cpu_ms_per_message": {} if scenario in BARE else {
            name: 1000 * seconds / plan.height for name, seconds in phases.items()
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before,
    }  # fmt: skip


# ---- the parent: stand-ins, runs, medians, table, JSON ---------------------------------------------


@dataclass
class Providers:
    """The stand-ins one bench run needs, started once in this process."""

    moto: Any = None
    smtp_port: int | None = None
    smtp: Any = None
    webhook: Any = None
    concurrency: int = 32
    rate: float = 500.0
    started: list[str] = field(default_factory=list)

    def wiring(self) -> Wiring:
        return Wiring(self.moto.endpoint if self.moto else None, self.smtp_port,
                      self.webhook.url if self.webhook else None, self.concurrency, self.rate)  # fmt: skip

    def received(self, scenario: str, work: Path) -> tuple[int, int] | None:
        """(messages received, the most any one recipient got) at the scenario's provider; None: the reference."""
        if scenario in BARE:
            return None
        if scenario.startswith("smtp+"):
            counts = self.smtp.recipients
        elif scenario.startswith("ses+"):
            counts = self.moto.ses_recipients(REGION)
        elif scenario.startswith("webhook+"):
            counts = self.webhook.keys
        elif scenario.startswith("sns+"):
            published = self.moto.sns_published(REGION)
            return published, 1 if published else 0  # a topic publish names no single recipient
        else:
            files = list((work / "outbox").glob("*.eml"))  # named by idempotency key: a resend overwrites
            return len(files), 1 if files else 0
        return sum(counts.values()), max(counts.values(), default=0)

    def reset(self) -> None:
        """Forget what the stand-ins received and every moto table, topic and message."""
        if self.smtp is not None:
            self.smtp.reset()
        if self.webhook is not None:
            self.webhook.keys.clear()
        if self.moto is not None:
            request = urllib.request.Request(f"{self.moto.endpoint}/moto-api/reset", method="POST")
            with urllib.request.urlopen(request, timeout=30):
                pass


def start_providers(stack: ExitStack, settings: Settings) -> Providers:
    from eventreach_assets import provider_standins as standins

    latency = settings.latency_ms / 1000
    providers = Providers(concurrency=settings.concurrency, rate=settings.rate)
    scenarios = settings.scenarios
    if any(s.startswith(("ses+", "sns+")) or s.endswith("+dynamodb") for s in scenarios):
        os.environ.update(FAKE_AWS_ENV)  # the children inherit it
        providers.moto = stack.enter_context(standins.moto_server(latency))
    if any(s.startswith("smtp+") for s in scenarios):
        providers.smtp_port, providers.smtp = stack.enter_context(standins.smtp_server(latency))
    if any(s.startswith("webhook+") for s in scenarios):
        providers.webhook = stack.enter_context(standins.in_app_service(latency))
    return providers


def _child(scenario: str, messages: int, work: Path, wiring: Wiring) -> dict[str, Any]:
    command = [sys.executable, "-m", "eventreach_assets.bench_sends", "--measure", scenario, "--work", str(work),
               "--messages", str(messages), *wiring.args()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{scenario} run failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_run(scenario: str, messages: int, providers: Providers) -> dict[str, Any]:
    """One child run in a fresh folder and fresh stand-ins; adds what the provider received."""
    work = Path(tempfile.mkdtemp(prefix="eventreach-bench-sends-"))
    providers.reset()
    try:
        sample = _child(scenario, messages, work, providers.wiring())
        sample["received"], sample["most_per_recipient"] = providers.received(scenario, work) or (None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sample


def summarize(samples: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """Medians over the runs (peak RSS: the highest); `exactly_once` when every run's provider got the
    plan, each recipient once; `meets_target` where a provider paces."""
    median = {
        name: statistics.median(s[name] for s in samples) for name in ("wall_s", "messages_per_s", "cpu_ms_per_message")
    }
    phases = {name: statistics.median(s["phase_cpu_ms_per_message"][name] for s in samples)
              for name in samples[0]["phase_cpu_ms_per_message"]}  # fmt: skip
    counts = [s["received"] for s in samples]
    exactly_once = all(s["received"] == s["planned"] == s["sent"] and s["most_per_recipient"] == 1 for s in samples)
    return {
        "messages": samples[0]["planned"],
        **median,
        "phase_cpu_ms_per_message": phases,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
        "rss_before_mb": max(s["rss_before_mb"] for s in samples),
        "received": counts,
        "exactly_once": None if counts[0] is None else exactly_once,
        "concurrency": samples[0].get("concurrency"),
        "provider_rate": samples[0].get("provider_rate"),
        "target_messages_per_s": target,
        "meets_target": None if target is None else median["messages_per_s"] >= target,
        "runs": samples,
    }


COLUMNS = (("scenario", -16), ("messages", 9), ("wall s", 8), ("msg/s", 8), ("CPU ms/msg", 11), ("peak MB", 8),
           ("received", 9), ("in flight", 9), ("target", 8))  # fmt: skip


def row(name: str, figures: dict[str, Any]) -> str:
    counts = figures["received"]
    got = "-" if counts[0] is None else f"{min(counts):,}" + ("" if figures["exactly_once"] else " MISMATCH")
    target = figures["target_messages_per_s"]
    goal = "-" if target is None else f"{target:,.0f}" + ("" if figures["meets_target"] else " MISSED")
    phases = " ".join(f"{phase}={ms:.2f}" for phase, ms in figures["phase_cpu_ms_per_message"].items())
    rate = figures["provider_rate"]
    ceiling = figures.get("of_ceiling")
    of_ceiling = f"  {ceiling:.0%} of {figures['ceiling']}" if ceiling else ""
    note = (phases + (f"  rate {rate:g}/s" if rate else "") + of_ceiling) or BARE.get(name, "")
    return (
        f"{name:<16} {figures['messages']:>9,} {figures['wall_s']:>8.2f} {figures['messages_per_s']:>8,.0f} "
        f"{figures['cpu_ms_per_message']:>11.2f} {figures['peak_rss_mb']:>8,.0f} {got:>9} "
        f"{figures['concurrency'] or '-':>9} {goal:>8}  {note}"
    )


def ceiling_of(scenario: str) -> str | None:
    """The provider reference a scenario is compared with (`ses-calls` for `ses+sqlite`), if any."""
    return next((name for prefix, name in PROVIDER_REFERENCES.items() if scenario.startswith(prefix)), None)


def references(scenarios: tuple[str, ...]) -> tuple[str, ...]:
    """The bare references measured beside the scenarios: rendering always, moto's writes with a DynamoDB
    ledger, the SES and SNS stand-ins' ceilings with their scenarios."""
    moto = [MOTO_REFERENCE] if any(s.endswith("+dynamodb") for s in scenarios) else []
    ceilings = dict.fromkeys(name for name in map(ceiling_of, scenarios) if name)
    return (REFERENCE, *moto, *ceilings)


def run(settings: Settings) -> dict[str, Any]:
    """Every scenario and the reference, `runs` times each; prints the table and returns all figures."""
    print(
        f"sending invitations (emails with .ics, in-app banners, push reminders): render, validate, reserve, send, "
        f"confirm; medians of {settings.runs} runs, each its own process; providers answer after "
        f"{settings.latency_ms:g} ms, {settings.concurrency} in flight, rate {settings.rate:g}/s; target = "
        f"{TARGET_SHARE:.0%} of min(rate, in flight / latency)",
        flush=True,
    )
    print(" ".join(f"{n:<{-w}}" if w < 0 else f"{n:>{w}}" for n, w in COLUMNS) + "  CPU ms/msg by phase", flush=True)
    figures: dict[str, Any] = {}
    with ExitStack() as stack:
        providers = start_providers(stack, settings)
        for name in references(settings.scenarios) + settings.scenarios:
            samples = [one_run(name, settings.size(name), providers) for _ in range(settings.runs)]
            figures[name] = summarize(samples, settings.target(name))
            if (ceiling := ceiling_of(name)) in figures:
                share = figures[name]["messages_per_s"] / figures[ceiling]["messages_per_s"]
                figures[name] |= {"ceiling": ceiling, "of_ceiling": share}
            print(row(name, figures[name]), flush=True)
    return figures


def profile(settings: Settings, scenario: str, top: int = 30) -> str:
    """One run of `scenario` in this process under cProfile; the top entries by cumulative time."""
    with ExitStack() as stack:
        providers = start_providers(stack, replace(settings, scenarios=(scenario,)))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eventreach-bench-sends-")))
        profiler = cProfile.Profile()
        profiler.enable()
        measure(scenario, settings.size(scenario), work, providers.wiring())
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="eventreach-bench-sends", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages per run (default 50000)")
    parser.add_argument("--provider-messages", type=int, default=10_000,
                        help=f"messages per run of {', '.join(sorted(PROVIDERS))} (default 10000)")  # fmt: skip
    parser.add_argument("--moto-messages", type=int, default=2_000,
                        help="messages per run with the DynamoDB ledger on moto (default 2000)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; medians are reported (default 3)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated of {', '.join(SCENARIOS)}")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="each provider's answer delay (default 20)")
    parser.add_argument("--concurrency", type=int, default=32, help="provider sends in flight (default 32)")
    parser.add_argument("--rate", type=float, default=500.0, help="the providers' configured rate, msg/s (default 500)")
    parser.add_argument("--profile", metavar="SCENARIO", help="one run of SCENARIO under cProfile instead of the table")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # a child process: one run of one scenario
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--webhook-url", help=argparse.SUPPRESS)
    return parser.parse_args(argv), parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    args, parser = parse(argv)
    if args.measure:
        wiring = Wiring(args.endpoint, args.smtp_port, args.webhook_url, args.concurrency, args.rate)
        print(json.dumps(measure(args.measure, args.messages, args.work, wiring)))
        return 0
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or args.profile not in (None, *BARE, *SCENARIOS):
        parser.error(f"unknown scenario ({', '.join(unknown) or args.profile}); known: {', '.join(SCENARIOS)}")
    settings = Settings(args.messages, args.provider_messages, args.moto_messages, args.runs, scenarios,
                        args.latency_ms, args.concurrency, args.rate)  # fmt: skip
    if args.profile:
        print(profile(settings, args.profile))
        return 0
    figures = run(settings)
    summary = {name: {key: value for key, value in f.items() if key != "runs"} for name, f in figures.items()}
    names = ("messages", "provider_messages", "moto_messages", "runs", "latency_ms", "concurrency", "rate")
    shared = {name: getattr(settings, name) for name in names}
    print(json.dumps({**shared, "rss": "ru_maxrss of each run's process", "scenarios": summary}))
    return 0 if all(f["exactly_once"] is not False for f in figures.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
