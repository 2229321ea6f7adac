"""Ingestion: what comes in from the event platform and the feeds, validated and stored.

The feed assets and the Serving API's webhook call the same functions here, so a record
delivered by either path (or twice) is judged and stored the same way, once.
"""

from eventreach_assets.ingestion.activity import (
    UNSUBSCRIBE_SOURCE,
    ingest_attendance,
    ingest_survey,
    ingest_tracking,
)
from eventreach_assets.ingestion.cancellations import Cancelled, record_cancellations
from eventreach_assets.ingestion.outcome import EngagementOutcome, Records, ingest_records, sorted_rejections
from eventreach_assets.ingestion.provider_feedback import COMPLAINT_SOURCE, ingest_provider_feedback
from eventreach_assets.ingestion.quarantine import QUARANTINE_STAGE, quarantine
from eventreach_assets.ingestion.registrations import ingest_registrations
from eventreach_assets.ingestion.seats import STORED_COLUMNS, current_registrations, registered_customers
from eventreach_assets.ingestion.waitlist import PROMOTED_COLUMNS, promote_from_waitlist

__all__ = [
    "COMPLAINT_SOURCE",
    "PROMOTED_COLUMNS",
    "QUARANTINE_STAGE",
    "STORED_COLUMNS",
    "UNSUBSCRIBE_SOURCE",
    "Cancelled",
    "EngagementOutcome",
    "Records",
    "current_registrations",
    "ingest_attendance",
    "ingest_provider_feedback",
    "ingest_records",
    "ingest_registrations",
    "ingest_survey",
    "ingest_tracking",
    "promote_from_waitlist",
    "quarantine",
    "record_cancellations",
    "registered_customers",
    "sorted_rejections",
]
