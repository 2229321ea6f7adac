"""Provider feedback end to end: SES event records land where the Firehose destination writes them
(an S3 prefix on a moto server, or the local feed folder), the ingestion stores them, and a later
campaign's send loop skips the bounced address and the complainer; replays change nothing; the
Dagster asset quarantines bad records; the deliverability check and the breaker judge campaigns."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import pytest
from dagster_aws.s3 import S3Resource

from eventreach_assets.assets.feedback import breaker_decision, provider_feedback, rearm_circuit_breaker
from eventreach_assets.checks.deliverability_checks import build_deliverability_check, check_result
from eventreach_assets.domain import feedback as fb
from eventreach_assets.domain.delivery import DeliveryKey, MessageKind, OutboundMessage
from eventreach_assets.domain.sending import deliver
from eventreach_assets.ingestion import ingest_provider_feedback
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, DeliverabilityConfig
from eventreach_assets.resources.decision_log import LocalDecisionLog
from eventreach_assets.resources.feeds import EngagementFeedResource, LocalFolderFeed, S3Feed
from eventreach_assets.resources.ledger import DeliveryLedgerResource, DynamoDBDeliveryLedger, SqliteDeliveryLedger
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets_tests.stand_ins import REGION

NOW = datetime(2026, 12, 1, 10, 0)
POLICY = DeliverabilityConfig()
BUCKET, PREFIX = "eventreach-state", "eventreach/feeds"
ADDRESSES = {"ana": "Ana@Example.com", "bo": "bo@example.com", "cy": "cy@example.com", "di": "di@example.com"}


class Stack:
    """A feed, a ledger, and how a file lands in the feed as the provider's pipeline writes it."""

    def __init__(self, feed: EngagementFeedResource, ledger: DeliveryLedgerResource, put) -> None:
        self.feed, self.ledger, self.put = feed, ledger, put


@pytest.fixture(params=["local", "aws"])
def stack(request, tmp_path: Path) -> Stack:
    if request.param == "local":
        base = tmp_path / "feeds"

        def put_local(name: str, data: bytes) -> None:
            (base / "provider").mkdir(parents=True, exist_ok=True)
            (base / "provider" / name).write_bytes(data)

        ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
        yield Stack(LocalFolderFeed(base_dir=str(base)), ledger, put_local)
        ledger.close()
        return
    endpoint = request.getfixturevalue("aws_endpoint")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)

    def put_s3(name: str, data: bytes) -> None:  # what Kinesis Data Firehose leaves under the prefix
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/provider/{name}", Body=data)

    ledger = DynamoDBDeliveryLedger(table_name="eventreach-ledger", region_name=REGION, endpoint_url=endpoint)
    ledger.create_table()
    feed = S3Feed(s3=S3Resource(endpoint_url=endpoint, region_name=REGION), bucket=BUCKET, prefix=PREFIX)
    yield Stack(feed, ledger, put_s3)


def messages(event_id: str, channel: str = "email", kind: MessageKind = MessageKind.INVITATION) -> list:
    recipients = ADDRESSES if channel == "email" else {c: c for c in ADDRESSES}
    return [
        OutboundMessage(DeliveryKey(c, event_id, channel, kind), f"{event_id}-{channel}", recipient)
        for c, recipient in recipients.items()
    ]


def send_all(ledger: DeliveryLedgerResource, batch: list[OutboundMessage], at: datetime) -> list[str]:
    """Run the real send loop; returns the recipients the provider was handed."""
    handed: list[str] = []

    def provider(message: OutboundMessage) -> str:
        handed.append(message.recipient)
        return f"ses-{message.key.event_id}-{message.key.channel}-{message.key.customer_id}"

    deliver(batch, ledger=ledger, send=provider, now=lambda: at)
    return handed


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def test_ses_events_through_the_feed_change_later_sends_and_a_replay_changes_nothing(stack: Stack):
    assert send_all(stack.ledger, messages("evt-1"), NOW) == list(ADDRESSES.values())
    assert send_all(stack.ledger, messages("evt-1", "push", MessageKind.REMINDER), NOW) == list(ADDRESSES)
    later = NOW + timedelta(minutes=3)
    stack.put(
        "20261201T101500Z-firehose-0001.jsonl",
        jsonl(
            [
                fb.ses_event("Delivery", "ses-evt-1-email-bo", "bo@example.com", later),
                fb.ses_event("Delivery", "ses-evt-1-email-cy", "cy@example.com", later),
                fb.ses_event("Delivery", "ses-evt-1-email-di", "di@example.com", later),
                fb.ses_event("Bounce", "ses-evt-1-email-ana", "ana@example.com", later, bounce_type="Permanent"),
                fb.ses_event("Complaint", "ses-evt-1-email-bo", "bo@example.com", later + timedelta(hours=2)),
                fb.ses_event("Bounce", "ses-evt-1-email-cy", "cy@example.com", later, bounce_type="Transient"),
            ]
        )
        + b"{not json\n",
    )
    files = stack.feed.new_files("provider")
    assert files == ["20261201T101500Z-firehose-0001.jsonl"]
    outcome = ingest_provider_feedback(stack.feed.read("provider", files), ledger=stack.ledger, policy=POLICY,
                                       now=NOW + timedelta(hours=3))  # fmt: skip
    summary = outcome.summary()
    assert {k: summary[k] for k in ("accepted", "rejected", "stored", "delivered", "bounced", "complained")} == {
        "accepted": 6, "rejected": 1, "stored": 6, "delivered": 3, "bounced": 2, "complained": 1,
    }  # fmt: skip
    assert (summary["suppressed_addresses"], summary["complainers_opted_out"], summary["malformed_record"]) == (2, 1, 1)

    # The next campaign (another event): Ana's address bounced for good, Bo complained (every
    # channel), Cy's single soft bounce changes nothing.
    assert send_all(stack.ledger, messages("evt-2"), NOW + timedelta(days=1)) == ["cy@example.com", "di@example.com"]
    assert send_all(stack.ledger, messages("evt-2", "push", MessageKind.REMINDER), NOW + timedelta(days=1)) == [
        "ana", "cy", "di",
    ]  # fmt: skip
    statuses = dict(stack.ledger.deliveries("evt-2", "email").select("customer_id", "status").iter_rows())
    assert statuses == {"ana": "suppressed", "bo": "suppressed", "cy": "sent", "di": "sent"}
    assert stack.ledger.opt_outs(pl.Series(["bo"]), "in-app")["source"].to_list() == ["complaint"]

    counts = stack.ledger.campaign_counts("evt-1", "email").row(0, named=True)
    assert (counts["sent"], counts["delivered"], counts["bounced"], counts["soft_bounced"], counts["complained"]) == (
        4, 3, 1, 1, 1,
    )  # fmt: skip

    replay = ingest_provider_feedback(stack.feed.read("provider", files), ledger=stack.ledger, policy=POLICY,
                                      now=NOW + timedelta(hours=4))  # fmt: skip
    assert (replay.stored, replay.counts["suppressed_addresses"], replay.counts["complainers_opted_out"]) == (0, 0, 0)
    assert stack.ledger.feedback("evt-1").height == 6
    assert stack.ledger.campaign_counts("evt-1", "email").row(0, named=True) == counts


def test_three_soft_bounces_in_thirty_days_suppress_the_address(stack: Stack):
    for day, event in enumerate(("evt-1", "evt-2", "evt-3")):
        at = NOW + timedelta(days=7 * day)
        send_all(stack.ledger, messages(event)[2:3], at)  # cy only
        stack.put(
            f"2026120{day + 1}T120000Z-0001.jsonl",
            jsonl([fb.ses_event("Bounce", f"ses-{event}-email-cy", "cy@example.com", at, bounce_type="Transient")]),
        )
    files = stack.feed.new_files("provider")
    for name in files:  # one file per run, as the sensor may hand them
        ingest_provider_feedback(stack.feed.read("provider", [name]), ledger=stack.ledger, policy=POLICY,
                                 now=NOW + timedelta(days=30))  # fmt: skip
    suppressed = stack.ledger.address_suppressions(pl.Series(["cy@example.com"]))
    assert suppressed.select("reason", "provider_message_id").row(0) == ("repeated_soft_bounces", "ses-evt-3-email-cy")
    assert send_all(stack.ledger, messages("evt-4")[2:3], NOW + timedelta(days=20)) == []


def test_a_dsn_from_the_smtp_relay_suppresses_the_address(tmp_path: Path):
    from eventreach_assets_tests.test_feedback_domain import build_dsn

    ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
    key = DeliveryKey("gone", "evt-1", "email", MessageKind.INVITATION)
    ledger.reserve(pl.DataFrame({"customer_id": ["gone"], "event_id": "evt-1", "channel": "email",
                                 "kind": "invitation", "campaign_id": "c"}), now=NOW)  # fmt: skip
    ledger.mark_sent(key, "<3f2a9c@eventreach.example>", NOW, "c")  # the SMTP channel's Message-ID
    outcome = ingest_provider_feedback([fb.dsn_record(build_dsn("failed", "5.1.1"))], ledger=ledger, policy=POLICY,
                                       now=NOW + timedelta(days=1))  # fmt: skip
    assert outcome.accepted.select("customer_id", "feedback", "bounce_type", "source").row(0) == (
        "gone", "bounced", "permanent", "dsn",
    )  # fmt: skip
    assert ledger.suppressed_addresses(pl.Series(["gone@example.com"])) == {"gone@example.com"}
    ledger.close()


def resources(tmp_path: Path, fixed_now: datetime) -> dict:
    return {
        "engagement_feed": LocalFolderFeed(base_dir=str(tmp_path / "feeds")),
        "ledger": SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite")),
        "decision_log": LocalDecisionLog(base_dir=str(tmp_path / "decisions")),
        "program": ProgramResource(path=str(DEFAULT_PROGRAM_PATH)),
        "clock": ClockResource(fixed_now=fixed_now.isoformat()),
    }


def test_the_asset_quarantines_bad_records_reports_campaigns_and_replays_idempotently(tmp_path: Path):
    res = resources(tmp_path, NOW + timedelta(days=1))
    send_all(res["ledger"], messages("evt-1"), NOW)
    name = "20261201T110000Z-0001.jsonl"
    res["engagement_feed"].drop(
        "provider",
        name,
        [
            fb.ses_event("Bounce", "ses-evt-1-email-ana", "ana@example.com", NOW, bounce_type="Permanent"),
            fb.ses_event("Delivery", "ses-evt-1-email-bo", "bo@example.com", NOW),
            {"eventType": "Delivery", "mail": {"destination": ["x@example.com"]}},  # no messageId
            {"eventType": "Exploded", "mail": {"messageId": "m"}},
        ],
    )
    config = {"ops": {"provider_feedback": {"config": {"files": [name]}}}}
    for _attempt in range(2):  # the second run replays the same file
        result = dg.materialize([provider_feedback], resources=res, run_config=config)
        assert result.success
        metadata = result.asset_materializations_for_node("provider_feedback")[0].metadata
        assert metadata["accepted"].value == 2 and metadata["rejected"].value == 2
        quarantine = pl.read_parquet(metadata["quarantine"].value)
        assert sorted(quarantine["reason"].to_list()) == ["missing_message_id", "unknown_event_type"]
        assert "x@example.com" not in json.dumps({k: str(v.value) for k, v in metadata.items() if k != "quarantine"})
        campaigns = metadata["campaigns"].value.records
        assert [(r.data["event_id"], r.data["channel"], r.data["sent"], r.data["bounced"]) for r in campaigns] == [
            ("evt-1", "email", 4, 1),
        ]
    assert res["ledger"].feedback("evt-1").height == 2


def test_the_check_warns_at_review_thresholds_and_errors_when_the_breaker_stops():
    ok = check_result(fb.breaker(sent=3, delivered=2, bounced=1, complained=0, policy=POLICY))
    assert ok.passed and "not enough sent" in ok.description
    warn = check_result(fb.breaker(sent=1000, delivered=950, bounced=50, complained=0, policy=POLICY))
    assert (warn.passed, warn.severity) == (False, dg.AssetCheckSeverity.WARN)
    stop = check_result(fb.breaker(sent=2000, delivered=2000, bounced=0, complained=6, policy=POLICY))
    assert (stop.passed, stop.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert stop.metadata["breaker"].value == "stopped" and "complaint rate 0.30 %" in stop.description
    with pytest.raises(ValueError, match="no provider feedback"):
        build_deliverability_check("push_reminders", "push")


def test_the_breaker_trips_on_a_bouncing_campaign_and_an_operator_rearms_it(tmp_path: Path):
    res = resources(tmp_path, NOW + timedelta(days=1))
    ledger: SqliteDeliveryLedger = res["ledger"]
    batch = [
        OutboundMessage(DeliveryKey(f"c{i}", "evt-1", "email", MessageKind.INVITATION), "w1", f"c{i}@example.com")
        for i in range(250)
    ]
    send_all(ledger, batch, NOW)
    records = [
        fb.ses_event("Bounce" if i < 25 else "Delivery", f"ses-evt-1-email-c{i}", f"c{i}@example.com", NOW)
        for i in range(250)
    ]
    ingest_provider_feedback(records, ledger=ledger, policy=POLICY, now=NOW + timedelta(hours=1))
    decision = breaker_decision(ledger, POLICY, "evt-1", "email")
    assert decision.stop and decision.bounce_rate == 0.1  # 25 of 250: 10 % >= 8 %
    assert not breaker_decision(ledger, POLICY, "evt-1", "in-app").stop

    rearm = rearm_circuit_breaker.execute_in_process(
        run_config={"ops": {"rearm_breaker_op": {"config": {"event_id": "evt-1", "channel": "email",
                                                            "operator": "ops-oncall"}}}},
        resources={"ledger": ledger, "clock": res["clock"]},
    )  # fmt: skip
    assert rearm.success
    assert ledger.breaker_rearmed_at("evt-1", "email").replace(tzinfo=None) == NOW + timedelta(days=1)
    after = breaker_decision(ledger, POLICY, "evt-1", "email")
    assert (after.stop, after.sent) == (False, 0)  # only what is sent from now on counts


def test_the_provider_feed_sensor_launches_the_ingestion_job(deployment):
    from eventreach_assets_tests.conftest import AS_OF
    from eventreach_assets_tests.test_lifecycle import evaluate

    ledger = deployment.defs.resources["ledger"]
    sent_at = AS_OF - timedelta(hours=2)
    send_all(ledger, messages("evt-1"), sent_at)
    deployment.defs.resources["engagement_feed"].drop(
        "provider",
        "20261123T080000Z-0001.jsonl",
        [fb.ses_event("Bounce", "ses-evt-1-email-ana", "Ana@Example.com", sent_at + timedelta(seconds=5))],
    )
    tick = evaluate(deployment.defs, deployment.instance, "provider_feed_sensor")
    [request] = tick.run_requests
    assert request.tags["eventreach/feed"] == "provider"
    result = deployment.defs.resolve_job_def("provider_feedback_ingest").execute_in_process(
        run_config=request.run_config, instance=deployment.instance, tags=request.tags
    )
    assert result.success
    assert ledger.suppressed_addresses(pl.Series(["ana@example.com"])) == {"ana@example.com"}
    assert evaluate(deployment.defs, deployment.instance, "provider_feed_sensor", cursor=tick.cursor).skip_message
