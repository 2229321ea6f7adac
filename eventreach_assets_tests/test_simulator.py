"""The SIMULATED engagement of the local demo: reproducible, on the use case's rates, score-driven,
with genuine tokens naming the ledger's campaigns, within the event's time rules, in the feeds' formats.

Rate tolerances are 4 binomial standard deviations of the observed share, sqrt(p(1-p)/n): with
per-customer probabilities that vary by score the count's variance is sum p_i(1-p_i) <= n p(1-p),
so this bounds the noise (a false failure about 1 run in 16,000) and is far tighter than the
effects asserted.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from eventreach_assets.demo import simulator as sim
from eventreach_assets.domain import registrations as reg
from eventreach_assets.domain.delivery import DeliveryKey, MessageKind
from eventreach_assets.domain.link_tokens import InvalidLinkToken, LinkClaims, verify_link_token
from eventreach_assets.program.config import default_program
from eventreach_assets.resources.feeds import LocalFolderFeed
from eventreach_assets.resources.ledger import DELIVERY_SCHEMA, SqliteDeliveryLedger, keys_frame

SECRET = b"simulator-test-secret"
EVENT = sim.EventTiming("evt-sim", datetime(2026, 12, 8, 16, 0), duration_minutes=90, registration_deadline_days=1)
SEND = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
AFTER = datetime(2026, 12, 9, 12, 0)  # the event is over: every window is complete
PATH_ACTION = {"open": "open", "click": "click", "join": "click", "calendar": "click", "unsubscribe": "unsubscribe"}


def tolerance(p: float, n: int) -> float:
    return 4 * math.sqrt(p * (1 - p) / n)


def ledger_rows(
    customers: list[str],
    channel: str,
    kind: str = "invitation",
    *,
    sent_at: datetime = SEND,
    status: str = "sent",
    campaign: str | None = None,
    event_id: str = EVENT.event_id,
) -> pl.DataFrame:
    """Rows shaped exactly like `deliveries()`; campaign ids differ by segment unless given."""
    n = len(customers)
    return pl.DataFrame(
        {
            "customer_id": customers,
            "event_id": [event_id] * n,
            "channel": [channel] * n,
            "kind": [kind] * n,
            "occurrence": [""] * n,  # per-date kinds carry the event date; "" is enough here
            "campaign_id": [campaign or f"{event_id}:{channel}:{kind}:seg{i % 3}" for i in range(n)],
            "status": [status] * n,
            "reason": [None] * n,
            "provider_message_id": [f"m-{channel}-{c}" for c in customers],
            "attempts": [1] * n,
            "sends": [1] * n,
            "reserved_at": [sent_at] * n,
            "updated_at": [sent_at] * n,
            "sent_at": [sent_at] * n,
        },
        schema=DELIVERY_SCHEMA,
    )


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(n)]


def score_frame(customers: list[str], seed: int = 3) -> pl.DataFrame:
    """Candidate-store-like scores: uniform over the email campaign's range 0.5..1."""
    return pl.DataFrame(
        {
            "customer_id": customers,
            "channel": "email",
            "score": np.random.default_rng(seed).uniform(0.5, 1.0, len(customers)),
        }
    )


def claims(token: str, action: str) -> LinkClaims:
    return verify_link_token(SECRET, token, action=action)


def tracked(tracking: pl.DataFrame) -> pl.DataFrame:
    """Tracking records with their verified claims (verification with the path's action must pass)."""
    decoded = [
        claims(token, PATH_ACTION[path]) for token, path in zip(tracking["token"], tracking["path"], strict=True)
    ]
    return tracking.with_columns(
        pl.Series("customer_id", [c.customer_id for c in decoded]),
        pl.Series("event_id", [c.event_id for c in decoded]),
        pl.Series("channel", [c.channel for c in decoded]),
        pl.Series("campaign_id", [c.campaign_id for c in decoded]),
        pl.Series("action", [c.action for c in decoded]),
    )


def registration_channels(registrations: pl.DataFrame) -> pl.DataFrame:
    decoded = [claims(token, "register") for token in registrations["token"]]
    return registrations.with_columns(
        pl.Series("channel", [c.channel for c in decoded]), pl.Series("campaign_id", [c.campaign_id for c in decoded])
    )


# ---- invitations --------------------------------------------------------------------------

N_EMAIL, N_IN_APP = 20_000, 20_000
EMAIL_IDS, IN_APP_IDS = ids("E", N_EMAIL), ids("A", N_IN_APP)
SENT = pl.concat(
    [ledger_rows(EMAIL_IDS, "email"), ledger_rows(IN_APP_IDS, "in-app", sent_at=SEND + timedelta(hours=4))]
)
SCORES = pl.concat([score_frame(EMAIL_IDS, 3), score_frame(IN_APP_IDS, 4)])


@pytest.fixture(scope="module")
def campaign() -> sim.SimulatedEngagement:
    return sim.simulate_invitation_engagement(SENT, SCORES, EVENT, SECRET, AFTER, rng_seed=11)


@pytest.fixture(scope="module")
def campaign_hits(campaign: sim.SimulatedEngagement) -> pl.DataFrame:
    return tracked(campaign.tracking)


def test_module_is_labelled_simulated():
    assert "SIMULATED" in (sim.__doc__ or "")
    assert sim.SIM_MARKER in sim.sim_file_name("invitations", AFTER)


def test_same_seed_same_records_other_seed_other_records(campaign: sim.SimulatedEngagement):
    again = sim.simulate_invitation_engagement(SENT, SCORES, EVENT, SECRET, AFTER, rng_seed=11)
    assert again.tracking.equals(campaign.tracking)
    assert again.registrations.equals(campaign.registrations)
    assert again.counts == campaign.counts
    other = sim.simulate_invitation_engagement(SENT, SCORES, EVENT, SECRET, AFTER, rng_seed=12)
    assert not other.registrations["customer_id"].equals(campaign.registrations["customer_id"])
    # Row order of the input does not matter either (rows are put in a fixed order first).
    shuffled = sim.simulate_invitation_engagement(
        SENT.sample(fraction=1.0, shuffle=True, seed=5), SCORES.reverse(), EVENT, SECRET, AFTER, rng_seed=11
    )
    assert shuffled.registrations.equals(campaign.registrations)


def test_rates_land_on_the_use_case_targets(campaign: sim.SimulatedEngagement, campaign_hits: pl.DataFrame):
    rates = sim.DEFAULT_RATES
    counts = {(channel, action): n for channel, action, n in campaign_hits.group_by("channel", "action").len().rows()}
    registered = registration_channels(campaign.registrations)["channel"].value_counts()
    registered = dict(registered.iter_rows())
    expected = [
        ("email", "open", counts[("email", "open")], rates.email_open, N_EMAIL),
        ("email", "click", counts[("email", "click")], rates.email_click, N_EMAIL),
        ("email", "register", registered["email"], rates.email_register, N_EMAIL),
        ("in-app", "open", counts[("in-app", "open")], rates.in_app_display, N_IN_APP),
        ("in-app", "click", counts[("in-app", "click")], rates.in_app_display * rates.in_app_click_through, N_IN_APP),
        ("in-app", "register", registered["in-app"], rates.in_app_register, N_IN_APP),
    ]
    for channel, action, count, target, n in expected:
        assert abs(count / n - target) <= tolerance(target, n), (channel, action, count / n, target)
    # The use case's in-app CTR is clicks per displayed banner.
    ctr = counts[("in-app", "click")] / counts[("in-app", "open")]
    assert abs(ctr - rates.in_app_click_through) < 0.03
    # Unsubscribes: ~0.5 % of email sent, never by a registrant (so a little under the raw rate).
    unsubscribed = counts[("email", "unsubscribe")] / N_EMAIL
    assert (
        rates.email_unsubscribe * (1 - 2 * rates.email_register) - tolerance(rates.email_unsubscribe, N_EMAIL)
        < (unsubscribed)
        <= rates.email_unsubscribe + tolerance(rates.email_unsubscribe, N_EMAIL)
    )
    assert ("in-app", "unsubscribe") not in counts  # banners carry no unsubscribe link
    assert campaign.counts["email.open"] == counts[("email", "open")]
    assert campaign.counts["in-app.register"] == registered["in-app"]


def test_funnel_is_nested_and_unsubscribers_never_register(
    campaign: sim.SimulatedEngagement, campaign_hits: pl.DataFrame
):
    by = {
        (channel, action): set(group["customer_id"])
        for (channel, action), group in campaign_hits.group_by("channel", "action")
    }
    registrants = registration_channels(campaign.registrations)
    for channel in ("email", "in-app"):
        assert by[(channel, "click")] <= by[(channel, "open")]
        through = set(registrants.filter(pl.col("channel") == channel)["customer_id"])
        assert through <= by[(channel, "click")]
    assert not by[("email", "unsubscribe")] & set(registrants["customer_id"])
    # Each step after the one before, per customer and channel.
    steps = campaign_hits.pivot(
        "action", index=["customer_id", "channel"], values="occurred_at", aggregate_function="min"
    )
    steps = steps.join(
        registrants.select("customer_id", "channel", "registered_at"), on=["customer_id", "channel"], how="left"
    )
    assert steps.filter(pl.col("click") < pl.col("open")).height == 0
    assert steps.filter(pl.col("registered_at") < pl.col("click")).height == 0


def test_higher_scored_customers_register_more_often(campaign: sim.SimulatedEngagement):
    registered = set(campaign.registrations["customer_id"])
    email_scores = SCORES.filter(pl.col("customer_id").is_in(EMAIL_IDS)).with_columns(
        pl.col("customer_id").is_in(list(registered)).alias("registered")
    )
    median = email_scores["score"].median()
    top = email_scores.filter(pl.col("score") >= median)["registered"].mean()
    bottom = email_scores.filter(pl.col("score") < median)["registered"].mean()
    assert top > 1.5 * bottom  # ~0.14 vs ~0.06 with the default score_effect

    # The knob is what does it: without a score effect both halves register alike.
    flat = sim.simulate_invitation_engagement(
        SENT, SCORES, EVENT, SECRET, AFTER, 11, sim.EngagementRates(score_effect=0.0)
    ).registrations
    email_scores = email_scores.with_columns(pl.col("customer_id").is_in(flat["customer_id"].to_list()).alias("flat"))
    top = email_scores.filter(pl.col("score") >= median)["flat"].mean()
    bottom = email_scores.filter(pl.col("score") < median)["flat"].mean()
    assert abs(top - bottom) <= 2 * tolerance(0.1, N_EMAIL // 2)


def test_every_token_verifies_and_names_the_ledger_rows_campaign(
    campaign: sim.SimulatedEngagement, campaign_hits: pl.DataFrame
):
    ledger = SENT.select("customer_id", "channel", pl.col("campaign_id").alias("ledger_campaign"))
    joined = campaign_hits.join(ledger, on=["customer_id", "channel"], how="left")
    assert joined["ledger_campaign"].null_count() == 0  # only customers the ledger says were sent
    assert (joined["campaign_id"] == joined["ledger_campaign"]).all()
    assert (joined["event_id"] == EVENT.event_id).all()
    assert joined["campaign_id"].n_unique() == 6  # the three segments of each channel, not one constant
    registrations = registration_channels(campaign.registrations).join(ledger, on=["customer_id", "channel"])
    assert registrations.height == campaign.registrations.height
    assert (registrations["campaign_id"] == registrations["ledger_campaign"]).all()
    for row in campaign.registrations.head(50).iter_rows(named=True):
        token_claims = claims(row["token"], "register")
        assert (token_claims.customer_id, token_claims.event_id) == (row["customer_id"], row["event_id"])
        with pytest.raises(InvalidLinkToken):
            verify_link_token(SECRET, row["token"], action="unsubscribe")  # not replayable as another action
        with pytest.raises(InvalidLinkToken):
            verify_link_token(b"another-secret", row["token"])


def test_times_stay_in_their_windows_and_nothing_registers_after_the_deadline():
    now = EVENT.registration_deadline + timedelta(hours=30)  # campaign still running after registration closed
    late = ledger_rows(ids("L", 2_000), "in-app", sent_at=EVENT.registration_deadline + timedelta(hours=1))
    sent = pl.concat([SENT, late])
    result = sim.simulate_invitation_engagement(sent, SCORES, EVENT, SECRET, now, rng_seed=2)
    assert result.registrations.height > 0
    assert result.registrations["registered_at"].max() <= EVENT.registration_deadline
    assert not set(result.registrations["customer_id"]) & set(late["customer_id"])  # sent too late to register
    hits = tracked(result.tracking).join(
        sent.select("customer_id", "channel", pl.col("sent_at").dt.replace_time_zone(None)),
        on=["customer_id", "channel"],
    )
    assert hits.filter(pl.col("occurred_at") < pl.col("sent_at")).height == 0
    assert hits["occurred_at"].max() <= now
    assert hits.filter(pl.col("customer_id").str.starts_with("L") & (pl.col("action") == "click")).height > 0

    # Mid-campaign: the registrations so far, none in the future; messages not yet sent do nothing.
    early = SEND.replace(tzinfo=None) + timedelta(days=1)
    partial = sim.simulate_invitation_engagement(SENT, SCORES, EVENT, SECRET, early, rng_seed=2)
    assert partial.registrations["registered_at"].max() <= early
    assert tracked(partial.tracking)["occurred_at"].max() <= early
    before = sim.simulate_invitation_engagement(SENT, SCORES, EVENT, SECRET, SEND - timedelta(minutes=1), rng_seed=2)
    assert before.tracking.height == 0 and before.registrations.height == 0


def test_a_customer_registers_once_through_the_channel_that_converted_first():
    everyone = sim.EngagementRates(
        email_open=1, email_click=1, email_register=1, in_app_display=1, in_app_click_through=1, in_app_register=1
    )
    customers = ids("B", 400)
    email = ledger_rows(customers, "email")
    in_app = ledger_rows(customers, "in-app", sent_at=SEND + timedelta(hours=4))
    scores = score_frame(customers)
    both = sim.simulate_invitation_engagement(pl.concat([email, in_app]), scores, EVENT, SECRET, AFTER, 9, everyone)
    only_email = sim.simulate_invitation_engagement(email, scores, EVENT, SECRET, AFTER, 9, everyone).registrations
    only_in_app = sim.simulate_invitation_engagement(in_app, scores, EVENT, SECRET, AFTER, 9, everyone).registrations
    assert both.registrations["customer_id"].n_unique() == both.registrations.height == len(customers)
    expected = (
        pl.concat([only_email, only_in_app])
        .sort("registered_at")
        .unique("customer_id", keep="first")
        .sort("customer_id")
    )
    assert both.registrations.sort("customer_id").equals(expected)
    winners = registration_channels(both.registrations)["channel"].value_counts()
    assert set(winners["channel"]) == {"email", "in-app"}  # both channels win some
    assert both.counts["email.register"] + both.counts["in-app.register"] == len(customers)


def test_only_sent_invitations_of_the_event_count_and_bad_input_is_named():
    customers = ids("S", 300)
    statuses = ["sent", "failed_permanent", "suppressed", "in_doubt", "held_out"]
    rows = pl.concat([ledger_rows(customers[i::5], "email", status=status) for i, status in enumerate(statuses)])
    rows = pl.concat([rows, ledger_rows(customers, "push", "reminder")])  # other kinds are not invitations
    everyone = sim.EngagementRates(email_open=1, email_click=1, email_register=1)
    result = sim.simulate_invitation_engagement(rows, None, EVENT, SECRET, AFTER, 1, everyone)
    assert set(result.registrations["customer_id"]) == set(customers[0::5])
    with pytest.raises(ValueError, match=r"lacks ledger columns \['campaign_id', 'sent_at'\]"):
        sim.simulate_invitation_engagement(rows.drop("sent_at", "campaign_id"), None, EVENT, SECRET, AFTER, 1)
    with pytest.raises(ValueError, match=r"other events \['evt-other'\]"):
        sim.simulate_invitation_engagement(
            pl.concat([rows, ledger_rows(["X1"], "email", event_id="evt-other")]), None, EVENT, SECRET, AFTER, 1
        )
    with pytest.raises(ValueError, match=r"channels \['sms'\]"):
        sim.simulate_invitation_engagement(ledger_rows(["X1"], "sms"), None, EVENT, SECRET, AFTER, 1)
    with pytest.raises(ValueError, match="lack customer_id, campaign_id or sent_at"):
        sim.simulate_invitation_engagement(
            ledger_rows(["X1"], "email").with_columns(pl.lit(None, pl.String).alias("campaign_id")),
            None, EVENT, SECRET, AFTER, 1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="outside"):
        sim.simulate_invitation_engagement(
            ledger_rows(["X1"], "email"), pl.DataFrame({"customer_id": ["X1"], "score": [1.5]}), EVENT, SECRET, AFTER, 1
        )


def test_rates_validate_and_calibration_hits_the_target_exactly():
    with pytest.raises(ValueError, match="email_open"):
        sim.EngagementRates(email_open=1.2)
    with pytest.raises(ValueError, match="funnel must narrow"):
        sim.EngagementRates(email_click=0.4)
    with pytest.raises(ValueError, match="in_app_register"):
        sim.EngagementRates(in_app_register=0.2)
    with pytest.raises(ValueError, match="rating_weights"):
        sim.EngagementRates(rating_weights=(0.2, 0.2, 0.2, 0.2, 0.1))
    assert abs(sim.DEFAULT_RATES.mean_rating - 4.7) < 0.05
    scores = np.random.default_rng(0).uniform(0.5, 1.0, 5_000)
    p = sim.calibrated_probabilities(scores, 0.9, 4.0)
    assert abs(p.mean() - 0.9) < 1e-9 and p.max() < 1
    assert np.all(np.diff(p[np.argsort(scores)]) >= 0)  # monotone in score
    assert np.all(sim.calibrated_probabilities(scores, 0.15, 4.0) <= sim.calibrated_probabilities(scores, 0.3, 4.0))


# ---- reminders ----------------------------------------------------------------------------


def test_reminders_push_opens_ninety_percent_and_clicks_eighty_percent_of_opens():
    n = 10_000
    customers = ids("R", n)
    push = ledger_rows(customers, "push", "reminder", sent_at=datetime(2026, 12, 7, 16, tzinfo=UTC))
    day_of = ledger_rows(customers[:2_000], "email", "day-of", sent_at=datetime(2026, 12, 8, 9, tzinfo=UTC))
    result = sim.simulate_reminder_engagement(
        pl.concat([push, day_of]), score_frame(customers), EVENT, SECRET, AFTER, 4
    )
    assert result.registrations.height == 0
    hits = tracked(result.tracking)
    push_hits = hits.filter(pl.col("channel") == "push")
    opens = push_hits.filter(pl.col("action") == "open")
    clicks = push_hits.filter(pl.col("action") == "click")
    assert abs(opens.height / n - 0.9) <= tolerance(0.9, n)
    assert abs(clicks.height / n - 0.72) <= tolerance(0.72, n)  # 80 % of the 90 % who open
    assert set(clicks["customer_id"]) <= set(opens["customer_id"])
    assert set(clicks["path"]) == {"calendar"}  # the push's "Add to Calendar" deep link
    assert set(hits.filter(pl.col("channel") == "email", pl.col("action") == "click")["path"]) == {"join"}
    ledger = pl.concat([push, day_of]).select("customer_id", "channel", pl.col("campaign_id").alias("ledger_campaign"))
    joined = hits.join(ledger, on=["customer_id", "channel"])
    assert joined.height == hits.height and (joined["campaign_id"] == joined["ledger_campaign"]).all()
    assert hits["occurred_at"].max() <= EVENT.end_time_utc


# ---- attendance and survey -----------------------------------------------------------------


def registered_frame(customers: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"event_id": EVENT.event_id, "customer_id": customers, "status": "registered"})


def test_attendance_only_registrants_near_the_rate_minutes_within_bounds():
    n = 8_000
    customers = ids("G", n)
    registered = pl.concat(
        [
            registered_frame(customers),
            registered_frame(ids("W", 500)).with_columns(pl.lit("waitlisted").alias("status")),
        ]
    )
    scores = score_frame(customers)
    attendance = sim.simulate_attendance(registered, scores, EVENT, rng_seed=5)
    assert attendance.columns == list(sim.FEED_KEYS["attendance"])
    assert set(attendance["customer_id"]) <= set(customers)  # no waitlisted, nobody unregistered
    assert attendance["customer_id"].n_unique() == attendance.height
    assert abs(attendance.height / n - 0.875) <= tolerance(0.875, n)
    minutes = attendance["minutes_watched"]
    assert minutes.min() >= 1 and minutes.max() <= EVENT.duration_minutes
    assert abs(minutes.mean() - 45) < 1.5  # sd ~ 17 minutes, so the mean of 7,000 is within ~0.2
    joined = attendance["joined_at"]
    assert joined.min() >= EVENT.start_time_utc - timedelta(minutes=10)
    ends = attendance.select(pl.col("joined_at") + pl.duration(minutes=pl.col("minutes_watched")))
    assert ends.to_series().max() <= EVENT.end_time_utc
    assert (attendance["event_id"] == EVENT.event_id).all()
    # Score-dependent: the better half of registrants shows up more often.
    attended = scores.with_columns(pl.col("customer_id").is_in(attendance["customer_id"].to_list()).alias("came"))
    median = attended["score"].median()
    assert attended.filter(pl.col("score") >= median)["came"].mean() > attended.filter(pl.col("score") < median)[
        "came"
    ].mean() + 4 * tolerance(0.875, n // 2)

    short = sim.EventTiming("evt-sim", EVENT.start_time_utc, duration_minutes=30)
    short_attendance = sim.simulate_attendance(registered, scores, short, rng_seed=5)
    assert short_attendance["minutes_watched"].max() <= 30 and short_attendance["minutes_watched"].min() >= 1
    # Before the event is over there is nothing to report; the same seed gives the same records.
    assert sim.simulate_attendance(registered, scores, EVENT, 5, now=EVENT.start_time_utc).height == 0
    assert sim.simulate_attendance(registered, scores, EVENT, 5, now=AFTER).equals(attendance)
    with pytest.raises(ValueError, match="customer_id"):
        sim.simulate_attendance(pl.DataFrame({"id": ["x"]}), None, EVENT, 5)


def test_survey_answers_come_only_from_attendees_with_survey_tokens():
    attendees = ids("V", 6_000)
    attendance = pl.DataFrame({"event_id": EVENT.event_id, "customer_id": attendees})
    survey_sent_at = datetime(2026, 12, 9, 16, tzinfo=UTC)
    survey_sent = pl.concat(
        [
            ledger_rows(attendees, "email", "survey", sent_at=survey_sent_at),
            ledger_rows(ids("N", 1_000), "email", "survey", sent_at=survey_sent_at),  # did not attend
        ]
    )
    answers = sim.simulate_survey(survey_sent, attendance, EVENT, SECRET, rng_seed=8)
    assert answers.columns == list(sim.FEED_KEYS["survey"])
    decoded = [claims(token, "survey") for token in answers["token"]]
    answered = {c.customer_id for c in decoded}
    assert answered <= set(attendees)
    assert len(answered) == answers.height
    assert abs(answers.height / len(attendees) - 0.40) <= tolerance(0.40, len(attendees))
    campaign_of = dict(zip(survey_sent["customer_id"], survey_sent["campaign_id"], strict=True))
    assert all(c.campaign_id == campaign_of[c.customer_id] and c.channel == "email" for c in decoded)
    ratings = answers["rating"]
    assert ratings.min() >= 1 and ratings.max() <= 5
    rating_sd = math.sqrt(sum(w * (r + 1 - 4.72) ** 2 for r, w in enumerate(sim.DEFAULT_RATES.rating_weights)))
    assert abs(ratings.mean() - sim.DEFAULT_RATES.mean_rating) <= 4 * rating_sd / math.sqrt(answers.height)
    phrases = {phrase for group in sim.SURVEY_COMMENTS.values() for phrase in group}
    assert set(answers["comment"]) <= phrases
    sent_naive = survey_sent_at.replace(tzinfo=None)
    assert answers["submitted_at"].min() >= sent_naive
    assert answers["submitted_at"].max() <= sent_naive + timedelta(days=3)
    capped = sim.simulate_survey(survey_sent, attendance, EVENT, SECRET, 8, now=sent_naive + timedelta(hours=6))
    assert capped.height == answers.height and capped["submitted_at"].max() <= sent_naive + timedelta(hours=6)
    nobody = sim.simulate_survey(survey_sent, attendance.head(0), EVENT, SECRET, 8)
    assert nobody.height == 0 and nobody.columns == list(sim.FEED_KEYS["survey"])


# ---- feeds --------------------------------------------------------------------------------


def test_records_match_the_feed_formats_and_files_land_with_sortable_sim_names(
    tmp_path, campaign: sim.SimulatedEngagement
):
    feed = LocalFolderFeed(base_dir=str(tmp_path / "feeds"))
    attendance = sim.simulate_attendance(campaign.registrations, SCORES, EVENT, 1)
    survey = sim.simulate_survey(
        ledger_rows(attendance["customer_id"].to_list(), "email", "survey", sent_at=datetime(2026, 12, 9, tzinfo=UTC)),
        attendance,
        EVENT,
        SECRET,
        1,
    )
    frames = {
        "tracking": campaign.tracking,
        "registrations": campaign.registrations,
        "attendance": attendance,
        "survey": survey,
    }
    first, later = datetime(2026, 12, 9, 10, 0, 0), datetime(2026, 12, 9, 10, 0, 1)
    for name, frame in frames.items():
        records = sim.feed_records(frame)
        assert records and all(list(record) == list(sim.FEED_KEYS[name]) for record in records)
        uri = sim.drop_simulated(feed, name, "demo", first, frame)
        assert uri is not None and uri.endswith("20261209T100000Z-sim-demo.jsonl")
        read = feed.read(name, feed.new_files(name))
        assert len(read) == frame.height
        assert [{k: v for k, v in r.items() if not k.startswith("_")} for r in read] == records
    time_keys = {"tracking": "occurred_at", "registrations": "registered_at", "attendance": "joined_at"}
    for name, key in {**time_keys, "survey": "submitted_at"}.items():
        stamp = sim.feed_records(frames[name].head(1))[0][key]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp)
    assert isinstance(sim.feed_records(attendance.head(1))[0]["minutes_watched"], int)
    assert json.loads(json.dumps(sim.feed_records(survey.head(1))))[0]["rating"] in range(1, 6)

    # A later drop sorts after the first; the sensor's cursor sees it and only it.
    sim.drop_simulated(feed, "tracking", "reminders", later, campaign.tracking.head(3))
    names = feed.new_files("tracking")
    assert names == ["20261209T100000Z-sim-demo.jsonl", "20261209T100001Z-sim-reminders.jsonl"]
    assert feed.new_files("tracking", after=names[0]) == [names[1]]
    # Nothing to drop: no file. Same name again: refused (the sensor may already have read it).
    assert sim.drop_simulated(feed, "tracking", "empty", later, campaign.tracking.head(0)) is None
    assert feed.new_files("tracking", after=names[1]) == []
    with pytest.raises(FileExistsError, match="never rewritten"):
        sim.drop_simulated(feed, "tracking", "demo", first, campaign.tracking.head(1))
    with pytest.raises(ValueError, match="expects exactly"):
        sim.drop_simulated(feed, "tracking", "bad", later, [{"token": "t", "path": "open"}])
    with pytest.raises(ValueError, match="stage"):
        sim.drop_simulated(feed, "tracking", "Bad Stage", later, campaign.tracking.head(1))
    with pytest.raises(ValueError, match="unknown engagement feed"):
        sim.drop_simulated(feed, "clicks", "demo", later, campaign.tracking.head(1))
    # Dict records with datetimes are written as ISO UTC too.
    uri = sim.drop_simulated(
        feed, "attendance", "dicts", later,
        [{"event_id": "e", "customer_id": "c", "joined_at": datetime(2026, 12, 8, 16, 1), "minutes_watched": 3}],
    )  # fmt: skip
    assert uri is not None and '"joined_at": "2026-12-08T16:01:00Z"' in Path(uri).read_text(encoding="utf-8")
    dropped = sim.drop_engagement(feed, campaign, "engagement", datetime(2026, 12, 9, 11, tzinfo=UTC))
    assert [uri.rsplit("/", 2)[-2] for uri in dropped] == ["tracking", "registrations"]


def test_from_the_real_ledger_through_the_feed_to_registration_validation(tmp_path):
    """The ledger's own rows in, the platform's feed out, and the real validation accepts every registration."""
    program = default_program()
    ledger = SqliteDeliveryLedger(path=str(tmp_path / "ledger.sqlite"))
    customers = ids("C", 300)
    keys = [DeliveryKey(c, EVENT.event_id, "email", MessageKind.INVITATION) for c in customers]
    campaigns = [f"{EVENT.event_id}:email:seg{i % 2}" for i in range(len(customers))]
    try:
        ledger.reserve(keys_frame(keys, campaigns), now=SEND)
        for key, campaign_id in zip(keys[:250], campaigns[:250], strict=True):
            ledger.mark_sent(key, f"msg-{key.customer_id}", now=SEND, campaign_id=campaign_id)
        for key in keys[250:]:
            ledger.mark_failed(key, "mailbox does not exist", permanent=True, now=SEND)
        deliveries = ledger.deliveries(EVENT.event_id)
    finally:
        ledger.close()
    event = sim.EventTiming.from_events(
        pl.DataFrame(
            {"event_id": [EVENT.event_id], "start_time_utc": [EVENT.start_time_utc], "duration_minutes": [90]}
        ),
        EVENT.event_id,
        program,
    )
    assert event.registration_deadline == EVENT.start_time_utc - timedelta(
        days=program.event_config.registration_deadline_days
    )
    rates = sim.EngagementRates(email_open=0.9, email_click=0.8, email_register=0.6)
    result = sim.simulate_invitation_engagement(deliveries, score_frame(customers), event, SECRET, AFTER, 3, rates)
    assert result.registrations.height > 100
    assert set(result.registrations["customer_id"]) <= set(customers[:250])  # failed sends get no engagement

    feed = LocalFolderFeed(base_dir=str(tmp_path / "feeds"))
    dropped = sim.drop_engagement(feed, result, "invitations", AFTER)
    assert len(dropped) == 2
    incoming = feed.read("registrations", feed.new_files("registrations"))
    frame = pl.DataFrame(
        {name: [record[name] for record in incoming] for name in reg.INCOMING_SCHEMA},
        schema={name: pl.String for name in reg.INCOMING_SCHEMA},
    )

    def verify(token: str) -> LinkClaims | None:
        try:
            return verify_link_token(SECRET, token, action="register")
        except InvalidLinkToken:
            return None

    outcome = reg.validate_registrations(
        frame,
        events=pl.DataFrame(
            {"event_id": [EVENT.event_id], "start_time_utc": [EVENT.start_time_utc], "capacity": [10_000]}
        ),
        known_customers=set(customers),
        already_registered=pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String}),
        capacity_limit=program.event_config.capacity_limit,
        deadline_days=program.event_config.registration_deadline_days,
        verify=verify,
    )
    assert outcome.rejected.height == 0 and outcome.waitlisted.height == 0
    assert outcome.accepted.height == result.registrations.height
    assert set(outcome.accepted["channel"]) == {"email"}
    with pytest.raises(LookupError, match="evt-missing"):
        sim.EventTiming.from_events(
            pl.DataFrame({"event_id": ["x"], "start_time_utc": [AFTER], "duration_minutes": [1]}),
            "evt-missing",
            program,
        )


# ---- provider feedback (SES events) ---------------------------------------------------------------


def provider_inputs(n: int, *, channel: str = "email") -> tuple[pl.DataFrame, pl.DataFrame]:
    """n sent emails with provider ids, and customers whose addresses are 0 to 10 years old."""
    customers = [f"p{i:05d}" for i in range(n)]
    sent = ledger_rows(customers, channel).with_columns(
        pl.Series("provider_message_id", [f"0100-{c}" for c in customers])
    )
    ages = pl.DataFrame(
        {
            "customer_id": customers,
            "email": [f"{c}@example.com" for c in customers],
            "created_at": [SEND.replace(tzinfo=None) - timedelta(days=365 * (i % 11)) for i in range(n)],
        }
    )
    return sent, ages


def test_provider_events_come_at_realistic_rates_more_bounces_for_old_addresses():
    from eventreach_assets.domain import feedback as fb

    n = 40_000
    sent, customers = provider_inputs(n)
    records = sim.simulate_provider_events(sent, customers, AFTER, seed=3)
    batch = fb.normalize_feedback(records, AFTER)
    assert batch.rejected.height == 0  # every record is valid SES event publishing JSON
    counts = batch.accepted.group_by("feedback", "bounce_type").len()
    share = {(f, b): c / n for f, b, c in counts.iter_rows()}
    rates = sim.DEFAULT_PROVIDER_RATES
    hard, soft = share[("bounced", "permanent")], share[("bounced", "transient")]
    assert abs(hard - rates.hard_bounce) < tolerance(rates.hard_bounce, n)
    assert abs(soft - rates.soft_bounce) < tolerance(rates.soft_bounce, n)
    assert 0.01 <= hard + soft <= 0.02
    delivered = share[("delivered", None)]
    assert delivered == pytest.approx(1 - hard - soft)  # every other message is delivered, once
    complained = share.get(("complained", None), 0.0)
    assert abs(complained - rates.complaint * delivered) < tolerance(rates.complaint, n)
    # Older addresses bounce more: compare the oldest third with the newest third.
    age = customers.select("customer_id", years=pl.col("customer_id").str.slice(1).cast(pl.Int64) % 11)
    bounced = batch.accepted.filter(pl.col("feedback") == "bounced").select(
        customer_id=pl.col("recipient").str.extract(r"^(p\d+)@")
    )
    by_age = age.with_columns(pl.col("customer_id").is_in(bounced["customer_id"].implode()).alias("bounced"))
    old = by_age.filter(pl.col("years") >= 8)["bounced"].mean()
    new = by_age.filter(pl.col("years") <= 2)["bounced"].mean()
    assert old > 2 * new


def test_provider_events_are_reproducible_only_for_sent_email_and_never_ahead_of_now():
    sent, customers = provider_inputs(3_000)
    first = sim.simulate_provider_events(sent, customers, AFTER, seed=1)
    assert first == sim.simulate_provider_events(sent, customers, AFTER, seed=1)
    assert first != sim.simulate_provider_events(sent, customers, AFTER, seed=2)
    assert {r["mail"]["messageId"] for r in first} <= set(sent["provider_message_id"])
    push, _ = provider_inputs(50, channel="push")
    failed = sent.head(50).with_columns(pl.lit("failed_permanent").alias("status"))
    assert sim.simulate_provider_events(pl.concat([push, failed]), customers, AFTER) == []
    # Ten seconds after sending only the quick reports exist; no complaint yet (they take hours).
    early = sim.simulate_provider_events(sent, customers, SEND + timedelta(seconds=10), seed=1)
    assert 0 < len(early) < len(first)
    assert {r["eventType"] for r in early} <= {"Delivery", "Bounce"}
    times = [r.get("delivery", r.get("bounce", r.get("complaint", {}))).get("timestamp") for r in first]
    assert times == sorted(times)


def test_simulated_provider_events_drop_into_the_provider_feed(tmp_path: Path):
    sent, customers = provider_inputs(500)
    feed = LocalFolderFeed(base_dir=str(tmp_path / "feeds"))
    records = sim.simulate_provider_events(sent, customers, AFTER)
    uri = sim.drop_provider_events(feed, AFTER, records)
    assert uri is not None and Path(uri).parent.name == "provider" and "-sim-ses" in Path(uri).name
    assert [json.loads(line) for line in Path(uri).read_text().splitlines()] == records
    with pytest.raises(FileExistsError):
        sim.drop_provider_events(feed, AFTER, records)
    assert sim.drop_provider_events(feed, AFTER + timedelta(hours=1), []) is None


def test_provider_events_tick_by_tick_play_each_report_once():
    sent, customers = provider_inputs(2_000)
    ticks = [SEND + timedelta(seconds=s) for s in (0, 30, 60, 3600)] + [AFTER.replace(tzinfo=UTC)]
    played = [
        record
        for previous, now in itertools.pairwise(ticks)
        for record in sim.simulate_provider_events(sent, customers, now, seed=5, since=previous)
    ]
    assert played == sim.simulate_provider_events(sent, customers, AFTER, seed=5)
