"""The waitlist: a seat that opens (a cancellation, a raised capacity) goes to the earliest waitlisted customer."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from eventreach_assets.domain.engagement_schemas import REGISTERED, WAITLISTED
from eventreach_assets.domain.events import EventContext, normalize_events
from eventreach_assets.domain.registrations import promote_waitlist
from eventreach_assets.ingestion.seats import STORED_COLUMNS, registered_customers
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.warehouse import WarehouseResource

PROMOTED_COLUMNS = (*STORED_COLUMNS, "promoted_at")


def promote_from_waitlist(
    warehouse: WarehouseResource,
    store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    program_config: ProgramConfig,
    event: EventContext | str,
    now: datetime,
) -> pl.DataFrame:
    """Give the event's open seats to its earliest waitlisted customers; returns who was promoted
    now (PROMOTED_COLUMNS: event_id, customer_id, registration_id, registered_at, channel,
    campaign_id, promoted_at), for the waitlist-confirmation send.

    Seats are read fresh: the event's current capacity in the catalog (so a capacity raised there
    promotes as many as it opens) against everyone holding a seat now (cancellations freed theirs).
    Nobody is promoted for a cancelled event or once it has started. The promotion is the
    engagement store's waitlisted -> registered change, which happens once: running again, or
    after a redelivery, promotes nobody twice (and the ledger sends each confirmation once). Run
    it from one place at a time (a sensor or job), so two runs do not share out the same seats.
    """
    event_id = event if isinstance(event, str) else event.event_id
    promoted_schema = {
        "event_id": pl.String(), "customer_id": pl.String(), "registration_id": pl.String(),
        "registered_at": pl.Datetime("us"), "channel": pl.String(), "campaign_id": pl.String(),
        "promoted_at": pl.Datetime("us"),
    }  # fmt: skip
    nobody = pl.DataFrame(schema=promoted_schema)
    catalog = normalize_events(warehouse.events()).filter(pl.col("event_id") == event_id)
    if catalog.height == 0:
        return nobody
    row = catalog.row(0, named=True)
    moment = now if now.tzinfo is None else now.astimezone(UTC).replace(tzinfo=None)
    if str(row.get("status") or "scheduled") == "cancelled" or moment >= row["start_time_utc"]:
        return nobody
    registered = registered_customers(warehouse, store, engagement, program_config.program_id, event_id, now)
    waitlisted = engagement.registrations(event_id, status=WAITLISTED).join(
        registered.select(pl.col("customer_id").cast(pl.String)), on="customer_id", how="anti"
    )
    chosen = promote_waitlist(
        waitlisted, registered.height, int(row["capacity"]), program_config.event_config.capacity_limit
    )
    if chosen.height == 0:
        return nobody
    engagement.record_registrations(chosen.select(STORED_COLUMNS), REGISTERED, now)
    # Only the rows this call changed: a concurrent or earlier call may have promoted some already.
    now_registered = engagement.registrations(event_id, status=REGISTERED).filter(
        pl.col("recorded_at") == pl.lit(moment, dtype=pl.Datetime("us"))
    )
    promoted = chosen.join(now_registered.select("customer_id"), on="customer_id", how="semi", maintain_order="left")
    if promoted.height:
        store.mark_registered_many(
            program_config.program_id, event_id, promoted.select("customer_id", "registered_at", "channel")
        )
    return promoted.select(*STORED_COLUMNS, pl.lit(moment, dtype=pl.Datetime("us")).alias("promoted_at")).cast(
        promoted_schema  # type: ignore[arg-type]
    )
