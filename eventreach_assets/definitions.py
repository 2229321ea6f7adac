"""The Dagster definitions: assets, checks, jobs, schedules, sensors and the deployment's resources.

`EVENTREACH_DEPLOYMENT=local` (the default) runs everything on this machine under
`EVENTREACH_HOME` (default `./.eventreach`); asset bodies never know which deployment runs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from eventreach_assets.assets import filtering, ingestion, metrics, models, scoring, storage
from eventreach_assets.checks import batch_checks
from eventreach_assets.jobs import export_job, model_training_job, weekly_batch_job
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, load_program
from eventreach_assets.resources.candidate_store import SqliteCandidateStore
from eventreach_assets.resources.export import LocalParquetExport
from eventreach_assets.resources.metrics import LocalMetricsSink
from eventreach_assets.resources.models import InProcessScoring, LocalModelRegistry
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.storage import LocalDecisionLog, PolarsParquetIOManager
from eventreach_assets.resources.warehouse import DuckDBWarehouse
from eventreach_assets.schedules import build_schedules
from eventreach_assets.sensors import events_catalog_sensor

DEPLOYMENTS = ("local",)


def eventreach_home() -> Path:
    return Path(os.environ.get("EVENTREACH_HOME", ".eventreach")).resolve()


def local_resources(home: Path, program_path: Path, fixed_now: str | None = None) -> dict[str, Any]:
    """Every resource of the local deployment, all state under one data dir."""
    registry = LocalModelRegistry(base_dir=str(home / "models"))
    return {
        "program": ProgramResource(path=str(program_path)),
        "clock": ClockResource(fixed_now=fixed_now),
        "warehouse": DuckDBWarehouse(path=str(home / "warehouse.duckdb")),
        "decision_log": LocalDecisionLog(base_dir=str(home / "decisions")),
        "io_manager": PolarsParquetIOManager(base_dir=str(home / "assets")),
        "model_registry": registry,
        "scoring_service": InProcessScoring(registry=registry),
        "candidate_store": SqliteCandidateStore(path=str(home / "candidates.sqlite")),
        "exporter": LocalParquetExport(base_dir=str(home / "export")),
        "metrics_sink": LocalMetricsSink(base_dir=str(home / "metrics")),
    }


def build_definitions(
    home: Path | None = None,
    program_path: Path | None = None,
    deployment: str | None = None,
    fixed_now: str | None = None,
) -> dg.Definitions:
    """Definitions for one deployment; tests call this with a temporary home and a pinned clock."""
    deployment = deployment or os.environ.get("EVENTREACH_DEPLOYMENT", "local")
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"EVENTREACH_DEPLOYMENT={deployment!r} is not one of {DEPLOYMENTS}")
    program_path = program_path or Path(os.environ.get("EVENTREACH_PROGRAM", DEFAULT_PROGRAM_PATH))
    program = load_program(program_path)
    resources = local_resources(home or eventreach_home(), program_path, fixed_now or os.environ.get("EVENTREACH_NOW"))
    return dg.Definitions(
        assets=[
            ingestion.raw_candidates,
            filtering.filtered_candidates,
            models.model_training_set,
            *models.model_assets,
            scoring.scored_candidates,
            storage.candidates_table,
            storage.candidates_export,
            metrics.batch_metrics,
        ],
        asset_checks=dg.load_asset_checks_from_modules([batch_checks]),
        jobs=[weekly_batch_job, export_job, model_training_job],
        schedules=build_schedules(program),
        sensors=[events_catalog_sensor],
        resources=resources,
    )


defs = build_definitions()
