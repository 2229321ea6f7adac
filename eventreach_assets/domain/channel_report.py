"""The per-channel campaign report the events team reviews: messages, engagement, registrations,
attendance, survey and cost per channel and over all channels (pure polars: no Dagster, no I/O).

Every figure is computed from the delivery ledger (`DeliveryLedgerResource.deliveries`, resources/ledger/) and the
engagement store's records (`domain/engagement_schemas.py`), never from counters kept on the side,
so the report, the daily metrics and the checks that recompute them cannot disagree. Times are
naive UTC (aware or ISO text inputs are converted, as the feeds' validators do).

Vocabulary, as in the use case (its "Metrics & Success Criteria"):

- a *message* is one ledger row (customer x event x channel x kind); `sent` counts messages the
  provider accepted (ledger status `sent`), of every kind the channel carries (email: invitation,
  day-of, survey; in-app: invitation; push: reminder), because every one of them is paid for;
- `opened` / `clicked` count sent messages with a sign of being opened / clicked
  (`funnel.engagement_touches`: a click proves an open, a registration through a link proves
  both), matched to the message by customer, channel and campaign (the link token's);
- rates are the use case's: open rate = opened / sent, click-through rate = clicked / sent,
  conversion = registered / sent (the use case's in-app CTR, 3,600 / 12,000, is clicks per
  display: that is `click_to_open_rate` here);
- `registered` counts customers (status registered; a waitlisted customer holds no seat) by the
  channel the attribution rule gives them; `attended` counts registrants who attended.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import polars as pl

from eventreach_assets.domain.attribution import LAST_TOUCH, AttributionRule, registrants
from eventreach_assets.domain.campaign_records import CampaignRecords
from eventreach_assets.domain.delivery import DeliveryStatus, MessageKind
from eventreach_assets.domain.feedback import FEEDBACK_CHANNELS
from eventreach_assets.domain.funnel import ALL_CHANNELS, CLICKED, OPENED, engagement_touches

CHANNELS: tuple[str, ...] = ("email", "in-app", "push")  # always reported, in this order
ALL = ALL_CHANNELS  # "all": the row over every channel

REPORT_SCHEMA: dict[str, pl.DataType] = {
    "channel": pl.String(),  # a channel, or "all"
    "sent": pl.Int64(),  # messages the provider accepted (ledger status sent), every kind
    "delivered": pl.Int64(),  # sent and reported delivered by the provider (email); = sent elsewhere
    "bounced": pl.Int64(),  # sent, then hard bounced (provider feedback)
    "complained": pl.Int64(),  # sent, then reported as spam by the recipient (provider feedback)
    "failed": pl.Int64(),  # messages that did not go out: failed_permanent + failed_transient
    "in_doubt": pl.Int64(),  # a run died during the provider call: maybe sent, never resent
    "opened": pl.Int64(),  # sent messages opened (or clicked, or registered through)
    "clicked": pl.Int64(),  # sent messages clicked (or registered through)
    "invited": pl.Int64(),  # distinct customers sent an invitation (0 for push: it only reminds)
    "registered": pl.Int64(),  # customers registered, by attributed channel ("all": every one)
    "attended": pl.Int64(),  # of those registered, the ones who attended
    "walk_ins": pl.Int64(),  # "all" only: attendees without a registration (outside the funnel)
    "open_rate": pl.Float64(),  # opened / sent
    "click_through_rate": pl.Float64(),  # clicked / sent
    "click_to_open_rate": pl.Float64(),  # clicked / opened
    "conversion_rate": pl.Float64(),  # registered / sent
    "bounce_rate": pl.Float64(),  # bounced / sent (SES's reputation bounce rate)
    "complaint_rate": pl.Float64(),  # complained / delivered (Gmail's spam rate: per inbox reached)
    "registration_rate": pl.Float64(),  # registered / invited ("% of invited")
    "attendance_rate": pl.Float64(),  # attended / registered
    "average_minutes_watched": pl.Float64(),  # over `attended`
    "survey_responses": pl.Int64(),  # channel: its registrants' answers; "all": every answer
    "average_rating": pl.Float64(),  # over those answers, 1..5
    "unit_cost": pl.Float64(),  # per message sent; null when not configured
    "cost": pl.Float64(),  # sent x unit cost ("all": the sum; null if a channel with sends has no cost)
    "cost_per_registration": pl.Float64(),  # cost / registered
    "cost_per_attendee": pl.Float64(),  # cost / attended
}
COUNT_COLUMNS: tuple[str, ...] = tuple(name for name, dtype in REPORT_SCHEMA.items() if dtype == pl.Int64())

_SENT = DeliveryStatus.SENT.value
_FAILED = (DeliveryStatus.FAILED_PERMANENT.value, DeliveryStatus.FAILED_TRANSIENT.value)
_KEYS = ["event_id", "channel"]
_MESSAGE_COUNTS = ("sent", "delivered", "bounced", "complained", "failed", "in_doubt", "opened", "clicked")


def _check_costs(unit_costs: Mapping[str, float]) -> dict[str, float]:
    bad = {channel: cost for channel, cost in unit_costs.items() if not (math.isfinite(cost) and cost >= 0)}
    if bad:
        raise ValueError(f"unit costs must be finite and >= 0, got {bad}")
    return {str(channel): float(cost) for channel, cost in unit_costs.items()}


def _ratio(numerator: str, denominator: str) -> pl.Expr:
    """numerator / denominator, null when the denominator is 0 or null (never NaN or inf)."""
    return pl.when(pl.col(denominator) > 0).then(pl.col(numerator) / pl.col(denominator))


def report_rows(
    records: CampaignRecords, unit_costs: Mapping[str, float], rule: str, events: list[str] | None = None
) -> pl.DataFrame:
    """REPORT_SCHEMA with `event_id` first: per event (default: every event in the records), a
    row per channel then the "all" row."""
    costs = _check_costs(unit_costs)
    deliveries = with_outcomes(records.deliveries)
    people = registrants(records, rule)
    events = records.event_ids() if events is None else events
    by_channel = people.filter(pl.col("channel").is_not_null()).group_by(_KEYS).agg(_people_counts())
    seen = set(deliveries["channel"].drop_nulls().to_list()) | set(by_channel["channel"].to_list())
    channels = [*CHANNELS, *sorted(seen - set(CHANNELS))]
    rows = _channel_rows(records, deliveries, by_channel, costs, events, channels)
    totals = _all_rows(records, deliveries, people, rows)
    order = {name: rank for rank, name in enumerate([*channels, ALL])}
    return (
        _with_rates(pl.concat([rows, totals], how="diagonal_relaxed"))
        .sort("event_id", pl.col("channel").replace_strict(order, return_dtype=pl.Int64))
        .select("event_id", *REPORT_SCHEMA)
        .cast({"event_id": pl.String(), **REPORT_SCHEMA})
    )


def _message_counts(deliveries: pl.DataFrame) -> pl.DataFrame:
    """Per event x channel: messages sent, delivered, bounced, complained, failed, in doubt, and
    the customers invited."""
    status = pl.col("status")
    return deliveries.group_by(_KEYS).agg(
        (status == _SENT).sum().cast(pl.Int64).alias("sent"),
        *(pl.col(f"_{name}").sum().cast(pl.Int64).alias(name) for name in ("delivered", "bounced", "complained")),
        status.is_in(_FAILED).sum().cast(pl.Int64).alias("failed"),
        (status == DeliveryStatus.IN_DOUBT.value).sum().cast(pl.Int64).alias("in_doubt"),
        pl.col("customer_id")
        .filter((status == _SENT) & (pl.col("kind") == MessageKind.INVITATION.value))
        .n_unique()
        .cast(pl.Int64)
        .alias("invited"),
    )


def _people_counts() -> list[pl.Expr]:
    """What the registrants of a group add up to: registered, attended, minutes, survey answers."""
    return [
        pl.len().cast(pl.Int64).alias("registered"),
        pl.col("minutes").is_not_null().sum().cast(pl.Int64).alias("attended"),
        pl.col("minutes").mean().alias("average_minutes_watched"),
        pl.col("rating").is_not_null().sum().cast(pl.Int64).alias("survey_responses"),
        pl.col("rating").mean().alias("average_rating"),
    ]


def _channel_rows(
    records: CampaignRecords,
    deliveries: pl.DataFrame,
    by_channel: pl.DataFrame,
    costs: dict[str, float],
    events: list[str],
    channels: list[str],
) -> pl.DataFrame:
    """A row per event x channel (every channel, zeros where nothing happened), with its cost."""
    touches = (
        message_touches(records)
        .group_by(_KEYS)
        .agg(
            (pl.col("stage") == OPENED).sum().cast(pl.Int64).alias("opened"),
            (pl.col("stage") == CLICKED).sum().cast(pl.Int64).alias("clicked"),
        )
    )
    grid = pl.DataFrame(
        {"event_id": [e for e in events for _ in channels], "channel": channels * len(events)},
        schema={"event_id": pl.String(), "channel": pl.String()},
    )
    rows = (
        grid.join(_message_counts(deliveries), on=_KEYS, how="left", maintain_order="left")
        .join(touches, on=_KEYS, how="left", maintain_order="left")
        .join(by_channel, on=_KEYS, how="left", maintain_order="left")
        .with_columns(
            pl.col("channel").replace_strict(costs, default=None, return_dtype=pl.Float64).alias("unit_cost"),
            pl.lit(None, pl.Int64).alias("walk_ins"),
        )
    )
    rows = rows.with_columns(
        pl.col(name).fill_null(0)
        for name in (*_MESSAGE_COUNTS, "invited", "registered", "attended", "survey_responses")
    )
    # Nothing sent costs nothing, known unit cost or not.
    return rows.with_columns(
        pl.when(pl.col("sent") == 0).then(0.0).otherwise(pl.col("sent") * pl.col("unit_cost")).alias("cost")
    )


def _all_rows(
    records: CampaignRecords, deliveries: pl.DataFrame, people: pl.DataFrame, rows: pl.DataFrame
) -> pl.DataFrame:
    """The "all" row per event: messages summed over the channels, every registrant, every survey
    answer, the walk-ins, the distinct customers invited on any channel, the total cost."""
    everyone = people.group_by("event_id").agg(_people_counts()).drop("survey_responses", "average_rating")
    answers = (
        records.survey.unique(["event_id", "customer_id"], keep="first")
        .group_by("event_id")
        .agg(pl.len().cast(pl.Int64).alias("survey_responses"), pl.col("rating").mean().alias("average_rating"))
    )
    walk_ins = (
        records.attendance.unique(["event_id", "customer_id"])
        .join(people.select("event_id", "customer_id"), on=["event_id", "customer_id"], how="anti")
        .group_by("event_id")
        .agg(pl.len().cast(pl.Int64).alias("walk_ins"))
    )
    invited = (
        deliveries.filter((pl.col("status") == _SENT) & (pl.col("kind") == MessageKind.INVITATION.value))
        .group_by("event_id")
        .agg(pl.col("customer_id").n_unique().cast(pl.Int64).alias("invited"))
    )
    totals = (
        rows.group_by("event_id", maintain_order=True)
        .agg(
            *(pl.col(name).sum() for name in _MESSAGE_COUNTS),
            pl.when(((pl.col("sent") > 0) & pl.col("cost").is_null()).any())
            .then(None)
            .otherwise(pl.col("cost").sum())
            .alias("cost"),
        )
        .with_columns(pl.lit(ALL).alias("channel"), pl.lit(None, pl.Float64).alias("unit_cost"))
    )
    for frame in (everyone, answers, walk_ins, invited):
        totals = totals.join(frame, on="event_id", how="left", maintain_order="left")
    return totals.with_columns(
        pl.col(name).fill_null(0) for name in ("registered", "attended", "survey_responses", "walk_ins", "invited")
    )


def _with_rates(rows: pl.DataFrame) -> pl.DataFrame:
    """The rates and costs per head; null where their denominator is 0 (never NaN or inf)."""
    return rows.with_columns(
        _ratio("opened", "sent").alias("open_rate"),
        *(  # no provider feedback on in-app and push: their rates are unknown, not 0 %
            pl.when(pl.col("channel").is_in([*FEEDBACK_CHANNELS, ALL])).then(rate).alias(name)
            for name, rate in (
                ("bounce_rate", _ratio("bounced", "sent")),
                ("complaint_rate", _ratio("complained", "delivered")),
            )
        ),
        _ratio("clicked", "sent").alias("click_through_rate"),
        _ratio("clicked", "opened").alias("click_to_open_rate"),
        _ratio("registered", "sent").alias("conversion_rate"),
        _ratio("registered", "invited").alias("registration_rate"),
        _ratio("attended", "registered").alias("attendance_rate"),
        _ratio("cost", "registered").alias("cost_per_registration"),
        _ratio("cost", "attended").alias("cost_per_attendee"),
    )


def with_outcomes(deliveries: pl.DataFrame) -> pl.DataFrame:
    """Per ledger row, whether it counts as delivered / bounced / complained, and when: sent and
    reported so by the provider on channels with provider feedback (email); sent = delivered on the
    others (in-app and push report no deliveries: their acceptance is all we know)."""
    sent = pl.col("status") == _SENT
    moment = pl.coalesce("sent_at", "updated_at") if "updated_at" in deliveries.columns else pl.col("sent_at")
    reported = pl.col("channel").is_in(list(FEEDBACK_CHANNELS))
    return deliveries.with_columns(
        pl.when(sent).then(pl.when(reported).then(pl.col("delivered_at")).otherwise(moment)).alias("_delivered_on"),
        pl.when(sent).then(pl.col("bounced_at")).alias("_bounced_on"),
        pl.when(sent).then(pl.col("complained_at")).alias("_complained_on"),
    ).with_columns(
        pl.col(f"_{name}_on").is_not_null().alias(f"_{name}") for name in ("delivered", "bounced", "complained")
    )


def message_touches(records: CampaignRecords) -> pl.DataFrame:
    """Per sent message and stage (opened, clicked), its first touch: event_id, customer_id,
    channel, kind, stage, at. A touch belongs to a message by customer, channel and campaign."""
    message = ["event_id", "customer_id", "channel", "campaign_id"]
    touches = (
        engagement_touches(records.interactions, records.registrations)
        .group_by(*message, "stage")
        .agg(pl.col("at").min())
    )
    sent = records.deliveries.filter(pl.col("status") == _SENT).select(*message, "kind")
    return sent.join(touches, on=message, maintain_order="left").select(
        "event_id", "customer_id", "channel", "kind", "stage", "at"
    )


def channel_report(
    deliveries: pl.DataFrame,
    registrations: pl.DataFrame,
    interactions: pl.DataFrame,
    attendance: pl.DataFrame,
    survey: pl.DataFrame,
    *,
    unit_costs: Mapping[str, float],
    rule: AttributionRule = LAST_TOUCH,
) -> pl.DataFrame:
    """One event's campaign per channel (REPORT_SCHEMA): a row for email, in-app, push (and any
    other channel in the data), then "all".

    Inputs are one event's ledger rows and engagement records (the store's schemas). Why each
    number is what it is:

    - `sent` = ledger status sent: the provider accepted the message, and that is what is paid
      for, so `cost` = sent x the channel's unit cost. `delivered`, `bounced`, `complained`
      come from the providers' feedback (domain/feedback.py: SES events, SMTP DSNs), passed in as
      the deliveries' `delivered_at` / `bounced_at` / `complained_at` (`feedback.message_outcomes`,
      `ledger.deliveries_with_feedback`): a sent email counts as delivered only once its provider
      said so (none without feedback); in-app and push report no deliveries, so there delivered =
      sent. `bounced` counts hard bounces. bounce_rate = bounced / sent (SES's definition),
      complaint_rate = complained / delivered (Gmail's spam rate: per inbox reached). What did not go
      out is in `failed` (permanent + transient) and `in_doubt`; suppressed and held-out rows
      were never meant to go out and are in no column.
    - `opened` / `clicked`: sent messages with a sign of being opened / clicked (see the module
      docstring), so opened <= sent and clicked <= opened per channel.
    - `registered` / `attended` / survey: customers, credited to one channel by `rule` (see
      `attribute_registrations`); "all" counts every registration, including those no channel
      can claim. `attended` counts registrants only (attendance rate = attended / registered);
      attendees without a registration are `walk_ins` on the "all" row. The "all" row's survey
      figures are every answer (the event's satisfaction); a channel's, its registrants' answers.
    - "all": messages summed over channels; `invited` = distinct customers sent an invitation on
      any channel; `cost` the channels' sum, null if a channel that sent has no unit cost (a
      partial sum would understate it). Rates and costs per head are null when their denominator
      is 0.
    """
    records = CampaignRecords.of(deliveries, registrations, interactions, attendance, survey)
    events = records.event_ids()
    if len(events) > 1:
        raise ValueError(f"channel_report covers one event; the frames hold {events}")
    # An event with no records yet still gets its rows, all at zero.
    return report_rows(records, unit_costs, rule, events=events or [""]).drop("event_id")
