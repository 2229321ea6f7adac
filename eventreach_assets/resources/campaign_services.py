"""The services every campaign asset shares, as one nested resource, and the "is this event still on?" guard.

A campaign asset needs the event, who registered, the candidates table, where to reach people,
the ledger, the link secret, a place for samples and the program: seven resources that every
sending asset took one by one. `CampaignServices` bundles them (each still a resource of its own
in `Definitions`, so a deployment swaps them in one place); an asset takes this, its channel and
the clock.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import polars as pl

from eventreach_assets.domain.campaign_kinds import CampaignKind
from eventreach_assets.domain.candidate_items import ITEM_SCHEMA
from eventreach_assets.domain.events import EventContext, UnknownEventError, event_context
from eventreach_assets.domain.seats import seat_holders
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.link_signing import LinkSigningResource
from eventreach_assets.resources.program import ProgramResource
from eventreach_assets.resources.warehouse import WarehouseResource

PAGE = 5_000  # candidates read per store query
EVENT_CANCELLED = "event_cancelled: nothing more is sent for a cancelled event"
EVENT_NOT_CANCELLED = "event_not_cancelled: a cancellation notice goes out only for a cancelled event"


class CampaignServices(dg.ConfigurableResource):
    """The shared services of the campaign assets; methods are the reads several of them make."""

    warehouse: WarehouseResource
    candidate_store: CandidateStoreResource
    engagement: EngagementStoreResource
    ledger: DeliveryLedgerResource
    link_signing: LinkSigningResource
    decision_log: DecisionLogResource
    program: ProgramResource

    def config(self) -> ProgramConfig:
        return self.program.load()

    def event(self, partition_key: str) -> EventContext:
        """The event of this partition; an unknown key fails the asset with a message naming it."""
        try:
            return event_context(self.warehouse.events(), partition_key)
        except UnknownEventError as error:
            raise dg.Failure(description=str(error)) from None

    def stopped_because(self, event: EventContext, kind: CampaignKind) -> str | None:
        """Why this kind sends nothing for the event as it stands now, or None when it may send.

        A cancelled event gets its cancellation notice and nothing else; a scheduled one never gets it.
        """
        cancelled = event.status == "cancelled"
        if cancelled and not kind.sends_when_cancelled:
            return EVENT_CANCELLED
        if kind.sends_when_cancelled and not cancelled:
            return EVENT_NOT_CANCELLED
        return None

    def registered(self, event_id: str, now: datetime) -> pl.DataFrame:
        """Everyone holding a seat at the event (the same three sources ingestion reads)."""
        return seat_holders(
            self.warehouse.event_registrations(event_id),
            self.candidate_store.registered_candidates(self.config().program_id, event_id, now=now),
            self.engagement.registrations(event_id),
        )

    def top_candidates(
        self, event_id: str, channel: str, min_score: float, limit: int, now: datetime
    ) -> pl.DataFrame:  # fmt: skip
        """Up to `limit` live, unregistered candidates for a channel, score descending, page by page;
        always with the item columns, also when there are none (a sold-out or empty event)."""
        pages: list[pl.DataFrame] = [pl.DataFrame(schema=ITEM_SCHEMA)]
        cursor: str | None = None
        fetched = 0
        program_id = self.config().program_id
        while fetched < limit:
            page = self.candidate_store.top_candidates_for_channel(
                program_id, event_id, channel, min_score=min_score, limit=min(PAGE, limit - fetched),
                exclude_registered=True, cursor=cursor, now=now,
            )  # fmt: skip
            pages.append(page.items)
            fetched += page.count
            cursor = page.next_cursor
            if cursor is None or page.count == 0:
                break
        return pl.concat(pages, how="diagonal_relaxed")

    def with_contacts(self, customers: pl.DataFrame, event_id: str, now: datetime) -> pl.DataFrame:
        """`customers` with where to reach them: from the candidates table, or from the warehouse
        for customers who never were candidates (registered before the batch, or elsewhere)."""
        stored = (
            self.candidate_store.event_items(self.config().program_id, event_id, now=now)
            .unique("customer_id", keep="first", maintain_order=True)
            .select("customer_id", "email", "marketplace", "timezone")
        )
        missing = customers.join(stored, on="customer_id", how="anti")["customer_id"].to_list()
        contacts = pl.concat([stored, self.warehouse.contacts(missing).select(stored.columns)], how="vertical_relaxed")
        return customers.join(contacts, on="customer_id", how="inner", maintain_order="left")
