"""The ledger's provider-feedback tables: the same tests against SQLite and DynamoDB (moto server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from eventreach_assets.domain import feedback as fb
from eventreach_assets.domain.delivery import DeliveryKey, MessageKind
from eventreach_assets.resources.ledger import (
    MESSAGE_INDEX,
    DeliveryLedgerResource,
    DynamoDBDeliveryLedger,
    add_message_index,
    keys_frame,
)
from eventreach_assets_tests.stand_ins import REGION

NOW = datetime(2026, 12, 1, 10, 0)
EVENT = "evt-1"


def send(ledger: DeliveryLedgerResource, customers: list[str], channel: str = "email", at: datetime = NOW) -> None:
    """Reserve and confirm one invitation per customer, provider id m-<customer>."""
    keys = [DeliveryKey(c, EVENT, channel, MessageKind.INVITATION) for c in customers]
    ledger.reserve(keys_frame(keys, f"{EVENT}-{channel}"), now=at)
    for key in keys:
        ledger.mark_sent(key, f"m-{key.customer_id}", at, f"{EVENT}-{channel}")


def resolved(ledger: DeliveryLedgerResource, records: list[dict]) -> pl.DataFrame:
    accepted = fb.normalize_feedback(records, NOW + timedelta(days=60)).accepted
    return fb.resolve(accepted, ledger.messages_by_provider_id(accepted["provider_message_id"]))


def test_feedback_is_stored_once_with_its_message_and_read_back_per_event(ledger):
    send(ledger, ["a", "b", "c"])
    at = NOW + timedelta(minutes=5)
    records = [
        fb.ses_event("Delivery", "m-a", "a@x.com", at),
        fb.ses_event("Delivery", "m-b", "b@x.com", at),
        fb.ses_event("Bounce", "m-c", "c@x.com", at, bounce_type="Permanent"),
        fb.ses_event("Complaint", "m-b", "b@x.com", at + timedelta(hours=1)),
        fb.ses_event("Delivery", "m-unknown", "z@x.com", at),  # not ours: kept unmatched, not in the event
    ]
    rows = resolved(ledger, records)
    assert rows.filter(pl.col("provider_message_id") == "m-c")["customer_id"].item() == "c"
    assert ledger.record_feedback(rows) == 5
    assert ledger.record_feedback(rows) == 0  # a replay adds nothing
    stored = ledger.feedback(EVENT)
    assert stored.height == 4
    assert stored.schema == pl.Schema(fb.STORED_FEEDBACK_SCHEMA)
    bounced = stored.filter(pl.col("feedback") == "bounced")
    assert bounced.select("customer_id", "bounce_type", "occurred_at").row(0) == ("c", "permanent", at)
    assert ledger.feedback(EVENT, "push").height == 0
    lookup = ledger.messages_by_provider_id(pl.Series(["m-a", "m-c", "m-nope"]))
    assert lookup.select("provider_message_id", "customer_id", "status").rows() == [
        ("m-a", "a", "sent"), ("m-c", "c", "sent"),
    ]  # fmt: skip
    counts = ledger.campaign_counts(EVENT).row(0, named=True)
    assert {k: counts[k] for k in ("sent", "delivered", "bounced", "complained")} == {
        "sent": 3, "delivered": 2, "bounced": 1, "complained": 1,
    }  # fmt: skip
    report_rows = ledger.deliveries_with_feedback(EVENT).sort("customer_id")
    assert report_rows["delivered_at"].is_not_null().to_list() == [True, True, False]
    assert report_rows["status"].to_list() == ["sent"] * 3  # status stays sent


def test_suppressed_addresses_are_found_by_normalized_address_first_record_wins(ledger):
    rows = pl.DataFrame(
        [("gone@x.com", "hard_bounce", NOW, "m-1"), ("gone@x.com", "complaint", NOW + timedelta(hours=1), "m-2"),
         ("angry@x.com", "complaint", NOW, "m-3")],
        schema=fb.SUPPRESSION_SCHEMA, orient="row",
    )  # fmt: skip
    assert ledger.suppress_addresses(rows) == 2
    assert ledger.suppress_addresses(rows) == 0
    later = pl.DataFrame([("gone@x.com", "complaint", NOW + timedelta(days=1), "m-9")], schema=fb.SUPPRESSION_SCHEMA,
                         orient="row")  # fmt: skip
    assert ledger.suppress_addresses(later) == 0
    assert ledger.address_suppressions(pl.Series(["GONE@x.com"])).select("address", "reason", "suppressed_at").row(
        0
    ) == ("gone@x.com", "hard_bounce", NOW)
    given = pl.Series(["Gone <GONE@X.com>", "fine@x.com", "angry@x.com", "not-an-address"])
    assert ledger.suppressed_addresses(given) == {"Gone <GONE@X.com>", "angry@x.com"}
    assert ledger.suppressed_addresses(pl.Series([], dtype=pl.String)) == set()


def test_bounce_history_spans_events_and_starts_at_since(ledger):
    records = [
        fb.ses_event("Bounce", "m-1", "soft@x.com", NOW - timedelta(days=40), bounce_type="Transient"),
        fb.ses_event("Bounce", "m-2", "soft@x.com", NOW - timedelta(days=5), bounce_type="Transient"),
        fb.ses_event("Delivery", "m-3", "soft@x.com", NOW),
        fb.ses_event("Bounce", "m-4", "other@x.com", NOW, bounce_type="Transient"),
    ]
    ledger.record_feedback(resolved(ledger, records))
    history = ledger.bounce_history(pl.Series(["soft@x.com"]), NOW - timedelta(days=30))
    assert history.select("provider_message_id", "feedback", "bounce_type").rows() == [
        ("m-2", "bounced", "transient"),
    ]
    assert history.schema == pl.Schema(fb.FEEDBACK_SCHEMA)


def test_opt_outs_in_one_batch_and_the_first_record_wins(ledger):
    ledger.record_opt_out("b", "email", "unsubscribe-link", NOW - timedelta(days=1))
    rows = pl.DataFrame(
        {
            "customer_id": ["a", "b", "a"],
            "channel": [None, "email", None],
            "source": "complaint",
            "opted_out_at": [NOW, NOW, NOW + timedelta(hours=1)],
        }
    )
    assert ledger.record_opt_outs(rows) == 1  # a on every channel; b's email opt-out existed
    for channel in ("email", "push", "in-app"):
        assert ledger.opted_out(pl.Series(["a", "c"]), channel) == {"a"}
    row = ledger.opt_outs(pl.Series(["a"]), "push").row(0, named=True)
    assert (row["channel"], row["source"], row["opted_out_at"]) == ("*", "complaint", NOW.replace(tzinfo=UTC))
    assert ledger.opt_outs(pl.Series(["b"]), "email")["source"].item() == "unsubscribe-link"


def test_a_rearm_restarts_the_campaigns_count_from_then(ledger):
    send(ledger, ["a", "b"], at=NOW)
    ledger.record_feedback(
        resolved(ledger, [fb.ses_event("Bounce", f"m-{c}", f"{c}@x.com", NOW + timedelta(minutes=1)) for c in "ab"])
    )
    assert ledger.breaker_rearmed_at(EVENT, "email") is None
    ledger.rearm_breaker(EVENT, "email", NOW + timedelta(hours=1), by="ops-oncall")
    ledger.rearm_breaker(EVENT, "email", NOW + timedelta(hours=2), by="ops-oncall")
    assert ledger.breaker_rearmed_at(EVENT, "email") == (NOW + timedelta(hours=2)).replace(tzinfo=UTC)
    assert ledger.breaker_rearmed_at(EVENT, "push") is None
    send(ledger, ["c"], at=NOW + timedelta(hours=3))
    counts = ledger.campaign_counts(EVENT, "email").row(0, named=True)
    assert (counts["sent"], counts["bounced"]) == (1, 0)  # only what was sent since the re-arm
    everything = ledger.campaign_counts(EVENT, "email", rearmed=False).row(0, named=True)
    assert (everything["sent"], everything["bounced"]) == (3, 2)


def test_an_older_dynamodb_table_gets_the_message_index_added(aws_endpoint):
    store = DynamoDBDeliveryLedger(table_name="old-ledger", region_name=REGION, endpoint_url=aws_endpoint)
    client = store.client()
    definition = {
        "TableName": "old-ledger",
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                                 {"AttributeName": "sk", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
    }  # fmt: skip
    client.create_table(**definition)
    assert add_message_index(client, "old-ledger")
    assert not add_message_index(client, "old-ledger")
    indexes = client.describe_table(TableName="old-ledger")["Table"]["GlobalSecondaryIndexes"]
    assert [index["IndexName"] for index in indexes] == [MESSAGE_INDEX]
