"""The campaign assets through Dagster: sends, exactly once, opt-outs at send time, frequency cap."""

from __future__ import annotations

import email
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from email import policy
from pathlib import Path

import dagster as dg
import icalendar
import polars as pl
import pytest
from pydantic import PrivateAttr

from eventreach_assets.assets.campaigns import NEXT_DUE_AT, REASON, email_invitations, in_app_invitations
from eventreach_assets.definitions import build_definitions
from eventreach_assets.demo.run import MAX_WAVES, run_waves
from eventreach_assets.deployments import campaign_services, resources_for
from eventreach_assets.domain.campaigns import ALL_INVITED, SOLD_OUT, to_local
from eventreach_assets.domain.delivery import OutboundMessage
from eventreach_assets.resources.channels import LocalOutboxEmail
from eventreach_assets_tests.conftest import AS_OF, BatchedSnapshot, Deployment

pytestmark = pytest.mark.integration
PROGRAM = "event-invitations"


class FailingAfter(LocalOutboxEmail):
    """The local outbox, dying (as a crashed process would) after `allowed` messages."""

    allowed: int
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _taken: int = PrivateAttr(default=0)

    def send(self, message: OutboundMessage) -> str:
        with self._lock:  # the send loop calls from `concurrency` threads: exactly `allowed` get through
            self._taken += 1
            crashed = self._taken > self.allowed
        if crashed:
            raise RuntimeError("simulated crash of the email provider connection")
        return super().send(message)

    def send_many(self, messages: Sequence[OutboundMessage]) -> list[str | BaseException]:
        """The batch path the send loop uses: the first `allowed` messages in all get through, the rest crash."""
        with self._lock:
            through = max(0, min(len(messages), self.allowed - self._taken))
            self._taken += len(messages)
        crash = RuntimeError("simulated crash of the email provider connection")
        written = super().send_many(messages[:through]) if through else []
        return [*written, *[crash] * (len(messages) - through)]


def materialize_email(
    deployment: Deployment,
    event_id: str,
    asset: dg.AssetsDefinition = email_invitations,
    start: datetime = AS_OF,
    until: datetime | None = None,
    **overrides: object,
) -> list[dg.ExecuteInProcessResult]:
    """Every wave of the invitations (email by default), with some resources replaced, as the
    event-date sensor launches them: at the batch's time, then at each `next_due_at` (a simulated clock)."""
    results: list[dg.ExecuteInProcessResult] = []
    now = start
    for _ in range(MAX_WAVES):
        resources = {**resources_for(home=deployment.home, fixed_now=now.isoformat()), **overrides}
        resources["services"] = campaign_services(resources)
        result = dg.materialize(
            [asset], resources=resources, partition_key=event_id, instance=deployment.instance,
            raise_on_error=False, selection=[asset],
        )  # fmt: skip
        results.append(result)
        due = wave_metadata(result).get(NEXT_DUE_AT)
        if not result.success or due is None:
            return results
        now = max(datetime.fromisoformat(str(due)), now + timedelta(minutes=1))
        if until is not None and now > until:
            return results
    raise AssertionError(f"the email campaign did not finish in {MAX_WAVES} waves")


def wave_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    events = result.get_asset_materialization_events()
    return {key: value.value for key, value in events[0].materialization.metadata.items()} if events else {}


def sent_rows(deployment: Deployment, event_id: str) -> pl.DataFrame:
    ledger = deployment.defs.resources["ledger"]
    return ledger.deliveries(event_id, channel="email", kind="invitation").filter(pl.col("status") == "sent")


@pytest.fixture
def deployment(batched_deployment: Deployment) -> Deployment:
    """Every test here starts right after the weekly batch of one event: a copy of the session's batch."""
    return batched_deployment


@pytest.fixture
def batch(batched_snapshot: BatchedSnapshot) -> str:
    """The event the batch ran for (`run_weekly_batch(..., limit=1)` at AS_OF)."""
    return batched_snapshot.event_id


def test_email_invitations_go_out_once_with_calendar_invite(deployment: Deployment, batch: str):
    store = deployment.defs.resources["candidate_store"]
    eligible = store.top_candidates_for_channel(PROGRAM, batch, "email", min_score=0.5, limit=50_000, now=AS_OF)
    waves = run_waves(deployment.home, deployment.instance, batch, "email_campaign", AS_OF)
    assert all(wave.result.success for wave in waves) and len(waves) > 2  # one wave per local send time
    sent = sent_rows(deployment, batch)
    assert sent.height == eligible.count > 0
    assert sent["customer_id"].n_unique() == sent.height
    assert set(sent["customer_id"]) == set(eligible.items["customer_id"])
    checks = {(e.check_name, wave.at): e.passed for wave in waves for e in wave.result.get_asset_check_evaluations()}
    assert checks and all(checks.values()), checks

    outbox = sorted((deployment.home / "outbox" / "email").glob("*.eml"))
    assert len(outbox) == sent.height
    parsed = [email.message_from_bytes(path.read_bytes(), policy=policy.default) for path in outbox]
    subjects = [str(message["Subject"]) for message in parsed]
    assert any(subject.startswith("Join us for Cloud & DevOps Summit on ") for subject in subjects)
    assert all("Cloud & DevOps Summit" in subject for subject in subjects)  # localized, same event
    message = parsed[0]
    assert message["List-Unsubscribe"] and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    invite = next(part for part in message.walk() if part.get_content_type() == "text/calendar")
    calendar = icalendar.Calendar.from_ical(invite.get_payload(decode=True))
    assert str(calendar["METHOD"]) == "REQUEST"
    # Each message left at its segment's local 10:00 (within the wave's minutes), dated when it left.
    wave_times = {wave.at for wave in waves}
    for message in parsed:
        sent_at = message["Date"].datetime.astimezone(UTC).replace(tzinfo=None)
        assert sent_at in wave_times
        timezone = str(message["X-EventReach-Campaign"]).split(":")[3]
        assert to_local(sent_at, timezone).time() >= time(10, 0), (timezone, sent_at)

    metadata = wave_metadata(next(wave.result for wave in waves if wave_metadata(wave.result)["sent"]))
    preview = email.message_from_bytes(Path(str(metadata["sample_message"])).read_bytes(), policy=policy.default)
    assert preview["To"] == "preview@eventreach.invalid"  # a sample, never a customer's address
    assert metadata["segments"].records

    again = run_waves(deployment.home, deployment.instance, batch, "email_campaign", waves[-1].at)
    assert [wave.result.success for wave in again] == [True]
    assert sent_rows(deployment, batch).height == sent.height
    assert len(list((deployment.home / "outbox" / "email").glob("*.eml"))) == sent.height
    metadata = wave_metadata(again[0].result)
    assert metadata["sent"] == 0 and metadata[REASON] == ALL_INVITED


def test_a_run_that_dies_half_way_is_finished_by_the_retry_without_duplicates(deployment: Deployment, batch: str):
    outbox = deployment.home / "outbox" / "email"
    first = materialize_email(deployment, batch, email_channel=FailingAfter(outbox_dir=str(outbox), allowed=7))
    assert not first[-1].success
    assert sent_rows(deployment, batch).height == 7
    second = materialize_email(deployment, batch)
    assert all(result.success for result in second)
    sent = sent_rows(deployment, batch)
    assert sent["customer_id"].n_unique() == sent.height > 7
    assert len(list(outbox.glob("*.eml"))) == sent.height


def test_an_unsubscribe_after_the_batch_suppresses_the_send(deployment: Deployment, batch: str):
    store = deployment.defs.resources["candidate_store"]
    top = store.top_candidates_for_channel(PROGRAM, batch, "email", min_score=0.5, limit=1, now=AS_OF).items
    customer = top["customer_id"][0]
    deployment.defs.resources["ledger"].record_opt_out(customer, None, "unsubscribe-link", AS_OF)
    results = materialize_email(deployment, batch)
    assert all(result.success for result in results)
    assert customer not in set(sent_rows(deployment, batch)["customer_id"])
    assert sent_rows(deployment, batch).height > 0


def test_frequency_cap_counts_invitations_from_the_ledger(deployment: Deployment, batch: str):
    """Invitations this month recorded only in the ledger (not yet in the warehouse) cap a customer."""
    from eventreach_assets.domain.delivery import DeliveryKey, MessageKind

    assert all(
        wave.result.success for wave in run_waves(deployment.home, deployment.instance, batch, "email_campaign", AS_OF)
    )
    customer = sent_rows(deployment, batch)["customer_id"][0]
    ledger = deployment.defs.resources["ledger"]
    for days_ago, other_event in ((3, "evt-other-webinar"), (10, "evt-other-training")):
        other = DeliveryKey(customer, other_event, "email", MessageKind.INVITATION)
        ledger.reserve(
            pl.DataFrame({"customer_id": [customer], "event_id": [other_event], "channel": ["email"],
                          "kind": ["invitation"], "campaign_id": ["other"]}),
            now=AS_OF - timedelta(days=days_ago),
        )  # fmt: skip
        ledger.mark_sent(other, f"provider-id-{other_event}", AS_OF - timedelta(days=days_ago))
    assert customer in set(ledger.invitations_since(AS_OF - timedelta(days=30))["customer_id"])

    rerun = deployment.defs.resolve_job_def("weekly_batch").execute_in_process(
        instance=deployment.instance, partition_key=batch
    )
    assert rerun.success
    rejections = deployment.defs.resources["decision_log"].read("rejections", batch).collect()
    assert rejections.filter(pl.col("customer_id") == customer)["reason"].to_list() == ["frequency_cap_reached"]


def test_invitations_stop_at_the_events_remaining_capacity(deployment: Deployment, batch: str, tmp_path: Path):
    import duckdb
    import yaml

    from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH
    from eventreach_assets.resources.program import ProgramResource

    warehouse = duckdb.connect(str(deployment.home / "warehouse.duckdb"), read_only=True)
    registered = warehouse.execute(
        "select count(distinct customer_id) from event_registrations where event_id = ?", [batch]
    ).fetchone()[0]
    program = yaml.safe_load(DEFAULT_PROGRAM_PATH.read_text())
    program["eventConfig"]["capacityLimit"] = registered + 3  # three seats left
    path = tmp_path / "program.yaml"
    path.write_text(yaml.safe_dump(program))
    results = materialize_email(deployment, batch, program=ProgramResource(path=str(path)))
    assert all(result.success for result in results)
    assert sent_rows(deployment, batch).height == 3
    assert wave_metadata(results[0])["remaining_capacity"] == 3


def test_a_sold_out_event_succeeds_sending_nothing_and_says_why(deployment: Deployment, batch: str, tmp_path: Path):
    import duckdb
    import yaml

    from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH
    from eventreach_assets.resources.program import ProgramResource

    warehouse = duckdb.connect(str(deployment.home / "warehouse.duckdb"), read_only=True)
    registered = warehouse.execute(
        "select count(distinct customer_id) from event_registrations where event_id = ?", [batch]
    ).fetchone()[0]
    program = yaml.safe_load(DEFAULT_PROGRAM_PATH.read_text())
    program["eventConfig"]["capacityLimit"] = registered  # every seat taken
    path = tmp_path / "program.yaml"
    path.write_text(yaml.safe_dump(program))
    for asset in (email_invitations, in_app_invitations):
        [result] = materialize_email(deployment, batch, asset, program=ProgramResource(path=str(path)))
        assert result.success
        metadata = wave_metadata(result)
        assert metadata["sent"] == 0 and metadata["planned"] == 0 and metadata[REASON] == SOLD_OUT
    assert deployment.defs.resources["ledger"].deliveries(batch).height == 0
    assert not list((deployment.home / "outbox").rglob("*.*"))


def test_reminders_reach_every_registrant_once(deployment: Deployment, batch: str):
    import duckdb

    warehouse = duckdb.connect(str(deployment.home / "warehouse.duckdb"), read_only=True)
    registrants = {
        row[0]
        for row in warehouse.execute(
            "select distinct customer_id from event_registrations where event_id = ?", [batch]
        ).fetchall()
    }
    assert registrants
    ledger = deployment.defs.resources["ledger"]
    events = deployment.defs.resources["warehouse"].events()
    start = events.filter(pl.col("event_id") == batch)["start_time_utc"][0]
    # The day-of email goes at 09:00 local (at the latest an hour before the start): every
    # registrant is due by then.
    event_day = build_definitions(home=deployment.home, fixed_now=(start - timedelta(hours=1)).isoformat())
    for defs, job, channel, kind in (
        (deployment.defs, "push_reminder", "push", "reminder"),
        (event_day, "day_of_reminder", "email", "day-of"),
    ):
        for _ in range(2):  # the second launch must send nothing
            result = defs.resolve_job_def(job).execute_in_process(instance=deployment.instance, partition_key=batch)
            assert result.success
            checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
            assert checks and all(checks.values()), checks
        sent = ledger.deliveries(batch, channel=channel, kind=kind).filter(pl.col("status") == "sent")
        assert set(sent["customer_id"]) == registrants
        assert sent.height == len(registrants)
    assert len(list((deployment.home / "outbox" / "push").glob("*.json"))) == len(registrants)


def test_day_of_email_goes_out_in_waves_at_nine_local(deployment: Deployment, batch: str):
    from eventreach_assets.assets.campaigns import NEXT_DUE_AT

    ledger = deployment.defs.resources["ledger"]
    events = deployment.defs.resources["warehouse"].events()
    start = events.filter(pl.col("event_id") == batch)["start_time_utc"][0]

    def run_at(moment: datetime) -> dict[str, object]:
        defs = build_definitions(home=deployment.home, fixed_now=moment.isoformat())
        result = defs.resolve_job_def("day_of_reminder").execute_in_process(
            instance=deployment.instance, partition_key=batch
        )
        assert result.success
        metadata = next(e.materialization.metadata for e in result.get_asset_materialization_events())
        return {key: value.value for key, value in metadata.items()}

    def sent() -> pl.DataFrame:
        return ledger.deliveries(batch, channel="email", kind="day-of").filter(pl.col("status") == "sent")

    first = run_at(start - timedelta(hours=15))  # the window opens: nobody's 09:00 has come yet
    waiting = first["not_yet_due"]
    assert first["sent"] == 0 and waiting > 0
    next_due = datetime.fromisoformat(str(first[NEXT_DUE_AT]))
    assert start - timedelta(hours=15) < next_due < start
    second = run_at(next_due)
    assert second["sent"] > 0 and second["sent"] + second["not_yet_due"] == waiting
    assert sent()["sent_at"].max().replace(tzinfo=None) <= next_due  # nobody got it before their 09:00
    last = run_at(start - timedelta(hours=1))
    assert NEXT_DUE_AT not in last and last["not_yet_due"] == 0
    assert sent().height == waiting and sent()["customer_id"].is_unique().all()


def test_in_app_holds_out_a_stable_control_group(deployment: Deployment, batch: str):
    ledger = deployment.defs.resources["ledger"]
    first = run_waves(deployment.home, deployment.instance, batch, "in_app_campaign", AS_OF)
    rows = ledger.deliveries(batch, channel="in-app", kind="invitation")
    held = rows.filter(pl.col("status") == "held_out")
    sent = rows.filter(pl.col("status") == "sent")
    assert sum(int(wave.metadata["held_out"]) for wave in first) == held.height > 0
    share = held.height / (held.height + sent.height)
    assert 0.03 < share < 0.2  # metrics.holdout.share = 0.1 of the planned candidates
    run_waves(deployment.home, deployment.instance, batch, "in_app_campaign", AS_OF)  # a rerun: the same people
    again = ledger.deliveries(batch, channel="in-app", kind="invitation")
    assert set(again.filter(pl.col("status") == "held_out")["customer_id"]) == set(held["customer_id"])
    assert again.filter(pl.col("status") == "sent").height == sent.height


def test_bounces_trip_the_circuit_breaker_and_stop_the_next_waves_until_rearmed(
    deployment: Deployment, batch: str, tmp_path: Path
):
    import yaml

    from eventreach_assets.assets.campaigns import BREAKER_OPEN
    from eventreach_assets.assets.feedback import ingest_provider_feedback
    from eventreach_assets.domain.feedback import ses_event
    from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, load_program
    from eventreach_assets.resources.program import ProgramResource

    program = yaml.safe_load(DEFAULT_PROGRAM_PATH.read_text())
    program["deliverability"]["minSentForBounceRate"] = 20  # the small warehouse's first waves are enough
    path = tmp_path / "program.yaml"
    path.write_text(yaml.safe_dump(program))
    override = {"program": ProgramResource(path=str(path))}
    first = materialize_email(deployment, batch, until=AS_OF + timedelta(hours=12), **override)
    assert all(result.success for result in first) and NEXT_DUE_AT in wave_metadata(first[-1])
    sent = sent_rows(deployment, batch)
    assert sent.height >= 20
    # 10 % of what went out bounces for good (SES event records, as the provider feed delivers them).
    contacts = deployment.defs.resources["warehouse"].contacts(sent["customer_id"].to_list())
    bounced = sent.join(contacts, on="customer_id").head(sent.height // 10 + 1)
    ledger = deployment.defs.resources["ledger"]
    resumed_at = datetime.fromisoformat(str(wave_metadata(first[-1])[NEXT_DUE_AT]))
    reported_at = resumed_at - timedelta(minutes=5)  # the bounces arrive before the next wave
    records = [
        ses_event("Bounce", row["provider_message_id"], row["email"], reported_at)
        for row in bounced.iter_rows(named=True)
    ]
    policy = load_program(path).deliverability
    assert ingest_provider_feedback(records, ledger=ledger, policy=policy, now=reported_at).stored

    # The next wave sends nothing and says why; so does every later one until an operator re-arms.
    stopped = materialize_email(deployment, batch, start=resumed_at, **override)
    assert [wave_metadata(result)["sent"] for result in stopped] == [0]
    assert str(wave_metadata(stopped[0])[REASON]).startswith(BREAKER_OPEN)
    assert sent_rows(deployment, batch).height == sent.height

    rearm = build_definitions(home=deployment.home, fixed_now=resumed_at.isoformat()).resolve_job_def(
        "rearm_circuit_breaker"
    )
    config = {"event_id": batch, "channel": "email", "operator": "on-call"}
    assert rearm.execute_in_process(
        instance=deployment.instance, run_config={"ops": {"rearm_breaker_op": {"config": config}}}
    ).success
    after = materialize_email(deployment, batch, start=resumed_at + timedelta(minutes=1), **override)
    assert all(result.success for result in after)
    assert sent_rows(deployment, batch).height > sent.height  # the campaign went on after the re-arm
