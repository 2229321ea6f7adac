"""Partitions: one per event (dynamic, kept in sync with the warehouse's events table) and one per day."""

import dagster as dg

events_partitions = dg.DynamicPartitionsDefinition(name="events")

# The daily metrics: one partition per UTC day; today's exists (end_offset=1) because the use
# case aggregates at 23:59 of the day itself.
daily_partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)
