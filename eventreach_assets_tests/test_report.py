"""The campaign report's computations on hand-built campaigns with numbers worked out by hand:
attribution, the channel report, the holdout lift and membership, daily metrics, charts, HTML."""

from __future__ import annotations

import io
import random
from datetime import UTC, date, datetime, timedelta

import duckdb
import polars as pl
import pytest
from PIL import Image
from scipy.stats.contingency import relative_risk

from eventreach_assets.domain import charts
from eventreach_assets.domain.attribution import ATTRIBUTION_SCHEMA, RULES, attribute_registrations
from eventreach_assets.domain.channel_report import COUNT_COLUMNS, REPORT_SCHEMA, channel_report
from eventreach_assets.domain.daily_metrics import DAILY_COUNT_METRICS, daily_metrics_frame
from eventreach_assets.domain.engagement_schemas import (
    ATTENDANCE_SCHEMA,
    INTERACTION_SCHEMA,
    REGISTRATION_SCHEMA,
    SURVEY_SCHEMA,
)
from eventreach_assets.domain.funnel import event_funnel
from eventreach_assets.domain.holdout import holdout_lift, holdout_members, lift_from_counts
from eventreach_assets.domain.metrics import METRICS_SCHEMA, validate_metrics
from eventreach_assets.resources.ledger import DELIVERY_SCHEMA

EVENT, OTHER = "evt-report", "evt-other"
T0 = datetime(2026, 11, 23, 10, 0)  # Monday: invitations go out
EMAIL, IN_APP, PUSH = "email", "in-app", "push"
CAMPAIGN = {
    (EMAIL, "invitation"): f"{EVENT}:email:US",
    (IN_APP, "invitation"): f"{EVENT}:in-app:US",
    (PUSH, "reminder"): f"{EVENT}:push:reminder:US",
    (EMAIL, "day-of"): f"{EVENT}:email:day-of:US",
}


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def ledger(*rows: tuple, event: str = EVENT) -> pl.DataFrame:
    """Ledger rows (customer, channel, kind, status[, sent_at]) in DELIVERY_SCHEMA."""
    records = []
    for customer, channel, kind, status, *when in rows:
        moment = (when[0] if when else T0).replace(tzinfo=UTC)
        records.append(
            {
                "customer_id": customer,
                "event_id": event,
                "channel": channel,
                "kind": kind,
                "campaign_id": CAMPAIGN.get((channel, kind), f"{event}:{channel}:{kind}"),
                "status": status,
                "attempts": 1,
                "sends": int(status == "sent"),
                "updated_at": moment,
                "sent_at": moment if status == "sent" else None,
            }
        )
    return pl.DataFrame(records, schema=DELIVERY_SCHEMA)


def with_feedback(deliveries: pl.DataFrame, **reports: dict[str, float]) -> pl.DataFrame:
    """Provider feedback on email rows (feedback.message_outcomes' columns): e.g.
    delivered_at={"c1": 0.1} (customer -> hours after T0), for every email row of the customer."""
    outcome = [
        pl.col("customer_id")
        .replace_strict(
            {c: at(h) for c, h in reports.get(name, {}).items()}, default=None, return_dtype=pl.Datetime("us")
        )
        .alias(name)
        for name in ("delivered_at", "bounced_at", "soft_bounced_at", "complained_at")
    ]
    return deliveries.with_columns(
        pl.when(pl.col("channel") == EMAIL).then(expr).alias(expr.meta.output_name()) for expr in outcome
    )


def interactions(*rows: tuple, event: str = EVENT) -> pl.DataFrame:
    """(customer, channel, kind, action, hours after T0)."""
    return pl.DataFrame(
        [(event, c, ch, CAMPAIGN.get((ch, kind), f"{event}:{ch}"), action, at(h)) for c, ch, kind, action, h in rows],
        schema=INTERACTION_SCHEMA,
        orient="row",
    )


def registrations(*rows: tuple, event: str = EVENT) -> pl.DataFrame:
    """(customer, link channel or None, status, hours after T0)."""
    return pl.DataFrame(
        [
            (event, c, f"r-{c}", at(h), ch, CAMPAIGN.get((ch, "invitation")) if ch else None, status, at(h))
            for c, ch, status, h in rows
        ],
        schema=REGISTRATION_SCHEMA,
        orient="row",
    )


def attendance(*rows: tuple, event: str = EVENT) -> pl.DataFrame:
    return pl.DataFrame(
        [(event, c, at(hours), minutes) for c, minutes, hours in rows], schema=ATTENDANCE_SCHEMA, orient="row"
    )


def survey(*rows: tuple, event: str = EVENT) -> pl.DataFrame:
    return pl.DataFrame(
        [(event, c, rating, "free text", at(hours)) for c, rating, hours in rows],
        schema=SURVEY_SCHEMA,
        orient="row",
    )


# ---- attribution ----------------------------------------------------------------------------------


def attribution_scenario() -> tuple[pl.DataFrame, pl.DataFrame]:
    regs = pl.concat(
        [
            registrations(
                ("c1", IN_APP, "registered", 3),  # clicked the email first, registered through the banner
                ("c2", None, "registered", 3),  # link channel unknown: the touches decide
                ("c3", EMAIL, "registered", 3),  # no touch at all
                ("c4", EMAIL, "registered", 3),  # opened the banner only after registering
                ("c5", IN_APP, "waitlisted", 3),  # no seat: not a registration
                ("c6", None, "registered", 3),  # nothing to go by: kept, unattributed
                ("c7", None, "registered", 3),  # touched only another event's messages
                ("c8", None, "registered", 3),  # opened the banner and clicked the email at the same instant
                ("c9", None, "registered", 3),  # only unsubscribed from the email
            ),
            registrations(("c1", EMAIL, "registered", 5), event=OTHER),
        ]
    )
    touches = pl.concat(
        [
            interactions(
                ("c1", EMAIL, "invitation", "click", 1),
                ("c1", IN_APP, "invitation", "click", 2),
                ("c2", IN_APP, "invitation", "open", 1),
                ("c2", EMAIL, "invitation", "click", 2),
                ("c2", PUSH, "reminder", "open", 4),  # after registering: never counts
                ("c4", IN_APP, "invitation", "open", 4),
                ("c8", IN_APP, "invitation", "open", 2),
                ("c8", EMAIL, "invitation", "click", 2),
                ("c9", EMAIL, "invitation", "unsubscribe", 1),
            ),
            interactions(("c7", EMAIL, "invitation", "open", 1), ("c1", IN_APP, "invitation", "open", 4), event=OTHER),
        ]
    )
    return regs, touches


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            "last-touch",
            {"c1": IN_APP, "c2": EMAIL, "c3": EMAIL, "c4": EMAIL, "c6": None, "c7": None, "c8": EMAIL, "c9": None},
        ),
        (
            "first-touch",
            {"c1": EMAIL, "c2": IN_APP, "c3": EMAIL, "c4": EMAIL, "c6": None, "c7": None, "c8": IN_APP, "c9": None},
        ),
    ],
)
def test_each_registration_is_credited_to_one_channel_by_the_rule(rule: str, expected: dict[str, str | None]):
    regs, touches = attribution_scenario()
    result = attribute_registrations(regs, touches, rule)
    assert result.schema == pl.Schema(ATTRIBUTION_SCHEMA)
    mine = result.filter(pl.col("event_id") == EVENT)
    assert dict(zip(mine["customer_id"], mine["channel"], strict=True)) == expected
    assert set(result["rule"]) == {rule}
    # The other event's registration is judged on that event's touches alone: c1 opened its
    # banner (4 h) before registering through its email (5 h).
    other = result.filter(pl.col("event_id") == OTHER)
    assert other.rows() == [(OTHER, "c1", EMAIL if rule == "last-touch" else IN_APP, rule)]


def test_an_unknown_rule_or_a_missing_column_is_refused():
    regs, touches = attribution_scenario()
    with pytest.raises(ValueError, match="attribution rule must be one of"):
        attribute_registrations(regs, touches, "linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"interactions frame lacks columns \['occurred_at'\]"):
        attribute_registrations(regs, touches.drop("occurred_at"))


# ---- the channel report ---------------------------------------------------------------------------


def campaign() -> dict[str, pl.DataFrame]:
    """One event, three channels; every expected number below is counted by hand in its comment."""
    deliveries = ledger(
        *((c, EMAIL, "invitation", "sent") for c in ("c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8")),
        ("c9", EMAIL, "invitation", "failed_permanent"),
        ("c10", EMAIL, "invitation", "failed_transient"),
        ("c11", EMAIL, "invitation", "in_doubt"),
        ("c12", EMAIL, "invitation", "suppressed"),
        *((c, IN_APP, "invitation", "sent") for c in ("c1", "c2", "c3", "c4")),
        ("c13", IN_APP, "invitation", "held_out"),
        *((c, PUSH, "reminder", "sent", at(24)) for c in ("c1", "c2", "c3")),
        *((c, EMAIL, "day-of", "sent", at(48)) for c in ("c1", "c2")),
    )
    # SES says: c7's address bounced for good, c8 complained; the rest of the sent email arrived
    # (c9's bounce report is about a message that never went out: it counts nowhere).
    deliveries = with_feedback(
        deliveries,
        delivered_at={c: 0.1 for c in ("c1", "c2", "c3", "c4", "c5", "c6", "c8")},
        bounced_at={"c7": 0.1, "c9": 0.1},
        complained_at={"c8": 5},
    ).with_columns(  # the day-of emails of c1 and c2 were delivered too
        pl.when(pl.col("kind") == "day-of").then(at(48.1)).otherwise(pl.col("delivered_at")).alias("delivered_at")
    )
    touches = interactions(
        ("c1", EMAIL, "invitation", "open", 1),
        ("c1", EMAIL, "invitation", "click", 1.5),
        ("c2", EMAIL, "invitation", "open", 1),
        ("c2", IN_APP, "invitation", "click", 2),
        ("c3", IN_APP, "invitation", "open", 1),
        ("c4", EMAIL, "invitation", "click", 1),  # pixel blocked: the click proves the open
        ("c5", EMAIL, "invitation", "unsubscribe", 1),
        ("c1", EMAIL, "day-of", "open", 49),
        ("c1", PUSH, "reminder", "open", 25),
        ("c2", PUSH, "reminder", "open", 25),
    )
    regs = registrations(
        ("c1", EMAIL, "registered", 2),
        ("c2", IN_APP, "registered", 2.5),
        ("c3", IN_APP, "registered", 2),  # no click seen: registering through the banner is one
        ("c6", EMAIL, "waitlisted", 2),
        ("c20", None, "registered", 2),  # not invited by us: counted in "all" only
    )
    return {
        "deliveries": deliveries,
        "registrations": regs,
        "interactions": touches,
        "attendance": attendance(("c1", 60, 50), ("c2", 30, 50), ("c20", 90, 50), ("c30", 10, 50)),
        "survey": survey(("c1", 5, 80), ("c2", 4, 80), ("c30", 3, 80)),
    }


COSTS = {EMAIL: 0.04, IN_APP: 0.05, PUSH: 0.02}


def by_channel(frame: pl.DataFrame) -> dict[str, dict[str, object]]:
    return {row["channel"]: row for row in frame.iter_rows(named=True)}


def test_the_channel_report_counts_rates_and_costs_last_touch():
    result = channel_report(**campaign(), unit_costs=COSTS, rule="last-touch")
    assert result.schema == pl.Schema(REPORT_SCHEMA)
    assert result["channel"].to_list() == [EMAIL, IN_APP, PUSH, "all"]
    rows = by_channel(result)
    counts = ("sent", "delivered", "failed", "in_doubt", "opened", "clicked", "invited", "registered", "attended")
    feedback = ("delivered", "bounced", "complained", "bounce_rate", "complaint_rate")
    assert {channel: tuple(row[name] for name in feedback) for channel, row in rows.items()} == {
        EMAIL: (9, 1, 1, 1 / 10, 1 / 9),  # 7 invitations + 2 day-of delivered; c7 bounced, c8 complained
        IN_APP: (4, 0, 0, None, None),  # no provider feedback: delivered = sent, rates unknown
        PUSH: (3, 0, 0, None, None),
        "all": (16, 1, 1, 1 / 17, 1 / 16),
    }
    assert {channel: tuple(row[name] for name in counts) for channel, row in rows.items()} == {
        # email: 8 invitations + 2 day-of sent; c9 c10 failed, c11 in doubt; opened c1 c2 c4 + c1's day-of,
        # clicked c1 c4; registered (attributed) c1, who attended.
        EMAIL: (10, 9, 2, 1, 4, 2, 8, 1, 1),
        # in-app: 4 sent (held-out c13 is not a message); opened c2 (click) c3; clicked c2, c3 (registered).
        IN_APP: (4, 4, 0, 0, 2, 2, 4, 2, 1),
        PUSH: (3, 3, 0, 0, 2, 0, 0, 0, 0),  # reminders: opened by c1, c2; nobody registers through one
        # all: invited c1-c8; registered c1 c2 c3 c20 (c6 waitlisted); attended c1 c2 c20 (c30 a walk-in).
        "all": (17, 16, 2, 1, 8, 4, 8, 4, 3),
    }
    assert rows["all"]["walk_ins"] == 1 and rows[EMAIL]["walk_ins"] is None

    def rates(channel: str) -> tuple:
        row = rows[channel]
        names = ("open_rate", "click_through_rate", "click_to_open_rate", "conversion_rate", "registration_rate",
                 "attendance_rate")  # fmt: skip
        return tuple(row[name] for name in names)

    assert rates(EMAIL) == pytest.approx((4 / 10, 2 / 10, 2 / 4, 1 / 10, 1 / 8, 1.0))
    assert rates(IN_APP) == pytest.approx((2 / 4, 2 / 4, 1.0, 2 / 4, 2 / 4, 1 / 2))
    assert rates(PUSH) == pytest.approx((2 / 3, 0.0, 0.0, 0.0, None, None))
    assert rates("all") == pytest.approx((8 / 17, 4 / 17, 4 / 8, 4 / 17, 4 / 8, 3 / 4))

    expected_costs = {  # unit cost, cost = sent x unit cost, per registration, per attendee
        EMAIL: (0.04, 0.40, 0.40, 0.40),
        IN_APP: (0.05, 0.20, 0.10, 0.20),
        PUSH: (0.02, 0.06, None, None),  # paid for, but it brings no registration
        "all": (None, 0.66, 0.66 / 4, 0.66 / 3),
    }
    for channel, expected in expected_costs.items():
        row = rows[channel]
        costs = (row["unit_cost"], row["cost"], row["cost_per_registration"], row["cost_per_attendee"])
        assert costs == pytest.approx(expected), channel
    # Watch time over registrants who attended; the survey over every answer in "all", the
    # channel's registrants' answers otherwise.
    assert (rows["all"]["average_minutes_watched"], rows[EMAIL]["average_minutes_watched"]) == (60.0, 60.0)
    assert (rows["all"]["survey_responses"], rows["all"]["average_rating"]) == (3, 4.0)
    assert (rows[IN_APP]["survey_responses"], rows[IN_APP]["average_rating"]) == (1, 4.0)


def test_first_touch_moves_a_registration_and_its_attendance_to_the_first_channel():
    rows = by_channel(channel_report(**campaign(), unit_costs=COSTS, rule="first-touch"))
    # c2 opened the email (1 h) before clicking the banner it registered through (2 h).
    assert {c: (r["registered"], r["attended"]) for c, r in rows.items()} == {
        EMAIL: (2, 2),
        IN_APP: (1, 0),
        PUSH: (0, 0),
        "all": (4, 3),
    }
    assert rows[IN_APP]["cost_per_attendee"] is None  # 0.20 / 0 attendees is not a number
    assert rows[EMAIL]["cost_per_registration"] == pytest.approx(0.40 / 2)


def test_registrations_of_the_channels_add_up_to_the_attributed_total():
    records = campaign()
    rows = by_channel(channel_report(**records, unit_costs=COSTS))
    attributed = attribute_registrations(records["registrations"], records["interactions"])
    assert sum(rows[c]["registered"] for c in (EMAIL, IN_APP, PUSH)) == attributed["channel"].drop_nulls().len()
    assert rows["all"]["registered"] == attributed.height  # c20, unattributed, counts in the total


def test_a_channel_without_a_unit_cost_has_no_cost_and_makes_the_total_unknown():
    rows = by_channel(channel_report(**campaign(), unit_costs={EMAIL: 0.04, IN_APP: 0.05}))
    assert rows[PUSH]["cost"] is None and rows["all"]["cost"] is None and rows["all"]["cost_per_registration"] is None
    assert rows[EMAIL]["cost"] == pytest.approx(0.40)
    with pytest.raises(ValueError, match="unit costs must be finite and >= 0"):
        channel_report(**campaign(), unit_costs={EMAIL: -0.01})


def test_the_funnel_and_the_report_share_the_open_and_click_rule():
    records = campaign()
    funnel = event_funnel(**records)
    clicked = funnel.filter((pl.col("stage") == "clicked") & (pl.col("channel") == IN_APP))["count"].item()
    rows = by_channel(channel_report(**records, unit_costs=COSTS))
    assert clicked == rows[IN_APP]["clicked"] == 2  # c3's registration through the banner is a click in both


def test_an_event_without_records_reports_zeros_and_several_events_are_refused():
    empty = {
        "deliveries": pl.DataFrame(schema=DELIVERY_SCHEMA),
        "registrations": pl.DataFrame(schema=REGISTRATION_SCHEMA),
        "interactions": pl.DataFrame(schema=INTERACTION_SCHEMA),
        "attendance": pl.DataFrame(schema=ATTENDANCE_SCHEMA),
        "survey": pl.DataFrame(schema=SURVEY_SCHEMA),
    }
    result = channel_report(**empty, unit_costs=COSTS)
    assert result["channel"].to_list() == [EMAIL, IN_APP, PUSH, "all"]
    assert result.select(name for name in COUNT_COLUMNS if name != "walk_ins").sum_horizontal().sum() == 0
    assert result["open_rate"].null_count() == 4 and result["cost"].to_list() == [0.0] * 4

    records = campaign()
    other = ledger(("x", EMAIL, "invitation", "sent"), event=OTHER)
    records["deliveries"] = pl.concat([records["deliveries"], other], how="diagonal")
    with pytest.raises(ValueError, match=r"covers one event; the frames hold \['evt-other', 'evt-report'\]"):
        channel_report(**records, unit_costs=COSTS)


def test_a_frame_missing_a_column_is_named():
    records = campaign()
    records["deliveries"] = records["deliveries"].drop("campaign_id")
    with pytest.raises(ValueError, match=r"deliveries frame lacks columns \['campaign_id'\]"):
        channel_report(**records, unit_costs=COSTS)


# ---- holdout lift ---------------------------------------------------------------------------------


def test_lift_and_its_intervals_match_independent_references():
    result = lift_from_counts(channel=IN_APP, treated=1000, treated_registered=150, control=1000,
                                     control_registered=100, min_sample_per_arm=200, confidence=0.95)  # fmt: skip
    assert result.status == "ok"
    assert (result.p_treated, result.p_control) == pytest.approx((0.15, 0.10))
    assert result.lift == pytest.approx(0.5) and result.difference == pytest.approx(0.05)
    katz = relative_risk(150, 1000, 100, 1000).confidence_interval(0.95)  # scipy: the same Katz interval
    assert (result.lift_low, result.lift_high) == pytest.approx((katz.low - 1, katz.high - 1))
    # Newcombe (1998), Stat. Med. 17:873, example (a): 56/70 vs 48/80, method 10: 0.0524 to 0.3339.
    newcombe = lift_from_counts(channel=IN_APP, treated=70, treated_registered=56, control=80,
                                       control_registered=48, min_sample_per_arm=1, confidence=0.95)  # fmt: skip
    assert (newcombe.difference_low, newcombe.difference_high) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert "lift +50.0% (95% CI" in result.summary()


def test_the_lift_interval_covers_the_true_lift_about_as_often_as_promised():
    rng = random.Random(11)
    true_lift, covered, trials = 0.5, 0, 400
    for _ in range(trials):
        x_t = sum(rng.random() < 0.15 for _ in range(2000))
        x_c = sum(rng.random() < 0.10 for _ in range(2000))
        result = lift_from_counts(channel=IN_APP, treated=2000, treated_registered=x_t, control=2000,
                                         control_registered=x_c, min_sample_per_arm=200, confidence=0.95)  # fmt: skip
        covered += result.lift_low <= true_lift <= result.lift_high
    assert 0.92 <= covered / trials <= 0.98  # 95 % +- 2.7 binomial standard errors


def holdout_campaign() -> tuple[pl.DataFrame, pl.DataFrame]:
    """300 sent the banner (60 register), 250 held out of it (25 register): lift exactly +100 %."""
    treated = [f"t{n:03d}" for n in range(300)]
    control = [f"h{n:03d}" for n in range(250)]
    deliveries = ledger(
        *((c, IN_APP, "invitation", "sent") for c in treated),
        *((c, IN_APP, "invitation", "held_out") for c in control),
        *((c, EMAIL, "invitation", "sent") for c in control[:100]),  # the control still gets email
        ("e1", EMAIL, "invitation", "held_out"),  # another channel's holdout: not this arm
        ("t999", IN_APP, "invitation", "failed_permanent"),  # never reached: in no arm
    )
    regs = pl.concat(
        [
            registrations(*((c, IN_APP, "registered", 3) for c in treated[:50])),
            registrations(*((c, EMAIL, "registered", 3) for c in treated[50:60])),  # any channel counts
            registrations(*((c, EMAIL, "registered", 3) for c in control[:25])),
            registrations(*((c, EMAIL, "waitlisted", 3) for c in control[25:40])),  # no seat: not registered
            registrations(*((c, EMAIL, "registered", 3) for c in control[40:60]), event=OTHER),  # another event
        ]
    )
    return deliveries, regs


def test_holdout_lift_compares_those_sent_the_channel_with_those_held_out():
    deliveries, regs = holdout_campaign()
    result = holdout_lift(deliveries, regs, channel=IN_APP, min_sample_per_arm=200, confidence=0.9)
    assert (result.treated, result.treated_registered, result.control, result.control_registered) == (300, 60, 250, 25)
    assert (result.p_treated, result.p_control, result.lift) == pytest.approx((0.2, 0.1, 1.0))
    assert result.lift_low < 1.0 < result.lift_high and result.lift_low > 0  # 90 %: clearly positive
    frame = result.as_frame()
    assert frame.height == 1 and frame["lift"].item() == pytest.approx(1.0) and frame["control"].item() == 250


def test_too_small_an_arm_or_no_control_registration_gives_no_numbers():
    deliveries, regs = holdout_campaign()
    small = holdout_lift(deliveries, regs, channel=IN_APP, min_sample_per_arm=251, confidence=0.95)
    assert small.status == "not enough data" and small.lift is None and small.p_control is None
    assert small.reason == "control arm has 250; need 251 per arm" and small.control == 250
    assert "not enough data" in small.summary()
    nobody = holdout_lift(deliveries, regs.filter(~pl.col("customer_id").str.starts_with("h")),
                                 channel=IN_APP, min_sample_per_arm=200, confidence=0.95)  # fmt: skip
    assert nobody.status == "not enough data" and nobody.lift is None and "nobody in the control arm" in nobody.reason
    none = holdout_lift(deliveries, regs, channel=PUSH, min_sample_per_arm=1, confidence=0.95)
    assert (none.status, none.treated, none.control) == ("not enough data", 0, 0)
    with pytest.raises(ValueError, match="confidence must be in"):
        holdout_lift(deliveries, regs, channel=IN_APP, min_sample_per_arm=1, confidence=95)


def test_holdout_membership_is_a_stable_share_drawn_anew_per_event():
    ids = pl.DataFrame({"customer_id": [f"C{n:09d}" for n in range(20_000)]})
    first = holdout_members(ids, EVENT, 0.1)
    assert first.dtype == pl.Boolean and first.len() == 20_000 and first.name == "held_out"
    assert abs(first.sum() - 2_000) <= 4 * (20_000 * 0.1 * 0.9) ** 0.5  # binomial: 2,000 +- 4 sd
    assert first.equals(holdout_members(ids, EVENT, 0.1))  # a rerun picks the same people
    shuffled = ids.sample(fraction=1.0, shuffle=True, seed=3)
    again = shuffled.with_columns(holdout_members(shuffled, EVENT, 0.1))
    assert set(again.filter("held_out")["customer_id"]) == set(ids.filter(first)["customer_id"])  # order-free
    other = holdout_members(ids, OTHER, 0.1)
    overlap = (first & other).sum()
    assert not first.equals(other) and abs(overlap - 200) <= 4 * (20_000 * 0.01 * 0.99) ** 0.5  # independent draws
    assert holdout_members(ids, EVENT, 0.0).sum() == 0 and holdout_members(ids, EVENT, 1.0).all()
    # The documented recipe, recomputed by another engine: sha256's first 8 bytes below share x 2^64.
    sql = duckdb.sql(
        "SELECT ('0x' || substr(sha256('holdout' || chr(31) || ? || chr(31) || customer_id), 1, 16))::UBIGINT"
        " < CAST(0.1 * 2^64 AS UBIGINT) AS held_out FROM ids",
        params=[EVENT],
    ).pl()["held_out"]
    assert sql.equals(first, check_names=False)


def test_holdout_membership_refuses_bad_input():
    with pytest.raises(ValueError, match="share must be in"):
        holdout_members(pl.DataFrame({"customer_id": ["a"]}), EVENT, 1.5)
    with pytest.raises(ValueError, match="1 rows without a customer_id"):
        holdout_members(pl.DataFrame({"customer_id": ["a", None]}), EVENT, 0.1)
    with pytest.raises(ValueError, match="lacks column customer_id"):
        holdout_members(pl.DataFrame({"id": ["a"]}), EVENT, 0.1)


# ---- daily metrics --------------------------------------------------------------------------------

DAY1, DAY2, DAY3 = date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 25)


def datums(frame: pl.DataFrame) -> dict[tuple[str, str, str], float]:
    """(event, channel, name) -> value, checking every datum's dimensions on the way."""
    out = {}
    for row in frame.iter_rows(named=True):
        dims = {d["name"]: d["value"] for d in row["dimensions"]}
        assert list(dims) == ["Program", "Event", "Channel"] and dims["Program"] == "event-invitations"
        out[(dims["Event"], dims["Channel"], row["name"])] = row["value"]
    return out


def daily_records() -> dict[str, pl.DataFrame]:
    """Two events. EVENT: 3 emails on day 1; c1 opens on day 1 at 23:30 New York time = day 2
    04:30 UTC, opens again on day 3 (the same message: not counted again); c2 clicks on day 2 and
    registers on day 2; c2 attends on day 3. OTHER: 2 banners on day 1, nothing else."""
    new_york_evening = datetime(2026, 11, 23, 23, 30, tzinfo=UTC) + timedelta(hours=5)  # 23:30 -05:00
    opens = interactions(("c2", EMAIL, "invitation", "click", 20), ("c1", EMAIL, "invitation", "open", 40))
    opens = pl.concat(
        [
            opens,
            pl.DataFrame(
                [(EVENT, "c1", EMAIL, CAMPAIGN[(EMAIL, "invitation")], "open", new_york_evening.replace(tzinfo=None))],
                schema=INTERACTION_SCHEMA,
                orient="row",
            ),
        ]
    )
    return {
        "deliveries": pl.concat(
            [
                with_feedback(  # c1's delivery reported after midnight UTC, c3 bounced at once
                    ledger(*((c, EMAIL, "invitation", "sent") for c in ("c1", "c2", "c3"))),
                    delivered_at={"c1": 14.5, "c2": 0.1},
                    bounced_at={"c3": 0.1},
                ),
                ledger(("d1", IN_APP, "invitation", "sent"), ("d2", IN_APP, "invitation", "sent"), event=OTHER),
            ],
            how="diagonal",
        ),
        "registrations": registrations(("c2", EMAIL, "registered", 20.5)),
        "interactions": opens,
        "attendance": attendance(("c2", 45, 50)),
        "survey": pl.DataFrame(schema=SURVEY_SCHEMA),
    }


def test_daily_counts_land_on_the_utc_day_they_happened():
    records = daily_records()
    day1 = daily_metrics_frame(DAY1, *records.values(), program_id="event-invitations")
    assert day1.schema == pl.Schema(METRICS_SCHEMA)
    assert validate_metrics(day1).equals(day1)
    assert set(day1["timestamp"]) == {datetime(2026, 11, 23, tzinfo=UTC)}
    one = datums(day1)
    assert one[(EVENT, EMAIL, "MessagesSent")] == 3 and one[(EVENT, "all", "MessagesSent")] == 3
    assert one[(EVENT, EMAIL, "MessagesOpened")] == 0  # 23:30 in New York is already the 24th in UTC
    assert one[(OTHER, IN_APP, "MessagesSent")] == 2 and one[(OTHER, EMAIL, "MessagesSent")] == 0
    assert (one[(EVENT, EMAIL, "MessagesDelivered")], one[(EVENT, EMAIL, "MessagesBounced")]) == (1, 1)
    assert one[(OTHER, IN_APP, "MessagesDelivered")] == 2  # in-app: delivered = sent
    assert one[(EVENT, EMAIL, "BounceRate")] == pytest.approx(100 / 3)
    assert (OTHER, IN_APP, "BounceRate") not in one  # in-app reports no bounces: no rate, not a false 0 %
    assert one[(EVENT, EMAIL, "OpenRate")] == 0.0  # 3 sent, none opened yet: a true 0 %

    two = datums(daily_metrics_frame(DAY2, *records.values(), program_id="event-invitations"))
    assert {name: two[(EVENT, EMAIL, name)] for name in DAILY_COUNT_METRICS.values()} == {
        "MessagesSent": 0, "MessagesDelivered": 1, "MessagesBounced": 0, "Complaints": 0, "MessagesOpened": 2,
        "MessagesClicked": 1, "Registrations": 1, "Attendees": 0, "SurveyResponses": 0,
    }  # fmt: skip
    assert two[(EVENT, "all", "Registrations")] == 1 and two[(EVENT, IN_APP, "Registrations")] == 0
    # Cumulative to the end of day 2, in percent: 2 of 3 emails opened, 1 clicked, 1 registration.
    assert two[(EVENT, EMAIL, "OpenRate")] == pytest.approx(200 / 3)
    assert two[(EVENT, EMAIL, "ClickThroughRate")] == pytest.approx(100 / 3)
    assert two[(EVENT, "all", "ConversionRate")] == pytest.approx(100 / 3)
    assert two[(EVENT, "all", "RegistrationRate")] == pytest.approx(100 / 3)
    assert (EVENT, PUSH, "OpenRate") not in two  # nothing sent: no rate rather than a false 0 %
    assert not any(event == OTHER for event, _, _ in two)  # nothing happened to OTHER on day 2

    three = datums(daily_metrics_frame(DAY3, *records.values(), program_id="event-invitations"))
    assert three[(EVENT, EMAIL, "MessagesOpened")] == 0  # c1's second open of the same message
    assert three[(EVENT, EMAIL, "Attendees")] == 1 and three[(EVENT, "all", "AttendanceRate")] == 100.0


def test_daily_counts_add_up_to_the_report():
    records = campaign()
    totals: dict[tuple[str, str], float] = {}
    for offset in range(5):
        day = (T0 + timedelta(days=offset)).date()
        for (_, channel, name), value in datums(
            daily_metrics_frame(day, *records.values(), program_id="event-invitations")
        ).items():
            if name in DAILY_COUNT_METRICS.values():
                totals[(channel, name)] = totals.get((channel, name), 0) + value
    rows = by_channel(channel_report(**records, unit_costs=COSTS))
    for column, name in DAILY_COUNT_METRICS.items():
        for channel in (EMAIL, IN_APP, PUSH, "all"):
            assert totals[(channel, name)] == rows[channel][column], (channel, name)


def test_a_quiet_day_has_no_datums():
    quiet = daily_metrics_frame(date(2027, 1, 1), *daily_records().values(), program_id="event-invitations")
    assert quiet.is_empty() and quiet.schema == pl.Schema(METRICS_SCHEMA)


# ---- charts and the HTML page ---------------------------------------------------------------------


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(charts.PNG_SIGNATURE) and len(png) > 1000
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def test_charts_are_valid_pngs_of_a_fixed_size_and_repeatable():
    records = campaign()
    table = channel_report(**records, unit_costs=COSTS)
    funnel = charts.funnel_chart_png(table)
    assert png_size(funnel) == (800, 450)
    assert charts.funnel_chart_png(table) == funnel
    both = pl.concat([attribute_registrations(records["registrations"], records["interactions"], rule)
                      for rule in RULES])  # fmt: skip
    assert png_size(charts.attribution_chart_png(both)) == (800, 450)
    counted = both.filter(pl.col("rule") == "last-touch").group_by("channel").len("registrations")
    assert png_size(charts.attribution_chart_png(counted)) == (800, 450)
    assert charts.attribution_chart_png(counted) != charts.attribution_chart_png(both)
    with pytest.raises(ValueError, match=r"funnel chart needs report columns \['attended'\]"):
        charts.funnel_chart_png(table.drop("attended"))


def test_the_html_report_is_standalone_and_escaped():
    table = channel_report(**campaign(), unit_costs=COSTS)
    png = charts.funnel_chart_png(table)
    odd = pl.DataFrame({"figure": ["<script>alert(1)</script>", "big"], "value": [None, 12345.678912]})
    page = charts.html_report("Campaign <evt-report>", {"Channels": table, "Odd & ends": odd}, {"Funnel": png},
                              ["Attribution rule: last-touch.", "p < 0.05 & more"])  # fmt: skip
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>Campaign &lt;evt-report&gt;</title>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "<li>p &lt; 0.05 &amp; more</li>" in page and "<h2>Odd &amp; ends</h2>" in page
    assert '<td class="number">12,345.6789</td>' in page and '<td class="number">-</td>' in page
    for value in ("0.66", "0.165", "0.4706", "10", "17"):  # all: cost, per registration, open rate, sent
        assert f'<td class="number">{value}</td>' in page
    assert page.count('src="data:image/png;base64,') == 1
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_the_html_report_refuses_personal_data_and_non_png_charts():
    with pytest.raises(ValueError, match=r"personal-data columns \['customer_id'\]"):
        charts.html_report("x", {"Attribution": pl.DataFrame({"customer_id": ["c1"]})}, {}, [])
    with pytest.raises(ValueError, match="is not a PNG"):
        charts.html_report("x", {}, {"Funnel": b"GIF89a"}, [])
