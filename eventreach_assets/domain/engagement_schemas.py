"""The engagement store's records: registrations (and their statuses), interactions, attendance and
survey answers, as every layer reads and writes them (resources/engagement_store/ stores them; the
validators, the funnel and the report produce or read them). Times are naive UTC.
"""

from __future__ import annotations

import polars as pl

REGISTERED = "registered"
WAITLISTED = "waitlisted"
CANCELLED = "cancelled"  # the customer cancelled (feed / webhook cancellation record): the seat is free
REGISTRATION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "registration_id": pl.String(),
    "registered_at": pl.Datetime("us"),  # naive UTC
    "channel": pl.String(),  # attributed channel (from the link token), null if unknown
    "campaign_id": pl.String(),
    "status": pl.String(),  # registered | waitlisted | cancelled
    "recorded_at": pl.Datetime("us"),  # when the current status was recorded
}
INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "channel": pl.String(),
    "campaign_id": pl.String(),
    "action": pl.String(),  # open | click | unsubscribe
    "occurred_at": pl.Datetime("us"),
}
ATTENDANCE_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "joined_at": pl.Datetime("us"),
    "minutes_watched": pl.Int32(),
}
SURVEY_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "rating": pl.Int8(),  # 1..5
    "comment": pl.String(),  # free text (may hold PII: never logged, never in metadata)
    "submitted_at": pl.Datetime("us"),
}
