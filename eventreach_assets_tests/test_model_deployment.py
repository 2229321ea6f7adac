"""Keeping the scoring endpoints on the registry's current versions (`model_endpoints`).

SageMaker is moto over real HTTP. moto 5.2.5 has no `UpdateEndpoint`, so `update_endpoint`
below adds it to the moto server (same process) with SageMaker's end state: the endpoint on
the new config, `InService`. Waiting, rollbacks and stuck endpoints use a scripted client.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from eventreach_assets.assets.model_deployment import deploy_all, model_endpoints
from eventreach_assets.definitions import build_definitions
from eventreach_assets.domain.models import AFFINITY_MODEL, ATTENDANCE_MODEL, MODEL_SPECS, TrainedModel, train_model
from eventreach_assets.resources.model_deployment import (
    TAG_MODEL_VERSION,
    DeploymentResult,
    InProcessDeployment,
    ModelDeploymentError,
    ModelDeploymentResource,
    SageMakerDeployment,
    sagemaker_name,
)
from eventreach_assets.resources.model_registry import LocalModelRegistry, S3ModelRegistry
from eventreach_assets.resources.program import ProgramResource
from eventreach_assets_tests.stand_ins import REGION
from eventreach_assets_tests.test_models import training_frame

BUCKET = "eventreach-models"
ROLE = "arn:aws:iam::123456789012:role/eventreach-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/eventreach-model-server:1"
ENDPOINTS = {ATTENDANCE_MODEL: "event-attendance-v3", AFFINITY_MODEL: "interest-affinity-v2"}


@pytest.fixture(scope="module")
def models() -> dict[str, TrainedModel]:
    training = training_frame(n_customers=300)
    return {model_id: train_model(model_id, training) for model_id in MODEL_SPECS}


@pytest.fixture
def update_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """`UpdateEndpoint` for the moto server: the switch SageMaker makes, done at once."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.sagemaker.responses import SageMakerResponse

    def handler(self: SageMakerResponse) -> ActionResult:
        backend = self.sagemaker_backend
        name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
        backend.describe_endpoint(name)  # ValidationException when missing, as SageMaker answers
        config = backend.describe_endpoint_config(config_name)
        endpoint = backend.endpoints[name]
        endpoint.endpoint_config_name = config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        endpoint.last_modified_time = utcnow()
        return ActionResult({"EndpointArn": endpoint.arn})

    monkeypatch.setattr(SageMakerResponse, "update_endpoint", handler, raising=False)


@pytest.fixture
def registry(aws_endpoint: str, models: dict[str, TrainedModel]) -> S3ModelRegistry:
    registry = S3ModelRegistry(s3=S3Resource(endpoint_url=aws_endpoint, region_name=REGION), bucket=BUCKET)
    registry.client().create_bucket(Bucket=BUCKET)
    for model in models.values():
        registry.save(model, promote=True)
    return registry


@pytest.fixture
def deployment(registry: S3ModelRegistry, aws_endpoint: str, update_endpoint: None) -> SageMakerDeployment:
    return SageMakerDeployment(
        registry=registry,
        endpoints=ENDPOINTS,
        role_arn=ROLE,
        image_uri=IMAGE,
        region_name=REGION,
        endpoint_url=aws_endpoint,
        poll_seconds=0,
    )


def inventory(client: Any) -> dict[str, Any]:
    """Every model, config and endpoint with its last change: equal before and after means nothing new."""
    return {
        "models": sorted((m["ModelName"], m["CreationTime"]) for m in client.list_models()["Models"]),
        "configs": sorted(
            (c["EndpointConfigName"], c["CreationTime"]) for c in client.list_endpoint_configs()["EndpointConfigs"]
        ),
        "endpoints": sorted(
            (e["EndpointName"], e["LastModifiedTime"], e["EndpointStatus"])
            for e in client.list_endpoints()["Endpoints"]
        ),
    }


@pytest.mark.integration
def test_first_deploy_creates_model_config_and_endpoint_then_is_a_no_op(
    deployment: SageMakerDeployment, registry: S3ModelRegistry, models: dict[str, TrainedModel]
):
    client = deployment.client()
    assert deployment.deployed_version(ATTENDANCE_MODEL) is None
    results = deploy_all(deployment, {model_id: model.version for model_id, model in models.items()})
    for result in results:
        version, endpoint = models[result.model_id].version, ENDPOINTS[result.model_id]
        name = deployment.deployment_name(result.model_id, version)
        assert (result.action, result.endpoint, result.previous_config) == ("created", endpoint, None)
        assert result.endpoint_config == name
        assert name.startswith(f"{result.model_id}-{version}-")
        model = client.describe_model(ModelName=name)
        package = f"s3://{BUCKET}/models/{result.model_id}/sagemaker/{version}/model.tar.gz"
        assert model["PrimaryContainer"]["Image"] == IMAGE
        assert model["PrimaryContainer"]["ModelDataUrl"] == package
        assert model["ExecutionRoleArn"] == ROLE
        registry.client().head_object(Bucket=BUCKET, Key=package.removeprefix(f"s3://{BUCKET}/"))
        (variant,) = client.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"]
        assert variant["ModelName"] == name
        assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 1)
        state = client.describe_endpoint(EndpointName=endpoint)
        assert (state["EndpointConfigName"], state["EndpointStatus"]) == (name, "InService")
        assert deployment.deployed_version(result.model_id) == version

    before = inventory(client)
    assert len(before["models"]) == len(before["configs"]) == len(before["endpoints"]) == 2
    again = deploy_all(deployment, {model_id: model.version for model_id, model in models.items()})
    assert {r.action for r in again} == {"unchanged"}
    assert inventory(client) == before


@pytest.mark.integration
def test_a_promoted_version_updates_the_endpoint(
    deployment: SageMakerDeployment, registry: S3ModelRegistry, models: dict[str, TrainedModel]
):
    client = deployment.client()
    old = models[ATTENDANCE_MODEL]
    first = deployment.deploy(ATTENDANCE_MODEL, old.version)
    retrained = dataclasses.replace(old, version="0123456789ab")  # the next Monday's retrain
    registry.save(retrained, promote=True)

    result = deployment.deploy(ATTENDANCE_MODEL, retrained.version)
    assert result.action == "updated"
    assert result.previous_config == first.endpoint_config
    state = client.describe_endpoint(EndpointName=ENDPOINTS[ATTENDANCE_MODEL])
    assert "0123456789ab" in state["EndpointConfigName"] == result.endpoint_config
    assert state["EndpointStatus"] == "InService"
    assert deployment.deployed_version(ATTENDANCE_MODEL) == "0123456789ab"
    tags = client.list_tags(ResourceArn=client.describe_model(ModelName=result.endpoint_config)["ModelArn"])["Tags"]
    assert {"Key": TAG_MODEL_VERSION, "Value": "0123456789ab"} in tags
    # The old model and config stay for a rollback; a re-run creates nothing.
    before = inventory(client)
    assert [name for name, _ in before["configs"]] == sorted([first.endpoint_config, result.endpoint_config])
    assert deployment.deploy(ATTENDANCE_MODEL, retrained.version).action == "unchanged"
    assert inventory(client) == before

    # A new image (or instance type) is a new deployment of the same version.
    release = SageMakerDeployment(
        registry=registry,
        endpoints=ENDPOINTS,
        role_arn=ROLE,
        image_uri=IMAGE.replace(":1", ":2"),
        region_name=REGION,
        endpoint_url=deployment.endpoint_url,
        poll_seconds=0,
    )
    assert release.deploy(ATTENDANCE_MODEL, retrained.version).action == "updated"
    new_model = client.describe_model(ModelName=release.deployment_name(ATTENDANCE_MODEL, retrained.version))
    assert new_model["PrimaryContainer"]["Image"].endswith(":2")


@pytest.mark.integration
def test_the_asset_reports_each_model(deployment: SageMakerDeployment, registry: S3ModelRegistry, models):
    resources = {"model_registry": registry, "model_deployment": deployment, "program": ProgramResource()}
    for expected in ("created", "unchanged"):
        result = dg.materialize([model_endpoints], resources=resources)
        metadata = result.asset_materializations_for_node("model_endpoints")[0].metadata
        for model_id, model in models.items():
            assert metadata[model_id].value == {
                "version": model.version,
                "endpoint": ENDPOINTS[model_id],
                "action": expected,
                "seconds": metadata[model_id].value["seconds"],
            }
        assert metadata["model_versions"].value == {model_id: model.version for model_id, model in models.items()}


@pytest.mark.integration
def test_local_deployment_is_a_no_op(tmp_path: Path, models: dict[str, TrainedModel]):
    registry = LocalModelRegistry(base_dir=str(tmp_path))
    for model in models.values():
        registry.save(model, promote=True)
    local = InProcessDeployment(registry=registry)
    model = models[ATTENDANCE_MODEL]
    result = local.deploy(ATTENDANCE_MODEL, model.version)
    assert (result.action, result.endpoint, result.version) == ("not needed", "in-process", model.version)
    assert local.deployed_version(ATTENDANCE_MODEL) == model.version
    resources = {"model_registry": registry, "model_deployment": local, "program": ProgramResource()}
    metadata = (
        dg.materialize([model_endpoints], resources=resources)
        .asset_materializations_for_node("model_endpoints")[0]
        .metadata
    )
    assert {metadata[model_id].value["action"] for model_id in models} == {"not needed"}


def test_definitions_wire_the_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    defs = build_definitions(home=tmp_path, deployment="local")
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey("model_endpoints")
    assert graph.get(key).parent_keys == {dg.AssetKey("event_attendance_model"), dg.AssetKey("interest_affinity_model")}
    assert key in graph.get(dg.AssetKey("scored_candidates")).parent_keys
    assert key in defs.resolve_job_def("train_models").asset_layer.executable_asset_keys
    assert isinstance(defs.resources["model_deployment"], InProcessDeployment)

    # aws: settings from the environment; a missing role fails at start-up with the variable's name.
    settings = {
        "AWS_REGION": REGION,
        "EVENTREACH_STATE_BUCKET": BUCKET,
        "SNOWFLAKE_PASSWORD": "x",
        "EVENTREACH_SAGEMAKER_IMAGE_URI": IMAGE,
        "EVENTREACH_SAGEMAKER_INSTANCE_TYPE": "ml.c5.xlarge",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EVENTREACH_SAGEMAKER_ROLE_ARN", raising=False)
    aws = build_definitions(deployment="aws")
    dg.Definitions.validate_loadable(aws)
    with (
        pytest.raises(dg.DagsterInvalidConfigError, match='environment variable "EVENTREACH_SAGEMAKER_ROLE_ARN"'),
        dg.build_resources({"model_deployment": aws.resources["model_deployment"]}),
    ):
        pass
    monkeypatch.setenv("EVENTREACH_SAGEMAKER_ROLE_ARN", ROLE)
    with dg.build_resources({"model_deployment": aws.resources["model_deployment"]}) as resources:
        resolved = resources.model_deployment
        assert (resolved.role_arn, resolved.image_uri, resolved.instance_type) == (ROLE, IMAGE, "ml.c5.xlarge")
        assert resolved.endpoints == ENDPOINTS


# ---- waiting and failures, with a scripted SageMaker client ------------------------------------


class ScriptedSageMaker:
    """Answers `describe_endpoint` from a script (the last state repeats); records every call."""

    def __init__(self, states: list[dict[str, Any] | None], fail: dict[str, str] | None = None) -> None:
        self.states, self.fail, self.calls = list(states), fail or {}, []

    def __getattr__(self, operation: str) -> Any:
        def call(**kwargs: Any) -> dict[str, Any]:
            self.calls.append(operation)
            if operation in self.fail:
                raise ClientError({"Error": {"Code": self.fail[operation], "Message": "no"}}, operation)
            if operation == "describe_endpoint":
                state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
                if state is None:
                    raise ClientError({"Error": {"Code": "ValidationException", "Message": "Could not find"}}, "x")
                return state
            return {}  # describe_model / describe_endpoint_config: it exists; create_* / update_*: accepted

        return call


def scripted(client: ScriptedSageMaker, **settings: Any) -> SageMakerDeployment:
    """A deployment talking to `client`; its registry cannot package (the local one)."""

    class ScriptedDeployment(SageMakerDeployment):
        def client(self) -> Any:
            return client

    return ScriptedDeployment(
        registry=LocalModelRegistry(base_dir="unused"),
        endpoints=ENDPOINTS,
        role_arn=ROLE,
        image_uri=IMAGE,
        poll_seconds=0,
        **settings,
    )


def endpoint_state(config: str, status: str, reason: str | None = None) -> dict[str, Any]:
    state = {"EndpointConfigName": config, "EndpointStatus": status}
    return {**state, "FailureReason": reason} if reason else state


def test_waits_for_the_switch_and_reports_a_rollback():
    name = scripted(ScriptedSageMaker([None])).deployment_name(ATTENDANCE_MODEL, "v2")
    client = ScriptedSageMaker(
        [endpoint_state("old", "InService"), endpoint_state(name, "Updating"), endpoint_state(name, "InService")]
    )
    result = scripted(client).deploy(ATTENDANCE_MODEL, "v2")  # model and config exist (describe answers)
    assert (result.action, result.previous_config) == ("updated", "old")
    assert client.calls.count("describe_endpoint") == 3
    assert "create_model" not in client.calls and "update_endpoint" in client.calls

    deployment = scripted(
        ScriptedSageMaker(
            [
                endpoint_state("old", "InService"),
                endpoint_state(name, "Updating"),
                endpoint_state("old", "InService", "ping health check failed"),
            ]
        )
    )
    rollback = r"'event-attendance-v3': wait for InService on .*ended InService on config 'old': ping health check"
    with pytest.raises(ModelDeploymentError, match=rollback):
        deployment.deploy(ATTENDANCE_MODEL, "v2")


def test_stuck_slow_and_refused_endpoints_fail_naming_endpoint_and_step():
    client = ScriptedSageMaker([endpoint_state("old", "Failed", "image not found")])
    with pytest.raises(ModelDeploymentError, match=r"'event-attendance-v3': check endpoint status.*image not found"):
        scripted(client).deploy(ATTENDANCE_MODEL, "v2")
    assert not {"create_model", "update_endpoint", "delete_endpoint"} & set(client.calls)

    slow = scripted(
        ScriptedSageMaker([endpoint_state("old", "InService"), endpoint_state("new", "Updating")]),
        wait_timeout_seconds=0.01,
    )
    with pytest.raises(ModelDeploymentError, match=r"'event-attendance-v3': wait for InService .*still Updating after"):
        slow.deploy(ATTENDANCE_MODEL, "v2")

    refused = scripted(ScriptedSageMaker([endpoint_state("old", "InService")], fail={"update_endpoint": "Throttling"}))
    with pytest.raises(ModelDeploymentError, match=r"'event-attendance-v3': update_endpoint failed: Throttling: no"):
        refused.deploy(ATTENDANCE_MODEL, "v2")

    # Only "Could not find" means missing: any other error of a Describe call fails the deploy.
    denied = scripted(ScriptedSageMaker([None], fail={"describe_model": "AccessDeniedException"}))
    with pytest.raises(ModelDeploymentError, match=r"'interest-affinity-v2': describe_model failed: AccessDenied"):
        denied.deploy(AFFINITY_MODEL, "v2")


def test_package_step_needs_an_s3_registry():
    class NoModelYet(ScriptedSageMaker):
        def __getattr__(self, operation: str) -> Any:
            if operation != "describe_model":
                return super().__getattr__(operation)

            def missing(**kwargs: Any) -> dict[str, Any]:
                raise ClientError({"Error": {"Code": "ValidationException", "Message": "Could not find model"}}, "x")

            return missing

    with pytest.raises(ModelDeploymentError, match=r"package_for_sagemaker failed: LocalModelRegistry cannot package"):
        scripted(NoModelYet([None])).deploy(AFFINITY_MODEL, "v2")


def test_names_fit_sagemaker_and_keep_the_version():
    name = sagemaker_name("a-very-long-model-identifier-" * 3, "0123456789ab", "cafebabe")
    assert len(name) <= 63 and name.endswith("-0123456789ab-cafebabe")
    assert sagemaker_name("event_attendance.v3", "abc", "d") == "event-attendance-v3-abc-d"


def test_one_failure_does_not_hide_the_other_deployment():
    class HalfBroken(ModelDeploymentResource):
        def deploy(self, model_id: str, version: str) -> DeploymentResult:
            if model_id == AFFINITY_MODEL:
                raise ModelDeploymentError("interest-affinity-v2", "create_model", "AccessDenied")
            return DeploymentResult(model_id, version, "event-attendance-v3", "updated", 1.0)

        def deployed_version(self, model_id: str) -> str | None:
            return None

    message = r"1 of 2 deployments failed: .*interest-affinity-v2.*create_model.*succeeded: event-attendance-v3 updated"
    with pytest.raises(RuntimeError, match=message):
        deploy_all(HalfBroken(), {ATTENDANCE_MODEL: "a", AFFINITY_MODEL: "b"})


@pytest.mark.integration
def test_moto_answers_sagemaker_like_aws(aws_endpoint: str):
    """The "not found" shape `_describe` relies on."""
    client = boto3.client("sagemaker", endpoint_url=aws_endpoint, region_name=REGION)
    with pytest.raises(ClientError) as error:
        client.describe_endpoint(EndpointName="nope")
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert "Could not find" in error.value.response["Error"]["Message"]
