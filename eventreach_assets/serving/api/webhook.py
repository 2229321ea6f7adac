"""The registration webhook's delivery format: the records a body holds, and what it answers.

Pure: a body is a JSON list (or `{"registrations": [...]}`) of records; a cancellation that
cannot be applied refuses the whole delivery with a 400 naming it, anything else malformed is
kept for the ingestion to quarantine with its reason.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from eventreach_assets.domain.registrations import RegistrationOutcome, cancellation_problem
from eventreach_assets.serving.api.params import bad_parameter

MAX_WEBHOOK_BYTES = 1024 * 1024
MAX_WEBHOOK_RECORDS = 1000
WEBHOOK_BATCH_PREFIX = "webhook"


def webhook_records(body: bytes) -> list[dict[str, Any]]:
    """The delivery's registration records: a JSON list, or an object with a `registrations` list.

    An element that is not an object is kept as a malformed record (quarantined with its
    reason by the ingestion), not dropped.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_parameter("body", "not JSON") from None
    if isinstance(data, dict):
        if "registrations" not in data:
            raise bad_parameter("body", "an object needs a 'registrations' list")
        data = data["registrations"]
    if not isinstance(data, list) or not data:
        raise bad_parameter("body", "registrations must be a non-empty list of records")
    if len(data) > MAX_WEBHOOK_RECORDS:
        raise bad_parameter("body", f"at most {MAX_WEBHOOK_RECORDS} records per delivery, got {len(data)}")
    for index, record in enumerate(data):
        # A cancellation that cannot be applied leaves a seat blocked: the platform must hear it now.
        problem = cancellation_problem(record) if isinstance(record, dict) else None
        if problem is not None:
            field, message = problem
            raise bad_parameter(f"registrations[{index}].{field}", message)
    return [
        record if isinstance(record, dict) else {"_error": "not a JSON object", "_raw": json.dumps(record)}
        for record in data
    ]


def webhook_reply(outcome: RegistrationOutcome) -> dict[str, Any]:
    """What the webhook answers: counts, and each rejected record's position and reason (no ids)."""
    return {
        "accepted": outcome.accepted.height,
        "waitlisted": outcome.waitlisted.height,
        "cancelled": 0 if outcome.cancelled is None else outcome.cancelled.height,
        "rejected": outcome.rejected.height,
        "stored": outcome.stored or 0,
        "rejections": [
            {"position": line, "reason": reason} for line, reason in outcome.rejected.select("line", "reason").rows()
        ],
    }


def webhook_batch_name(body: bytes) -> str:
    """The quarantine file name of a delivery: when it came, and a digest of what came."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{WEBHOOK_BATCH_PREFIX}-{stamp}-{hashlib.sha256(body).hexdigest()[:12]}"
