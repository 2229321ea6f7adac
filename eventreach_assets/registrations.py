"""Registrations coming in from the event platform: one ingestion function, two ways in.

The registration sensor polls a folder of JSON-lines files (`read_feed`); the serving API's
webhook will call `ingest_registrations` with the rows it received. Both go through the same
validation and the same idempotent store update, so a registration delivered twice, or by both
paths, is recorded once.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl

from eventreach_assets.domain.events import normalize_events
from eventreach_assets.domain.messages import InvalidLinkToken, LinkClaims, verify_link_token
from eventreach_assets.domain.registrations import (
    INCOMING_SCHEMA,
    RegistrationOutcome,
    normalize_incoming,
    validate_registrations,
)
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.warehouse import WarehouseResource

FEED_SUFFIX = ".jsonl"


def ingest_registrations(
    incoming: pl.DataFrame,
    *,
    warehouse: WarehouseResource,
    store: CandidateStoreResource,
    program: ProgramConfig,
    secret: bytes,
    now: datetime,
) -> RegistrationOutcome:
    """Validate a batch and mark the accepted registrations in the candidate store.

    Registrations already known (the platform's table in the warehouse, or marked in the store
    by an earlier delivery) count against capacity and make a redelivery a duplicate, so a
    replayed batch changes nothing. Tokens must be genuine "register" links for the row.
    """
    rows = normalize_incoming(incoming)
    event_ids = sorted(rows["event_id"].drop_nulls().unique().to_list())
    events = normalize_events(warehouse.events()).filter(pl.col("event_id").is_in(event_ids))
    known_events = events["event_id"].to_list()
    already = pl.concat(
        [
            part.select(pl.lit(event_id).alias("event_id"), pl.col("customer_id").cast(pl.String))
            for event_id in known_events
            for part in (
                warehouse.event_registrations(event_id),
                store.registered_candidates(program.program_id, event_id, now=now),
            )
        ]
        or [pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String})]
    ).unique()
    customer_ids = sorted(rows["customer_id"].drop_nulls().unique().to_list())
    known_customers = set(warehouse.contacts(customer_ids)["customer_id"].to_list()) if customer_ids else set()

    def verify(token: str) -> LinkClaims | None:
        try:
            return verify_link_token(secret, token, action="register")
        except InvalidLinkToken:
            return None

    outcome = validate_registrations(
        rows,
        events=events,
        known_customers=known_customers,
        already_registered=already,
        capacity_limit=program.event_config.capacity_limit,
        deadline_days=program.event_config.registration_deadline_days,
        verify=verify,
    )
    for (event_id,), accepted in outcome.accepted.group_by("event_id", maintain_order=True):
        store.mark_registered_many(
            program.program_id, str(event_id), accepted.select("customer_id", "registered_at", "channel")
        )
    return outcome


def read_feed(folder: Path, cursor: str | None) -> tuple[pl.DataFrame, str | None]:
    """Rows of the JSON-lines files named after `cursor` (file-name order), and the new cursor.

    The cursor is the last file read in full, so a sensor that fails mid-way re-reads from
    there; the platform must name files so they sort in drop order (e.g. a timestamp prefix).
    Blank lines are skipped; an empty or missing folder yields no rows and keeps the cursor.
    """
    files = sorted(p for p in folder.glob(f"*{FEED_SUFFIX}") if p.is_file() and (cursor is None or p.name > cursor))
    records = [
        json.loads(line) for path in files for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    frame = pl.DataFrame(
        {name: [record.get(name) for record in records] for name in INCOMING_SCHEMA},
        schema={name: pl.String() for name in INCOMING_SCHEMA},  # times parsed by validation
    )
    return frame.select(list(INCOMING_SCHEMA)), (files[-1].name if files else cursor)
