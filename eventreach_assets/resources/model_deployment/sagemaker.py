"""Deploying registry versions to SageMaker endpoints (the aws deployment).

On aws, each deployment is a SageMaker model and an endpoint config with one deterministic
name, `<model id>-<version>-<spec>`, where `<spec>` is a digest of the image, role, instance
type and count. That name is the marker of what an endpoint serves: the endpoint's
`EndpointConfigName` is authoritative (a config is immutable, tags can drift), and a new image
or instance type redeploys too. Per model (`SageMakerDeployment.deploy`):

1. the endpoint already serves that config and is `InService`: nothing is done;
2. otherwise `package_for_sagemaker` (only if the model does not exist yet), `CreateModel`,
   `CreateEndpointConfig` (each skipped when it already exists, so an interrupted run resumes),
   then `CreateEndpoint` or `UpdateEndpoint` (a rolling switch, no downtime);
3. poll `DescribeEndpoint` until `InService` on the new config, at most `wait_timeout_seconds`.
   An update SageMaker rolled back (`InService` on the old config) is an error.

Old models and configs are kept, so a rollback is one `aws sagemaker update-endpoint
--endpoint-config-name <previous_config>` (the asset's metadata names the previous config).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from eventreach_assets.resources.aws import aws_client
from eventreach_assets.resources.model_deployment.base import Action, DeploymentResult, ModelDeploymentResource
from eventreach_assets.resources.model_registry import ModelRegistryResource
from eventreach_assets.resources.scoring import endpoint_for

VARIANT_NAME = "AllTraffic"
MAX_NAME_LENGTH = 63  # SageMaker model / endpoint config names: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
TAG_MODEL_ID = "eventreach:model-id"
TAG_MODEL_VERSION = "eventreach:model-version"
TAG_MANAGED_BY = "eventreach:managed-by"
MANAGED_BY = "dagster/model_endpoints"
# Endpoint states that end by themselves; anything else is settled (possibly in failure).
TRANSITIONAL = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"})
# Settled states SageMaker accepts no update in (Failed: only DeleteEndpoint is allowed).
STUCK = frozenset({"Failed", "UpdateRollbackFailed"})


class ModelDeploymentError(RuntimeError):
    """A deployment step failed; the message names the endpoint and the step."""

    def __init__(self, endpoint: str, step: str, message: str) -> None:
        super().__init__(f"SageMaker endpoint {endpoint!r}: {step} failed: {message}")
        self.endpoint = endpoint
        self.step = step


@runtime_checkable
class SageMakerPackager(Protocol):
    """A registry that can write `model.tar.gz` for a version (`S3ModelRegistry`)."""

    def package_for_sagemaker(self, model_id: str, version: str | None = None) -> str: ...


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def sagemaker_name(model_id: str, version: str, spec: str) -> str:
    """`<model id>-<version>-<spec>` within SageMaker's 63 characters (the model id is cut, never the rest)."""
    suffix = f"{_slug(version)}-{_slug(spec)}"
    prefix = _slug(model_id)[: max(0, MAX_NAME_LENGTH - len(suffix) - 1)].rstrip("-")
    name = f"{prefix}-{suffix}" if prefix else suffix
    if len(name) > MAX_NAME_LENGTH or not name:
        raise ValueError(f"cannot name a SageMaker model for {model_id!r} version {version!r}: {name!r}")
    return name


class SageMakerDeployment(ModelDeploymentResource):
    """Deploys registry versions to the SageMaker endpoints `SageMakerScoring` invokes."""

    registry: ModelRegistryResource = Field(description="an S3ModelRegistry: it writes the model.tar.gz packages")
    endpoints: dict[str, str] = Field(
        description="model_id -> SageMaker endpoint name; `endpoints_from_program` reads the program's URIs"
    )
    role_arn: str = Field(description="execution role SageMaker assumes: reads the packages, pulls the image")
    image_uri: str = Field(description="ECR URI of the model-server image (see model_registry/sagemaker_package.py)")
    instance_type: str = Field(default="ml.m5.large", description="instance type of each endpoint")
    initial_instance_count: int = Field(default=1, ge=1, description="instances per endpoint")
    region_name: str | None = Field(default=None, description="AWS region; None: AWS_REGION / AWS_DEFAULT_REGION")
    endpoint_url: str | None = Field(default=None, description="override of the SageMaker API URL (tests)")
    wait_timeout_seconds: float = Field(default=1800.0, gt=0, description="longest wait for one endpoint")
    poll_seconds: float = Field(default=15.0, ge=0, description="pause between DescribeEndpoint calls")

    def client(self) -> Any:
        """The SageMaker control-plane client, botocore standard retries (5 retries)."""
        return aws_client("sagemaker", region_name=self.region_name, endpoint_url=self.endpoint_url, max_attempts=6)

    def endpoint_for(self, model_id: str) -> str:
        return endpoint_for(self.endpoints, model_id)

    def spec_digest(self) -> str:
        """8 hex of what else than the version shapes a deployment: a change redeploys."""
        spec = [self.image_uri, self.role_arn, self.instance_type, self.initial_instance_count, VARIANT_NAME]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:8]

    def deployment_name(self, model_id: str, version: str) -> str:
        """The name of the model and of the endpoint config serving this version."""
        return sagemaker_name(model_id, version, self.spec_digest())

    def deploy(self, model_id: str, version: str) -> DeploymentResult:
        endpoint = self.endpoint_for(model_id)
        name = self.deployment_name(model_id, version)
        started = time.monotonic()
        state = self._settled(endpoint, "wait for the endpoint's previous change")
        previous = state["EndpointConfigName"] if state else None
        if state and previous == name and state["EndpointStatus"] == "InService":
            return DeploymentResult(
                model_id, version, endpoint, "unchanged", time.monotonic() - started, name, previous
            )
        if state and state["EndpointStatus"] in STUCK:
            raise ModelDeploymentError(
                endpoint,
                "check endpoint status",
                f"the endpoint is {state['EndpointStatus']} ({state.get('FailureReason', 'no reason given')}); "
                "SageMaker accepts no update in that state: delete the endpoint, then re-materialize model_endpoints",
            )
        self._ensure_model(endpoint, name, model_id, version)
        self._ensure_endpoint_config(endpoint, name, model_id, version)
        if state is None:
            tags = self._tags(model_id)
            self._call(endpoint, "create_endpoint", EndpointName=endpoint, EndpointConfigName=name, Tags=tags)
            action: Action = "created"
        else:
            self._call(endpoint, "update_endpoint", EndpointName=endpoint, EndpointConfigName=name)
            action = "updated"
        self._wait_in_service(endpoint, name)
        return DeploymentResult(model_id, version, endpoint, action, time.monotonic() - started, name, previous)

    def deployed_version(self, model_id: str) -> str | None:
        """The version tag of the endpoint's current config (configs are immutable, so the tag is too)."""
        endpoint = self.endpoint_for(model_id)
        state = self._describe_endpoint(endpoint)
        if state is None:
            return None
        config = self._describe(endpoint, "describe_endpoint_config", EndpointConfigName=state["EndpointConfigName"])
        if config is None:
            return None
        tags = self._call(endpoint, "list_tags", ResourceArn=config["EndpointConfigArn"]).get("Tags", [])
        return next((tag["Value"] for tag in tags if tag["Key"] == TAG_MODEL_VERSION), None)

    # ---- steps -----------------------------------------------------------------------------

    def _tags(self, model_id: str, version: str | None = None) -> list[dict[str, str]]:
        tags = {TAG_MODEL_ID: model_id, TAG_MANAGED_BY: MANAGED_BY}
        if version is not None:
            tags[TAG_MODEL_VERSION] = version
        return [{"Key": key, "Value": value} for key, value in tags.items()]

    def _package(self, endpoint: str, model_id: str, version: str) -> str:
        if not isinstance(self.registry, SageMakerPackager):
            raise ModelDeploymentError(
                endpoint, "package_for_sagemaker", f"{type(self.registry).__name__} cannot package models for SageMaker"
            )
        try:
            return self.registry.package_for_sagemaker(model_id, version)
        except Exception as error:
            raise ModelDeploymentError(endpoint, "package_for_sagemaker", f"{type(error).__name__}: {error}") from error

    def _ensure_model(self, endpoint: str, name: str, model_id: str, version: str) -> None:
        if self._describe(endpoint, "describe_model", ModelName=name) is not None:
            return  # created (and packaged) by an earlier, interrupted run
        model_data = self._package(endpoint, model_id, version)
        self._call(
            endpoint,
            "create_model",
            ModelName=name,
            PrimaryContainer={"Image": self.image_uri, "ModelDataUrl": model_data},
            ExecutionRoleArn=self.role_arn,
            Tags=self._tags(model_id, version),
        )

    def _ensure_endpoint_config(self, endpoint: str, name: str, model_id: str, version: str) -> None:
        if self._describe(endpoint, "describe_endpoint_config", EndpointConfigName=name) is not None:
            return
        variant = {
            "VariantName": VARIANT_NAME,
            "ModelName": name,
            "InstanceType": self.instance_type,
            "InitialInstanceCount": self.initial_instance_count,
            "InitialVariantWeight": 1.0,
        }
        self._call(
            endpoint,
            "create_endpoint_config",
            EndpointConfigName=name,
            ProductionVariants=[variant],
            Tags=self._tags(model_id, version),
        )

    def _settled(self, endpoint: str, step: str) -> dict[str, Any] | None:
        """The endpoint once no change is in progress (None: it does not exist)."""
        deadline = time.monotonic() + self.wait_timeout_seconds
        while True:
            state = self._describe_endpoint(endpoint)
            if state is None or state["EndpointStatus"] not in TRANSITIONAL:
                return state
            if time.monotonic() >= deadline:
                raise ModelDeploymentError(
                    endpoint, step, f"still {state['EndpointStatus']} after {self.wait_timeout_seconds:g} s"
                )
            time.sleep(self.poll_seconds)

    def _wait_in_service(self, endpoint: str, name: str) -> None:
        """Wait for the switch to `name`; a rollback or failure is an error with SageMaker's reason."""
        state = self._settled(endpoint, f"wait for InService on {name}")
        if state is None:
            raise ModelDeploymentError(endpoint, f"wait for InService on {name}", "the endpoint disappeared")
        status, serving = state["EndpointStatus"], state["EndpointConfigName"]
        if status != "InService" or serving != name:
            reason = state.get("FailureReason", "no reason given")
            raise ModelDeploymentError(
                endpoint, f"wait for InService on {name}", f"ended {status} on config {serving!r}: {reason}"
            )

    # ---- calls -----------------------------------------------------------------------------

    def _call(self, endpoint: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call; any failure names the endpoint and the operation."""
        try:
            return getattr(self.client(), operation)(**kwargs)
        except ClientError as error:
            detail = error.response.get("Error", {})
            raise ModelDeploymentError(endpoint, operation, f"{detail.get('Code')}: {detail.get('Message')}") from error
        except BotoCoreError as error:
            raise ModelDeploymentError(endpoint, operation, str(error)) from error

    def _describe(self, endpoint: str, operation: str, **kwargs: Any) -> dict[str, Any] | None:
        """A Describe* call; None when the resource does not exist (SageMaker: ValidationException "Could not find")."""
        try:
            return self._call(endpoint, operation, **kwargs)
        except ModelDeploymentError as error:
            cause = error.__cause__
            response = getattr(cause, "response", {}) or {}
            detail = response.get("Error", {})
            if detail.get("Code") == "ValidationException" and "Could not find" in (detail.get("Message") or ""):
                return None
            raise

    def _describe_endpoint(self, endpoint: str) -> dict[str, Any] | None:
        return self._describe(endpoint, "describe_endpoint", EndpointName=endpoint)
