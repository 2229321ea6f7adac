"""The images' own commands, run here: no container engine runs on this machine (docs/deploying.md).

Each command is read from its Dockerfile (CMD, ENTRYPOINT, ENV, HEALTHCHECK) and run as the
container would run it, from a directory outside the repository, with only the listening address
moved to 127.0.0.1 and a free port. The code server is asked for its repository over gRPC, as
the webserver and daemon ask it, and for the image it reports (how EcsRunLauncher picks the run
task's image); the model server is given a model package the way SageMaker gives it (model.tar.gz
unpacked into SM_MODEL_DIR) and answers /ping and /invocations. The images' health checks are
the probes. Installing `.[deploy]` into a clean venv from constraints.txt takes ~2.5 minutes
here, so it was done by hand (docs/deploying.md) and these run from the project's venv.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from eventreach_assets_tests.stand_ins import background_process, free_port
from eventreach_assets_tests.test_deploy_files import DOCKERFILES, base_image, instructions

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/eventreach-code:test"  # what the ECS task would set
START_TIMEOUT = 120  # the code server imports the whole asset graph before it answers


def image_env(dockerfile: Path) -> dict[str, str]:
    """The image's ENV settings (KEY=VALUE pairs, the code image's first when built on it); PATH and
    VIRTUAL_ENV are the venv's own here."""
    inherited = DOCKERFILES["code"] if base_image(dockerfile).startswith("eventreach-code:") else None
    pairs = " ".join(arg for file in filter(None, [inherited, dockerfile]) for kind, arg in instructions(file)
                     if kind == "ENV")  # fmt: skip
    env = dict(re.findall(r"(\w+)=(\S+)", pairs))
    return {key: value for key, value in env.items() if key not in {"PATH", "VIRTUAL_ENV"}}


def image_command(dockerfile: Path, port: int) -> list[str]:
    """ENTRYPOINT + CMD as the container runs them, bound to 127.0.0.1:`port`, executables from this venv."""
    steps = dict(instructions(dockerfile))
    argv = json.loads(steps.get("ENTRYPOINT", "[]")) + json.loads(steps["CMD"])
    return localize(argv, port, "0.0.0.0")


def healthcheck(dockerfile: Path, port: int) -> list[str]:
    """The image's HEALTHCHECK command, on `port`."""
    steps = dict(instructions(dockerfile))
    return localize(json.loads(steps["HEALTHCHECK"].split("CMD", 1)[1]), port, "127.0.0.1")


def localize(argv: list[str], port: int, host: str) -> list[str]:
    image_port = next(arg for arg in argv if re.fullmatch(r"\d{4}", arg) or re.search(r":\d{4}/", arg))
    image_port = re.search(r"\d{4}", image_port).group()
    argv = [arg.replace(host, "127.0.0.1").replace(image_port, str(port)) for arg in argv]
    executables = {"python3": sys.executable, "dagster": str(BIN / "dagster")}
    return [executables.get(argv[0], argv[0]), *argv[1:]]


def probe_until_healthy(command: list[str], env: dict[str, str], server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert server.poll() is None, f"the server exited ({server.returncode}):\n{log.read_text()[-3_000:]}"
        probe = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0:
            return
        assert time.monotonic() < deadline, (
            f"unhealthy after {START_TIMEOUT} s: {probe.stdout}{probe.stderr}\n" + (log.read_text()[-3_000:])
        )
        time.sleep(1)


@contextmanager
def running_image(name: str, tmp_path: Path, env: dict[str, str]) -> Iterator[int]:
    """The image's command on a free loopback port until its health check passes; stopped on exit."""
    dockerfile, port = DOCKERFILES[name], free_port()
    workdir, log = tmp_path / name, tmp_path / f"{name}.log"
    workdir.mkdir()
    full_env = {**os.environ, **image_env(dockerfile), **env}
    with background_process(image_command(dockerfile, port), str(workdir), full_env, str(log)) as server:
        probe_until_healthy(healthcheck(dockerfile, port), full_env, server, log)
        yield port


def test_the_code_image_serves_the_asset_graph_over_grpc(tmp_path: Path):
    from dagster import DagsterInstance
    from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
    from dagster._core.remote_representation.code_location import GrpcServerCodeLocation
    from dagster._grpc.client import DagsterGrpcClient

    env = {
        "DAGSTER_HOME": str(tmp_path),  # not read by the code server: the daemon passes its instance in calls
        "EVENTREACH_HOME": str(tmp_path / "data"),
        "DAGSTER_CURRENT_IMAGE": IMAGE,
        "SNOWFLAKE_PASSWORD": "set-by-the-task-not-the-image",  # the aws deployment checks one login is configured
    }
    assert image_env(DOCKERFILES["code"])["EVENTREACH_DEPLOYMENT"] == "aws"
    with running_image("code", tmp_path, env) as port:
        current = DagsterGrpcClient(port=port, host="127.0.0.1").get_current_image()
        assert IMAGE in current, current  # the serialized answer the launcher reads
        origin = GrpcServerCodeLocationOrigin(host="127.0.0.1", port=port, location_name="eventreach_assets")
        with (
            DagsterInstance.ephemeral() as instance,
            GrpcServerCodeLocation(origin=origin, instance=instance) as location,
        ):
            (repository,) = location.get_repositories().values()
            jobs = {job.name for job in repository.get_all_jobs()}
            assert {"weekly_batch", "train_models", "email_campaign"} <= jobs, jobs
            assert "events_catalog_sensor" in {sensor.name for sensor in repository.get_sensors()}
            assert location.container_image == IMAGE  # runs launched from it get the code location's image


def test_the_model_image_answers_sagemakers_ping_and_invocations(tmp_path: Path):
    from eventreach_assets.domain.models import ATTENDANCE_MODEL, train_model
    from eventreach_assets.domain.sagemaker_wire import csv_lines
    from eventreach_assets.resources.model_registry import write_sagemaker_tarball
    from eventreach_assets_tests.test_models import training_frame

    model = train_model(ATTENDANCE_MODEL, training_frame(n_customers=600))
    model.save(tmp_path / "artifact.joblib")
    package = write_sagemaker_tarball(tmp_path / "artifact.joblib", tmp_path / "model.tar.gz")
    model_dir = tmp_path / "opt-ml-model"
    with tarfile.open(package) as archive:  # what SageMaker does with the endpoint's ModelDataUrl
        archive.extractall(model_dir, filter="data")

    matrix = np.random.default_rng(3).random((25, len(model.feature_names)))
    with running_image("model-server", tmp_path, {"SM_MODEL_DIR": str(model_dir)}) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as response:
            served = json.loads(response.read())["endpoints"]
        assert [entry["version"] for entry in served.values()] == [model.version]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=("\n".join(csv_lines(matrix)) + "\n").encode(),
            headers={"Content-Type": "text/csv", "Accept": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            answer = json.loads(response.read())
    np.testing.assert_array_equal(np.asarray(answer["predictions"]), model.predict_matrix(matrix))
