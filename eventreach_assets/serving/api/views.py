"""The rows the API answers with: registered / waitlisted customers as JSON objects, and their shape.

Pure. Whichever store a registration came from, it is served in one shape
(`REGISTRATION_VIEW`, the OpenAPI document's); the `email` attribute (PII) never leaves, times
are ISO 8601 UTC (`...Z`, the stores' own text form). Candidate items arrive as JSON already
(`domain.served_items`). Plain string building, no frame: a page is built per request.
"""

from __future__ import annotations

import polars as pl

from eventreach_assets.domain.served_items import SERVED_EXCLUDED_COLUMNS, json_value
from eventreach_assets.resources.candidate_store import RegisteredCustomer

PII_COLUMNS = SERVED_EXCLUDED_COLUMNS

# What a registered-candidates row holds, whichever store it came from.
REGISTRATION_VIEW: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "status": pl.String(),
    "registered_at": pl.Datetime("us", "UTC"),
    "channel": pl.String(),  # the channel the registration is attributed to (null: unknown)
    "campaign_id": pl.String(),  # waitlisted rows only (the candidate store does not keep it)
    "score": pl.Float64(),  # registered rows only: the candidate's score (best over channels)
    "score_band": pl.String(),
    "marketplace": pl.String(),
    "timezone": pl.String(),
}


def registered_row_json(customer: RegisteredCustomer) -> str:
    """A registered customer (their candidate items taken together) as a served row (the
    fields of REGISTRATION_VIEW, in its order; a format string: a page builds a hundred)."""
    q = json_value
    return (
        f'{{"customer_id":{q(customer.customer_id)},"status":"registered",'
        f'"registered_at":{q(customer.registered_at)},"channel":{q(customer.channel)},"campaign_id":null,'
        f'"score":{q(customer.score)},"score_band":{q(customer.score_band)},'
        f'"marketplace":{q(customer.marketplace)},"timezone":{q(customer.timezone)}}}'
    )


def waitlisted_row_json(row: tuple) -> str:
    """A waitlisted engagement-store registration (storage form, REGISTRATION_SCHEMA order) as a served row."""
    _event, customer_id, _registration, registered_at, channel, campaign_id, status, _recorded = row
    values = (customer_id, status, registered_at, channel, campaign_id, None, None, None, None)
    return (
        "{"
        + ",".join(f'"{name}":{json_value(value)}' for name, value in zip(REGISTRATION_VIEW, values, strict=True))
        + "}"
    )
