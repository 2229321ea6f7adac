"""The program YAML as typed, validated objects.

The YAML is the single source of the filter chain, thresholds, TTLs, batch sizes and
schedules; code reads them from here so that changing the program never means changing code.
A bad file fails at load with the path of the offending field.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

DEFAULT_PROGRAM_PATH = Path(__file__).with_name("event-invitations.yaml")
# libyaml's parser where PyYAML was built with it (its wheels are): the same documents and errors,
# ~10x faster. Every sensor tick and run loads the program, so its parse is paid many times a day.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ProgramConfigError(ValueError):
    """Raised when the program YAML cannot be read or does not validate."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    account: str
    database: str
    schema_: str = Field(alias="schema")
    query: str


class DataConnector(_Model):
    connector_id: str
    type: Literal["snowflake"]
    config: ConnectorConfig


class ScoringModelSpec(_Model):
    model_id: str
    endpoint: str
    features: list[str] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _sagemaker_uri(cls, value: str) -> str:
        if not value.startswith("sagemaker://") or len(value) <= len("sagemaker://"):
            raise ValueError("must look like 'sagemaker://<endpoint-name>'")
        return value

    @property
    def endpoint_name(self) -> str:
        return self.endpoint.removeprefix("sagemaker://")


class FilterSpec(_Model):
    filter_id: str
    type: str
    order: int = Field(ge=1)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @property
    def registry_key(self) -> str:
        """Which filter class implements this entry: the type, or for business rules the id."""
        return self.filter_id if self.type == "business-rule" else self.type


class ChannelSpec(_Model):
    channel_id: str
    type: Literal["email", "in-app", "push"]
    enabled: bool = True
    priority: int = Field(ge=1)
    config: dict[str, Any] = Field(default_factory=dict)


class ReminderSpec(_Model):
    days_before: int = Field(ge=0)
    channel: str
    time: str | None = None

    @field_validator("time")
    @classmethod
    def _hh_mm(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError("must be HH:MM (24h)")
        return value


class EventConfig(_Model):
    capacity_limit: int = Field(gt=0)
    registration_deadline_days: int = Field(ge=0)
    reminder_schedule: list[ReminderSpec] = Field(default_factory=list)


class ScoreBands(_Model):
    high: float = Field(gt=0, lt=1)
    medium: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> ScoreBands:
        if self.medium >= self.high:
            raise ValueError("medium must be below high")
        return self


class ScoringConfig(_Model):
    batch_size: int = Field(gt=0)
    min_auc: float = Field(gt=0.5, le=1.0)
    score_bands: ScoreBands
    band_drift_warn_points: float = Field(gt=0, le=100)


class StorageConfig(_Model):
    batch_write_size: int = Field(gt=0, le=25)


class HoldoutConfig(_Model):
    """A randomized control group: a deterministic share of a channel's eligible candidates is
    not sent that channel (recorded as held out), so its lift can be measured, not asserted."""

    channel: str = "in-app"
    share: float = Field(default=0.1, ge=0, le=0.5)
    min_sample_per_arm: int = Field(default=200, gt=0)  # below it the report says "not enough data"
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class MetricsConfig(_Model):
    """The daily metrics and the campaign report (issue: metrics the events team reviews)."""

    schedule: str = "cron(59 23 * * ? *)"  # "Daily Schedule, 11:59 PM"
    attribution: Literal["last-touch", "first-touch"] = "last-touch"
    unit_costs: dict[str, float] = Field(default_factory=dict)  # channel -> cost per message sent
    holdout: HoldoutConfig = Field(default_factory=HoldoutConfig)

    @field_validator("unit_costs")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {channel: cost for channel, cost in value.items() if cost < 0}
        if negative:
            raise ValueError(f"metrics.unitCosts must be >= 0, got {negative}")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        aws_cron_to_unix(value)
        return value


class DeliverabilityConfig(_Model):
    """Provider feedback guard rails (issue 10): SES reviews an account at 5 % bounces or 0.1 %
    complaints and suspends it at 10 % / 0.5 %; Gmail asks bulk senders to stay under 0.3 % spam.
    Rates per campaign (event x channel): bounce rate = hard bounces / sent, complaint rate =
    complaints / delivered (domain/feedback.py)."""

    bounce_warn_rate: float = Field(default=0.05, gt=0, lt=1)  # asset check WARN (SES review)
    complaint_warn_rate: float = Field(default=0.001, gt=0, lt=1)
    bounce_stop_rate: float = Field(default=0.08, gt=0, lt=1)  # circuit breaker: stop the next waves
    complaint_stop_rate: float = Field(default=0.003, gt=0, lt=1)
    min_sent_for_bounce_rate: int = Field(default=200, gt=0)  # below it a rate is noise, never a verdict
    min_delivered_for_complaint_rate: int = Field(default=1000, gt=0)
    transient_bounces_to_suppress: int = Field(default=3, gt=0)  # soft bounces that count as a hard one ...
    transient_bounce_window_days: int = Field(default=30, gt=0)  # ... within this many days

    @model_validator(mode="after")
    def _ordered(self) -> DeliverabilityConfig:
        if self.bounce_stop_rate < self.bounce_warn_rate or self.complaint_stop_rate < self.complaint_warn_rate:
            raise ValueError("deliverability stop rates must not be below the warn rates")
        return self


class ChannelTargeting(_Model):
    """Which stored candidates a channel's campaign reaches (the Serving API's minScore / limit)."""

    min_score: float = Field(ge=0, le=1)
    limit: int = Field(gt=0)
    schedule: str

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        aws_cron_to_unix(value)
        return value

    @property
    def local_time(self) -> str:
        """The cron's hour and minute as HH:MM: the local send time of each segment's wave."""
        minute, hour = aws_cron_to_unix(self.schedule).split()[:2]
        return f"{int(hour):02d}:{int(minute):02d}"


class CampaignConfig(_Model):
    email: ChannelTargeting
    in_app: ChannelTargeting = Field(alias="in-app")
    sender: str
    organizer: str
    link_base_url: str

    def targeting(self, channel_id: str) -> ChannelTargeting:
        return {"email": self.email, "in-app": self.in_app}[channel_id]


_AWS_CRON = re.compile(r"^cron\((\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\)$")
_DAYS = {"SUN": "0", "MON": "1", "TUE": "2", "WED": "3", "THU": "4", "FRI": "5", "SAT": "6"}


def aws_cron_to_unix(expression: str) -> str:
    """Turn the YAML's EventBridge `cron(m h dom mon dow year)` into the 5-field cron Dagster uses."""
    match = _AWS_CRON.match(expression.strip())
    if not match:
        raise ValueError(f"not an EventBridge cron expression: {expression!r}")
    minute, hour, dom, month, dow, _year = match.groups()
    dom = "*" if dom == "?" else dom
    dow = "*" if dow == "?" else ",".join(_DAYS.get(d, d) for d in dow.split(","))
    return f"{minute} {hour} {dom} {month} {dow}"


class ProgramConfig(_Model):
    program_id: str
    program_name: str
    enabled: bool
    marketplaces: list[str] = Field(min_length=1)
    data_connectors: list[DataConnector]
    scoring_models: list[ScoringModelSpec] = Field(min_length=1)
    filter_chain: list[FilterSpec] = Field(min_length=1)
    channels: list[ChannelSpec]
    event_config: EventConfig
    batch_schedule: str
    candidate_ttl_days: int = Field(alias="candidateTTLDays", gt=0)
    scoring: ScoringConfig
    storage: StorageConfig
    campaigns: CampaignConfig
    export_schedule: str
    model_training_schedule: str
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    deliverability: DeliverabilityConfig = Field(default_factory=DeliverabilityConfig)
    # How the weekly batch reads profiles: each event's own extraction (pushed down per event), or
    # one `profile_snapshot` per batch that every event's partition reads (docs/speed.md).
    extraction: Literal["per_event", "weekly_snapshot"] = "per_event"

    @field_validator("batch_schedule", "export_schedule", "model_training_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        aws_cron_to_unix(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProgramConfig:
        orders = [f.order for f in self.filter_chain]
        if len(set(orders)) != len(orders):
            raise ValueError(f"filterChain orders must be unique, got {orders}")
        ids = [f.filter_id for f in self.filter_chain]
        if len(set(ids)) != len(ids):
            raise ValueError(f"filterChain filterIds must be unique, got {ids}")
        channel_ids = {c.channel_id for c in self.channels}
        for reminder in self.event_config.reminder_schedule:
            if reminder.channel not in channel_ids:
                raise ValueError(f"eventConfig.reminderSchedule names unknown channel {reminder.channel!r}")
        return self

    @property
    def ordered_filters(self) -> list[FilterSpec]:
        return sorted(self.filter_chain, key=lambda f: f.order)

    @property
    def batch_cron(self) -> str:
        return aws_cron_to_unix(self.batch_schedule)

    @property
    def export_cron(self) -> str:
        return aws_cron_to_unix(self.export_schedule)

    def channel(self, channel_id: str) -> ChannelSpec:
        for spec in self.channels:
            if spec.channel_id == channel_id:
                return spec
        raise KeyError(f"program {self.program_id!r} has no channel {channel_id!r}")

    def invitation_send_time(self, channel_id: str) -> str:
        """Each segment's local send time for the channel's invitations: the channel's `sendTime`
        (email: "10:00", timezone local), else the hour of its campaign schedule (in-app: 14:00)."""
        return str(self.channel(channel_id).config.get("sendTime") or self.campaigns.targeting(channel_id).local_time)

    @property
    def model_training_cron(self) -> str:
        return aws_cron_to_unix(self.model_training_schedule)

    @property
    def invitation_channels(self) -> list[ChannelSpec]:
        """Channels that carry invitations (push only reminds registered customers)."""
        return sorted(
            (c for c in self.channels if c.enabled and c.type in ("email", "in-app")), key=lambda c: c.priority
        )

    def model(self, model_id: str) -> ScoringModelSpec:
        for spec in self.scoring_models:
            if spec.model_id == model_id:
                return spec
        raise KeyError(f"program {self.program_id!r} has no scoring model {model_id!r}")


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {path}: {item['msg']}")
    return "\n".join(lines)


def parse_program(data: Any, source: str = "<memory>") -> ProgramConfig:
    """Validate an already-parsed YAML document against the schema; errors name the field path."""
    if not isinstance(data, dict):
        raise ProgramConfigError(f"program config {source}: expected a mapping at the top level")
    try:
        program = ProgramConfig.model_validate(data)
    except ValidationError as error:
        raise ProgramConfigError(f"program config {source} is invalid:\n{_format_errors(error)}") from None
    # Filter parameters are not checked here: program/ is the bottom layer and imports nothing
    # from domain/, whose filter classes own the parameter models. The application loads
    # programs through `resources/program.py: load_checked_program`, which adds that check
    # (`domain/filters.py: check_program_filters`), so a bad parameter still fails at load.
    return program


def load_program(path: str | Path | None = None) -> ProgramConfig:
    """Load and validate a program YAML (the packaged `event-invitations.yaml` by default)."""
    path = Path(path) if path else DEFAULT_PROGRAM_PATH
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except OSError as error:
        raise ProgramConfigError(f"program config {path}: cannot read: {error}") from None
    except yaml.YAMLError as error:
        raise ProgramConfigError(f"program config {path}: not valid YAML: {error}") from None
    return parse_program(data, str(path))


@cache
def default_program() -> ProgramConfig:
    return load_program()
