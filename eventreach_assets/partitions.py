"""Partitions: one per event (dynamic, kept in sync with the warehouse's events table)."""

import dagster as dg

events_partitions = dg.DynamicPartitionsDefinition(name="events")
