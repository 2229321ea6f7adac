"""The numbers the events team reviews: attribution, the per-channel campaign report, the holdout
lift and the daily metrics (pure polars and arithmetic: no Dagster, no I/O).

Every figure is computed from the delivery ledger (`resources/ledger.py: deliveries`) and the
engagement store's records (`domain/engagement.py` schemas), never from counters kept on the side,
so the report, the daily metrics and the checks that recompute them cannot disagree. Times are
naive UTC (aware or ISO text inputs are converted, as the feeds' validators do).

Vocabulary, as in the use case (its "Metrics & Success Criteria"):

- a *message* is one ledger row (customer x event x channel x kind); `sent` counts messages the
  provider accepted (ledger status `sent`), of every kind the channel carries (email: invitation,
  day-of, survey; in-app: invitation; push: reminder), because every one of them is paid for;
- `opened` / `clicked` count sent messages with a sign of being opened / clicked
  (`engagement.engagement_touches`: a click proves an open, a registration through a link proves
  both), matched to the message by customer, channel and campaign (the link token's);
- rates are the use case's: open rate = opened / sent, click-through rate = clicked / sent,
  conversion = registered / sent (the use case's in-app CTR, 3,600 / 12,000, is clicks per
  display: that is `click_to_open_rate` here);
- `registered` counts customers (status registered; a waitlisted customer holds no seat) by the
  channel the attribution rule gives them; `attended` counts registrants who attended.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from statistics import NormalDist
from typing import Literal

import polars as pl

from eventreach_assets.domain import engagement as eng
from eventreach_assets.domain.delivery import DeliveryStatus, MessageKind
from eventreach_assets.domain.feedback import FEEDBACK_CHANNELS, OUTCOME_COLUMNS
from eventreach_assets.domain.metrics import EVENT_DIMENSION, PROGRAM_DIMENSION, validate_metrics

CHANNELS: tuple[str, ...] = ("email", "in-app", "push")  # always reported, in this order
ALL = eng.ALL_CHANNELS  # "all": the row over every channel
LAST_TOUCH, FIRST_TOUCH = "last-touch", "first-touch"
RULES: tuple[str, ...] = (LAST_TOUCH, FIRST_TOUCH)
AttributionRule = Literal["last-touch", "first-touch"]

ATTRIBUTION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "channel": pl.String(),  # null: no link channel and no open or click before registering
    "rule": pl.String(),
}

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

# What each function reads (the ledger's and the engagement store's columns).
DELIVERY_COLUMNS = ("event_id", "customer_id", "channel", "kind", "status", "campaign_id")
REGISTRATION_COLUMNS = ("event_id", "customer_id", "channel", "campaign_id", "status", "registered_at")
INTERACTION_COLUMNS = ("event_id", "customer_id", "channel", "campaign_id", "action", "occurred_at")
ATTENDANCE_COLUMNS = ("event_id", "customer_id", "minutes_watched")
SURVEY_COLUMNS = ("event_id", "customer_id", "rating")

_SENT = DeliveryStatus.SENT.value
_FAILED = (DeliveryStatus.FAILED_PERMANENT.value, DeliveryStatus.FAILED_TRANSIENT.value)
_TIME = pl.Datetime("us")


# ---- input shape ----------------------------------------------------------------------------------


def _require(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks columns {missing} (has {frame.columns})")
    nulls = frame.select(pl.col("event_id").is_null().sum()).item() if "event_id" in frame.columns else 0
    if nulls:
        raise ValueError(f"{what} frame has {nulls} rows without an event_id")


def _texts(frame: pl.DataFrame, *names: str) -> list[pl.Expr]:
    return [pl.col(name).cast(pl.String) for name in names if name in frame.columns]


def _times(frame: pl.DataFrame, *names: str) -> list[pl.Expr]:
    return [eng.utc_naive(name, frame.schema[name]) for name in names if name in frame.columns]


@dataclass(frozen=True)
class _Records:
    """The five inputs with ids as text and times as naive UTC."""

    deliveries: pl.DataFrame
    registrations: pl.DataFrame
    interactions: pl.DataFrame
    attendance: pl.DataFrame
    survey: pl.DataFrame

    @classmethod
    def of(
        cls,
        deliveries: pl.DataFrame,
        registrations: pl.DataFrame,
        interactions: pl.DataFrame,
        attendance: pl.DataFrame,
        survey: pl.DataFrame,
        *,
        timed: bool = False,
    ) -> _Records:
        """Checked and normalised; `timed` also requires the times the daily metrics count by."""
        extra = {"deliveries": ("sent_at",), "attendance": ("joined_at",), "survey": ("submitted_at",)}
        for frame, columns, what in (
            (deliveries, DELIVERY_COLUMNS, "deliveries"),
            (registrations, REGISTRATION_COLUMNS, "registrations"),
            (interactions, INTERACTION_COLUMNS, "interactions"),
            (attendance, ATTENDANCE_COLUMNS, "attendance"),
            (survey, SURVEY_COLUMNS, "survey"),
        ):
            _require(frame, columns + (extra.get(what, ()) if timed else ()), what)
        # Provider feedback (feedback.message_outcomes); without it nothing is known to be delivered.
        absent = [pl.lit(None, dtype).alias(name) for name, dtype in OUTCOME_COLUMNS.items() if name not in deliveries]
        return cls(
            deliveries=deliveries.with_columns(
                *_texts(deliveries, *DELIVERY_COLUMNS), *_times(deliveries, "sent_at", "updated_at", *OUTCOME_COLUMNS)
            ).with_columns(absent),
            registrations=registrations.with_columns(
                *_texts(registrations, *REGISTRATION_COLUMNS[:-1]), *_times(registrations, "registered_at")
            ),
            interactions=interactions.with_columns(
                *_texts(interactions, *INTERACTION_COLUMNS[:-1]), *_times(interactions, "occurred_at")
            ),
            attendance=attendance.with_columns(
                *_texts(attendance, "event_id", "customer_id"),
                pl.col("minutes_watched").cast(pl.Float64),
                *_times(attendance, "joined_at"),
            ),
            survey=survey.with_columns(
                *_texts(survey, "event_id", "customer_id"),
                pl.col("rating").cast(pl.Float64),
                *_times(survey, "submitted_at"),
            ),
        )

    def event_ids(self) -> list[str]:
        frames = (self.deliveries, self.registrations, self.interactions, self.attendance, self.survey)
        return sorted(set(pl.concat([frame["event_id"].cast(pl.String) for frame in frames]).drop_nulls().to_list()))

    def until(self, end: datetime) -> _Records:
        """What had happened before `end`: rows with their time < end (a message by `sent_at`,
        else `updated_at`: a row that is not sent counts from its last change)."""
        cut = pl.lit(end, _TIME)
        moment = pl.coalesce("sent_at", "updated_at") if "updated_at" in self.deliveries.columns else pl.col("sent_at")
        return _Records(
            deliveries=self.deliveries.filter(moment < cut).with_columns(
                pl.when(pl.col(name) < cut).then(pl.col(name)).alias(name) for name in OUTCOME_COLUMNS
            ),
            registrations=self.registrations.filter(pl.col("registered_at") < cut),
            interactions=self.interactions.filter(pl.col("occurred_at") < cut),
            attendance=self.attendance.filter(pl.col("joined_at") < cut),
            survey=self.survey.filter(pl.col("submitted_at") < cut),
        )


# ---- attribution ----------------------------------------------------------------------------------


def _attributed(records: _Records, rule: str) -> pl.DataFrame:
    """ATTRIBUTION_SCHEMA plus `registered_at`, one row per registered event x customer."""
    if rule not in RULES:
        raise ValueError(f"attribution rule must be one of {list(RULES)}, got {rule!r}")
    registered = (
        records.registrations.filter(pl.col("status") == eng.REGISTERED)
        .sort("registered_at", nulls_last=True, maintain_order=True)
        .unique(["event_id", "customer_id"], keep="first", maintain_order=True)
        .select("event_id", "customer_id", pl.col("channel").alias("_link"), "registered_at")
    )
    # Touches before registering, in a total order: time, then a click after an open at the same
    # instant (the click is the later, stronger touch), then channel name.
    prior = (
        records.interactions.filter(pl.col("action").is_in(["open", "click"]) & pl.col("channel").is_not_null())
        .join(registered.select("event_id", "customer_id", "registered_at"), on=["event_id", "customer_id"])
        .filter(pl.col("occurred_at") <= pl.col("registered_at"))
        .sort("occurred_at", pl.col("action") == "click", "channel")
        .group_by("event_id", "customer_id", maintain_order=True)
        .agg(pl.col("channel").first().alias("_first"), pl.col("channel").last().alias("_last"))
    )
    touched = registered.join(prior, on=["event_id", "customer_id"], how="left", maintain_order="left")
    channel = (pl.coalesce("_link", "_last") if rule == LAST_TOUCH else pl.coalesce("_first", "_link")).alias("channel")
    return touched.select("event_id", "customer_id", channel, pl.lit(rule).alias("rule"), "registered_at")


def attribute_registrations(
    registrations: pl.DataFrame, interactions: pl.DataFrame, rule: AttributionRule = LAST_TOUCH
) -> pl.DataFrame:
    """The channel each registration is credited to (ATTRIBUTION_SCHEMA), one row per registered
    customer x event, in registration order.

    Why a rule at all: a customer invited by email and by banner may touch both before
    registering, and the report must credit each registration to exactly one channel so the
    channels' registrations add up to the total.

    - last-touch (default): the channel of the link the registration came through (the register
      token's, `registrations.channel`); when that is unknown, the channel of the customer's last
      open or click of this event's messages at or before registering.
    - first-touch: the channel of the customer's earliest open or click of this event's messages
      at or before registering; with none, the registration's own channel.

    Touches at the same instant are ordered open before click, then by channel name, so the
    result never depends on row order. Only status registered counts (waitlisted customers hold
    no seat); a customer with several registration rows for an event counts once (the earliest).
    A registration nothing can attribute keeps a null channel: it is counted, not dropped.
    """
    empty = pl.DataFrame(schema={name: pl.String() for name in DELIVERY_COLUMNS})
    records = _Records.of(empty, registrations, interactions, _empty_attendance(), _empty_survey())
    return _attributed(records, rule).drop("registered_at").cast(ATTRIBUTION_SCHEMA)


def _empty_attendance() -> pl.DataFrame:
    return pl.DataFrame(schema=eng.ATTENDANCE_SCHEMA)


def _empty_survey() -> pl.DataFrame:
    return pl.DataFrame(schema=eng.SURVEY_SCHEMA)


# ---- the channel report ----------------------------------------------------------------------------


def _check_costs(unit_costs: Mapping[str, float]) -> dict[str, float]:
    bad = {channel: cost for channel, cost in unit_costs.items() if not (math.isfinite(cost) and cost >= 0)}
    if bad:
        raise ValueError(f"unit costs must be finite and >= 0, got {bad}")
    return {str(channel): float(cost) for channel, cost in unit_costs.items()}


def _ratio(numerator: str, denominator: str) -> pl.Expr:
    """numerator / denominator, null when the denominator is 0 or null (never NaN or inf)."""
    return pl.when(pl.col(denominator) > 0).then(pl.col(numerator) / pl.col(denominator))


def _report(
    records: _Records, unit_costs: Mapping[str, float], rule: str, events: list[str] | None = None
) -> pl.DataFrame:
    """REPORT_SCHEMA with `event_id` first: per event (default: every event in the records), a
    row per channel then the "all" row."""
    costs = _check_costs(unit_costs)
    keys = ["event_id", "channel"]
    deliveries = _with_outcomes(records.deliveries)
    status = pl.col("status")
    messages = deliveries.group_by(keys).agg(
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
    touches = (
        _message_touches(records)
        .group_by(keys)
        .agg(
            (pl.col("stage") == eng.OPENED).sum().cast(pl.Int64).alias("opened"),
            (pl.col("stage") == eng.CLICKED).sum().cast(pl.Int64).alias("clicked"),
        )
    )
    people = _people(records, rule)
    outcome = [
        pl.len().cast(pl.Int64).alias("registered"),
        pl.col("minutes").is_not_null().sum().cast(pl.Int64).alias("attended"),
        pl.col("minutes").mean().alias("average_minutes_watched"),
        pl.col("rating").is_not_null().sum().cast(pl.Int64).alias("survey_responses"),
        pl.col("rating").mean().alias("average_rating"),
    ]
    by_channel = people.filter(pl.col("channel").is_not_null()).group_by(keys).agg(outcome)

    events = records.event_ids() if events is None else events
    seen = set(deliveries["channel"].drop_nulls().to_list()) | set(by_channel["channel"].to_list())
    channels = [*CHANNELS, *sorted(seen - set(CHANNELS))]
    grid = pl.DataFrame(
        {"event_id": [e for e in events for _ in channels], "channel": channels * len(events)},
        schema={"event_id": pl.String(), "channel": pl.String()},
    )
    rows = (
        grid.join(messages, on=keys, how="left", maintain_order="left")
        .join(touches, on=keys, how="left", maintain_order="left")
        .join(by_channel, on=keys, how="left", maintain_order="left")
        .with_columns(
            pl.col("channel").replace_strict(costs, default=None, return_dtype=pl.Float64).alias("unit_cost"),
            pl.lit(None, pl.Int64).alias("walk_ins"),
        )
    )
    message_counts = ("sent", "delivered", "bounced", "complained", "failed", "in_doubt", "opened", "clicked")
    rows = rows.with_columns(
        pl.col(name).fill_null(0) for name in (*message_counts, "invited", "registered", "attended", "survey_responses")
    )
    # Nothing sent costs nothing, known unit cost or not.
    rows = rows.with_columns(
        pl.when(pl.col("sent") == 0).then(0.0).otherwise(pl.col("sent") * pl.col("unit_cost")).alias("cost")
    )
    everyone = people.group_by("event_id").agg(outcome).drop("survey_responses", "average_rating")
    answers = (
        records.survey.unique(["event_id", "customer_id"], keep="first")
        .group_by("event_id")
        .agg(pl.len().cast(pl.Int64).alias("survey_responses"), pl.col("rating").mean().alias("average_rating"))
    )
    registered_ids = people.select("event_id", "customer_id")
    walk_ins = (
        records.attendance.unique(["event_id", "customer_id"])
        .join(registered_ids, on=["event_id", "customer_id"], how="anti")
        .group_by("event_id")
        .agg(pl.len().cast(pl.Int64).alias("walk_ins"))
    )
    invited = (
        deliveries.filter((status == _SENT) & (pl.col("kind") == MessageKind.INVITATION.value))
        .group_by("event_id")
        .agg(pl.col("customer_id").n_unique().cast(pl.Int64).alias("invited"))
    )
    totals = (
        rows.group_by("event_id", maintain_order=True)
        .agg(
            *(pl.col(name).sum() for name in message_counts),
            pl.when(((pl.col("sent") > 0) & pl.col("cost").is_null()).any())
            .then(None)
            .otherwise(pl.col("cost").sum())
            .alias("cost"),
        )
        .with_columns(pl.lit(ALL).alias("channel"), pl.lit(None, pl.Float64).alias("unit_cost"))
    )
    for frame in (everyone, answers, walk_ins, invited):
        totals = totals.join(frame, on="event_id", how="left", maintain_order="left")
    totals = totals.with_columns(
        pl.col(name).fill_null(0) for name in ("registered", "attended", "survey_responses", "walk_ins", "invited")
    )
    order = {name: rank for rank, name in enumerate([*channels, ALL])}
    return (
        pl.concat([rows, totals], how="diagonal_relaxed")
        .with_columns(
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
        .sort("event_id", pl.col("channel").replace_strict(order, return_dtype=pl.Int64))
        .select("event_id", *REPORT_SCHEMA)
        .cast({"event_id": pl.String(), **REPORT_SCHEMA})
    )


def _with_outcomes(deliveries: pl.DataFrame) -> pl.DataFrame:
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


def _message_touches(records: _Records) -> pl.DataFrame:
    """Per sent message and stage (opened, clicked), its first touch: event_id, customer_id,
    channel, kind, stage, at. A touch belongs to a message by customer, channel and campaign."""
    message = ["event_id", "customer_id", "channel", "campaign_id"]
    touches = (
        eng.engagement_touches(records.interactions, records.registrations)
        .group_by(*message, "stage")
        .agg(pl.col("at").min())
    )
    sent = records.deliveries.filter(pl.col("status") == _SENT).select(*message, "kind")
    return sent.join(touches, on=message, maintain_order="left").select(
        "event_id", "customer_id", "channel", "kind", "stage", "at"
    )


def _people(records: _Records, rule: str) -> pl.DataFrame:
    """Registered customers with their attributed channel, registration time, minutes watched
    (null: did not attend) and survey rating (null: no answer)."""
    person = ["event_id", "customer_id"]
    attended = (
        records.attendance.sort("minutes_watched", descending=True, nulls_last=True)
        .unique(person, keep="first")
        .select(*person, pl.col("minutes_watched").alias("minutes"), *_maybe(records.attendance, "joined_at"))
    )
    answered = records.survey.unique(person, keep="first").select(
        *person, "rating", *_maybe(records.survey, "submitted_at")
    )
    return (
        _attributed(records, rule)
        .join(attended, on=person, how="left", maintain_order="left")
        .join(answered, on=person, how="left", maintain_order="left")
    )


def _maybe(frame: pl.DataFrame, name: str) -> list[str]:
    return [name] if name in frame.columns else []


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
    records = _Records.of(deliveries, registrations, interactions, attendance, survey)
    events = records.event_ids()
    if len(events) > 1:
        raise ValueError(f"channel_report covers one event; the frames hold {events}")
    # An event with no records yet still gets its rows, all at zero.
    return _report(records, unit_costs, rule, events=events or [""]).drop("event_id")


# ---- holdout lift ---------------------------------------------------------------------------------

OK, NOT_ENOUGH_DATA = "ok", "not enough data"
LIFT_METHOD = "log relative risk, delta method (Katz); difference: Newcombe hybrid score (Wilson)"


@dataclass(frozen=True)
class LiftResult:
    """A channel's measured lift: registrations of those sent it vs those held out of it."""

    channel: str
    status: str  # "ok" | "not enough data"
    treated: int  # customers sent the channel's invitation
    treated_registered: int
    control: int  # customers held out of it
    control_registered: int
    confidence: float
    reason: str | None = None  # why there are no numbers
    p_treated: float | None = None  # registered / treated
    p_control: float | None = None
    lift: float | None = None  # (p_treated - p_control) / p_control
    lift_low: float | None = None
    lift_high: float | None = None
    difference: float | None = None  # p_treated - p_control
    difference_low: float | None = None
    difference_high: float | None = None
    method: str = LIFT_METHOD

    def as_frame(self) -> pl.DataFrame:
        """One row, every field (numbers null when there is not enough data), for tables."""
        schema = {
            name: (pl.String() if isinstance(value, str) or name == "reason" else pl.Float64())
            for name, value in asdict(self).items()
        }
        schema.update(dict.fromkeys(("treated", "treated_registered", "control", "control_registered"), pl.Int64()))
        return pl.DataFrame([asdict(self)], schema=schema)

    def summary(self) -> str:
        """One line for a report's notes and metadata."""
        arms = f"{self.treated:,} sent, {self.control:,} held out"
        if self.status != OK or self.lift is None:
            return f"{self.channel} holdout: {NOT_ENOUGH_DATA} ({self.reason}; {arms})"
        return (
            f"{self.channel} holdout: lift {self.lift:+.1%} ({self.confidence:.0%} CI {self.lift_low:+.1%} to"
            f" {self.lift_high:+.1%}), registered {self.p_treated:.2%} vs {self.p_control:.2%} ({arms})"
        )


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def lift_from_counts(
    *,
    channel: str,
    treated: int,
    treated_registered: int,
    control: int,
    control_registered: int,
    min_sample_per_arm: int,
    confidence: float,
) -> LiftResult:
    """The lift of two arms' counts (see `holdout_lift`), separated so the statistics are testable.

    Lift CI: log(p_t / p_c) +- z * sqrt(1/x_t - 1/n_t + 1/x_c - 1/n_c) (Katz's delta-method
    interval on the log relative risk), exponentiated, minus 1; when no treated customer
    registered (x_t = 0) 0.5 is added to each arm's registrations and customers for the interval
    only (Haldane), the point estimate stays -100 %. Difference CI: Newcombe's hybrid score
    interval (his method 10) from the two Wilson intervals, which behaves near 0 and 1 where the
    Wald interval does not.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if min_sample_per_arm < 1:
        raise ValueError(f"min_sample_per_arm must be >= 1, got {min_sample_per_arm}")
    for name, (x, n) in {"treated": (treated_registered, treated), "control": (control_registered, control)}.items():
        if n < 0 or not 0 <= x <= n:
            raise ValueError(f"{name} arm: need 0 <= registered <= customers, got {x} of {n}")
    base = LiftResult(channel, NOT_ENOUGH_DATA, treated, treated_registered, control, control_registered, confidence)
    small = {arm: n for arm, n in (("treated", treated), ("control", control)) if n < min_sample_per_arm}
    if small:
        arms = ", ".join(f"{arm} arm has {n}" for arm, n in small.items())
        return replace(base, reason=f"{arms}; need {min_sample_per_arm} per arm")
    if control_registered == 0:
        return replace(base, reason="nobody in the control arm registered, so a relative lift is undefined")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p_t, p_c = treated_registered / treated, control_registered / control
    x_t, n_t, x_c, n_c = float(treated_registered), float(treated), float(control_registered), float(control)
    if treated_registered == 0:
        x_t, n_t, x_c, n_c = x_t + 0.5, n_t + 0.5, x_c + 0.5, n_c + 0.5
    log_rr = math.log((x_t / n_t) / (x_c / n_c))
    se = math.sqrt(1 / x_t - 1 / n_t + 1 / x_c - 1 / n_c)
    (l_t, u_t), (l_c, u_c) = _wilson(treated_registered, treated, z), _wilson(control_registered, control, z)
    difference = p_t - p_c
    return replace(
        base,
        status=OK,
        p_treated=p_t,
        p_control=p_c,
        lift=p_t / p_c - 1,
        lift_low=math.exp(log_rr - z * se) - 1,
        lift_high=math.exp(log_rr + z * se) - 1,
        difference=difference,
        difference_low=difference - math.sqrt((p_t - l_t) ** 2 + (u_c - p_c) ** 2),
        difference_high=difference + math.sqrt((u_t - p_t) ** 2 + (p_c - l_c) ** 2),
    )


def holdout_lift(
    deliveries: pl.DataFrame,
    registrations: pl.DataFrame,
    *,
    channel: str,
    min_sample_per_arm: int,
    confidence: float,
    kind: str = MessageKind.INVITATION.value,
) -> LiftResult:
    """Does `channel` bring registrations the others would not? Measured on the randomized holdout.

    Treated: customers the channel's invitation was sent to (ledger status sent, `kind`); control:
    customers recorded `held_out` for the same channel and kind (chosen by `holdout_members`, so
    the arms differ only by chance). Outcome: registered (status registered) for the event, by any
    channel, since the question is whether the channel adds registrations, not which link they
    used. The unit is customer x event, so frames of several events pool them. `status` is
    "not enough data" (with counts but no rates) when an arm has fewer than `min_sample_per_arm`
    customers or no control customer registered; statistics in `lift_from_counts`.
    """
    _require(deliveries, ("event_id", "customer_id", "channel", "kind", "status"), "deliveries")
    _require(registrations, ("event_id", "customer_id", "status"), "registrations")
    person = ["event_id", "customer_id"]
    registered = (
        registrations.filter(pl.col("status") == eng.REGISTERED)
        .select(*(pl.col(name).cast(pl.String) for name in person))
        .unique()
        .with_columns(pl.lit(True).alias("registered"))
    )
    arms = (
        deliveries.filter(
            (pl.col("channel") == channel)
            & (pl.col("kind") == kind)
            & pl.col("status").is_in([_SENT, DeliveryStatus.HELD_OUT.value])
        )
        .select(*(pl.col(name).cast(pl.String) for name in person), "status")
        .unique(person, keep="first")
        .join(registered, on=person, how="left")
        .group_by("status")
        .agg(pl.len().alias("n"), pl.col("registered").fill_null(False).sum().alias("x"))
    )
    counts = {row["status"]: (int(row["n"]), int(row["x"])) for row in arms.iter_rows(named=True)}
    (n_t, x_t), (n_c, x_c) = counts.get(_SENT, (0, 0)), counts.get(DeliveryStatus.HELD_OUT.value, (0, 0))
    return lift_from_counts(
        channel=channel,
        treated=n_t,
        treated_registered=x_t,
        control=n_c,
        control_registered=x_c,
        min_sample_per_arm=min_sample_per_arm,
        confidence=confidence,
    )


def holdout_members(candidates: pl.DataFrame, event_id: str, share: float, salt: str = "holdout") -> pl.Series:
    """Which candidates to hold out of a channel for `event_id` (Boolean series `held_out`, the
    candidates' order): about `share` of them, the same ones on every rerun.

    Membership is sha256(salt + "\\x1f" + event_id + "\\x1f" + customer_id) read as a big-endian
    unsigned integer from its first 8 bytes, below share x 2^64. sha256 is fixed by its standard,
    unlike polars' `hash` (which may change between versions and would reshuffle the arms
    mid-campaign), and the event in the input gives every event its own draw. Python hashes each
    id (no polars expression computes sha256): ~1 s per million candidates. The same recipe in
    SQL: `sha256(...)`'s first 16 hex digits as an integer.
    """
    if "customer_id" not in candidates.columns:
        raise ValueError(f"candidates frame lacks column customer_id (has {candidates.columns})")
    if not 0 <= share <= 1:
        raise ValueError(f"holdout share must be in [0, 1], got {share}")
    if not event_id:
        raise ValueError("holdout_members needs an event_id")
    ids = candidates["customer_id"].cast(pl.String)
    if ids.null_count():
        raise ValueError(f"candidates frame has {ids.null_count()} rows without a customer_id")
    prefix = f"{salt}\x1f{event_id}\x1f".encode()
    draws = pl.Series(
        "draw",
        [int.from_bytes(hashlib.sha256(prefix + value.encode()).digest()[:8], "big") for value in ids.to_list()],
        dtype=pl.UInt64,
    )
    if share >= 1:
        return pl.Series("held_out", [True] * len(ids), dtype=pl.Boolean)
    return (draws < int(share * 2**64)).alias("held_out")


# ---- daily metrics --------------------------------------------------------------------------------

CHANNEL_DIMENSION = "Channel"
DAILY_COUNT_METRICS: dict[str, str] = {  # counted on the UTC day it happened
    "sent": "MessagesSent",
    "delivered": "MessagesDelivered",
    "bounced": "MessagesBounced",
    "complained": "Complaints",
    "opened": "MessagesOpened",
    "clicked": "MessagesClicked",
    "registered": "Registrations",
    "attended": "Attendees",
    "survey_responses": "SurveyResponses",
}
DAILY_RATE_METRICS: dict[str, str] = {  # cumulative to the end of the day, Percent
    "open_rate": "OpenRate",
    "click_through_rate": "ClickThroughRate",
    "conversion_rate": "ConversionRate",
    "bounce_rate": "BounceRate",
    "complaint_rate": "ComplaintRate",
    "registration_rate": "RegistrationRate",
    "attendance_rate": "AttendanceRate",
}


def _on_day(frame: pl.DataFrame, column: str, start: datetime, end: datetime) -> pl.DataFrame:
    return frame.filter(pl.col(column).is_between(pl.lit(start, _TIME), pl.lit(end, _TIME), closed="left"))


def _day_counts(records: _Records, rule: str, start: datetime, end: datetime) -> pl.DataFrame:
    """event_id, channel, metric (DAILY_COUNT_METRICS key), value: what happened on the day, per
    channel and over all channels ("all")."""
    keys = ["event_id", "channel"]
    deliveries = records.deliveries
    moment = pl.coalesce("sent_at", "updated_at") if "updated_at" in deliveries.columns else pl.col("sent_at")
    sent = _on_day(
        deliveries.filter(pl.col("status") == _SENT).with_columns(moment.alias("_at")), "_at", start, end
    ).select(*keys, pl.lit("sent").alias("metric"))
    outcomes = _with_outcomes(deliveries)
    feedback = pl.concat(
        [
            _on_day(outcomes, f"_{name}_on", start, end).select(*keys, pl.lit(name).alias("metric"))
            for name in ("delivered", "bounced", "complained")
        ]
    )
    touches = _on_day(_message_touches(records), "at", start, end).select(*keys, pl.col("stage").alias("metric"))
    people = _people(records, rule)
    registered = _on_day(people, "registered_at", start, end).select(*keys, pl.lit("registered").alias("metric"))
    attended = _on_day(people.filter(pl.col("minutes").is_not_null()), "joined_at", start, end).select(
        *keys, pl.lit("attended").alias("metric")
    )
    answered = _on_day(people.filter(pl.col("rating").is_not_null()), "submitted_at", start, end).select(
        *keys, pl.lit("survey_responses").alias("metric")
    )
    every_answer = _on_day(records.survey.unique(["event_id", "customer_id"]), "submitted_at", start, end).select(
        "event_id", pl.lit(ALL).alias("channel"), pl.lit("survey_responses").alias("metric")
    )
    per_channel = pl.concat([sent, feedback, touches, registered, attended, answered]).with_columns(
        pl.col("metric").replace({eng.OPENED: "opened", eng.CLICKED: "clicked"})
    )
    overall = pl.concat(
        [
            per_channel.filter(pl.col("metric") != "survey_responses").with_columns(pl.lit(ALL).alias("channel")),
            every_answer,
        ]
    )
    return (
        pl.concat([per_channel.filter(pl.col("channel").is_not_null()), overall])
        .group_by("event_id", "channel", "metric")
        .agg(pl.len().cast(pl.Float64).alias("value"))
    )


def daily_metrics_frame(
    day: date,
    deliveries_all: pl.DataFrame,
    registrations_all: pl.DataFrame,
    interactions_all: pl.DataFrame,
    attendance_all: pl.DataFrame,
    survey_all: pl.DataFrame,
    program_id: str,
    *,
    rule: AttributionRule = LAST_TOUCH,
) -> pl.DataFrame:
    """The day's datums (metrics.METRICS_SCHEMA, validated) for every event with activity that day.

    Why two kinds: counts say what happened on the day (for trends and alarms), rates say where
    each campaign stands so far (for the use case's targets). Dimensions Program, Event, Channel
    (a channel or "all"); every datum is stamped 00:00 UTC of `day`, so a one-day period holds
    exactly that day.

    - counts (Count, DAILY_COUNT_METRICS), on the UTC day each thing happened: messages sent
      (`sent_at`), messages first opened / clicked (the first touch, as in `channel_report`),
      registrations (`registered_at`, by the `rule`'s channel), registrants who attended
      (`joined_at`) and survey answers (`submitted_at`; "all": every answer). Summed over days
      they give `channel_report`'s counts. Zeros are emitted for every channel of an active event.
    - rates (Percent, DAILY_RATE_METRICS): `channel_report`'s rates over everything up to the end
      of `day`, emitted only where defined (a 0 denominator emits nothing, never a false 0 %).

    An event with nothing dated on `day` gets no datums (no flat lines for finished events).
    """
    records = _Records.of(deliveries_all, registrations_all, interactions_all, attendance_all, survey_all, timed=True)
    start = datetime.combine(day, time())
    end = start + timedelta(days=1)
    counts = _day_counts(records, rule, start, end)
    active = counts.select("event_id").unique().sort("event_id")
    so_far = _report(records.until(end), {}, rule).join(active, on="event_id", how="semi")
    channels = so_far.select("event_id", "channel").with_row_index("_row")
    grid = channels.join(pl.DataFrame({"metric": list(DAILY_COUNT_METRICS)}), how="cross").with_columns(
        pl.col("metric").replace_strict(list(DAILY_COUNT_METRICS), list(range(len(DAILY_COUNT_METRICS)))).alias("_rank")
    )
    count_rows = grid.join(
        counts, on=["event_id", "channel", "metric"], how="left", maintain_order="left"
    ).with_columns(pl.col("value").fill_null(0.0), pl.lit("Count").alias("unit"))
    rate_rows = (
        so_far.with_row_index("_row")
        .unpivot(index=["_row", "event_id", "channel"], on=list(DAILY_RATE_METRICS), variable_name="metric")
        .drop_nulls("value")
        .with_columns(
            (pl.col("value") * 100).alias("value"),
            pl.lit("Percent").alias("unit"),
            (
                pl.col("metric").replace_strict(list(DAILY_RATE_METRICS), list(range(len(DAILY_RATE_METRICS))))
                + len(DAILY_COUNT_METRICS)
            ).alias("_rank"),
        )
    )
    names = {**DAILY_COUNT_METRICS, **DAILY_RATE_METRICS}
    dimension = {"name": pl.String(), "value": pl.String()}

    def dim(name: str, value: pl.Expr) -> pl.Expr:
        return pl.struct(pl.lit(name).alias("name"), value.alias("value")).cast(pl.Struct(dimension))

    frame = (
        pl.concat([count_rows, rate_rows], how="diagonal_relaxed")
        .sort("_row", "_rank")
        .select(
            pl.col("metric").replace_strict(names).alias("name"),
            pl.col("value").cast(pl.Float64),
            "unit",
            pl.concat_list(
                dim(PROGRAM_DIMENSION, pl.lit(program_id)),
                dim(EVENT_DIMENSION, pl.col("event_id")),
                dim(CHANNEL_DIMENSION, pl.col("channel")),
            ).alias("dimensions"),
            pl.lit(datetime.combine(day, time(), tzinfo=UTC)).cast(pl.Datetime("us", "UTC")).alias("timestamp"),
        )
    )
    return validate_metrics(frame)
