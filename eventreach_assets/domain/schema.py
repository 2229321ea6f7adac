"""The warehouse contract: tables and columns EventReach reads.

A user points the project at their own warehouse by providing these tables with these
columns (the README documents them). Types are the DuckDB/Snowflake SQL types; the polars
dtypes are what the extraction yields after mapping.
"""

from __future__ import annotations

import polars as pl

PROFILE_COLUMNS: dict[str, str] = {
    "customer_id": "VARCHAR",  # may repeat: one row per source-system snapshot
    "interest_tags": "VARCHAR",  # comma-separated lowercase slugs, e.g. "cloud-computing,devops"
    "event_attendance_history": "INTEGER",  # number of past events attended
    "engagement_score": "DOUBLE",  # 0..1
    "geographic_region": "VARCHAR",  # a marketplace code: US, UK, DE, FR, JP, IN, BR, AU
    "job_role": "VARCHAR",
    "account_status": "VARCHAR",  # active | suspended | closed
    "is_verified": "BOOLEAN",  # identity verified (trust)
    "fraud_flag": "BOOLEAN",  # flagged by fraud detection (trust)
    "marketplace": "VARCHAR",  # storefront / language market
    "timezone": "VARCHAR",  # IANA name, e.g. "Europe/Berlin"
    "marketing_opt_out": "BOOLEAN",  # customer opted out of event marketing
    "email": "VARCHAR",  # contact address (PII: never logged)
    "updated_at": "TIMESTAMP",  # when this profile row was written (dedupe: newest wins)
}

EVENT_COLUMNS: dict[str, str] = {
    "event_id": "VARCHAR",
    "name": "VARCHAR",
    "topics": "VARCHAR",  # comma-separated slugs
    "event_type": "VARCHAR",  # webinar | product-launch | training
    "speaker_popularity": "DOUBLE",  # 0..1
    "start_time_utc": "TIMESTAMP",
    "duration_minutes": "INTEGER",
    "capacity": "INTEGER",
    "target_regions": "VARCHAR",  # comma-separated marketplace codes
    "status": "VARCHAR",  # scheduled | cancelled
    "created_at": "TIMESTAMP",
}

REGISTRATION_COLUMNS: dict[str, str] = {
    "event_id": "VARCHAR",
    "customer_id": "VARCHAR",
    "registered_at": "TIMESTAMP",
    "channel": "VARCHAR",
}

INVITATION_HISTORY_COLUMNS: dict[str, str] = {
    "customer_id": "VARCHAR",
    "event_id": "VARCHAR",  # a past event (present in `events`)
    "channel": "VARCHAR",
    "invited_at": "TIMESTAMP",
    "opened": "BOOLEAN",
    "clicked": "BOOLEAN",
    "registered": "BOOLEAN",  # label of the interest-affinity model
    "attended": "BOOLEAN",  # label of the event-attendance model
}

WAREHOUSE_TABLES: dict[str, dict[str, str]] = {
    "customer_profiles": PROFILE_COLUMNS,
    "events": EVENT_COLUMNS,
    "event_registrations": REGISTRATION_COLUMNS,
    "invitation_history": INVITATION_HISTORY_COLUMNS,
}

# The candidate model after extraction, validation and dedupe (one row per customer). Text with few
# distinct values is categorical (the tags, and the five profile columns the extraction holds so,
# `extract.FEW_VALUES`): 4 bytes a row instead of a string view and its text, and dictionary
# pages when a value is written. At 3M profiles an event's 2.47M candidates are written for
# re-execution in 0.45 s instead of 0.72 s, the extraction no longer casts them back (0.15 s), and
# one event's peak RSS is ~350 MiB lower (docs/speed.md, twenty-third session). Comparisons with
# text (`is_in`, `==`) work as on strings; a table joined on such a column is keyed in its type
# (`filters._local_hours`).
CANDIDATE_TAG: pl.DataType = pl.Categorical()  # one of a candidate's `interest_tags`
CANDIDATE_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "interest_tags": pl.List(CANDIDATE_TAG),
    "event_attendance_history": pl.Int32(),
    "engagement_score": pl.Float64(),
    "geographic_region": pl.Categorical(),
    "job_role": pl.Categorical(),
    "account_status": pl.Categorical(),
    "is_verified": pl.Boolean(),
    "fraud_flag": pl.Boolean(),
    "marketplace": pl.Categorical(),
    "timezone": pl.Categorical(),
    "marketing_opt_out": pl.Boolean(),
    "email": pl.String(),
    "updated_at": pl.Datetime("us"),
}
