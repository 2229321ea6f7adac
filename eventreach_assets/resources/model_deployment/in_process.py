"""The local deployment: in-process scoring reads the registry's `CURRENT` itself, so there is
nothing to deploy."""

from __future__ import annotations

from eventreach_assets.resources.model_deployment.base import DeploymentResult, ModelDeploymentResource
from eventreach_assets.resources.model_registry import ModelRegistryResource

IN_PROCESS = "in-process"


class InProcessDeployment(ModelDeploymentResource):
    """The local deployment: in-process scoring loads the registry's `CURRENT`, nothing to deploy."""

    registry: ModelRegistryResource

    def deploy(self, model_id: str, version: str) -> DeploymentResult:
        return DeploymentResult(model_id, version, IN_PROCESS, "not needed", 0.0)

    def deployed_version(self, model_id: str) -> str | None:
        return self.registry.load_current(model_id).version
