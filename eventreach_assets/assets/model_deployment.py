"""The scoring endpoints, kept on each model's current version (unpartitioned, after training).

Runs in `train_models` right after the model assets, so the Monday 02:00 batch finds endpoints
serving what the 01:00 retrain promoted (`SageMakerScoring` refuses any other version).
"""

from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import polars as pl

from eventreach_assets.assets.metadata import stopwatch, table
from eventreach_assets.assets.models import MODEL_ASSETS, MODELS
from eventreach_assets.resources.model_deployment import DeploymentResult, ModelDeploymentResource
from eventreach_assets.resources.model_registry import ModelRegistryResource
from eventreach_assets.resources.program import ProgramResource


def deploy_all(deployment: ModelDeploymentResource, versions: dict[str, str]) -> list[DeploymentResult]:
    """Deploy every model at once (a SageMaker switch takes minutes); raise after all have finished."""
    if not versions:
        return []
    with ThreadPoolExecutor(max_workers=len(versions), thread_name_prefix="deploy") as pool:
        futures = {
            model_id: pool.submit(deployment.deploy, model_id, version) for model_id, version in versions.items()
        }
    results, errors = [], []
    for future in futures.values():
        error = future.exception()
        if error is None:
            results.append(future.result())
        else:
            errors.append(error)
    if errors:
        done = ", ".join(f"{r.model_id} {r.action} on {r.endpoint}" for r in results) or "none"
        failed = "; ".join(str(error) for error in errors)
        message = f"{len(errors)} of {len(versions)} deployments failed: {failed} (succeeded: {done})"
        raise RuntimeError(message) from errors[0]
    return results


@dg.asset(
    **MODELS,
    deps=list(MODEL_ASSETS),
    kinds={"sagemaker"},
    tags={"stage": "deploy"},
    code_version="1",
)
def model_endpoints(
    context: dg.AssetExecutionContext,
    model_registry: ModelRegistryResource,
    model_deployment: ModelDeploymentResource,
    program: ProgramResource,
) -> dg.MaterializeResult:
    """Each scoring model's endpoint serving the registry's current version (a no-op when it already does)."""
    model_ids = [spec.model_id for spec in program.load().scoring_models]
    with stopwatch() as watch:
        versions = {model_id: model_registry.load_current(model_id).version for model_id in model_ids}
        results = deploy_all(model_deployment, versions)
    for result in results:
        context.log.info(
            f"{result.model_id} {result.version} on {result.endpoint}: {result.action} ({result.seconds:.1f} s)"
        )
    rows = pl.DataFrame(
        [
            {"model_id": r.model_id, **r.metadata(), "endpoint_config": r.endpoint_config or "",
             "previous_config": r.previous_config or ""}
            for r in results
        ]
    )  # fmt: skip
    return dg.MaterializeResult(
        metadata={
            **{result.model_id: result.metadata() for result in results},
            "deployments": table(rows),
            "model_versions": versions,
            **watch.metadata(),
        },
        data_version=dg.DataVersion(",".join(f"{m}={v}" for m, v in sorted(versions.items()))),
    )
