"""Partitions: one per event (dynamic, kept in sync with the warehouse's events table) and one per day."""

from collections.abc import Iterable

import dagster as dg

events_partitions = dg.DynamicPartitionsDefinition(name="events")


def run_tags(event_id: str, stage: str, channel: str | None = None) -> dict[str, str]:
    """The tags operators filter runs by in the UI."""
    tags = {"eventreach/event": event_id, "eventreach/stage": stage}
    return {**tags, "eventreach/channel": channel} if channel else tags


def event_run_requests(
    instance: dg.DagsterInstance, event_ids: Iterable[str], stage: str, launch: str, channel: str | None = None
) -> list[dg.RunRequest]:
    """One run per event of `event_ids` that is registered as a partition, keyed `<stage>:<event>:<launch>`
    (a tick, a snapshot's run, a feed batch's run): what launched it launches each event once."""
    known = set(instance.get_dynamic_partitions(events_partitions.name))
    return [
        dg.RunRequest(
            run_key=f"{stage}:{event_id}:{launch}", partition_key=event_id, tags=run_tags(event_id, stage, channel)
        )
        for event_id in event_ids
        if event_id in known
    ]


# The daily metrics: one partition per UTC day; today's exists (end_offset=1) because the use
# case aggregates at 23:59 of the day itself.
daily_partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)
