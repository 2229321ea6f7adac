"""Sensors: keep the `events` partitions in sync with the warehouse's events catalog."""

import hashlib

import dagster as dg

from eventreach_assets.domain.events import upcoming_event_ids
from eventreach_assets.partitions import events_partitions
from eventreach_assets.resources.program import ClockResource
from eventreach_assets.resources.warehouse import WarehouseResource


def catalog_fingerprint(event_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(event_ids)).encode()).hexdigest()[:16]


@dg.sensor(
    name="events_catalog_sensor",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for every upcoming scheduled event in the warehouse; never removes history.",
)
def events_catalog_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, clock: ClockResource
) -> dg.SensorResult | dg.SkipReason:
    upcoming = upcoming_event_ids(warehouse.events(), clock.now())
    fingerprint = catalog_fingerprint(upcoming)
    known = set(context.instance.get_dynamic_partitions(events_partitions.name))
    new_events = [event_id for event_id in upcoming if event_id not in known]
    if not new_events and context.cursor == fingerprint:
        return dg.SkipReason(f"events catalog unchanged ({len(upcoming)} upcoming events)")
    if new_events:
        context.log.info(f"adding event partitions: {', '.join(new_events)}")
    return dg.SensorResult(
        dynamic_partitions_requests=[events_partitions.build_add_request(new_events)] if new_events else [],
        cursor=fingerprint,
    )
