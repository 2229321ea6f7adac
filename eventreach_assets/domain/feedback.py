"""Provider feedback: deliveries, bounces and complaints coming back from the email providers.

Pure (polars, the standard `email` package; no Dagster, no I/O). Two formats arrive in the
`provider` engagement feed (resources/feeds/), one JSON object per line:

- **Amazon SES event publishing.** A configuration set (`SesEmail.configuration_set`) with an
  event destination for Delivery, Bounce, Complaint and Reject events; the destination is a
  Kinesis Data Firehose stream delivering to S3 under the feeds' prefix
  (`s3://<bucket>/<prefix>/provider/`), one SES event JSON per line (Firehose's record format
  conversion off; a Lambda transform or a newline delimiter appends the "\\n"). Fields read, as
  SES documents them: `eventType` (or `notificationType`, the SNS notification form),
  `mail.messageId` (the id `SendEmail` returned: the ledger's `provider_message_id`),
  `mail.destination`, `mail.timestamp`, `delivery.recipients` / `delivery.timestamp`,
  `bounce.bounceType` (Permanent | Transient | Undetermined), `bounce.bounceSubType`,
  `bounce.bouncedRecipients[].emailAddress`, `bounce.timestamp`,
  `complaint.complainedRecipients[].emailAddress`, `complaint.timestamp`,
  `complaint.complaintFeedbackType`. The same record inside an SNS notification envelope
  (`{"Type": "Notification", "Message": "<the record as JSON text>"}`) is read too. Other SES
  event types (Send, Open, Click, DeliveryDelay, Rendering Failure, Subscription) are counted as
  ignored; a type SES does not have is quarantined.
- **SMTP delivery status notifications** (RFC 3464): `{"dsn": "<the DSN message as text>"}`,
  written by whatever drains the relay's bounce mailbox. `parse_dsn` reads the
  message/delivery-status part (`Action: failed` with `Status: 5.x.x` is a permanent bounce,
  `4.x.x` a transient one, `Action: delivered` a delivery) and the original `Message-ID` from
  the message/rfc822 or text/rfc822-headers part: the SMTP channel's provider message id.

`normalize_feedback` turns a batch into FEEDBACK_SCHEMA rows (one per provider message x
recipient x feedback x bounce type x time, duplicates collapsed) and QUARANTINE_SCHEMA rows with a
reason code. What the rows do (`suppressions`, `campaign_counts`, `breaker`) is decided here too;
resources/ledger/ stores, assets/feedback.py wires.

Rates, per campaign (event x channel): bounce rate = hard (Permanent) bounces / messages sent, as
SES computes its reputation bounce rate; complaint rate = complaints / messages delivered, the
denominator Gmail's spam rate uses (inboxes reached), and never smaller than SES's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from email import message_from_bytes, message_from_string, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import polars as pl

from eventreach_assets.domain.campaigns import to_utc_naive
from eventreach_assets.domain.feed_records import (
    FUTURE_TIMESTAMP,
    FUTURE_TOLERANCE,
    INVALID_TIMESTAMP,
    MALFORMED_RECORD,
    MISSING_FIELD,
    QUARANTINE_SCHEMA,
    utc_naive,
)

FEEDBACK_FEED = "provider"  # the engagement feed both formats arrive in
FEEDBACK_CHANNELS: tuple[str, ...] = ("email",)  # channels whose provider reports deliveries

DELIVERED, BOUNCED, COMPLAINED, REJECTED = "delivered", "bounced", "complained", "rejected"
PERMANENT, TRANSIENT, UNDETERMINED = "permanent", "transient", "undetermined"
SES, DSN = "ses", "dsn"

SES_EVENT_TYPES: dict[str, str] = {"Delivery": DELIVERED, "Bounce": BOUNCED, "Complaint": COMPLAINED,
                                   "Reject": REJECTED}  # fmt: skip
# SES event types we receive only if the configuration set publishes them: valid, not used here.
IGNORED_EVENT_TYPES = frozenset(
    {"Send", "Open", "Click", "DeliveryDelay", "Rendering Failure", "RenderingFailure", "Subscription"}
)
BOUNCE_TYPES = (PERMANENT, TRANSIENT, UNDETERMINED)

FEEDBACK_SCHEMA: dict[str, pl.DataType] = {
    "provider_message_id": pl.String(),  # SES MessageId, or the SMTP Message-ID ("<...@...>")
    "recipient": pl.String(),  # normalized address (normalize_address)
    "feedback": pl.String(),  # delivered | bounced | complained | rejected
    "bounce_type": pl.String(),  # bounced: permanent | transient | undetermined; else null
    "bounce_subtype": pl.String(),  # SES bounceSubType / the DSN's Status code
    "occurred_at": pl.Datetime("us"),  # naive UTC: when the provider saw it
    "source": pl.String(),  # ses | dsn
}
FEEDBACK_KEY = ("provider_message_id", "recipient", "feedback", "bounce_type", "occurred_at")
MESSAGE_COLUMNS = ("event_id", "channel", "kind", "customer_id", "campaign_id")
# A feedback row with the ledger message it is about (null when no ledger row has that id).
STORED_FEEDBACK_SCHEMA: dict[str, pl.DataType] = {
    **FEEDBACK_SCHEMA,
    **{name: pl.String() for name in MESSAGE_COLUMNS},
}
SUPPRESSION_SCHEMA: dict[str, pl.DataType] = {
    "address": pl.String(),
    "reason": pl.String(),  # hard_bounce | repeated_soft_bounces | complaint
    "suppressed_at": pl.Datetime("us"),
    "provider_message_id": pl.String(),  # the message whose feedback caused it
}
COUNTS_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "channel": pl.String(),
    "sent": pl.Int64(),
    "delivered": pl.Int64(),
    "bounced": pl.Int64(),  # hard bounces
    "soft_bounced": pl.Int64(),  # transient / undetermined only
    "complained": pl.Int64(),
    "rejected": pl.Int64(),
}
OUTCOME_COLUMNS: dict[str, pl.DataType] = {  # what message_outcomes adds to ledger rows
    "delivered_at": pl.Datetime("us"),
    "bounced_at": pl.Datetime("us"),  # first hard bounce
    "soft_bounced_at": pl.Datetime("us"),
    "complained_at": pl.Datetime("us"),
}

HARD_BOUNCE, SOFT_BOUNCES, COMPLAINT = "hard_bounce", "repeated_soft_bounces", "complaint"

# ---- reason codes (besides domain/feed_records.py's malformed_record, missing_field, invalid_timestamp,
# timestamp_in_future) ----
UNKNOWN_EVENT_TYPE = "unknown_event_type"  # eventType missing or not an SES event type
MISSING_MESSAGE_ID = "missing_message_id"  # mail.messageId / the DSN's original Message-ID absent
INVALID_ADDRESS = "invalid_address"  # a recipient that is not an address
INVALID_BOUNCE_TYPE = "invalid_bounce_type"
NOT_A_DSN = "not_a_delivery_status_notification"  # a "dsn" record that is no RFC 3464 report

_ADDRESS = r"^[^@\s<>,;]+@[^@\s<>,;]+$"
_RAW_SCHEMA: dict[str, pl.DataType] = {
    **{name: pl.String() for name in ("provider_message_id", "recipient", "feedback", "bounce_type")},
    **{name: pl.String() for name in ("bounce_subtype", "occurred_at", "source", "reason", "raw")},
    "line": pl.Int64(),
    "file": pl.String(),
}


class DsnError(ValueError):
    """The message is not an RFC 3464 delivery status notification we can read."""


def address_expr(column: str | pl.Expr) -> pl.Expr:
    """An address as suppressions key it: the part in <...> if any, trimmed, lower case (mailbox
    providers treat local parts case-insensitively; SES's own suppression list does too)."""
    text = (pl.col(column) if isinstance(column, str) else column).cast(pl.String).str.strip_chars()
    inner = text.str.extract(r"<([^<>]*)>\s*$", 1)
    value = pl.coalesce(inner, text).str.strip_chars().str.to_lowercase()
    return pl.when(value.str.contains(_ADDRESS)).then(value)


def normalize_addresses(addresses: Sequence[str | None] | pl.Series) -> pl.Series:
    """`address_expr` over a list of addresses (null where it is not an address), same order."""
    frame = pl.DataFrame({"address": pl.Series(list(addresses), dtype=pl.String)})
    return frame.select(address_expr("address"))["address"]


# ---- SMTP DSNs -------------------------------------------------------------------------------


def _dsn_time(value: str | None) -> str | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.isoformat()


def _address_field(value: str | None) -> str | None:
    """`rfc822; user@example.com` -> `user@example.com` (other address types are not mail)."""
    if not value:
        return None
    kind, _, address = str(value).partition(";")
    return address.strip() if address and kind.strip().lower() == "rfc822" else None


def _original_message_id(report: Message) -> str | None:
    for part in report.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if inner is not None and inner.get("Message-ID"):
                return str(inner["Message-ID"]).strip()
        elif content_type == "text/rfc822-headers":
            headers = HeaderParser().parsestr(part.get_payload(decode=True).decode("utf-8", "replace"))
            if headers.get("Message-ID"):
                return str(headers["Message-ID"]).strip()
    for name in ("In-Reply-To", "References"):  # some relays only thread the DSN to the original
        if report.get(name):
            return str(report[name]).split()[-1].strip()
    return None


def parse_dsn(data: bytes | str) -> list[dict[str, str | None]]:
    """The recipients' outcomes of one RFC 3464 report: provider_message_id (the original's
    Message-ID), recipient (Final-Recipient, else Original-Recipient), feedback, bounce_type,
    bounce_subtype (the Status code), occurred_at (ISO text: Last-Attempt-Date, else Arrival-Date,
    else the report's Date). `Action: failed` is a bounce (Status 5.x.x permanent, 4.x.x transient,
    otherwise undetermined); `delivered` a delivery; `delayed`, `relayed` and `expanded` are not
    outcomes and give no row. Raises DsnError when it is not a delivery-status report."""
    parse = message_from_bytes if isinstance(data, bytes) else message_from_string
    report = parse(data, policy=policy.compat32)  # type: ignore[arg-type]
    if report.get_content_type() != "multipart/report":
        raise DsnError(f"expected multipart/report, got {report.get_content_type()}")
    status_part = next((p for p in report.walk() if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        raise DsnError("no message/delivery-status part")
    blocks = status_part.get_payload()
    if not isinstance(blocks, list) or len(blocks) < 2:
        raise DsnError("the delivery-status part has no per-recipient fields")
    per_message, recipients = blocks[0], blocks[1:]
    message_id = _original_message_id(report)
    fallback_time = _dsn_time(per_message.get("Arrival-Date")) or _dsn_time(report.get("Date"))
    rows: list[dict[str, str | None]] = []
    for fields in recipients:
        action = str(fields.get("Action", "")).strip().lower()
        status = str(fields.get("Status", "")).strip()
        if action == "failed":
            feedback = BOUNCED
            bounce_type = {"5": PERMANENT, "4": TRANSIENT}.get(status[:1], UNDETERMINED)
        elif action == "delivered":
            feedback, bounce_type = DELIVERED, None
        else:
            continue
        rows.append(
            {
                "provider_message_id": message_id,
                "recipient": _address_field(fields.get("Final-Recipient"))
                or _address_field(fields.get("Original-Recipient")),
                "feedback": feedback,
                "bounce_type": bounce_type,
                "bounce_subtype": status or None,
                "occurred_at": _dsn_time(fields.get("Last-Attempt-Date")) or fallback_time,
                "source": DSN,
            }
        )
    return rows


# ---- SES events ------------------------------------------------------------------------------


def _emails(entries: Any) -> list[Any]:
    if not isinstance(entries, list):
        return []
    return [entry.get("emailAddress") if isinstance(entry, dict) else entry for entry in entries]


def _ses_rows(record: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None, bool]:
    """(rows, reason the whole record is rejected, ignored) of one SES event record."""
    event_type = record.get("eventType", record.get("notificationType"))
    if event_type in IGNORED_EVENT_TYPES:
        return [], None, True
    if not isinstance(event_type, str) or event_type not in SES_EVENT_TYPES:
        return [], UNKNOWN_EVENT_TYPE, False
    feedback = SES_EVENT_TYPES[event_type]
    mail = record.get("mail") if isinstance(record.get("mail"), dict) else {}
    detail = record.get(event_type[0].lower() + event_type[1:])
    detail = detail if isinstance(detail, dict) else {}
    bounce_type = bounce_subtype = None
    if feedback == DELIVERED:
        recipients = detail.get("recipients") or mail.get("destination")
    elif feedback == BOUNCED:
        recipients = _emails(detail.get("bouncedRecipients"))
        raw_type = detail.get("bounceType")
        bounce_type = raw_type.lower() if isinstance(raw_type, str) else None
        bounce_subtype = detail.get("bounceSubType")
        if bounce_type not in BOUNCE_TYPES:
            return [], INVALID_BOUNCE_TYPE, False
    elif feedback == COMPLAINED:
        if str(detail.get("complaintFeedbackType", "")).lower() == "not-spam":
            return [], None, True  # the recipient says it is not spam: no complaint
        recipients = _emails(detail.get("complainedRecipients"))
    else:
        recipients = mail.get("destination")
    recipients = recipients if isinstance(recipients, list) and recipients else [None]
    base = {
        "provider_message_id": mail.get("messageId"),
        "feedback": feedback,
        "bounce_type": bounce_type,
        "bounce_subtype": bounce_subtype,
        "occurred_at": detail.get("timestamp") or mail.get("timestamp"),
        "source": SES,
    }
    return [{**base, "recipient": recipient} for recipient in recipients], None, False


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text.strip() else None


def dsn_record(message: bytes | str) -> dict[str, str]:
    """A DSN as the provider feed carries it (what a bounce-mailbox drain writes)."""
    return {"dsn": message.decode("utf-8", "replace") if isinstance(message, bytes) else message}


def _flatten(records: Iterable[Mapping[str, Any]]) -> tuple[pl.DataFrame, int]:
    """Text rows (_RAW_SCHEMA) with a pre-judged reason where the record itself is bad; ignored count."""
    rows: list[dict[str, Any]] = []
    ignored = 0
    for position, record in enumerate(records, start=1):
        body = {key: value for key, value in record.items() if key not in ("_source", "_line")}
        where = {"file": record.get("_source"), "line": record.get("_line", position)}
        if "_error" in record:
            rows.append({**where, "reason": MALFORMED_RECORD, "raw": _text(record.get("_raw"))})
            continue
        raw = json.dumps(body, default=str, sort_keys=True)
        if record.get("Type") == "Notification" and isinstance(record.get("Message"), str):
            try:  # an SNS envelope (SNS -> SQS -> a drain): the SES record is its Message
                inner = json.loads(record["Message"])
            except json.JSONDecodeError:
                inner = None
            if not isinstance(inner, dict):
                rows.append({**where, "reason": MALFORMED_RECORD, "raw": raw})
                continue
            record = inner
        if "dsn" in record:
            try:
                found = parse_dsn(str(record["dsn"]))
            except DsnError:
                rows.append({**where, "reason": NOT_A_DSN, "raw": raw})
                continue
            ignored += not found
            rows.extend({**where, **row, "reason": None, "raw": raw} for row in found)
            continue
        found, reason, skip = _ses_rows(record)
        ignored += skip
        if reason is not None:
            rows.append({**where, "reason": reason, "raw": raw})
        rows.extend({**where, **{k: _text(v) for k, v in row.items()}, "reason": None, "raw": raw} for row in found)
    return pl.DataFrame(rows, schema=_RAW_SCHEMA), ignored


@dataclass(frozen=True)
class FeedbackBatch:
    """One batch judged: `accepted` (FEEDBACK_SCHEMA, unique), `rejected` (QUARANTINE_SCHEMA),
    `ignored` (valid provider records that are no feedback: opens, delays, not-spam reports)."""

    accepted: pl.DataFrame
    rejected: pl.DataFrame
    ignored: int = 0


def normalize_feedback(
    records: Sequence[Mapping[str, Any]], now: datetime, tolerance: timedelta = FUTURE_TOLERANCE
) -> FeedbackBatch:
    """Validate and normalize provider records (SES events and DSNs, see the module doc); every
    feedback row of a record is accepted or rejected, the first failing rule naming it."""
    raw, ignored = _flatten(records)
    limit = pl.lit(to_utc_naive(now) + tolerance, pl.Datetime("us"))
    parsed = raw.with_columns(
        utc_naive("occurred_at", pl.String()).alias("_at"),
        address_expr("recipient").alias("_address"),
        pl.col("provider_message_id").str.strip_chars().alias("_message"),
    )
    reason = (
        pl.when(pl.col("reason").is_not_null())
        .then(pl.col("reason"))
        .when(pl.col("_message").is_null() | (pl.col("_message") == ""))
        .then(pl.lit(MISSING_MESSAGE_ID))
        .when(pl.col("recipient").is_null() | (pl.col("recipient").str.strip_chars() == ""))
        .then(pl.lit(MISSING_FIELD))
        .when(pl.col("_address").is_null())
        .then(pl.lit(INVALID_ADDRESS))
        .when(pl.col("occurred_at").is_null())
        .then(pl.lit(MISSING_FIELD))
        .when(pl.col("_at").is_null())
        .then(pl.lit(INVALID_TIMESTAMP))
        .when(pl.col("_at") > limit)
        .then(pl.lit(FUTURE_TIMESTAMP))
    )
    judged = parsed.with_columns(reason.alias("reason"))
    accepted = (
        judged.filter(pl.col("reason").is_null())
        .select(
            pl.col("_message").alias("provider_message_id"),
            pl.col("_address").alias("recipient"),
            "feedback",
            "bounce_type",
            "bounce_subtype",
            pl.col("_at").alias("occurred_at"),
            "source",
        )
        .unique(list(FEEDBACK_KEY), keep="first", maintain_order=True)
        .cast(FEEDBACK_SCHEMA)  # type: ignore[arg-type]
    )
    rejected = (
        judged.filter(pl.col("reason").is_not_null())
        .unique(["file", "line", "reason"], keep="first", maintain_order=True)
        .sort("file", "line", nulls_last=True, maintain_order=True)
        .select(pl.col("file").alias("source"), "line", pl.lit(None, pl.String).alias("event_id"), "reason", "raw")
        .cast(QUARANTINE_SCHEMA)  # type: ignore[arg-type]
    )
    return FeedbackBatch(accepted=accepted, rejected=rejected, ignored=ignored)


# ---- effects ---------------------------------------------------------------------------------


class DeliverabilityPolicy(Protocol):
    """What the decisions read of program.config.DeliverabilityConfig (the YAML's `deliverability`)."""

    bounce_warn_rate: float
    complaint_warn_rate: float
    bounce_stop_rate: float
    complaint_stop_rate: float
    min_sent_for_bounce_rate: int
    min_delivered_for_complaint_rate: int
    transient_bounces_to_suppress: int
    transient_bounce_window_days: int


def _empty(schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=dict(schema))


def suppressions(feedback: pl.DataFrame, history: pl.DataFrame, policy: DeliverabilityPolicy) -> pl.DataFrame:
    """Addresses to suppress on email (SUPPRESSION_SCHEMA, one row per address, earliest cause):
    a hard bounce or a complaint in `feedback`; or `transient_bounces_to_suppress` soft bounces
    (transient or undetermined, distinct messages) within `transient_bounce_window_days`, counting
    the address's earlier bounces in `history` (FEEDBACK_SCHEMA rows; may include `feedback`'s).
    Only addresses with feedback in this batch are judged, so a replay decides the same again."""
    columns = ["provider_message_id", "recipient", "feedback", "bounce_type", "occurred_at"]
    hard = feedback.filter(
        ((pl.col("feedback") == BOUNCED) & (pl.col("bounce_type") == PERMANENT)) | (pl.col("feedback") == COMPLAINED)
    ).select(
        pl.col("recipient").alias("address"),
        pl.when(pl.col("feedback") == COMPLAINED)
        .then(pl.lit(COMPLAINT))
        .otherwise(pl.lit(HARD_BOUNCE))
        .alias("reason"),
        pl.col("occurred_at").alias("suppressed_at"),
        "provider_message_id",
    )
    soft_filter = (pl.col("feedback") == BOUNCED) & pl.col("bounce_type").is_in([TRANSIENT, UNDETERMINED])
    judged = feedback.filter(soft_filter).select(pl.col("recipient").unique())
    soft = (
        pl.concat([feedback.select(columns), history.select(columns)], how="vertical_relaxed")
        .filter(soft_filter)
        .join(judged, on="recipient", how="semi")
        .sort("occurred_at")
        .unique(["recipient", "provider_message_id"], keep="first", maintain_order=True)
    )
    window = timedelta(days=policy.transient_bounce_window_days)
    counted = (
        soft.join(soft.select("recipient", pl.col("occurred_at").alias("_earlier")), on="recipient")
        .filter(pl.col("_earlier").is_between(pl.col("occurred_at") - window, pl.col("occurred_at"), closed="right"))
        .group_by("recipient", "provider_message_id", "occurred_at")
        .agg(pl.len().alias("_bounces"))
        .filter(pl.col("_bounces") >= policy.transient_bounces_to_suppress)
        .select(
            pl.col("recipient").alias("address"),
            pl.lit(SOFT_BOUNCES).alias("reason"),
            pl.col("occurred_at").alias("suppressed_at"),
            "provider_message_id",
        )
    )
    return (
        pl.concat([hard, counted], how="vertical_relaxed")
        .cast(SUPPRESSION_SCHEMA)  # type: ignore[arg-type]
        .sort("address", "suppressed_at", "reason")
        .unique("address", keep="first", maintain_order=True)
    )


def complaint_opt_outs(resolved: pl.DataFrame) -> pl.DataFrame:
    """Customers to opt out of every channel: customer_id, opted_out_at (their first complaint)."""
    return (
        resolved.filter((pl.col("feedback") == COMPLAINED) & pl.col("customer_id").is_not_null())
        .group_by("customer_id")
        .agg(pl.col("occurred_at").min().alias("opted_out_at"))
        .sort("customer_id")
    )


def resolve(feedback: pl.DataFrame, messages: pl.DataFrame) -> pl.DataFrame:
    """Feedback rows with the ledger message each is about (STORED_FEEDBACK_SCHEMA; message
    columns null when no ledger row has the provider message id). `messages`: the ledger's rows
    with provider_message_id and MESSAGE_COLUMNS."""
    lookup = messages.select("provider_message_id", *MESSAGE_COLUMNS).unique("provider_message_id", keep="first")
    return feedback.join(lookup, on="provider_message_id", how="left", maintain_order="left").select(
        list(STORED_FEEDBACK_SCHEMA)
    )


def message_outcomes(deliveries: pl.DataFrame, feedback: pl.DataFrame) -> pl.DataFrame:
    """Ledger rows with OUTCOME_COLUMNS: when each sent message was delivered, hard bounced, soft
    bounced, complained about (null: not reported). Matched by provider_message_id; `status` stays
    what the ledger says (a bounced message was still sent and paid for)."""
    times = (
        feedback.filter(pl.col("provider_message_id").is_not_null())
        .group_by("provider_message_id")
        .agg(
            pl.col("occurred_at").filter(pl.col("feedback") == DELIVERED).min().alias("delivered_at"),
            pl.col("occurred_at")
            .filter((pl.col("feedback") == BOUNCED) & (pl.col("bounce_type") == PERMANENT))
            .min()
            .alias("bounced_at"),
            pl.col("occurred_at")
            .filter((pl.col("feedback") == BOUNCED) & (pl.col("bounce_type") != PERMANENT))
            .min()
            .alias("soft_bounced_at"),
            pl.col("occurred_at").filter(pl.col("feedback") == COMPLAINED).min().alias("complained_at"),
        )
        .with_columns(pl.col(name).cast(dtype) for name, dtype in OUTCOME_COLUMNS.items())
    )
    base = deliveries.drop([name for name in OUTCOME_COLUMNS if name in deliveries.columns])
    return base.join(times, on="provider_message_id", how="left", maintain_order="left")


def campaign_counts(deliveries: pl.DataFrame, feedback: pl.DataFrame, since: datetime | None = None) -> pl.DataFrame:
    """COUNTS_SCHEMA per event x channel: sent messages (sent_at >= `since` when given, e.g. the
    breaker's re-arm time) and, of those, how many were delivered, hard bounced, soft bounced,
    complained about, rejected. Each message counts once per outcome however often reported."""
    sent = deliveries.filter(pl.col("status") == "sent")
    if since is not None:
        moment = to_utc_naive(since)
        sent = sent.filter(utc_naive("sent_at", sent.schema["sent_at"]) >= pl.lit(moment, pl.Datetime("us")))
    outcomes = message_outcomes(sent, feedback)
    rejected = feedback.filter(pl.col("feedback") == REJECTED).select("provider_message_id").unique()
    return (
        outcomes.with_columns(
            pl.col("provider_message_id").is_in(rejected["provider_message_id"].implode()).alias("_rejected")
        )
        .group_by("event_id", "channel")
        .agg(
            pl.len().alias("sent"),
            pl.col("delivered_at").is_not_null().sum().alias("delivered"),
            pl.col("bounced_at").is_not_null().sum().alias("bounced"),
            (pl.col("soft_bounced_at").is_not_null() & pl.col("bounced_at").is_null()).sum().alias("soft_bounced"),
            pl.col("complained_at").is_not_null().sum().alias("complained"),
            pl.col("_rejected").sum().alias("rejected"),
        )
        .cast(COUNTS_SCHEMA)  # type: ignore[arg-type]
        .sort("event_id", "channel")
    )


# ---- the guard -------------------------------------------------------------------------------

OK, WARN, STOP = "ok", "warn", "stop"


@dataclass(frozen=True)
class BreakerDecision:
    """A campaign's deliverability verdict: `stop` (circuit breaker: send no further wave),
    `warn` (at an SES review threshold), or ok; `reasons` says which rate and why."""

    level: str  # ok | warn | stop
    reasons: tuple[str, ...]
    sent: int
    delivered: int
    bounced: int
    complained: int
    bounce_rate: float | None  # hard bounces / sent; None below the minimum sample
    complaint_rate: float | None  # complaints / delivered; None below the minimum sample

    @property
    def stop(self) -> bool:
        return self.level == STOP

    @property
    def warn(self) -> bool:
        return self.level in (WARN, STOP)

    def as_metadata(self) -> dict[str, Any]:
        values = asdict(self)
        values["reasons"] = "; ".join(self.reasons) or "within thresholds"
        return {key: value for key, value in values.items() if value is not None}


def _pct(rate: float) -> str:
    return f"{100 * rate:.2f} %"


def breaker(sent: int, delivered: int, bounced: int, complained: int, policy: DeliverabilityPolicy) -> BreakerDecision:
    """STOP when the complaint rate reaches `complaint_stop_rate` or the bounce rate
    `bounce_stop_rate`; WARN at the review thresholds; OK otherwise. A rate is judged only on at
    least `min_sent_for_bounce_rate` sent / `min_delivered_for_complaint_rate` delivered messages,
    so one bounce out of three never stops a campaign."""
    bounce_rate = bounced / sent if sent >= policy.min_sent_for_bounce_rate else None
    complaint_rate = complained / delivered if delivered >= policy.min_delivered_for_complaint_rate else None
    level, reasons = OK, []
    for name, rate, warn_at, stop_at in (
        ("bounce rate", bounce_rate, policy.bounce_warn_rate, policy.bounce_stop_rate),
        ("complaint rate", complaint_rate, policy.complaint_warn_rate, policy.complaint_stop_rate),
    ):
        if rate is None:
            continue
        if rate >= stop_at:
            level = STOP
            reasons.append(f"{name} {_pct(rate)} >= stop threshold {_pct(stop_at)}")
        elif rate >= warn_at:
            level = STOP if level == STOP else WARN
            reasons.append(f"{name} {_pct(rate)} >= review threshold {_pct(warn_at)}")
    return BreakerDecision(level, tuple(reasons), sent, delivered, bounced, complained, bounce_rate, complaint_rate)


def breaker_for(counts: pl.DataFrame, event_id: str, channel: str, policy: DeliverabilityPolicy) -> BreakerDecision:
    """`breaker` on one campaign's row of a COUNTS_SCHEMA frame (zeros when it has none)."""
    row = counts.filter((pl.col("event_id") == event_id) & (pl.col("channel") == channel))
    values = row.row(0, named=True) if row.height else dict.fromkeys(COUNTS_SCHEMA, 0)
    return breaker(values["sent"], values["delivered"], values["bounced"], values["complained"], policy)


# ---- SES event records (the simulator and tests play SES) --------------------------------------


def _iso_ms(moment: datetime) -> str:
    return to_utc_naive(moment).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ses_event(
    event_type: str,
    message_id: str,
    recipient: str,
    at: datetime,
    *,
    sent_at: datetime | None = None,
    source: str = "events@eventreach.example",
    bounce_type: str = "Permanent",
    bounce_subtype: str = "General",
    configuration_set: str = "eventreach",
) -> dict[str, Any]:
    """One SES event publishing record, shaped as SES documents it (the fields this module reads,
    plus the usual neighbours): eventType Delivery | Bounce | Complaint | Reject."""
    stamp, sent = _iso_ms(at), _iso_ms(sent_at or at)
    key, detail = _ses_detail(event_type, message_id, recipient, stamp, bounce_type, bounce_subtype)
    return {
        "eventType": event_type,
        "mail": {
            "timestamp": sent,
            "source": source,
            "sendingAccountId": "123456789012",
            "messageId": message_id,
            "destination": [recipient],
            "headersTruncated": False,
            "tags": {"ses:configuration-set": [configuration_set]},
        },
        key: detail,
    }


def _ses_detail(
    event_type: str, message_id: str, recipient: str, stamp: str, bounce_type: str, bounce_subtype: str
) -> tuple[str, dict[str, Any]]:
    """The part of an SES record its event type adds: its key (delivery, bounce, ...) and body."""
    if event_type == "Delivery":
        return "delivery", {
            "timestamp": stamp,
            "processingTimeMillis": 1200,
            "recipients": [recipient],
            "smtpResponse": "250 2.0.0 OK",
            "reportingMTA": "a8-70.smtp-out.amazonses.com",
        }
    if event_type == "Bounce":
        status = "5.1.1" if bounce_type == "Permanent" else "4.2.2"
        return "bounce", {
            "bounceType": bounce_type,
            "bounceSubType": bounce_subtype,
            "bouncedRecipients": [
                {
                    "emailAddress": recipient,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": f"smtp; 550 {status} mailbox unavailable",
                }
            ],
            "timestamp": stamp,
            "feedbackId": f"{message_id}-bounce",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        }
    if event_type == "Complaint":
        return "complaint", {
            "complainedRecipients": [{"emailAddress": recipient}],
            "timestamp": stamp,
            "feedbackId": f"{message_id}-complaint",
            "complaintFeedbackType": "abuse",
            "userAgent": "Mozilla/5.0",
            "arrivalDate": stamp,
        }
    if event_type == "Reject":
        return "reject", {"reason": "Bad content"}
    raise ValueError(f"ses_event plays Delivery, Bounce, Complaint or Reject, not {event_type!r}")
