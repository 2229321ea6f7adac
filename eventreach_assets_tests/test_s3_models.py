"""S3ModelRegistry against moto over real HTTP, and the SageMaker package it writes."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster_aws.s3 import S3Resource

from eventreach_assets.domain.models import AFFINITY_MODEL, ATTENDANCE_MODEL, MODEL_SPECS, TrainedModel, train_model
from eventreach_assets.resources.model_registry import ModelNotTrainedError, S3ModelRegistry
from eventreach_assets.resources.scoring import SageMakerScoring
from eventreach_assets.serving.model_server import find_artifact, load_models, serve_in_thread
from eventreach_assets_tests.stand_ins import REGION
from eventreach_assets_tests.test_models import training_frame

pytestmark = pytest.mark.integration

BUCKET = "eventreach-models"


@pytest.fixture(scope="module")
def models() -> dict[str, TrainedModel]:
    training = training_frame(n_customers=600)
    return {model_id: train_model(model_id, training) for model_id in MODEL_SPECS}


@pytest.fixture
def s3(aws_endpoint: str) -> S3Resource:
    return S3Resource(endpoint_url=aws_endpoint, region_name=REGION)


@pytest.fixture
def registry(s3: S3Resource) -> S3ModelRegistry:
    registry = S3ModelRegistry(s3=s3, bucket=BUCKET, prefix="models")
    registry.client().create_bucket(Bucket=BUCKET)  # one client per test: building one takes ~0.15 s
    return registry


def keys(registry: S3ModelRegistry) -> list[str]:
    listing = registry.client().list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_round_trip_and_layout(registry: S3ModelRegistry, models: dict[str, TrainedModel]) -> None:
    model = models[ATTENDANCE_MODEL]
    uri = registry.save(model, promote=True)
    assert uri == f"s3://{BUCKET}/models/{ATTENDANCE_MODEL}/{model.version}.joblib"
    assert keys(registry) == [f"models/{ATTENDANCE_MODEL}/CURRENT", f"models/{ATTENDANCE_MODEL}/{model.version}.joblib"]
    loaded = registry.load_current(ATTENDANCE_MODEL)
    assert (loaded.model_id, loaded.version) == (model.model_id, model.version)
    assert loaded.feature_names == model.feature_names
    assert loaded.metrics == model.metrics
    matrix = np.random.default_rng(0).random((50, 3))
    np.testing.assert_array_equal(loaded.predict_matrix(matrix), model.predict_matrix(matrix))


def test_promote_flag_moves_current_only_when_true(registry: S3ModelRegistry, models: dict[str, TrainedModel]) -> None:
    first = models[AFFINITY_MODEL]
    second = dataclasses.replace(first, version="bbbbbbbbbbbb")
    registry.save(first, promote=True)
    registry.save(second, promote=False)  # e.g. below the AUC floor: stored for inspection only
    assert registry.current_version(AFFINITY_MODEL) == first.version
    assert registry.load_current(AFFINITY_MODEL).version == first.version
    assert registry.load_version(AFFINITY_MODEL, second.version).version == second.version
    registry.save(second, promote=True)
    assert registry.load_current(AFFINITY_MODEL).version == second.version


def test_never_trained_and_missing_bucket_fail_clearly(registry: S3ModelRegistry, s3: S3Resource) -> None:
    with pytest.raises(ModelNotTrainedError, match=rf"{ATTENDANCE_MODEL}.*not been trained yet.*`train_models`"):
        registry.load_current(ATTENDANCE_MODEL)
    with pytest.raises(ModelNotTrainedError, match=r"version 'abc'.*does not exist"):
        registry.load_version(ATTENDANCE_MODEL, "abc")
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        S3ModelRegistry(s3=s3, bucket="no-such-bucket").load_current(ATTENDANCE_MODEL)
    with pytest.raises(ValueError, match="unsafe key"):
        registry.load_current("../escape")


@pytest.mark.parametrize(("prefix", "expected"), [("", ""), ("/team/models/", "team/models/")])
def test_prefix_is_normalised(
    registry: S3ModelRegistry, models: dict[str, TrainedModel], prefix: str, expected: str
) -> None:
    model = models[ATTENDANCE_MODEL]
    S3ModelRegistry(s3=registry.s3, bucket=BUCKET, prefix=prefix).save(model, promote=True)
    assert keys(registry) == [
        f"{expected}{ATTENDANCE_MODEL}/CURRENT",
        f"{expected}{ATTENDANCE_MODEL}/{model.version}.joblib",
    ]


def test_sagemaker_package_is_served_and_scored_through_the_aws_resources(
    registry: S3ModelRegistry, models: dict[str, TrainedModel], tmp_path: Path
) -> None:
    """The aws deployment end to end: registry on S3 -> model.tar.gz -> /opt/ml/model -> endpoint -> scoring."""
    for model in models.values():
        registry.save(model, promote=True)
    model_dirs = []
    for model_id, model in models.items():
        uri = registry.package_for_sagemaker(model_id)
        key = f"models/{model_id}/sagemaker/{model.version}/model.tar.gz"
        assert uri == f"s3://{BUCKET}/{key}"
        package = registry.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert registry.package_for_sagemaker(model_id, model.version) == uri
        assert registry.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == package  # reproducible bytes
        model_dir = tmp_path / model_id
        with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as archive:
            assert archive.getnames() == ["model.joblib"]
            archive.extractall(model_dir, filter="data")
        assert find_artifact(model_dir) == model_dir / "model.joblib"
        model_dirs.append(model_dir)

    url, stop = serve_in_thread(load_models(model_dirs))
    try:
        scoring = SageMakerScoring(
            registry=registry,
            endpoints={model_id: model_id for model_id in models},
            region_name=REGION,
            endpoint_url=url,
            rows_per_request=16,
        )
        with dg.build_resources({"scoring_service": scoring}) as resources:
            service = resources.scoring_service
            for model_id, loaded in service.load_models(list(models)).items():
                matrix = np.random.default_rng(5).random((40, len(loaded.feature_names)))
                np.testing.assert_array_equal(service.predict(loaded, matrix), models[model_id].predict_matrix(matrix))
    finally:
        stop()


def test_packaging_needs_a_current_version(registry: S3ModelRegistry) -> None:
    with pytest.raises(ModelNotTrainedError, match="no current version to package"):
        registry.package_for_sagemaker(ATTENDANCE_MODEL)
