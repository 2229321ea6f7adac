"""Synthetic customer warehouse for the local deployment (a DuckDB file).

The local demo needs a warehouse that behaves like the use case's: ~3M profile rows that
collapse to ~2.5M customers, a filter funnel close to the documented one (trust 8%,
eligibility 20%, interest 40%, geography 12%, frequency cap 16% of the unique candidates
for the first sample event) and an invitation history from which models with a useful
holdout AUC can be learned. Nothing in the pipeline knows those numbers: they emerge from
correlated structure in the data, the way they would in a real warehouse:

- trust, opt-out, region and interests are independent customer traits with realistic rates;
- the invitation history was written by past runs of the same program, so it only reaches
  trusted, opted-in customers, mostly in the program's core markets, to events that match
  their interests; the recent weeks were cloud/devops-heavy, so the program's core audience
  (cloud + devops practitioners in US/UK/DE/FR) is the one that hits the frequency cap;
- the outcomes of past invitations (opened / clicked / registered / attended) come from a
  hidden logistic model of the customer's and the event's features.

Everything is vectorized (numpy + polars), so 3M profiles take seconds, and deterministic
for a given (profiles, seed, as_of).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from eventreach_assets.domain.schema import WAREHOUSE_TABLES

# ---- vocabularies -----------------------------------------------------------------------

# Interest tags / event topics. No slug is a substring of another, so the extraction's
# `CONTAINS(interest_tags, topic)` cannot match the wrong tag.
TOPICS: tuple[str, ...] = (
    "cloud-computing",
    "devops",
    "machine-learning",
    "security",
    "data-engineering",
    "kubernetes",
    "serverless",
    "databases",
    "analytics",
    "generative-ai",
    "networking",
    "iot",
)
_TOPIC_INDEX = {topic: i for i, topic in enumerate(TOPICS)}
CLOUD, DEVOPS = _TOPIC_INDEX["cloud-computing"], _TOPIC_INDEX["devops"]

REGIONS: tuple[str, ...] = ("US", "UK", "DE", "FR", "JP", "IN", "BR", "AU")
REGION_SHARES = np.array([0.32, 0.12, 0.11, 0.085, 0.09, 0.14, 0.08, 0.055])
CORE_REGIONS: tuple[str, ...] = ("US", "UK", "DE", "FR")  # the program's targetRegions

# IANA zones per region with their shares. Pacific/Honolulu matters: an event at 16:00 UTC
# starts at 06:00 there, so a few US customers fail the geographic filter on local time.
REGION_TIMEZONES: dict[str, tuple[tuple[str, float], ...]] = {
    "US": (
        ("America/New_York", 0.42),
        ("America/Chicago", 0.25),
        ("America/Denver", 0.06),
        ("America/Phoenix", 0.02),
        ("America/Los_Angeles", 0.22),
        ("Pacific/Honolulu", 0.03),
    ),
    "UK": (("Europe/London", 1.0),),
    "DE": (("Europe/Berlin", 1.0),),
    "FR": (("Europe/Paris", 1.0),),
    "JP": (("Asia/Tokyo", 1.0),),
    "IN": (("Asia/Kolkata", 1.0),),
    "BR": (("America/Sao_Paulo", 0.85), ("America/Manaus", 0.15)),
    "AU": (("Australia/Sydney", 0.6), ("Australia/Melbourne", 0.25), ("Australia/Perth", 0.15)),
}

JOB_ROLES: tuple[str, ...] = (
    "software-engineer",
    "devops-engineer",
    "cloud-architect",
    "data-scientist",
    "data-engineer",
    "security-engineer",
    "it-manager",
    "product-manager",
)
ROLE_SHARES = np.array([0.22, 0.12, 0.10, 0.10, 0.10, 0.08, 0.14, 0.14])
# P(tags include both cloud-computing and devops) by role: the interest-match filter of the
# first sample event needs both, and practitioners have them more often than managers.
ROLE_P_CLOUD_DEVOPS = np.array([0.45, 0.74, 0.70, 0.24, 0.34, 0.34, 0.45, 0.30])
# P(each other tag) by role, columns in TOPICS order (cloud-computing/devops drawn apart).
ROLE_TAG_P = np.array(
    [
        # cc   dev   ml    sec   de    k8s   svl   db    ana   gai   net   iot
        [0.0, 0.0, 0.25, 0.20, 0.15, 0.35, 0.30, 0.30, 0.10, 0.30, 0.08, 0.08],  # software-engineer
        [0.0, 0.0, 0.08, 0.30, 0.08, 0.60, 0.30, 0.20, 0.06, 0.10, 0.30, 0.06],  # devops-engineer
        [0.0, 0.0, 0.15, 0.35, 0.15, 0.45, 0.45, 0.25, 0.10, 0.20, 0.35, 0.12],  # cloud-architect
        [0.0, 0.0, 0.75, 0.06, 0.40, 0.08, 0.08, 0.25, 0.55, 0.55, 0.03, 0.10],  # data-scientist
        [0.0, 0.0, 0.40, 0.08, 0.75, 0.20, 0.25, 0.55, 0.40, 0.20, 0.05, 0.15],  # data-engineer
        [0.0, 0.0, 0.10, 0.85, 0.06, 0.20, 0.10, 0.15, 0.08, 0.10, 0.55, 0.20],  # security-engineer
        [0.0, 0.0, 0.15, 0.35, 0.10, 0.15, 0.15, 0.15, 0.30, 0.30, 0.30, 0.20],  # it-manager
        [0.0, 0.0, 0.25, 0.10, 0.10, 0.06, 0.10, 0.06, 0.45, 0.45, 0.04, 0.20],  # product-manager
    ]
)
# Hidden model: how much a role is drawn to events at all (log-odds, registration).
ROLE_REGISTRATION_EFFECT = np.array([0.3, 1.1, 0.8, -0.7, -0.2, 0.0, -0.7, -1.4])

# Hidden model: how much a tag (row) raises interest in a topic (column) other than itself.
_RELATED: dict[tuple[str, str], float] = {
    ("kubernetes", "devops"): 0.9,
    ("kubernetes", "cloud-computing"): 0.5,
    ("serverless", "cloud-computing"): 0.9,
    ("serverless", "devops"): 0.4,
    ("security", "cloud-computing"): 0.3,
    ("security", "networking"): 0.6,
    ("networking", "cloud-computing"): 0.3,
    ("networking", "security"): 0.5,
    ("databases", "data-engineering"): 0.7,
    ("analytics", "data-engineering"): 0.5,
    ("analytics", "machine-learning"): 0.5,
    ("data-engineering", "machine-learning"): 0.5,
    ("generative-ai", "machine-learning"): 0.9,
    ("machine-learning", "generative-ai"): 0.9,
    ("iot", "networking"): 0.5,
    ("iot", "cloud-computing"): 0.3,
    ("devops", "kubernetes"): 0.8,
    ("cloud-computing", "serverless"): 0.8,
    ("cloud-computing", "kubernetes"): 0.4,
    ("machine-learning", "data-engineering"): 0.4,
    ("generative-ai", "cloud-computing"): -0.3,
    ("analytics", "devops"): -0.4,
    ("machine-learning", "devops"): -0.3,
}
RELATEDNESS = np.zeros((len(TOPICS), len(TOPICS)))
for (_tag, _topic), _weight in _RELATED.items():
    RELATEDNESS[_TOPIC_INDEX[_tag], _TOPIC_INDEX[_topic]] = _weight

EVENT_TYPES: tuple[str, ...] = ("webinar", "product-launch", "training")
EVENT_TYPE_EFFECT = {"webinar": 0.0, "product-launch": 0.3, "training": -0.2}
ACCOUNT_STATUSES: tuple[str, ...] = ("active", "suspended", "closed")
CHANNELS: tuple[str, ...] = ("email", "in-app")

# The program's eventConfig.capacityLimit: registrations stay well below it so no sample
# event is "at capacity" (which would make the eligibility filter remove everyone).
CAPACITY_LIMIT = 10_000
MAX_REGISTRATION_FILL = 0.6

# Deliberately invalid rows, a fraction of all profile rows per kind, so the extraction's
# quarantine has something to catch. Each kind breaks exactly one field.
BAD_ROW_FRACTION = 0.0005
BAD_ROW_KINDS: tuple[str, ...] = (
    "null_customer_id",
    "unparseable_interest_tags",
    "unknown_region",
    "unknown_timezone",
    "engagement_score_out_of_range",
    "attendance_count_out_of_range",
)
_BAD_TAGS = ("{{cloud-computing", "cloud computing!!", "devops;;kubernetes", "Cloud-Computing,DevOps")
MIN_ROWS_FOR_BAD_ROWS = 1_000
DUPLICATE_FRACTION = 1 / 6  # share of profile rows that are an extra (older) snapshot


# ---- events -----------------------------------------------------------------------------

ANNOUNCE_DAYS = 30


@dataclass(frozen=True)
class EventSpec:
    """A sample event; `days_from_as_of` is negative for past events."""

    event_id: str
    name: str
    topics: tuple[str, ...]
    event_type: str
    speaker_popularity: float
    days_from_as_of: int
    start_hour_utc: int
    duration_minutes: int
    capacity: int
    target_regions: tuple[str, ...]
    registration_share: float = 0.0  # upcoming only: registrants per unique customer

    def start_time(self, as_of: datetime) -> datetime:
        day = (as_of + timedelta(days=self.days_from_as_of)).replace(hour=0, minute=0, second=0, microsecond=0)
        return day + timedelta(hours=self.start_hour_utc)

    def created_at(self, as_of: datetime) -> datetime:
        """Events are announced (and open for registration) a month before they start."""
        return self.start_time(as_of) - timedelta(days=ANNOUNCE_DAYS)


# Upcoming events (the ones the weekly batch runs for). Ids are stable across seeds and
# dates so partitions and bookmarks survive a re-seed. 16:00 UTC is morning in the US and
# late afternoon in Europe.
UPCOMING_EVENTS: tuple[EventSpec, ...] = (
    EventSpec(
        event_id="evt-cloud-summit",
        name="Cloud & DevOps Summit",
        topics=("cloud-computing", "devops"),
        event_type="webinar",
        speaker_popularity=0.85,
        days_from_as_of=8,
        start_hour_utc=16,
        duration_minutes=90,
        capacity=10_000,
        target_regions=("US", "UK", "DE", "FR"),
        registration_share=0.0025,
    ),
    EventSpec(
        event_id="evt-kubernetes-launch",
        name="Managed Kubernetes Launch",
        topics=("devops", "kubernetes"),
        event_type="product-launch",
        speaker_popularity=0.7,
        days_from_as_of=15,
        start_hour_utc=15,
        duration_minutes=60,
        capacity=5_000,
        target_regions=("US", "UK", "DE"),
        registration_share=0.001,
    ),
    EventSpec(
        event_id="evt-mlops-training",
        name="MLOps in the Cloud: Hands-on Training",
        topics=("cloud-computing", "machine-learning"),
        event_type="training",
        speaker_popularity=0.55,
        days_from_as_of=22,
        start_hour_utc=17,
        duration_minutes=180,
        capacity=20_000,
        target_regions=("US", "UK", "DE", "FR", "JP"),
        registration_share=0.0015,
    ),
)
SAMPLE_EVENTS = UPCOMING_EVENTS

# Past events (topics, type, days before as_of): the invitation history points at these.
# The last month leans towards cloud/devops, like the program's recent campaigns.
_RECENT_PAST: tuple[tuple[str, str, int], ...] = (
    ("cloud-computing", "webinar", 2),
    ("devops,kubernetes", "training", 4),
    ("security", "webinar", 6),
    ("cloud-computing,devops", "product-launch", 9),
    ("machine-learning,data-engineering", "webinar", 11),
    ("devops", "webinar", 13),
    ("cloud-computing,serverless", "training", 16),
    ("data-engineering", "webinar", 19),
    ("cloud-computing,security", "webinar", 22),
    ("networking", "product-launch", 26),
)
_OLDER_PAST_TOPICS: tuple[tuple[str, str], ...] = (
    ("cloud-computing", "webinar"),
    ("machine-learning", "training"),
    ("devops", "webinar"),
    ("security,networking", "webinar"),
    ("data-engineering,databases", "training"),
    ("kubernetes", "product-launch"),
    ("generative-ai", "webinar"),
    ("cloud-computing,devops", "training"),
    ("analytics", "webinar"),
    ("serverless", "webinar"),
    ("iot,networking", "product-launch"),
    ("machine-learning,generative-ai", "webinar"),
    ("devops,security", "webinar"),
    ("databases", "webinar"),
    ("cloud-computing,kubernetes", "training"),
    ("analytics,machine-learning", "product-launch"),
    ("security", "training"),
    ("cloud-computing,serverless", "webinar"),
    ("data-engineering", "webinar"),
    ("generative-ai,cloud-computing", "product-launch"),
    ("devops", "training"),
    ("networking", "webinar"),
    ("cloud-computing", "product-launch"),
    ("machine-learning,data-engineering", "training"),
    ("kubernetes,devops", "webinar"),
    ("iot", "webinar"),
    ("security,cloud-computing", "product-launch"),
    ("analytics,databases", "webinar"),
    ("generative-ai,machine-learning", "training"),
    ("cloud-computing,devops,kubernetes", "webinar"),
)
RECENT_WINDOW_DAYS = 30  # the frequency cap's window
_TITLES = {"devops": "DevOps", "iot": "IoT", "generative-ai": "Generative AI"}


def _past_events() -> tuple[EventSpec, ...]:
    """~40 past events over the 180 days before as_of, oldest first, with stable ids."""
    step = (165 - 33) / (len(_OLDER_PAST_TOPICS) - 1)  # older events every ~4.5 days, 165 to 33 days ago
    schedule = [(topics, kind, -round(165 - i * step)) for i, (topics, kind) in enumerate(_OLDER_PAST_TOPICS)]
    schedule += [(topics, kind, -days) for topics, kind, days in sorted(_RECENT_PAST, key=lambda row: -row[2])]
    events = []
    for number, (topics, kind, days) in enumerate(schedule, start=1):
        slugs = tuple(topics.split(","))
        title = " & ".join(_TITLES.get(slug, slug.replace("-", " ").title()) for slug in slugs)
        regions = ("US", "UK", "DE", "FR", "JP", "IN", "BR", "AU") if number % 5 == 0 else CORE_REGIONS
        events.append(
            EventSpec(
                event_id=f"evt-past-{number:03d}",
                name=f"{title} {kind.replace('-', ' ').title()}",
                topics=slugs,
                event_type=kind,
                speaker_popularity=round(0.35 + 0.6 * ((number * 37) % 11) / 10, 2),
                days_from_as_of=days,
                start_hour_utc=14 + number % 4,
                duration_minutes=(45, 60, 90, 120)[number % 4],
                capacity=(5_000, 10_000, 20_000)[number % 3],
                target_regions=regions,
            )
        )
    return tuple(events)


PAST_EVENTS: tuple[EventSpec, ...] = _past_events()


# ---- result -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSummary:
    """What `seed_warehouse` wrote: row counts per table and the events worth a batch."""

    path: Path
    as_of: datetime  # naive UTC
    seed: int
    customer_profiles: int
    unique_customers: int
    events: int
    event_registrations: int
    invitation_history: int
    bad_rows: int  # profile rows broken on purpose (quarantined by the extraction)
    upcoming_event_ids: tuple[str, ...]
    seconds: float

    @property
    def table_rows(self) -> dict[str, int]:
        return {
            "customer_profiles": self.customer_profiles,
            "events": self.events,
            "event_registrations": self.event_registrations,
            "invitation_history": self.invitation_history,
        }


# ---- generation -------------------------------------------------------------------------


def _utc_naive(moment: datetime | None) -> datetime:
    """The warehouse stores naive UTC; accept aware datetimes and default to now."""
    if moment is None:
        return datetime.now(UTC).replace(tzinfo=None)
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _categorical(rng: np.random.Generator, shares: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn with the given shares (normalized), as small ints."""
    cdf = np.cumsum(shares / shares.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(shares) - 1).astype(np.int16)


def _timestamps(as_of: datetime, seconds_before: np.ndarray) -> pl.Series:
    """Naive UTC timestamps `seconds_before` seconds before as_of, at microsecond precision."""
    as_of_us = np.datetime64(as_of, "us").astype(np.int64)
    return pl.Series(as_of_us - (seconds_before * 1e6).astype(np.int64)).cast(pl.Datetime("us"))


def _mask_bits(masks: np.ndarray) -> np.ndarray:
    """(n, len(TOPICS)) 0/1 matrix of tag bitmasks."""
    return ((masks[:, None] >> np.arange(len(TOPICS))) & 1).astype(np.float64)


def _tag_strings() -> pl.Series:
    """Comma-separated tags for every possible bitmask (4096 strings, gathered per row)."""
    return pl.Series(
        "interest_tags",
        [",".join(TOPICS[i] for i in range(len(TOPICS)) if mask >> i & 1) for mask in range(1 << len(TOPICS))],
    )


def _topic_mask(topics: tuple[str, ...]) -> int:
    return sum(1 << _TOPIC_INDEX[topic] for topic in topics)


@dataclass(frozen=True)
class _Customers:
    """One row per customer: the canonical (newest) profile, as arrays."""

    number: np.ndarray  # the 9 digits of the customer id
    role: np.ndarray
    region: np.ndarray
    timezone: np.ndarray  # index into _ZONES
    marketplace: np.ndarray
    tags: np.ndarray  # bitmask over TOPICS
    tags_null: np.ndarray
    engagement: np.ndarray
    attendance: np.ndarray
    status: np.ndarray  # index into ACCOUNT_STATUSES
    verified: np.ndarray
    fraud: np.ndarray
    opt_out: np.ndarray
    age_seconds: np.ndarray  # updated_at = as_of - age

    @property
    def size(self) -> int:
        return int(self.number.size)

    @property
    def contactable(self) -> np.ndarray:
        """Who past campaigns could invite: trusted and opted in."""
        return (self.status == 0) & self.verified & ~self.fraud & ~self.opt_out


_ZONES: tuple[str, ...] = tuple(zone for region in REGIONS for zone, _ in REGION_TIMEZONES[region])
_ZONE_OFFSET = np.cumsum([0] + [len(REGION_TIMEZONES[region]) for region in REGIONS])


def _customers(rng: np.random.Generator, n: int) -> _Customers:
    """Customer traits; trust, opt-out, region and role are independent of one another."""
    stride = max(1, 999_999_999 // max(n, 1))
    number = np.arange(n, dtype=np.int64) * stride + rng.integers(0, stride, n) + 1
    enthusiasm = rng.standard_normal(n)
    role = _categorical(rng, ROLE_SHARES, n)
    region = _categorical(rng, REGION_SHARES, n)
    timezone = _timezones(rng, region)
    elsewhere = rng.random(n) < 0.04  # shops in another storefront than where they live
    marketplace = np.where(elsewhere, rng.integers(0, len(REGIONS), n), region).astype(np.int16)

    tags = _interest_tags(rng, role, enthusiasm)
    tags_null = rng.random(n) < 0.01

    engagement = np.round(_sigmoid(-0.1 + 1.1 * enthusiasm + 0.6 * rng.standard_normal(n)), 4)
    attendance = rng.poisson(np.exp(0.6 + 0.6 * enthusiasm))
    # Almost everyone has attended an event or follows cloud/devops: the extraction's WHERE
    # clause keeps ~98% of rows, as in the use case (3M extracted).
    no_topic = (tags & ((1 << CLOUD) | (1 << DEVOPS))) == 0
    attendance = np.where(no_topic & (attendance == 0) & (rng.random(n) < 0.85), 1, attendance)

    # Trust: ~8% fail (suspended 2.5%, closed 2%, unverified 2.5%, fraud 1.2%, overlapping).
    status = _categorical(rng, np.array([0.955, 0.025, 0.02]), n)
    verified = rng.random(n) >= 0.025
    fraud = rng.random(n) < 0.012
    opt_out = rng.random(n) < 0.2146

    age_days = np.minimum(rng.exponential(60.0, n), 299.0) + rng.random(n)  # updated in the last ~10 months
    return _Customers(
        number=number,
        role=role,
        region=region,
        timezone=timezone,
        marketplace=marketplace,
        tags=tags.astype(np.int64),
        tags_null=tags_null,
        engagement=engagement,
        attendance=attendance.astype(np.int32),
        status=status,
        verified=verified,
        fraud=fraud,
        opt_out=opt_out,
        age_seconds=age_days * 86_400.0,
    )


def _timezones(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """Each customer's timezone (index into _ZONES), drawn by the shares of their region's zones."""
    zone_in_region = np.zeros(region.size, dtype=np.int16)
    for r, name in enumerate(REGIONS):
        members = np.flatnonzero(region == r)
        shares = np.array([share for _, share in REGION_TIMEZONES[name]])
        zone_in_region[members] = _categorical(rng, shares, members.size)
    return (_ZONE_OFFSET[region] + zone_in_region).astype(np.int16)


def _interest_tags(rng: np.random.Generator, role: np.ndarray, enthusiasm: np.ndarray) -> np.ndarray:
    """Interest bitmasks: cloud-computing + devops together by role; the rest by role, more of them
    for enthusiastic customers (so the number of tags carries signal about engagement)."""
    n = role.size
    draw = rng.random(n)
    both = draw < ROLE_P_CLOUD_DEVOPS[role]
    rest = (draw - ROLE_P_CLOUD_DEVOPS[role]) / (1 - ROLE_P_CLOUD_DEVOPS[role])
    cloud_only = ~both & (rest < 0.40)
    devops_only = ~both & (rest >= 0.40) & (rest < 0.58)
    tags = np.where(both, (1 << CLOUD) | (1 << DEVOPS), 0)
    tags |= np.where(cloud_only, 1 << CLOUD, 0) | np.where(devops_only, 1 << DEVOPS, 0)
    boost = np.exp(0.5 * enthusiasm)
    for tag in range(len(TOPICS)):
        if tag not in (CLOUD, DEVOPS):
            tags |= np.where(rng.random(n) < np.minimum(ROLE_TAG_P[role, tag] * boost, 0.95), 1 << tag, 0)
    return tags


def _customer_ids(number: np.ndarray) -> pl.Series:
    return pl.Series(number).cast(pl.String).str.zfill(9).str.pad_start(10, "C").alias("customer_id")


def _core(customers: _Customers) -> np.ndarray:
    return np.isin(customers.region, [REGIONS.index(r) for r in CORE_REGIONS])


def _weighted_sample(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """k distinct indices, drawn with probability proportional to weights (Efraimidis-Spirakis)."""
    k = min(k, int((weights > 0).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    keys = np.where(weights > 0, rng.exponential(1.0, weights.size) / np.maximum(weights, 1e-300), np.inf)
    return np.sort(np.argpartition(keys, k - 1)[:k])


def _registrations(rng: np.random.Generator, customers: _Customers, as_of: datetime) -> pl.DataFrame:
    """Customers already registered for each upcoming event: mostly reachable, interested ones."""
    frames = []
    bits = customers.tags
    for spec in UPCOMING_EVENTS:
        wanted = round(spec.registration_share * customers.size)
        limit = int(MAX_REGISTRATION_FILL * min(spec.capacity, CAPACITY_LIMIT))
        mask = _topic_mask(spec.topics)
        regions = [REGIONS.index(r) for r in spec.target_regions if r in REGIONS]
        interested = ((bits & mask) == mask) & ~customers.tags_null & np.isin(customers.region, regions)
        weights = np.where(interested & customers.contactable, 1.0, 0.01)
        chosen = _weighted_sample(rng, weights, min(wanted, limit))
        open_seconds = (as_of - spec.created_at(as_of)).total_seconds()  # registration opened at announcement
        before = 1_800.0 + rng.random(chosen.size) * max(open_seconds - 5_400.0, 0.0)
        frames.append(
            pl.DataFrame(
                {
                    "event_id": pl.Series([spec.event_id] * chosen.size, dtype=pl.String),
                    "customer_id": _customer_ids(customers.number[chosen]),
                    "registered_at": _timestamps(as_of, before),
                    "channel": pl.Series(CHANNELS).gather(rng.integers(0, 2, chosen.size)),
                }
            )
        )
    return pl.concat(frames)


def _pick_events(
    rng: np.random.Generator, log_weight: np.ndarray, group: np.ndarray, counts: np.ndarray, chunk: int = 200_000
) -> tuple[np.ndarray, np.ndarray]:
    """For customer i, `counts[i]` distinct events drawn by weight (Gumbel top-k, chunked).

    `log_weight` is (groups, events): customers of one group (same tags and region) share
    their event weights, so the per-customer matrix only exists one chunk at a time.
    Returns (customer index, event index) per draw.
    """
    customers = np.flatnonzero(counts > 0)
    k_max = int(counts.max(initial=0))
    customers_out, events_out = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for start in range(0, customers.size, chunk):
        members = customers[start : start + chunk]
        keys = log_weight[group[members]]
        keys += rng.gumbel(size=keys.shape)
        order = np.argsort(-keys, axis=1)[:, :k_max]
        take = np.arange(k_max) < counts[members, None]
        customers_out.append(np.repeat(members, take.sum(axis=1)))
        events_out.append(order[take])
    return np.concatenate(customers_out), np.concatenate(events_out)


def _invitation_history(rng: np.random.Generator, customers: _Customers, as_of: datetime) -> pl.DataFrame:
    """Past campaigns' invitations and their outcomes (the training data of both models).

    Past runs respected trust and opt-out and mostly targeted the core markets; the core
    audience (cloud + devops, core market) got most of the cloud/devops-heavy recent
    invitations, so ~80% of it has had 2+ invitations in the last 30 days.
    """
    events = PAST_EVENTS
    recent = np.array([-spec.days_from_as_of < RECENT_WINDOW_DAYS for spec in events])
    tag_masks = np.where(customers.tags_null, 0, customers.tags)
    recent_counts, older_counts = _invitation_counts(rng, customers, tag_masks)
    affinity = _EventAffinity.of(events)
    group = tag_masks * len(REGIONS) + customers.region
    log_weight = affinity.log_weight
    who_recent, which_recent = _pick_events(rng, np.where(recent, log_weight, -np.inf), group, recent_counts)
    who_older, which_older = _pick_events(rng, np.where(recent, -np.inf, log_weight), group, older_counts)
    who = np.concatenate([who_recent, who_older])
    which = np.concatenate([which_recent, which_older])
    rows = who.size

    # invited_at: 1-14 days before the event, recent ones inside the frequency-cap window.
    starts = np.array([(as_of - spec.start_time(as_of)).total_seconds() for spec in events])  # seconds before as_of
    before = starts[which] + (1 + 13 * rng.random(rows)) * 86_400.0
    window_edge = (RECENT_WINDOW_DAYS - 1) * 86_400.0
    before = np.where(recent[which], np.minimum(before, window_edge - rng.random(rows) * 43_200.0), before)

    opened, clicked, registered, attended = _outcomes(rng, customers, affinity, tag_masks[who], who, which)
    event_ids = pl.Series([spec.event_id for spec in events])
    return pl.DataFrame(
        {
            "customer_id": _customer_ids(customers.number[who]),
            "event_id": event_ids.gather(which),
            "channel": pl.Series(CHANNELS).gather((rng.random(rows) < 0.3).astype(np.int64)),
            "invited_at": _timestamps(as_of, before),
            "opened": opened,
            "clicked": clicked,
            "registered": registered,
            "attended": attended,
        }
    )


def _invitation_counts(
    rng: np.random.Generator, customers: _Customers, tag_masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(recent, older) invitations per customer: the core audience got the most, untrusted or
    opted-out customers none."""
    core = _core(customers)
    pair = (1 << CLOUD) | (1 << DEVOPS)
    audience = customers.contactable & core & ((tag_masks & pair) == pair)
    u = rng.random(customers.size)
    recent_counts = np.select(
        [audience, customers.contactable & core, customers.contactable],
        [
            np.searchsorted(np.cumsum([0.07, 0.13, 0.50, 0.22, 0.08]), u, side="right"),
            np.searchsorted(np.cumsum([0.78, 0.16, 0.06]), u, side="right"),
            np.searchsorted(np.cumsum([0.92, 0.08]), u, side="right"),
        ],
        0,
    ).astype(np.int64)
    older_mean = np.select([audience, customers.contactable & core, customers.contactable], [1.0, 0.6, 0.35], 0.0)
    return recent_counts, np.minimum(rng.poisson(older_mean), 4)


@dataclass(frozen=True)
class _EventAffinity:
    """How well each tag mask matches each past event (rows: every mask over TOPICS)."""

    all_bits: np.ndarray  # (masks, topics)
    match: np.ndarray  # (masks, events): share of the event's topics the mask has
    related: np.ndarray  # (masks, events): relatedness of the mask's tags to the event's topics
    log_weight: np.ndarray  # (masks x regions, events): how likely a past campaign invited the group

    @classmethod
    def of(cls, events: Sequence[EventSpec]) -> _EventAffinity:
        """Past campaigns invited mostly customers whose interests matched and who live in the
        event's target regions: weights per (tag mask, region) group x event."""
        topic_bits = _mask_bits(np.array([_topic_mask(spec.topics) for spec in events], dtype=np.int64))
        n_topics = topic_bits.sum(axis=1)
        all_bits = _mask_bits(np.arange(1 << len(TOPICS)))
        match = (all_bits @ topic_bits.T) / n_topics
        related = np.clip((all_bits @ RELATEDNESS @ topic_bits.T) / n_topics, -1.0, 1.5)
        region_ok = np.array([[region in spec.target_regions for spec in events] for region in REGIONS])
        interest_weight = np.where(match >= 0.7, 1.0, np.where(match > 0, 0.12, 0.03))
        log_weight = np.log(
            (interest_weight[:, None, :] * np.where(region_ok, 1.0, 0.05)[None, :, :]).reshape(-1, len(events))
        )
        return cls(all_bits, match, related, log_weight)


def _outcomes(
    rng: np.random.Generator,
    customers: _Customers,
    affinity: _EventAffinity,
    masks: np.ndarray,
    who: np.ndarray,
    which: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(opened, clicked, registered, attended) per invitation, from a hidden logistic model.

    Registration depends on interests (topic match and related tags), role and engagement;
    attending, given registration, on engagement and past attendance. Opened >= clicked >=
    registered >= attended.
    """
    events = PAST_EVENTS
    rows = who.size
    topic_match = affinity.match[masks, which]
    engagement = customers.engagement[who]
    popularity = np.array([spec.speaker_popularity for spec in events])[which]
    kind = np.array([EVENT_TYPE_EFFECT[spec.event_type] for spec in events])[which]
    registration_logit = (
        -2.4
        + 2.4 * topic_match
        + 1.0 * affinity.related[masks, which]
        + ROLE_REGISTRATION_EFFECT[customers.role[who]]
        + 0.25 * (affinity.all_bits.sum(axis=1)[masks] - 3)
        + 2.6 * (engagement - 0.5)
        + 0.6 * (popularity - 0.6)
        + kind
    )
    attend_logit = (
        0.9 + 4.5 * (engagement - 0.5) + 0.6 * (np.log1p(customers.attendance[who]) - 1.0) + 0.8 * (topic_match - 0.5)
    )
    registered = rng.random(rows) < _sigmoid(registration_logit)
    attended = registered & (rng.random(rows) < _sigmoid(attend_logit))
    clicked = registered | (rng.random(rows) < 0.5 * _sigmoid(registration_logit - 1.0))
    opened = clicked | (rng.random(rows) < _sigmoid(registration_logit + 0.5))
    return opened, clicked, registered, attended


def _profile_rows(rng: np.random.Generator, customers: _Customers, rows: int) -> tuple[pl.DataFrame, int]:
    """Profile rows: each customer's newest snapshot plus older snapshots, and broken rows.

    Older snapshots differ slightly (fewer tags, lower attendance, drifting engagement,
    still opted in / active) and always have an earlier updated_at, so "newest wins" yields
    the canonical profile and any other rule would visibly change the funnel.
    """
    n = customers.size
    extra = max(rows - n, 0)
    source = np.concatenate([np.arange(n), np.sort(rng.integers(0, n, extra))])
    older = np.arange(source.size) >= n

    tags = customers.tags[source]
    drop = older & (rng.random(source.size) < 0.3)
    lowest = tags & -tags  # older snapshots may lack their first tag (often cloud-computing: added later)
    tags = np.where(drop, tags & ~lowest, tags)
    tags_null = customers.tags_null[source]
    engagement = customers.engagement[source]
    engagement = np.where(
        older, np.round(np.clip(engagement + 0.05 * rng.standard_normal(source.size), 0, 1), 4), engagement
    )
    attendance = customers.attendance[source]
    attendance = np.where(older, np.maximum(attendance - rng.integers(0, 3, source.size), 0), attendance)
    status = np.where(older & (rng.random(source.size) < 0.5), 0, customers.status[source])
    opt_out = customers.opt_out[source] & ~(older & (rng.random(source.size) < 0.5))
    age = customers.age_seconds[source]
    # Older snapshots: 1-90 days before the newest row, still within the last year.
    age = np.where(older, np.minimum(age + (1 + 90 * rng.random(source.size)) * 86_400.0, 364 * 86_400.0), age)

    tags_null |= tags == 0  # no interests recorded: NULL, not an (unparseable) empty string
    tag_strings = _tag_strings().gather(tags)
    frame = pl.DataFrame(
        {
            "customer_id": _customer_ids(customers.number[source]),
            "interest_tags": tag_strings,
            "event_attendance_history": pl.Series(attendance, dtype=pl.Int32),
            "engagement_score": engagement,
            "geographic_region": pl.Series(REGIONS).gather(customers.region[source]),
            "job_role": pl.Series(JOB_ROLES).gather(customers.role[source]),
            "account_status": pl.Series(ACCOUNT_STATUSES).gather(status),
            "is_verified": customers.verified[source],
            "fraud_flag": customers.fraud[source],
            "marketplace": pl.Series(REGIONS).gather(customers.marketplace[source]),
            "timezone": pl.Series(_ZONES).gather(customers.timezone[source]),
            "marketing_opt_out": opt_out,
            "age": age,
        }
    ).with_columns(interest_tags=pl.when(pl.Series(tags_null)).then(None).otherwise(pl.col("interest_tags")))
    frame, bad = _break_rows(rng, frame)
    # Shuffle so snapshots of one customer are not adjacent (as in a real extract).
    frame = frame[rng.permutation(frame.height)]
    return frame, bad


def bad_rows_per_kind(rows: int) -> int:
    """Rows of each `BAD_ROW_KINDS` in a warehouse of `rows` profile rows.

    At least one of each from 1,000 rows up, so small test warehouses still exercise the
    quarantine; none below that, so a toy warehouse is not mostly broken rows.
    """
    return max(1, round(rows * BAD_ROW_FRACTION)) if rows >= MIN_ROWS_FOR_BAD_ROWS else 0


def _break_rows(rng: np.random.Generator, frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Break ~0.05% of rows per kind, one field each, keeping them inside the extraction."""
    per_kind = bad_rows_per_kind(frame.height)
    picked = rng.choice(frame.height, size=min(per_kind * len(BAD_ROW_KINDS), frame.height), replace=False)
    kind = np.full(frame.height, -1, dtype=np.int8)
    kind[picked] = np.arange(picked.size) // max(per_kind, 1)
    bad_tags = pl.Series(_BAD_TAGS).gather(rng.integers(0, len(_BAD_TAGS), frame.height))
    is_kind = [pl.Series(kind == k) for k in range(len(BAD_ROW_KINDS))]
    frame = frame.with_columns(
        customer_id=pl.when(is_kind[0]).then(None).otherwise(pl.col("customer_id")),
        interest_tags=pl.when(is_kind[1]).then(bad_tags).otherwise(pl.col("interest_tags")),
        geographic_region=pl.when(is_kind[2]).then(pl.lit("XX")).otherwise(pl.col("geographic_region")),
        timezone=pl.when(is_kind[3]).then(pl.lit("Mars/Olympus")).otherwise(pl.col("timezone")),
        engagement_score=pl.when(is_kind[4])
        .then(pl.Series(1.0 + rng.random(frame.height) * 2.0))
        .otherwise(pl.col("engagement_score")),
        event_attendance_history=pl.when(is_kind[5])
        .then(pl.lit(-1, dtype=pl.Int32))
        .otherwise(pl.col("event_attendance_history")),
    )
    # Rows broken in a field other than tags carry a topic so the extraction returns them.
    keep_extracted = pl.Series(kind >= 0) & ~is_kind[1]
    frame = frame.with_columns(
        interest_tags=pl.when(keep_extracted & ~pl.col("interest_tags").fill_null("").str.contains("cloud-computing"))
        .then(pl.concat_str(pl.lit("cloud-computing,"), pl.col("interest_tags").fill_null("devops")))
        .otherwise(pl.col("interest_tags")),
        event_attendance_history=pl.when(is_kind[1] & (pl.col("event_attendance_history") <= 0))
        .then(pl.lit(1, dtype=pl.Int32))
        .otherwise(pl.col("event_attendance_history")),
    )
    return frame, int(picked.size)


def _events_frame(as_of: datetime) -> pl.DataFrame:
    specs = [*PAST_EVENTS, *UPCOMING_EVENTS]
    return pl.DataFrame(
        {
            "event_id": [spec.event_id for spec in specs],
            "name": [spec.name for spec in specs],
            "topics": [",".join(spec.topics) for spec in specs],
            "event_type": [spec.event_type for spec in specs],
            "speaker_popularity": [spec.speaker_popularity for spec in specs],
            "start_time_utc": [spec.start_time(as_of) for spec in specs],
            "duration_minutes": pl.Series([spec.duration_minutes for spec in specs], dtype=pl.Int32),
            "capacity": pl.Series([spec.capacity for spec in specs], dtype=pl.Int32),
            "target_regions": [",".join(spec.target_regions) for spec in specs],
            "status": ["scheduled"] * len(specs),
            "created_at": [spec.created_at(as_of) for spec in specs],
        },
        schema_overrides={"start_time_utc": pl.Datetime("us"), "created_at": pl.Datetime("us")},
    )


def generate_warehouse(profiles: int, seed: int = 7, as_of: datetime | None = None) -> dict[str, pl.DataFrame]:
    """The four warehouse tables as polars frames, columns in `WAREHOUSE_TABLES` order.

    Kept separate from writing so tests and notebooks can look at the data without a file.
    """
    if profiles < 1:
        raise ValueError(f"profiles must be >= 1, got {profiles}")
    as_of = _utc_naive(as_of)
    rng = np.random.default_rng(np.random.SeedSequence([seed, profiles]))
    unique = max(1, round(profiles * (1 - DUPLICATE_FRACTION)))
    customers = _customers(rng, unique)
    registrations = _registrations(rng, customers, as_of)
    history = _invitation_history(rng, customers, as_of)
    rows, _ = _profile_rows(rng, customers, profiles)
    rows = rows.with_columns(
        email=pl.col("customer_id").str.to_lowercase() + "@example.com",
        updated_at=_timestamps(as_of, rows["age"].to_numpy()),
    )
    tables = {
        "customer_profiles": rows,
        "events": _events_frame(as_of),
        "event_registrations": registrations,
        "invitation_history": history,
    }
    return {name: frame.select(list(WAREHOUSE_TABLES[name])) for name, frame in tables.items()}


def write_duckdb(path: Path, tables: dict[str, pl.DataFrame]) -> None:
    """Write the tables with the contract's SQL types to `path`, atomically.

    The file is built next to its destination and renamed into place, so a pipeline reading
    the warehouse never sees a half-written one.
    """
    import duckdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # DuckDB wants to create the file itself
    try:
        connection = duckdb.connect(str(tmp))
        try:
            connection.execute("SET enable_progress_bar = false")
            for table, columns in WAREHOUSE_TABLES.items():
                ddl = ", ".join(f"{name} {sql_type}" for name, sql_type in columns.items())
                connection.execute(f"CREATE TABLE {table} ({ddl})")
                connection.register("_frame", tables[table].to_arrow())
                connection.execute(f"INSERT INTO {table} SELECT {', '.join(columns)} FROM _frame")
                connection.unregister("_frame")
            connection.execute("CHECKPOINT")
        finally:
            connection.close()
        Path(f"{path}.wal").unlink(missing_ok=True)  # a stale WAL must not be replayed onto the new file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)


def seed_warehouse(path: Path, profiles: int, seed: int = 7, as_of: datetime | None = None) -> SeedSummary:
    """Generate a synthetic warehouse and (over)write it at `path` as a DuckDB file."""
    started = time.perf_counter()
    as_of = _utc_naive(as_of)
    tables = generate_warehouse(profiles, seed=seed, as_of=as_of)
    write_duckdb(Path(path), tables)
    profiles_frame = tables["customer_profiles"]
    upcoming = tuple(spec.event_id for spec in sorted(UPCOMING_EVENTS, key=lambda spec: spec.days_from_as_of))
    return SeedSummary(
        path=Path(path),
        as_of=as_of,
        seed=seed,
        customer_profiles=profiles_frame.height,
        unique_customers=profiles_frame["customer_id"].drop_nulls().n_unique(),
        events=tables["events"].height,
        event_registrations=tables["event_registrations"].height,
        invitation_history=tables["invitation_history"].height,
        bad_rows=min(bad_rows_per_kind(profiles_frame.height) * len(BAD_ROW_KINDS), profiles_frame.height),
        upcoming_event_ids=upcoming,
        seconds=round(time.perf_counter() - started, 2),
    )
