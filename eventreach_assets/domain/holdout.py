"""The randomized holdout: who is held out of a channel (`holdout_members`, used when sending) and
what the channel's lift over the held-out customers is (`holdout_lift`), with its statistics
(pure Python and polars: no Dagster, no I/O).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist

import polars as pl

from eventreach_assets.domain.campaign_records import check_columns
from eventreach_assets.domain.delivery import DeliveryStatus, MessageKind
from eventreach_assets.domain.engagement_schemas import REGISTERED

_SENT = DeliveryStatus.SENT.value

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
    check_columns(deliveries, ("event_id", "customer_id", "channel", "kind", "status"), "deliveries")
    check_columns(registrations, ("event_id", "customer_id", "status"), "registrations")
    person = ["event_id", "customer_id"]
    registered = (
        registrations.filter(pl.col("status") == REGISTERED)
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
