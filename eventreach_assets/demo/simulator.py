"""SIMULATED engagement for the local demo: dice play the customers and the event platform.

SIMULATED DATA — local deployment only. Nothing here is a measurement: given what the campaign
actually sent (the delivery ledger's `sent` rows), it invents opens, clicks, unsubscribes,
registrations, attendance, survey answers, and the email provider's deliveries, bounces and
complaints (SES event records for the `provider` feed: `simulate_provider_events`) at the use
case's rates and drops them into the engagement feeds as JSON-lines files whose names carry
"sim" (`<UTC stamp>-sim-<stage>.jsonl`).
It never writes a store: the feed sensors and the same ingestion code a real event platform's
files go through pick them up, so the demo exercises the real path end to end.

Every record carries exactly the signed link token the real message carries (customer, event,
channel, the ledger row's campaign, action), so ingestion verifies and attributes it like a real
click. How the dice are loaded (`EngagementRates`):

- each funnel stage has a target rate over a channel's sent set; a customer's probability is
  logistic in their score, log-odds rising `score_effect` per unit of score, with the intercept
  solved so the set's expected rate is exactly the target (higher scores respond more, the
  funnel still lands on the use case's numbers);
- one uniform draw per message decides every stage of its funnel (open ⊇ click ⊇ register), so
  nobody clicks without opening or registers without clicking;
- timestamps fall between the send time and `now` (registrations: the registration deadline, if
  earlier), each step after the one before; a customer registers at most once, through the
  channel whose registration came first.

Pure functions on polars frames (seeded numpy Generators, one stream per stage and channel, rows
in a fixed order, so a seed reproduces every record) plus `drop_simulated`, the thin shell.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from eventreach_assets.domain.delivery import DeliveryStatus, MessageKind
from eventreach_assets.domain.events import UnknownEventError
from eventreach_assets.domain.feed_records import (
    ATTENDANCE_RECORD,
    FEED_RECORDS,
    REGISTRATION_RECORD,
    SURVEY_RECORD,
    TRACKING_RECORD,
)
from eventreach_assets.domain.feedback import ses_event
from eventreach_assets.domain.link_tokens import sign_link_token
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.feeds import FEED_SUFFIX, EngagementFeedResource, check_feed

SIM_MARKER = "sim"  # in every file name the simulator writes

_TS = pl.Datetime("us")  # naive UTC, the project's convention
# One record of each feed: the formats ingestion validates (`domain/feed_records.py`).
TRACKING_SCHEMA = TRACKING_RECORD
REGISTRATION_SCHEMA = REGISTRATION_RECORD
ATTENDANCE_SCHEMA = ATTENDANCE_RECORD
SURVEY_SCHEMA = SURVEY_RECORD
FEED_KEYS: dict[str, tuple[str, ...]] = {feed: tuple(schema) for feed, schema in FEED_RECORDS.items()}

# Survey comments: short, neutral, no personal data; chosen by the rating's mood.
SURVEY_COMMENTS: dict[int, tuple[str, ...]] = {
    5: ("Great session, very clear.", "Useful examples, thank you.", "Well organised and on time.", "Learned a lot."),
    4: ("Good content overall.", "Helpful, a little fast in places.", "Good pace and useful demos."),
    3: ("Some parts were useful.", "Would like more hands-on examples.", "A bit too long."),
    2: ("Too basic for me.", "Hard to follow at times."),
    1: ("Not what I expected.", "Did not match the description."),
}
_CLICK_PATH_ACTION = {
    "open": "open",
    "click": "click",
    "join": "click",
    "calendar": "click",
    "unsubscribe": "unsubscribe",
}
_STAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_OUTCOME_COLUMNS = (
    "customer_id", "event_id", "channel", "campaign_id", "sent_at", "score",
    "opened", "clicked", "registers", "unsubscribed",
    "open_at", "click_at", "register_at", "unsubscribe_at", "click_path",
)  # fmt: skip
_SENT_COLUMNS = ("customer_id", "event_id", "channel", "kind", "status", "campaign_id", "sent_at")


@dataclass(frozen=True)
class EngagementRates:
    """How often simulated customers respond; defaults are the use case's campaign results.

    Rates are of messages sent unless the name says otherwise. `in_app_click_through` is the
    use case's in-app CTR, clicks per *displayed* banner (3,600 of 12,000 seen; 12 % of sent).
    `day_of_*` are not in the use case (an assumption for registrants' event-day email).
    `score_effect` is the log-odds added per unit of score (0 = everyone alike).
    """

    email_open: float = 0.30
    email_click: float = 0.15
    email_register: float = 0.10
    email_unsubscribe: float = 0.005
    in_app_display: float = 0.40
    in_app_click_through: float = 0.30
    in_app_register: float = 0.05
    push_open: float = 0.90
    push_click_of_opens: float = 0.80
    day_of_open: float = 0.60
    day_of_click_of_opens: float = 0.50
    attendance: float = 0.875  # of registrants
    mean_minutes_watched: float = 45.0  # capped at 3/4 of the event's duration
    survey_response: float = 0.40  # of attendees sent the survey
    rating_weights: tuple[float, float, float, float, float] = (0.01, 0.01, 0.03, 0.15, 0.80)  # 1..5, mean 4.72
    survey_response_days: float = 3.0  # answers arrive within this long after the survey email
    score_effect: float = 4.0

    def __post_init__(self) -> None:
        for name in (
            "email_open", "email_click", "email_register", "email_unsubscribe", "in_app_display",
            "in_app_click_through", "in_app_register", "push_open", "push_click_of_opens", "day_of_open",
            "day_of_click_of_opens", "attendance", "survey_response",
        ):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"EngagementRates.{name} must be a probability in [0, 1], got {value!r}")
        if not self.email_register <= self.email_click <= self.email_open:
            raise ValueError(
                "EngagementRates: the email funnel must narrow: email_register <= email_click <= email_open, got "
                f"{self.email_register} / {self.email_click} / {self.email_open}"
            )
        if self.in_app_register > self.in_app_display * self.in_app_click_through:
            raise ValueError(
                "EngagementRates.in_app_register must not exceed the in-app clicks per sent "
                f"(in_app_display * in_app_click_through = {self.in_app_display * self.in_app_click_through:g})"
            )
        weights = self.rating_weights
        if len(weights) != 5 or any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
            raise ValueError(
                f"EngagementRates.rating_weights must be 5 non-negative weights summing to 1, got {weights}"
            )
        if not self.mean_minutes_watched >= 1:
            raise ValueError(f"EngagementRates.mean_minutes_watched must be >= 1, got {self.mean_minutes_watched}")
        if not self.survey_response_days > 0:
            raise ValueError(f"EngagementRates.survey_response_days must be positive, got {self.survey_response_days}")
        if not (math.isfinite(self.score_effect) and self.score_effect >= 0):
            raise ValueError(f"EngagementRates.score_effect must be a finite number >= 0, got {self.score_effect}")

    @property
    def in_app_click(self) -> float:
        """In-app clicks per banner sent (display x click-through)."""
        return self.in_app_display * self.in_app_click_through

    @property
    def mean_rating(self) -> float:
        return sum((index + 1) * weight for index, weight in enumerate(self.rating_weights))


DEFAULT_RATES = EngagementRates()


def _naive_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class EventTiming:
    """What the simulator needs of an event: when it starts, how long it runs, when registration closes."""

    event_id: str
    start_time_utc: datetime  # naive UTC (an aware time is converted)
    duration_minutes: int
    registration_deadline_days: int = 1  # the program's eventConfig.registrationDeadlineDays

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_time_utc", _naive_utc(self.start_time_utc))
        if not self.duration_minutes or self.duration_minutes < 1:
            raise ValueError(f"event {self.event_id!r}: duration_minutes must be >= 1, got {self.duration_minutes!r}")
        if self.registration_deadline_days < 0:
            raise ValueError(
                f"event {self.event_id!r}: registration_deadline_days must be >= 0, "
                f"got {self.registration_deadline_days}"
            )

    @property
    def registration_deadline(self) -> datetime:
        """The last moment a registration is accepted (ingestion rejects anything later)."""
        return self.start_time_utc - timedelta(days=self.registration_deadline_days)

    @property
    def end_time_utc(self) -> datetime:
        return self.start_time_utc + timedelta(minutes=self.duration_minutes)

    @classmethod
    def from_events(cls, events: pl.DataFrame, event_id: str, program: ProgramConfig) -> EventTiming:
        """The event's row of the warehouse's events table, with the program's registration deadline."""
        missing = {"event_id", "start_time_utc", "duration_minutes"} - set(events.columns)
        if missing:
            raise ValueError(f"events lacks columns {sorted(missing)}")
        rows = events.filter(pl.col("event_id") == event_id)
        if rows.height == 0:
            raise UnknownEventError(f"event {event_id!r} is not in the events table")
        row = rows.row(0, named=True)
        if row["start_time_utc"] is None or row["duration_minutes"] is None:
            raise ValueError(f"event {event_id!r} has no start_time_utc or duration_minutes")
        return cls(
            event_id=event_id,
            start_time_utc=row["start_time_utc"],
            duration_minutes=int(row["duration_minutes"]),
            registration_deadline_days=program.event_config.registration_deadline_days,
        )


@dataclass(frozen=True)
class SimulatedEngagement:
    """Feed-ready frames (columns = the feed's record keys) and counts per `<channel>.<action>`.

    Counts hold no customer data (safe for logs and metadata); "in-app.open" counts banners
    displayed (the banner's impression URL carries the "open" token), "<channel>.register" the
    registrations each channel won.
    """

    tracking: pl.DataFrame  # TRACKING_SCHEMA
    registrations: pl.DataFrame  # REGISTRATION_SCHEMA
    counts: dict[str, int] = field(default_factory=dict)


# ---- shared pieces ------------------------------------------------------------------------


def _rng(seed: int, *stream: str) -> np.random.Generator:
    """An independent, reproducible stream per stage and channel (adding in-app rows leaves email's dice alone)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"rng_seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng([seed, *(zlib.crc32(part.encode()) for part in stream)])


def _as_naive_utc(frame: pl.DataFrame, column: str) -> pl.Expr:
    dtype = frame.schema[column]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"column {column!r} must be a datetime, got {dtype}")
    expr = pl.col(column)
    if dtype.time_zone is not None:
        expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return expr.dt.cast_time_unit("us")


def _check_event(frame: pl.DataFrame, event: EventTiming, what: str) -> None:
    if "event_id" not in frame.columns:
        return
    others = frame.filter(pl.col("event_id") != event.event_id)["event_id"].unique().sort().to_list()
    if others:
        raise ValueError(f"{what} has rows of other events {others[:5]}; expected only {event.event_id!r}")


def _sent_rows(
    sent: pl.DataFrame, event: EventTiming, kinds: Sequence[str], channels: Sequence[str], what: str
) -> pl.DataFrame:
    """The ledger's `sent` rows of these kinds, validated, sent_at naive UTC, in a fixed order."""
    missing = set(_SENT_COLUMNS) - set(sent.columns)
    if missing:
        raise ValueError(f"{what} lacks ledger columns {sorted(missing)}")
    _check_event(sent, event, what)
    rows = sent.filter((pl.col("status") == DeliveryStatus.SENT.value) & pl.col("kind").is_in(list(kinds)))
    unknown = rows.filter(~pl.col("channel").is_in(list(channels)))["channel"].unique().sort().to_list()
    if unknown:
        raise ValueError(f"{what} has {'/'.join(kinds)} rows on channels {unknown}; expected {list(channels)}")
    incomplete = rows.filter(
        pl.col("campaign_id").is_null() | pl.col("sent_at").is_null() | pl.col("customer_id").is_null()
    )
    if incomplete.height:
        raise ValueError(f"{what}: {incomplete.height} sent rows lack customer_id, campaign_id or sent_at")
    return (
        rows.select(
            pl.col("customer_id").cast(pl.String),
            pl.col("event_id").cast(pl.String),
            pl.col("channel").cast(pl.String),
            pl.col("kind").cast(pl.String),
            pl.col("campaign_id").cast(pl.String),
            _as_naive_utc(rows, "sent_at").alias("sent_at"),
        )
        .unique(["customer_id", "channel", "kind"], keep="first", maintain_order=True)
        .sort("channel", "kind", "customer_id")
    )


def _with_scores(rows: pl.DataFrame, scores: pl.DataFrame | None) -> pl.DataFrame:
    """Each row's customer score (their best across channels); unscored customers count as average."""
    if scores is None or scores.height == 0:
        return rows.with_columns(pl.lit(0.5, pl.Float64).alias("score"))
    missing = {"customer_id", "score"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores lacks columns {sorted(missing)}")
    per_customer = scores.group_by(pl.col("customer_id").cast(pl.String)).agg(pl.col("score").cast(pl.Float64).max())
    bad = per_customer.filter(pl.col("score").is_nan() | (pl.col("score") < 0) | (pl.col("score") > 1)).height
    if bad:
        raise ValueError(f"scores has {bad} customers with a score outside [0, 1] or NaN")
    joined = rows.join(per_customer, on="customer_id", how="left", maintain_order="left")
    fallback = joined["score"].mean()
    return joined.with_columns(pl.col("score").fill_null(0.5 if fallback is None else float(fallback)))


def calibrated_probabilities(scores: np.ndarray, target: float, score_effect: float) -> np.ndarray:
    """Per-row probabilities averaging exactly `target` over the rows, log-odds rising with score.

    p_i = sigmoid(a + score_effect * (s_i - mean s)), the intercept `a` found by bisection (mean p
    is monotone in a), so higher-scored customers respond more while the rate over the whole
    sent set is the use case's. Same scores and effect with a smaller target give smaller p for
    every row, which keeps funnel stages nested.
    """
    n = scores.shape[0]
    if n == 0 or target <= 0.0:
        return np.zeros(n)
    if target >= 1.0:
        return np.ones(n)
    shift = score_effect * (scores - scores.mean())
    low, high = -60.0, 60.0
    for _ in range(80):  # bounded: the bracket halves each time, far below float resolution by the end
        middle = (low + high) / 2.0
        if (1.0 / (1.0 + np.exp(-np.clip(middle + shift, -500, 500)))).mean() < target:
            low = middle
        else:
            high = middle
    return 1.0 / (1.0 + np.exp(-np.clip((low + high) / 2.0 + shift, -500, 500)))


def _between(start: pl.Expr, end: pl.Expr, fraction: pl.Expr) -> pl.Expr:
    """start + fraction x (end - start), in microseconds (never past `end` for fraction < 1)."""
    span = (end - start).dt.total_microseconds()
    return start + pl.duration(microseconds=(span.cast(pl.Float64) * fraction).floor().cast(pl.Int64))


@dataclass(frozen=True)
class _Funnel:
    """One channel's funnel: marginal rates of sent (nested) and the paths its links hit."""

    channel: str
    open: float
    click: float
    register: float = 0.0
    unsubscribe: float = 0.0
    click_path: str = "click"


def _simulate_funnel(
    rows: pl.DataFrame,
    funnel: _Funnel,
    rng: np.random.Generator,
    score_effect: float,
    track_end: datetime,
    register_end: datetime | None,
) -> pl.DataFrame:
    """Per sent row: whether and when it was opened, clicked, registered through, unsubscribed from."""
    n = rows.height
    scores = rows["score"].to_numpy()
    funnel_draw = rng.random(n)
    unsubscribe_draw = rng.random(n)
    fractions = rng.beta(1.0, 3.0, size=(4, n))  # skewed early: most people react soon after it arrives
    marginal = {
        stage: calibrated_probabilities(scores, rate, score_effect)
        for stage, rate in (("open", funnel.open), ("click", funnel.click), ("register", funnel.register))
    }
    unsubscribe = calibrated_probabilities(scores, funnel.unsubscribe, -score_effect)  # the indifferent leave
    registers = pl.lit(False)
    if register_end is not None:
        registers = pl.col("_wants_register") & (pl.col("sent_at") < pl.lit(register_end, _TS))
    end = pl.when(pl.col("registers")).then(pl.lit(register_end, _TS)).otherwise(pl.lit(track_end, _TS))
    active = pl.col("sent_at") < pl.lit(track_end, _TS)
    return (
        rows.with_columns(
            pl.Series("_opens", funnel_draw < marginal["open"]),
            pl.Series("_clicks", funnel_draw < marginal["click"]),
            pl.Series("_wants_register", funnel_draw < marginal["register"]),
            pl.Series("_unsubscribes", unsubscribe_draw < unsubscribe),
            *(pl.Series(f"_f{index}", fractions[index]) for index in range(4)),
        )
        .with_columns(registers.alias("registers"))
        .with_columns(
            (pl.col("_opens") & active).alias("opened"),
            (pl.col("_clicks") & active).alias("clicked"),
            (pl.col("_unsubscribes") & ~pl.col("registers") & active).alias("unsubscribed"),
            end.alias("_end"),
        )
        .with_columns(_between(pl.col("sent_at"), pl.col("_end"), pl.col("_f0")).alias("open_at"))
        .with_columns(_between(pl.col("open_at"), pl.col("_end"), pl.col("_f1")).alias("click_at"))
        .with_columns(
            _between(pl.col("click_at"), pl.col("_end"), pl.col("_f2")).alias("register_at"),
            _between(pl.col("sent_at"), pl.lit(track_end, _TS), pl.col("_f3")).alias("unsubscribe_at"),
            pl.lit(funnel.click_path).alias("click_path"),
        )
        .select(_OUTCOME_COLUMNS)
    )


def _simulate_funnels(
    rows: pl.DataFrame,
    funnels: Sequence[_Funnel],
    rng_seed: int,
    stream: str,
    score_effect: float,
    end: datetime,
    register_end: datetime | None,
) -> pl.DataFrame:
    """Each channel's rows through its funnel, one random stream per stage and channel."""
    return pl.concat(
        [
            _simulate_funnel(
                rows.filter(pl.col("channel") == funnel.channel),
                funnel,
                _rng(rng_seed, stream, funnel.channel),
                score_effect,
                end,
                register_end,
            )
            for funnel in funnels
        ]
    )


def _signed_tokens(secret: bytes, frame: pl.DataFrame, action: pl.Expr | str) -> pl.Series:
    """The link token the real message carries for each row (the only per-row Python: HMAC)."""
    actions = [action] * frame.height if isinstance(action, str) else frame.select(action).to_series().to_list()
    tokens = [
        sign_link_token(secret, customer_id=customer, event_id=event, channel=channel, campaign_id=campaign, action=act)
        for customer, event, channel, campaign, act in zip(
            frame["customer_id"], frame["event_id"], frame["channel"], frame["campaign_id"], actions, strict=True
        )
    ]
    return pl.Series("token", tokens, dtype=pl.String)


def _tracking(outcomes: pl.DataFrame, secret: bytes) -> tuple[pl.DataFrame, dict[str, int]]:
    """Tracking records (token, path, occurred_at), earliest first, and counts per channel.action."""
    keys = ["customer_id", "event_id", "channel", "campaign_id"]
    hits = pl.concat(
        [
            outcomes.filter("opened").select(*keys, pl.lit("open").alias("path"), pl.col("open_at").alias("at")),
            outcomes.filter("clicked").select(
                *keys, pl.col("click_path").alias("path"), pl.col("click_at").alias("at")
            ),
            outcomes.filter("unsubscribed").select(
                *keys, pl.lit("unsubscribe").alias("path"), pl.col("unsubscribe_at").alias("at")
            ),
        ]
    ).with_columns(pl.col("path").replace_strict(_CLICK_PATH_ACTION, return_dtype=pl.String).alias("action"))
    hits = hits.sort("at", "channel", "customer_id", "action")
    counts = {
        f"{channel}.{action}": count for channel, action, count in hits.group_by("channel", "action").len().iter_rows()
    }
    tracking = pl.DataFrame(
        {"token": _signed_tokens(secret, hits, pl.col("action")), "path": hits["path"], "occurred_at": hits["at"]},
        schema=TRACKING_SCHEMA,
    )
    return tracking, counts


def _naive_now(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise ValueError(f"now must be a datetime, got {now!r}")
    return _naive_utc(now)


# ---- the campaign -------------------------------------------------------------------------


def simulate_invitation_engagement(
    sent: pl.DataFrame,
    scores: pl.DataFrame | None,
    event: EventTiming,
    secret: bytes,
    now: datetime,
    rng_seed: int,
    rates: EngagementRates = DEFAULT_RATES,
) -> SimulatedEngagement:
    """SIMULATED opens, clicks, unsubscribes and registrations for the invitations the ledger says were sent.

    `sent` is the ledger's rows of the event (`deliveries(event_id)`; only `sent` invitations on
    email and in-app count); `scores` holds customer_id, score (the candidate store's
    `event_items`). Everything happens between a message's send time and `now`; registrations
    also no later than the registration deadline, one per customer (the earliest channel wins).
    """
    now = _naive_now(now)
    rows = _with_scores(_sent_rows(sent, event, [MessageKind.INVITATION.value], ["email", "in-app"], "sent"), scores)
    funnels = (
        _Funnel("email", rates.email_open, rates.email_click, rates.email_register, rates.email_unsubscribe),
        _Funnel("in-app", rates.in_app_display, rates.in_app_click, rates.in_app_register),
    )
    register_end = min(now, event.registration_deadline)
    outcomes = _simulate_funnels(rows, funnels, rng_seed, "invitation", rates.score_effect, now, register_end)
    tracking, counts = _tracking(outcomes, secret)
    registered = (
        outcomes.filter("registers")
        .sort("register_at", "channel", "customer_id")
        .unique("customer_id", keep="first", maintain_order=True)  # the first channel to convert wins
    )
    registrations = pl.DataFrame(
        {
            "registration_id": registered.select(
                pl.concat_str(pl.lit(f"{SIM_MARKER}-"), "event_id", pl.lit("-"), "customer_id")
            ).to_series(),
            "event_id": registered["event_id"],
            "customer_id": registered["customer_id"],
            "registered_at": registered["register_at"],
            "token": _signed_tokens(secret, registered, "register"),
        },
        schema=REGISTRATION_SCHEMA,
    )
    for channel, count in registered.group_by("channel").len().iter_rows():
        counts[f"{channel}.register"] = count
    return SimulatedEngagement(tracking=tracking, registrations=registrations, counts=dict(sorted(counts.items())))


def simulate_reminder_engagement(
    sent_reminders: pl.DataFrame,
    scores: pl.DataFrame | None,
    event: EventTiming,
    secret: bytes,
    now: datetime,
    rng_seed: int,
    rates: EngagementRates = DEFAULT_RATES,
) -> SimulatedEngagement:
    """SIMULATED opens and clicks of sent reminders: push (open, then "Add to Calendar") and the day-of email
    (open, then the join link), between each send and min(now, the event's end). No registrations."""
    now = _naive_now(now)
    kinds = [MessageKind.REMINDER.value, MessageKind.DAY_OF.value]
    rows = _with_scores(_sent_rows(sent_reminders, event, kinds, ["push", "email"], "sent_reminders"), scores)
    funnels = (
        _Funnel("push", rates.push_open, rates.push_open * rates.push_click_of_opens, click_path="calendar"),
        _Funnel("email", rates.day_of_open, rates.day_of_open * rates.day_of_click_of_opens, click_path="join"),
    )
    end = min(now, event.end_time_utc)
    outcomes = _simulate_funnels(rows, funnels, rng_seed, "reminder", rates.score_effect, end, None)
    tracking, counts = _tracking(outcomes, secret)
    return SimulatedEngagement(
        tracking=tracking, registrations=pl.DataFrame(schema=REGISTRATION_SCHEMA), counts=dict(sorted(counts.items()))
    )


# ---- the event and after ------------------------------------------------------------------


def simulate_attendance(
    registered: pl.DataFrame,
    scores: pl.DataFrame | None,
    event: EventTiming,
    rng_seed: int,
    rates: EngagementRates = DEFAULT_RATES,
    now: datetime | None = None,
) -> pl.DataFrame:
    """SIMULATED attendance records (ATTENDANCE_SCHEMA) of the event's registrants.

    `registered` has customer_id (a `status` column, if present, keeps only "registered": the
    waitlisted have no seat). Higher-scored registrants show up more often; minutes watched centre
    on `mean_minutes_watched` (at most 3/4 of the event) within 1..duration; joins cluster around
    the start and never run past the end. `now` before the event's end means nothing to report yet.
    """
    if "customer_id" not in registered.columns:
        raise ValueError("registered lacks column 'customer_id'")
    _check_event(registered, event, "registered")
    if now is not None and _naive_now(now) < event.end_time_utc:
        return pl.DataFrame(schema=ATTENDANCE_SCHEMA)
    rows = registered.filter(pl.col("status") == "registered") if "status" in registered.columns else registered
    rows = rows.select(pl.col("customer_id").cast(pl.String)).drop_nulls().unique().sort("customer_id")
    rows = _with_scores(rows, scores)
    rng = _rng(rng_seed, "attendance")
    n = rows.height
    attends = rng.random(n) < calibrated_probabilities(rows["score"].to_numpy(), rates.attendance, rates.score_effect)
    duration = event.duration_minutes
    if duration == 1:
        minutes = np.ones(n, dtype=np.int64)
    else:
        mean = min(rates.mean_minutes_watched, 0.75 * duration)
        share = min(max((mean - 1.0) / (duration - 1.0), 0.01), 0.99)
        concentration = 6.0
        minutes = np.rint(1 + (duration - 1) * rng.beta(share * concentration, (1 - share) * concentration, n))
    minutes = np.clip(minutes, 1, duration).astype(np.int64)
    offset_seconds = np.rint(np.clip(rng.normal(60.0, 180.0, n), -600.0, (duration - minutes) * 60.0)).astype(np.int64)
    return (
        rows.with_columns(
            pl.Series("_attends", attends),
            pl.Series("minutes_watched", minutes).cast(pl.Int32),
            pl.Series("_offset", offset_seconds),
        )
        .filter("_attends")
        .select(
            pl.lit(event.event_id).alias("event_id"),
            "customer_id",
            (pl.lit(event.start_time_utc, _TS) + pl.duration(seconds=pl.col("_offset"))).alias("joined_at"),
            "minutes_watched",
        )
        .cast(ATTENDANCE_SCHEMA)
    )


def simulate_survey(
    survey_sent: pl.DataFrame,
    attendance: pl.DataFrame,
    event: EventTiming,
    secret: bytes,
    rng_seed: int,
    rates: EngagementRates = DEFAULT_RATES,
    now: datetime | None = None,
) -> pl.DataFrame:
    """SIMULATED survey answers (SURVEY_SCHEMA) from attendees who were sent the survey email.

    Only `sent` survey rows of customers in `attendance` can answer (someone who did not attend
    has nothing to rate); ratings follow `rating_weights` (skewed high), comments come from a
    fixed list of neutral phrases. Answers arrive within `survey_response_days` of the email,
    and not after `now` when given.
    """
    rows = _sent_rows(survey_sent, event, [MessageKind.SURVEY.value], ["email"], "survey_sent")
    if "customer_id" not in attendance.columns:
        raise ValueError("attendance lacks column 'customer_id'")
    _check_event(attendance, event, "attendance")
    attendees = attendance.select(pl.col("customer_id").cast(pl.String)).unique()
    rows = rows.join(attendees, on="customer_id", how="semi", maintain_order="left")
    rng = _rng(rng_seed, "survey")
    n = rows.height
    answers = rng.random(n) < rates.survey_response
    ratings = rng.choice(np.arange(1, 6), size=n, p=np.asarray(rates.rating_weights))
    picks = rng.integers(0, 1 << 30, size=n)
    comments = np.empty(n, dtype=object)
    for rating, phrases in SURVEY_COMMENTS.items():  # five moods, not rows
        chosen = ratings == rating
        comments[chosen] = np.asarray(phrases, dtype=object)[picks[chosen] % len(phrases)]
    window_end = pl.col("sent_at") + pl.duration(microseconds=int(rates.survey_response_days * 86_400 * 1_000_000))
    if now is not None:
        window_end = pl.min_horizontal(window_end, pl.lit(_naive_now(now), _TS))
    answered = (
        rows.with_columns(
            pl.Series("_answers", answers),
            pl.Series("rating", ratings).cast(pl.Int8),
            pl.Series("comment", comments.tolist(), dtype=pl.String),
            pl.Series("_f", rng.beta(1.0, 3.0, n)),
            window_end.alias("_end"),
        )
        .filter(pl.col("_answers") & (pl.col("_end") > pl.col("sent_at")))
        .with_columns(_between(pl.col("sent_at"), pl.col("_end"), pl.col("_f")).alias("submitted_at"))
        .sort("submitted_at", "customer_id")
    )
    return pl.DataFrame(
        {
            "token": _signed_tokens(secret, answered, "survey"),
            "rating": answered["rating"],
            "comment": answered["comment"],
            "submitted_at": answered["submitted_at"],
        },
        schema=SURVEY_SCHEMA,
    )


# ---- dropping files (the thin shell) ------------------------------------------------------


def feed_records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts, datetimes as ISO 8601 UTC ("...Z"), as the platform writes them."""
    return frame.with_columns(
        pl.col(name).dt.to_string("%Y-%m-%dT%H:%M:%S%.fZ")
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime)
    ).to_dicts()


def _json_value(value: Any) -> Any:
    return f"{_naive_utc(value).isoformat()}Z" if isinstance(value, datetime) else value


def sim_file_name(stage: str, now: datetime) -> str:
    """`<UTC YYYYmmddTHHMMSSZ>-sim-<stage>.jsonl`: sorts in drop order among the platform's own files."""
    if not _STAGE_NAME.match(stage):
        raise ValueError(f"stage must be a lowercase slug (letters, digits, '-'), got {stage!r}")
    return f"{_naive_now(now):%Y%m%dT%H%M%SZ}-{SIM_MARKER}-{stage}{FEED_SUFFIX}"


def _feed_has(feed_resource: EngagementFeedResource, feed: str, name: str) -> bool:
    """Whether `name` is already in the feed, by listing from a valid name that sorts just before it."""
    cursor = f"{name.removesuffix(FEED_SUFFIX)}-{FEED_SUFFIX}"  # "-" < ".": right before `name`
    for _ in range(1_000):  # bounded; only same-second files of a "<stage>-..." stage lie in between
        page = feed_resource.new_files(feed, after=cursor, limit=1_000)
        if name in page:
            return True
        if not page or page[-1] > name:
            return False
        cursor = page[-1]
    raise RuntimeError(f"feed {feed!r}: too many files sort next to {name}; cannot tell whether it exists")


def drop_simulated(
    feed_resource: EngagementFeedResource,
    feed: str,
    stage: str,
    now: datetime,
    records: pl.DataFrame | Sequence[dict[str, Any]],
) -> str | None:
    """Drop simulated records as one feed file; returns its URI, or None (no file) when there are none.

    Every record must have exactly the feed's keys (`FEED_KEYS`). A file of the same name is
    never rewritten (the feed's sensor may already have read it): that raises FileExistsError.
    """
    check_feed(feed)
    name = sim_file_name(stage, now)
    if isinstance(records, pl.DataFrame):
        rows = feed_records(records)
    else:
        rows = [{key: _json_value(value) for key, value in record.items()} for record in records]
    if not rows:
        return None
    expected = set(FEED_KEYS[feed])
    for number, record in enumerate(rows, start=1):
        if set(record) != expected:
            raise ValueError(
                f"{feed} record {number} has keys {sorted(record)}; the {feed} feed expects exactly {sorted(expected)}"
            )
    if _feed_has(feed_resource, feed, name):
        raise FileExistsError(f"feed {feed!r} already has {name}; simulated files are never rewritten")
    return feed_resource.drop(feed, name, rows)


def drop_engagement(
    feed_resource: EngagementFeedResource, engagement: SimulatedEngagement, stage: str, now: datetime
) -> list[str]:
    """Drop a simulation's tracking and registration records (whichever are non-empty); returns the URIs."""
    dropped = (
        drop_simulated(feed_resource, "tracking", stage, now, engagement.tracking),
        drop_simulated(feed_resource, "registrations", stage, now, engagement.registrations),
    )
    return [uri for uri in dropped if uri is not None]


# ---- provider feedback (SES event publishing) --------------------------------------------------

PROVIDER_FEED = "provider"


@dataclass(frozen=True)
class ProviderRates:
    """How often SIMULATED emails bounce or draw complaints, of emails sent: ~1-2 % bounces and
    0.05-0.1 % complaints, the range of a reasonably kept list; deliveries for the rest.

    A customer's bounce odds grow with their address's age (`created_at`, when the customers frame
    has it): weight 1 + `age_effect` x years, scaled so the set's expected rate is the target
    (old addresses are abandoned more often). Soft (transient) bounces still deliver nothing.
    """

    hard_bounce: float = 0.012
    soft_bounce: float = 0.004
    complaint: float = 0.0008  # of delivered emails
    age_effect: float = 0.5  # bounce weight added per year of address age
    delivery_seconds: tuple[float, float] = (1.0, 90.0)  # SES reports deliveries / bounces this soon
    complaint_hours: tuple[float, float] = (1.0, 48.0)  # recipients press "spam" this long after

    def __post_init__(self) -> None:
        for name in ("hard_bounce", "soft_bounce", "complaint"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.2:
                raise ValueError(f"ProviderRates.{name} must be in [0, 0.2], got {value!r}")
        if self.age_effect < 0:
            raise ValueError(f"ProviderRates.age_effect must be >= 0, got {self.age_effect}")


DEFAULT_PROVIDER_RATES = ProviderRates()


def _uniform(column: str, seed: int, draw: int) -> pl.Expr:
    """A reproducible U[0, 1) per value of `column` (a message id): the same message gets the same
    fate however often the simulation runs, so a re-dropped record is a duplicate, not a new fact."""
    return pl.col(column).hash(seed=seed * 1_000 + draw).cast(pl.Float64) / float(2**64)


def simulate_provider_events(
    sent: pl.DataFrame,
    customers: pl.DataFrame,
    now: datetime,
    *,
    rates: ProviderRates = DEFAULT_PROVIDER_RATES,
    seed: int = 0,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """SIMULATED SES event records (Delivery, Bounce, Complaint) for the emails the ledger says
    were sent (`sent`: ledger rows with provider_message_id and sent_at; other channels and
    statuses ignored), addressed as `customers` (customer_id, email[, created_at]) says. Only
    what happened in (`since`, `now`] is emitted (a message's fate is fixed by the seed and its
    id, so calling this every tick with the previous tick as `since` plays each report once);
    records come in time order."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    missing = {"customer_id", "channel", "status", "provider_message_id", "sent_at"} - set(sent.columns)
    if missing:
        raise ValueError(f"sent lacks ledger columns {sorted(missing)}")
    if not {"customer_id", "email"} <= set(customers.columns):
        raise ValueError("customers must have customer_id and email")
    cutoff = _naive_now(now)
    emails = _sent_emails(sent, customers)
    if emails.height == 0:
        return []
    records = _provider_records(_fates(emails, rates, seed).filter(pl.col("_at") <= cutoff), cutoff)
    start = _naive_now(since) if since is not None else None
    records = [pair for pair in records if start is None or pair[0] > start]
    return [record for _, record in sorted(records, key=lambda pair: (pair[0], pair[1]["mail"]["messageId"]))]


def _sent_emails(sent: pl.DataFrame, customers: pl.DataFrame) -> pl.DataFrame:
    """The ledger's sent emails with a provider id, once each, with their address (and its
    `created_at` when known), in send order."""
    created = [_as_naive_utc(customers, "created_at").alias("created_at")] if "created_at" in customers.columns else []
    addresses = customers.select(pl.col("customer_id").cast(pl.String), "email", *created)
    return (
        sent.filter(
            (pl.col("channel") == "email")
            & (pl.col("status") == DeliveryStatus.SENT.value)
            & pl.col("provider_message_id").is_not_null()
        )
        .select(pl.col("customer_id").cast(pl.String), "provider_message_id", _as_naive_utc(sent, "sent_at"))
        .unique("provider_message_id", keep="first")
        .join(addresses, on="customer_id", how="inner")
        .sort("sent_at", "provider_message_id")
    )


def _fates(emails: pl.DataFrame, rates: ProviderRates, seed: int) -> pl.DataFrame:
    """Each email's fate (`_fate`: hard, soft or delivered) and when the provider reports it
    (`_at`), whether its recipient complains (`_complains`) and when (`_complained_at`). Older
    addresses bounce more, scaled so the set's expected rate is the target."""
    age_years = (
        ((pl.col("sent_at") - pl.col("created_at")).dt.total_days().clip(lower_bound=0) / 365.25).fill_null(0.0)
        if "created_at" in emails.columns
        else pl.lit(0.0)
    )
    weight = 1.0 + rates.age_effect * age_years
    scale = weight / weight.mean()
    low, high = rates.delivery_seconds
    c_low, c_high = rates.complaint_hours
    fate = emails.with_columns(
        _uniform("provider_message_id", seed, 1).alias("_u"),
        _uniform("provider_message_id", seed, 2).alias("_complain"),
        _uniform("provider_message_id", seed, 3).alias("_delay"),
        scale.alias("_scale"),
    ).with_columns(
        pl.when(pl.col("_u") < (rates.hard_bounce * pl.col("_scale")).clip(upper_bound=0.9))
        .then(pl.lit("hard"))
        .when(pl.col("_u") < ((rates.hard_bounce + rates.soft_bounce) * pl.col("_scale")).clip(upper_bound=0.95))
        .then(pl.lit("soft"))
        .otherwise(pl.lit("delivered"))
        .alias("_fate"),
        (pl.col("sent_at") + pl.duration(milliseconds=(low + (high - low) * pl.col("_delay")) * 1000)).alias("_at"),
        (pl.col("sent_at") + pl.duration(milliseconds=(c_low + (c_high - c_low) * pl.col("_delay")) * 3_600_000)).alias(
            "_complained_at"
        ),
    )
    return fate.with_columns((pl.col("_complain") < rates.complaint).alias("_complains"))


def _provider_records(fate: pl.DataFrame, cutoff: datetime) -> list[tuple[datetime, dict[str, Any]]]:
    """(time, SES record) of each reported fate: a Delivery (and a Complaint once its time came) or
    a Bounce. The records are nested JSON, built one per message."""
    records: list[tuple[datetime, dict[str, Any]]] = []
    columns = ("provider_message_id", "email", "sent_at", "_fate", "_at", "_complains", "_complained_at")
    for message_id, email, sent_at, outcome, at, complains, complained_at in fate.select(columns).iter_rows():
        if outcome == "delivered":
            records.append((at, ses_event("Delivery", message_id, email, at, sent_at=sent_at)))
            if complains and complained_at <= cutoff:
                complaint = ses_event("Complaint", message_id, email, complained_at, sent_at=sent_at)
                records.append((complained_at, complaint))
        else:
            kind, subtype = ("Permanent", "General") if outcome == "hard" else ("Transient", "MailboxFull")
            bounce = ses_event(
                "Bounce", message_id, email, at, sent_at=sent_at, bounce_type=kind, bounce_subtype=subtype
            )
            records.append((at, bounce))
    return records


def drop_provider_events(
    feed_resource: EngagementFeedResource, now: datetime, records: Sequence[dict[str, Any]], stage: str = "ses"
) -> str | None:
    """Drop SIMULATED SES event records into the provider feed as one file (None when there are
    none); like `drop_simulated`, a file of the same name is never rewritten."""
    if not records:
        return None
    name = sim_file_name(stage, now)
    if _feed_has(feed_resource, PROVIDER_FEED, name):
        raise FileExistsError(f"feed {PROVIDER_FEED!r} already has {name}; simulated files are never rewritten")
    return feed_resource.drop(PROVIDER_FEED, name, list(records))
