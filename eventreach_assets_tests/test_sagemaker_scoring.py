"""SageMakerScoring over boto3's sagemaker-runtime client and real HTTP to the project's model server."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from eventreach_assets.domain.models import (
    AFFINITY_MODEL,
    ATTENDANCE_MODEL,
    MODEL_SPECS,
    TrainedModel,
    build_training_frame,
    latest_profiles,
    train_model,
)
from eventreach_assets.domain.scoring import score_in_batches
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, load_program
from eventreach_assets.resources.model_registry import LocalModelRegistry
from eventreach_assets.resources.scoring import SageMakerEndpointError, SageMakerScoring, endpoints_from_program
from eventreach_assets.serving.model_server import InferenceError, ModelApp, Reply, serve_in_thread
from eventreach_assets_tests.stand_ins import FAKE_AWS_ENV, free_port
from eventreach_assets_tests.test_models import synthetic_warehouse

pytestmark = pytest.mark.integration

TOPICS = ["ai", "cloud"]
Serve = Callable[..., str]  # start a model server for the test, return its base URL
ENDPOINTS = {ATTENDANCE_MODEL: "event-attendance-v3", AFFINITY_MODEL: "interest-affinity-v2"}


class RecordingApp(ModelApp):
    """The real model app, counting calls and overlap, failing the first calls as told."""

    def __init__(
        self, models: Mapping[str, TrainedModel], delay: float = 0.0, failures: list[InferenceError] | None = None
    ) -> None:
        super().__init__(models)
        self.delay = delay
        self.failures = list(failures or [])
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def invoke(self, endpoint: str | None, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        with self._lock:
            self.calls += 1
            failure = self.failures[self.calls - 1] if self.calls <= len(self.failures) else None
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if failure is not None:
                raise failure
            time.sleep(self.delay)
            return super().invoke(endpoint, body, content_type, accept)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 signs every request; the model server ignores the signature."""
    for key, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def warehouse() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return synthetic_warehouse(n_customers=900)


@pytest.fixture(scope="module")
def models(warehouse: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> dict[str, TrainedModel]:
    history, profiles, events = warehouse
    training = build_training_frame(history.lazy(), profiles.lazy(), events.lazy())
    return {model_id: train_model(model_id, training) for model_id in MODEL_SPECS}


@pytest.fixture(scope="module")
def candidates(warehouse: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    """One candidate-model row per customer, as filtered_candidates hands them to scoring."""
    return latest_profiles(warehouse[1].lazy()).collect()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, models: dict[str, TrainedModel]) -> LocalModelRegistry:
    registry = LocalModelRegistry(base_dir=str(tmp_path_factory.mktemp("models")))
    for model in models.values():
        registry.save(model, promote=True)
    return registry


@pytest.fixture
def serve(models: dict[str, TrainedModel]) -> Iterator[Serve]:
    """Start a model server (loopback, free port) for the test; stopped at its end."""
    stops = []

    def start(app: ModelApp | None = None) -> str:
        url, stop = serve_in_thread(app or ModelApp(models))
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()


def scoring_for(registry: LocalModelRegistry, url: str, **overrides: object) -> SageMakerScoring:
    settings = {"endpoints": ENDPOINTS, "region_name": "us-east-1", "endpoint_url": url, "backoff_seconds": 0.01}
    return SageMakerScoring(registry=registry, **{**settings, **overrides})


def test_endpoints_come_from_the_program_uris() -> None:
    assert endpoints_from_program(load_program(DEFAULT_PROGRAM_PATH)) == ENDPOINTS


def test_remote_scores_equal_in_process_scores(
    serve: Serve, registry: LocalModelRegistry, models: dict[str, TrainedModel], candidates: pl.DataFrame
) -> None:
    """Several batches, each split into requests that are in flight at the same time."""
    app = RecordingApp(models, delay=0.02)
    scoring = scoring_for(registry, serve(app), rows_per_request=40, max_in_flight=4)
    loaded = scoring.load_models(list(ENDPOINTS))
    assert {m: model.version for m, model in loaded.items()} == {m: model.version for m, model in models.items()}

    remote = score_in_batches(candidates, TOPICS, loaded, batch_size=200, predict=scoring.predict_batches)
    local = score_in_batches(candidates, TOPICS, models, batch_size=200)

    assert remote.height == candidates.height == 900
    for column in ("p_event_attendance_v3", "p_interest_affinity_v2", "score"):
        assert float((remote[column] - local[column]).abs().max()) <= 1e-9
    assert_frame_equal(remote, local, check_exact=True)  # in fact bit for bit: floats travel as repr
    assert app.calls == 2 * (4 * 5 + 3)  # per model: 4 batches of 200 rows = 5 x 40, one of 100 = 40 + 40 + 20
    assert app.max_active >= 2


def test_works_as_a_dagster_resource(
    serve: Serve, registry: LocalModelRegistry, models: dict[str, TrainedModel]
) -> None:
    model = models[ATTENDANCE_MODEL]
    matrix = np.random.default_rng(1).random((30, 3))
    with dg.build_resources({"scoring_service": scoring_for(registry, serve())}) as resources:
        service = resources.scoring_service
        loaded = service.load_models([ATTENDANCE_MODEL])[ATTENDANCE_MODEL]
        np.testing.assert_array_equal(service.predict(loaded, matrix), model.predict_matrix(matrix))
        assert service.predict(loaded, np.empty((0, 3))).shape == (0,)


def test_payloads_are_split_to_stay_under_the_byte_limit(
    serve: Serve, registry: LocalModelRegistry, models: dict[str, TrainedModel]
) -> None:
    model = models[AFFINITY_MODEL]
    matrix = (np.random.default_rng(2).random((300, len(model.feature_names))) < 0.3).astype(np.float64)
    app = RecordingApp(models)
    scoring = scoring_for(registry, serve(app), rows_per_request=1000, max_payload_bytes=2000)
    np.testing.assert_array_equal(scoring.predict(model, matrix), model.predict_matrix(matrix))
    row_bytes = len(",".join(["0.0"] * len(model.feature_names))) + 1
    assert app.calls >= 300 * row_bytes // 2000

    tiny = scoring_for(registry, serve(app), max_payload_bytes=10)
    with pytest.raises(SageMakerEndpointError, match=r"'interest-affinity-v2'.*over max_payload_bytes=10"):
        tiny.predict(model, matrix)


def test_a_4xx_fails_at_once_naming_the_endpoint(
    serve: Serve, registry: LocalModelRegistry, models: dict[str, TrainedModel]
) -> None:
    """A mapping that sends the attendance features to the affinity endpoint: the endpoint's 400 says why."""
    app = RecordingApp(models)
    url = serve(app)
    swapped = scoring_for(registry, url, endpoints={ATTENDANCE_MODEL: "interest-affinity-v2"})
    matrix = np.random.default_rng(3).random((10, 3))
    with pytest.raises(SageMakerEndpointError) as caught:
        swapped.predict(models[ATTENDANCE_MODEL], matrix)
    message = str(caught.value)
    assert "SageMaker endpoint 'interest-affinity-v2'" in message
    assert "HTTP 400 ValidationError" in message
    assert f"expects {len(models[AFFINITY_MODEL].feature_names)} columns" in message
    assert (caught.value.endpoint, caught.value.status, app.calls) == ("interest-affinity-v2", 400, 1)

    missing = scoring_for(registry, url, endpoints={ATTENDANCE_MODEL: "event-attendance-v9"})
    with pytest.raises(SageMakerEndpointError, match=r"'event-attendance-v9'.*HTTP 404.*not found"):
        missing.predict(models[ATTENDANCE_MODEL], matrix)
    with pytest.raises(KeyError, match="no SageMaker endpoint configured for model 'interest-affinity-v2'"):
        missing.predict(models[AFFINITY_MODEL], matrix)


def test_throttling_and_5xx_are_retried_until_success(
    serve: Serve, registry: LocalModelRegistry, models: dict[str, TrainedModel]
) -> None:
    failures = [
        InferenceError(400, "ThrottlingException", "Rate exceeded"),
        InferenceError(503, "ServiceUnavailable", "busy"),
        InferenceError(429, "ModelNotReadyException", "warming up"),
    ]
    app = RecordingApp(models, failures=failures)
    scoring = scoring_for(registry, serve(app), max_attempts=4)
    model = models[ATTENDANCE_MODEL]
    matrix = np.random.default_rng(4).random((25, 3))
    np.testing.assert_array_equal(scoring.predict(model, matrix), model.predict_matrix(matrix))
    assert app.calls == 4  # botocore's own retries are off: every attempt is ours


def test_retries_are_bounded(serve: Serve, registry: LocalModelRegistry, models: dict[str, TrainedModel]) -> None:
    app = RecordingApp(models, failures=[InferenceError(500, "InternalFailure", "boom")] * 10)
    scoring = scoring_for(registry, serve(app), max_attempts=3)
    with pytest.raises(SageMakerEndpointError, match=r"'event-attendance-v3'.*after 3 tries: HTTP 500 InternalFailure"):
        scoring.predict(models[ATTENDANCE_MODEL], np.zeros((5, 3)))
    assert app.calls == 3

    closed = scoring_for(registry, f"http://127.0.0.1:{free_port()}", max_attempts=2)
    with pytest.raises(SageMakerEndpointError, match="'event-attendance-v3' unreachable after 2 tries"):
        closed.predict(models[ATTENDANCE_MODEL], np.zeros((5, 3)))


def test_an_endpoint_serving_another_version_is_refused(
    serve: Serve, registry: LocalModelRegistry, models: dict[str, TrainedModel]
) -> None:
    stale = {**models, ATTENDANCE_MODEL: dataclasses.replace(models[ATTENDANCE_MODEL], version="0123456789ab")}
    scoring = scoring_for(registry, serve(ModelApp(stale)))
    with pytest.raises(SageMakerEndpointError, match="serves event-attendance-v3 version 0123456789ab"):
        scoring.predict(models[ATTENDANCE_MODEL], np.zeros((5, 3)))
    lenient = scoring_for(registry, serve(ModelApp(stale)), check_model_version=False)
    assert lenient.predict(models[ATTENDANCE_MODEL], np.zeros((5, 3))).shape == (5,)


def test_models_still_come_from_the_registry(tmp_path: Path, serve: Serve) -> None:
    scoring = scoring_for(LocalModelRegistry(base_dir=str(tmp_path)), serve())
    with pytest.raises(LookupError, match="has not been trained yet"):
        scoring.load_models([ATTENDANCE_MODEL])
