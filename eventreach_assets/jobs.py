"""Jobs: named selections of assets that schedules and sensors launch.

The weekly batch runs in one process (`in_process_executor`): its steps are sequential anyway,
and a process per step costs seconds of start-up each (measured in the README's benchmark).
"""

import dagster as dg

from eventreach_assets.partitions import events_partitions

WEEKLY_BATCH_ASSETS = [
    "raw_candidates",
    "filtered_candidates",
    "scored_candidates",
    "candidates_table",
    "batch_metrics",
]
MODEL_ASSETS = ["model_training_set", "event_attendance_model", "interest_affinity_model", "model_endpoints"]

weekly_batch_job = dg.define_asset_job(
    name="weekly_batch",
    selection=dg.AssetSelection.assets(*WEEKLY_BATCH_ASSETS),
    partitions_def=events_partitions,
    executor_def=dg.in_process_executor,
    tags={"eventreach/stage": "weekly-batch"},
    description="ETL → filter → score → store for one event (Monday 02:00 UTC).",
)

export_job = dg.define_asset_job(
    name="export_candidates",
    selection=dg.AssetSelection.assets("candidates_export"),
    partitions_def=events_partitions,
    executor_def=dg.in_process_executor,
    tags={"eventreach/stage": "export"},
    description="Parquet export of the stored candidates of one event (Monday 04:30 UTC).",
)

model_training_job = dg.define_asset_job(
    name="train_models",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    executor_def=dg.in_process_executor,
    tags={"eventreach/stage": "training"},
    description="Retrain the attendance and interest-affinity models, then deploy the promoted versions.",
)


# One job per send, so each can be launched (and retried) on its own schedule or sensor.
CAMPAIGN_JOBS = [  # job, asset, channel, description
    ("email_campaign", "email_invitations", "email", "Email invitations with .ics (Monday 10:00)."),
    ("in_app_campaign", "in_app_invitations", "in-app", "In-app banners (Monday 14:00)."),
    ("push_reminder", "push_reminders", "push", "Push reminder to registrants, 1 day before."),
    ("day_of_reminder", "day_of_reminders", "email", "Email on the event day, 09:00 local."),
]
campaign_jobs = [
    dg.define_asset_job(
        name=name,
        selection=dg.AssetSelection.assets(asset),
        partitions_def=events_partitions,
        executor_def=dg.in_process_executor,
        tags={"eventreach/stage": "campaign", "eventreach/channel": channel},
        description=description,
    )
    for name, asset, channel, description in CAMPAIGN_JOBS
]
