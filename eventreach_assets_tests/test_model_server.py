"""The SageMaker-contract model server, over real HTTP on loopback, with models trained here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from eventreach_assets.domain.models import AFFINITY_MODEL, ATTENDANCE_MODEL, MODEL_SPECS, TrainedModel, train_model
from eventreach_assets.domain.sagemaker_wire import (
    CUSTOM_ATTRIBUTES_HEADER,
    csv_lines,
    format_probabilities,
    parse_probabilities,
)
from eventreach_assets.resources.model_registry import write_sagemaker_tarball
from eventreach_assets.serving.model_server import (
    MODEL_DIR_ENV,
    ModelApp,
    find_artifact,
    main,
    parse_csv,
    serve_in_thread,
)
from eventreach_assets_tests.stand_ins import free_port
from eventreach_assets_tests.test_models import training_frame

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models() -> dict[str, TrainedModel]:
    training = training_frame(n_customers=600)
    return {model_id: train_model(model_id, training) for model_id in MODEL_SPECS}


@pytest.fixture(scope="module")
def server(models: dict[str, TrainedModel]) -> Iterator[str]:
    """Both models behind one server, each under its model id."""
    url, stop = serve_in_thread(models)
    yield url
    stop()


def matrix_for(model: TrainedModel, rows: int, seed: int = 0) -> np.ndarray:
    """Random features of the model's width, with a few NaN (missing numbers)."""
    rng = np.random.default_rng(seed)
    matrix = rng.random((rows, len(model.feature_names)))
    matrix[::5, 0] = np.nan
    return matrix


def post(url: str, body: bytes, content_type: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def csv_body(matrix: np.ndarray) -> bytes:
    return ("\n".join(csv_lines(matrix)) + "\n").encode()


def test_ping_lists_the_models_and_versions(server: str, models: dict[str, TrainedModel]) -> None:
    with urllib.request.urlopen(f"{server}/ping", timeout=10) as response:
        assert response.status == 200
        served = json.loads(response.read())["endpoints"]
    assert served == {m: {"model_id": m, "version": model.version} for m, model in models.items()}


@pytest.mark.parametrize("model_id", [ATTENDANCE_MODEL, AFFINITY_MODEL])
def test_csv_invocation_equals_in_process_prediction_exactly(
    server: str, models: dict[str, TrainedModel], model_id: str
) -> None:
    model = models[model_id]
    matrix = matrix_for(model, 200)
    status, headers, body = post(f"{server}/endpoints/{model_id}/invocations", csv_body(matrix), "text/csv")
    assert status == 200
    assert headers["Content-Type"] == "text/csv"
    assert headers[CUSTOM_ATTRIBUTES_HEADER] == f"model_id={model_id},model_version={model.version}"
    assert body.count(b"\n") == 200
    np.testing.assert_array_equal(parse_probabilities(body, "text/csv"), model.predict_matrix(matrix))


def test_json_in_and_out_and_content_negotiation(server: str, models: dict[str, TrainedModel]) -> None:
    model = models[ATTENDANCE_MODEL]
    matrix = matrix_for(model, 20)
    instances = [[None if np.isnan(v) else v for v in row] for row in matrix.tolist()]
    url = f"{server}/endpoints/{ATTENDANCE_MODEL}/invocations"
    body = json.dumps({"instances": instances}).encode()
    expected = model.predict_matrix(matrix)

    status, headers, reply = post(url, body, "application/json")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(reply)["predictions"] == expected.tolist()

    status, headers, reply = post(url, body, "application/json; charset=utf-8", accept="text/csv")
    assert (status, headers["Content-Type"]) == (200, "text/csv")
    np.testing.assert_array_equal(parse_probabilities(reply, "text/csv"), expected)

    status, headers, reply = post(url, csv_body(matrix), "text/csv", accept="application/json, text/csv;q=0.5")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(reply)["predictions"] == expected.tolist()


def test_floats_round_trip_bit_for_bit() -> None:
    """Client CSV -> server parse, and server reply -> client parse, keep every bit (sign of zero too)."""
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**64, size=(300, 4), dtype=np.uint64).view(np.float64)
    bits[np.isnan(bits)] = 0.5  # NaN payload bits are not data
    special = np.array([[-0.0, 5e-324, np.inf, -np.inf], [0.1, 1 / 3, 2.0**53 + 2, np.nan]])
    matrix = np.vstack([bits, special])
    parsed = parse_csv(csv_body(matrix), 4, "any-model")
    known = ~np.isnan(matrix)
    assert np.isnan(parsed[~known]).all()
    assert parsed[known].tobytes() == matrix[known].tobytes()
    values = np.concatenate([bits.ravel(), [-0.0, 0.0, 1.0, 5e-324, 0.1]])
    for kind in ("text/csv", "application/json"):
        assert parse_probabilities(format_probabilities(values, kind), kind).tobytes() == values.tobytes()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/csv", b"0.5,1,0.25\n0.5,1,0.25,9\n"), ("application/json", b'{"instances": [[0.5, 1, 0.25, 9]]}')],
)
def test_wrong_column_count_is_a_400_naming_model_and_width(server: str, content_type: str, body: bytes) -> None:
    status, headers, reply = post(f"{server}/endpoints/{ATTENDANCE_MODEL}/invocations", body, content_type)
    assert status == 400
    assert headers["x-amzn-ErrorType"] == "ValidationError"
    message = json.loads(reply)["message"]
    assert ATTENDANCE_MODEL in message
    assert "expects 3 columns" in message
    assert "has 4" in message


@pytest.mark.parametrize(
    ("path", "content_type", "accept", "body", "status", "fragment"),
    [
        ("/endpoints/event-attendance-v3/invocations", "text/csv", None, b"0.5,x,1\n", 400, "unreadable CSV"),
        ("/endpoints/event-attendance-v3/invocations", "application/json", None, b"{nope", 400, "not JSON"),
        ("/endpoints/event-attendance-v3/invocations", "application/json", None, b"[[1, 2, 3]]", 400, "instances"),
        ("/endpoints/event-attendance-v3/invocations", "application/json", None, b'{"instances": [["1", 2, 3]]}', 400,
         "numbers or null"),
        ("/endpoints/event-attendance-v3/invocations", "text/plain", None, b"1,2,3\n", 415, "Content-Type"),
        ("/endpoints/event-attendance-v3/invocations", "text/csv", "image/png", b"1,2,3\n", 406, "image/png"),
        ("/endpoints/no-such-model/invocations", "text/csv", None, b"1,2,3\n", 404, "no-such-model"),
        ("/invocations", "text/csv", None, b"1,2,3\n", 400, "/endpoints/<name>/invocations"),
        ("/elsewhere", "text/csv", None, b"1,2,3\n", 404, "no such path"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx(
    server: str, path: str, content_type: str, accept: str | None, body: bytes, status: int, fragment: str
) -> None:
    got, _, reply = post(f"{server}{path}", body, content_type, accept)
    assert got == status
    assert fragment in json.loads(reply)["message"]


def test_empty_payload_scores_nothing_and_oversized_payload_is_413(models: dict[str, TrainedModel]) -> None:
    url, stop = serve_in_thread(ModelApp(models[ATTENDANCE_MODEL], max_body_bytes=1000))
    try:
        status, _, reply = post(f"{url}/invocations", b"", "text/csv")
        assert (status, reply) == (200, b"")
        status, _, reply = post(f"{url}/invocations", b"0.1,0.2,0.3\n" * 100, "text/csv")
        assert status == 413
        assert "1000-byte limit" in json.loads(reply)["message"]
        # the single-model container path still works after a refused request
        status, _, reply = post(f"{url}/invocations", b"0.5,2,0.5\n", "text/csv")
        assert status == 200
        expected = models[ATTENDANCE_MODEL].predict_matrix(np.array([[0.5, 2, 0.5]]))
        np.testing.assert_array_equal(parse_probabilities(reply, "text/csv"), expected)
    finally:
        stop()


def test_find_artifact_prefers_package_name_then_pointer_then_the_only_file(
    tmp_path: Path, models: dict[str, TrainedModel]
) -> None:
    model = models[ATTENDANCE_MODEL]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_artifact(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no \*\.joblib"):
        find_artifact(tmp_path)
    model.save(tmp_path / "aaa.joblib")
    assert find_artifact(tmp_path) == tmp_path / "aaa.joblib"
    model.save(tmp_path / "bbb.joblib")
    with pytest.raises(FileNotFoundError, match="2 artifacts"):
        find_artifact(tmp_path)
    (tmp_path / "CURRENT").write_text("bbb\n")
    assert find_artifact(tmp_path) == tmp_path / "bbb.joblib"
    model.save(tmp_path / "model.joblib")
    assert find_artifact(tmp_path) == tmp_path / "model.joblib"


def test_the_command_serves_an_unpacked_sagemaker_package(tmp_path: Path, models: dict[str, TrainedModel]) -> None:
    """What SageMaker does: unpack model.tar.gz into the model dir, run `<entrypoint> serve`, ping, invoke."""
    model = models[AFFINITY_MODEL]
    model.save(tmp_path / "artifact.joblib")
    package = write_sagemaker_tarball(tmp_path / "artifact.joblib", tmp_path / "model.tar.gz")
    model_dir = tmp_path / "opt-ml-model"
    with tarfile.open(package) as archive:
        assert archive.getnames() == ["model.joblib"]
        archive.extractall(model_dir, filter="data")
    port = free_port()
    env = {**os.environ, MODEL_DIR_ENV: str(model_dir)}
    command = [sys.executable, "-m", "eventreach_assets.serving.model_server", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=1) as response:
                    assert response.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                assert time.monotonic() < deadline, "model server did not answer /ping within 30 s"
                time.sleep(0.1)
        matrix = matrix_for(model, 50)
        status, _, reply = post(f"{url}/invocations", csv_body(matrix), "text/csv")
        assert status == 200
        np.testing.assert_array_equal(parse_probabilities(reply, "text/csv"), model.predict_matrix(matrix))
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=10)[0].decode()
    assert process.returncode == 0, output
    assert f"loaded {AFFINITY_MODEL} version {model.version}" in output


def test_the_command_fails_clearly_without_an_artifact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["--model-dir", str(tmp_path), "--port", "0"]) == 2
    assert "no *.joblib model artifact" in caplog.text
