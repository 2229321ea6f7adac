"""The two scoring models, retrained weekly on the invitation history (unpartitioned)."""

import dagster as dg
import polars as pl

from eventreach_assets.assets.metadata import stopwatch, table
from eventreach_assets.domain.models import build_training_frame, model_spec, train_model
from eventreach_assets.resources.model_registry import ModelRegistryResource
from eventreach_assets.resources.program import ProgramResource
from eventreach_assets.resources.warehouse import WarehouseResource

MODELS = {"owners": ["team:data-science"], "group_name": "models"}

# Asset name -> model id in the program YAML.
MODEL_ASSETS: dict[str, str] = {
    "event_attendance_model": "event-attendance-v3",
    "interest_affinity_model": "interest-affinity-v2",
}


@dg.asset(**MODELS, kinds={"polars"}, tags={"stage": "training"}, code_version="1")
def model_training_set(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Past invitations joined to the customer's profile and the event: the models' labelled rows."""
    with stopwatch() as watch:
        training = build_training_frame(
            warehouse.invitation_history().lazy(), warehouse.training_profiles().lazy(), warehouse.events().lazy()
        )
    rates = training.select(
        pl.len().alias("rows"),
        pl.col("customer_id").n_unique().alias("customers"),
        pl.col("event_id").n_unique().alias("events"),
        (pl.col("registered").mean() * 100).round(2).alias("registered_pct"),
        (pl.col("attended").mean() * 100).round(2).alias("attended_pct"),
    ).row(0, named=True)
    return dg.MaterializeResult(
        value=training, metadata={**rates, "dagster/row_count": training.height, **watch.metadata()}
    )


def build_model_asset(asset_name: str, model_id: str) -> dg.AssetsDefinition:
    """One asset per model: train, save a versioned artifact, report holdout quality."""
    check_name = "auc_above_floor"

    @dg.asset(
        name=asset_name,
        **MODELS,
        kinds={"scikitlearn"},
        tags={"stage": "training"},
        code_version="1",
        description=f"The {model_id} model trained on `{model_spec(model_id).label}`.",
        check_specs=[dg.AssetCheckSpec(check_name, asset=asset_name, blocking=True,
                                       description="Holdout AUC at or above the program's scoring.minAuc.")],
    )  # fmt: skip
    def _model(
        model_training_set: pl.DataFrame, model_registry: ModelRegistryResource, program: ProgramResource
    ) -> dg.MaterializeResult:
        floor = program.load().scoring.min_auc
        with stopwatch() as watch:
            model = train_model(model_id, model_training_set)
            # A model below the AUC floor is kept for inspection but never becomes current.
            passed = model.metrics.auc >= floor
            uri = model_registry.save(model, promote=passed)
        metrics = model.metrics
        return dg.MaterializeResult(
            metadata={
                "model_id": model_id,
                "version": model.version,
                "holdout_auc": round(metrics.auc, 4),
                "brier": round(metrics.brier, 4),
                "brier_baseline": round(metrics.brier_baseline, 4),
                "positive_rate": round(metrics.positive_rate, 4),
                "training_rows": metrics.training_rows,
                "holdout_rows": metrics.holdout_rows,
                "calibration": table(pl.DataFrame(metrics.calibration).with_columns(pl.selectors.float().round(4))),
                "artifact": dg.MetadataValue.path(uri),
                "promoted_to_current": passed,
                **watch.metadata(),
            },
            data_version=dg.DataVersion(model.version),
            check_results=[
                dg.AssetCheckResult(
                    check_name=check_name,
                    passed=passed,
                    metadata={"holdout_auc": round(metrics.auc, 4), "floor": floor, "promoted": passed},
                )
            ],
        )

    return _model


model_assets = [build_model_asset(name, model_id) for name, model_id in MODEL_ASSETS.items()]
