"""Jobs: named selections of assets that schedules and sensors launch.

Every job runs in one process (`in_process_executor`): their steps are sequential anyway, and a
process per step costs seconds of start-up each (measured in the README's benchmark).
"""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from eventreach_assets.domain.campaign_kinds import CAMPAIGN_KINDS
from eventreach_assets.partitions import events_partitions


def tagged_by_event() -> dg.PartitionedConfig:
    """Every run of an event's partition carries `eventreach/event`, however it was launched
    (schedule, sensor, backfill, the UI's launchpad), so operators can filter by event."""
    return dg.PartitionedConfig(
        partitions_def=events_partitions,
        run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=lambda key: {"eventreach/event": key},
    )


def asset_job(
    name: str, assets: list[str], tags: dict[str, str], description: str, *, per_event: bool = True
) -> UnresolvedAssetJobDefinition:
    """A job over the assets, in one process; `per_event` jobs run one event partition and every
    run carries the event's tag besides the stage (and channel) tags given here. Other jobs take
    their assets' partitions, if any (the daily metrics: one per day)."""
    # The job's partitioning is its assets' (Dagster infers it; passing it again is deprecated).
    return dg.define_asset_job(
        name=name,
        selection=dg.AssetSelection.assets(*assets),
        executor_def=dg.in_process_executor,
        tags=tags,
        description=description,
        config=tagged_by_event() if per_event else None,
    )


WEEKLY_BATCH_ASSETS = [
    "raw_candidates",
    "filtered_candidates",
    "scored_candidates",
    "candidates_table",
    "batch_metrics",
]
MODEL_ASSETS = ["model_training_set", "event_attendance_model", "interest_affinity_model", "model_endpoints"]

weekly_batch_job = asset_job(
    "weekly_batch", WEEKLY_BATCH_ASSETS, {"eventreach/stage": "weekly-batch"},
    "ETL → filter → score → store for one event (Monday 02:00 UTC).",
)  # fmt: skip
profile_snapshot_job = asset_job(
    "weekly_profile_snapshot", ["profile_snapshot"], {"eventreach/stage": "weekly-batch"},
    "This week's validated profiles for every upcoming event, once (program `extraction: weekly_snapshot`); "
    "its materialization launches the events' weekly_batch runs.", per_event=False,
)  # fmt: skip
export_job = asset_job(
    "export_candidates", ["candidates_export"], {"eventreach/stage": "export"},
    "Parquet export of the stored candidates of one event (Monday 04:30 UTC).",
)  # fmt: skip
model_training_job = asset_job(
    "train_models", MODEL_ASSETS, {"eventreach/stage": "training"},
    "Retrain the attendance and interest-affinity models, then deploy the promoted versions.", per_event=False,
)  # fmt: skip

# One job per sending asset (domain/campaign_kinds.py), so each is launched and retried on its own.
campaign_jobs = [
    asset_job(
        kind.job, [kind.asset], {"eventreach/stage": kind.stage, "eventreach/channel": kind.channel}, kind.description
    )
    for kind in CAMPAIGN_KINDS.values()
]
attendance_job = asset_job(
    "attendance_tracking", ["event_attendance"],
    {"eventreach/stage": "attendance", "eventreach/channel": "event-platform"},
    "Record who attended and for how long, once the event has ended.",
)  # fmt: skip

# One job per engagement feed; the feed's sensor launches it with the new files as run config.
FEED_JOBS = {  # feed -> (job name, asset name)
    "registrations": ("registration_ingest", "ingested_registrations"),
    "tracking": ("tracking_ingest", "link_interactions"),
    "survey": ("survey_ingest", "survey_responses"),
    "provider": ("provider_feedback_ingest", "provider_feedback"),  # SES events, SMTP DSNs
}
feed_jobs = {
    feed: asset_job(
        job_name,
        [asset_name],
        {"eventreach/stage": "engagement", "eventreach/feed": feed},
        f"Ingest new files of the {feed} feed.",
        per_event=False,
    )
    for feed, (job_name, asset_name) in FEED_JOBS.items()
}

daily_metrics_job = asset_job(
    "daily_metrics_job", ["daily_metrics"], {"eventreach/stage": "metrics"},
    "The day's sends and engagement per event and channel, published to the metrics sink (23:59 UTC).",
    per_event=False,
)  # fmt: skip
campaign_report_job = asset_job(
    "campaign_report_job", ["campaign_report"], {"eventreach/stage": "report"},
    "One event's campaign report: funnel, attribution, costs, holdout lift, charts and HTML.",
)  # fmt: skip
daily_metrics_freshness_job = dg.define_asset_job(
    name="daily_metrics_freshness",
    selection=dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("daily_metrics"), "yesterday_published")),
    executor_def=dg.in_process_executor,
    tags={"eventreach/stage": "metrics"},
    description="At 00:30: are yesterday's metrics published?",
)
