"""The model deployment interface: making each model's scoring endpoint serve a given version
(the `model_endpoints` asset).

A model version is a content hash, so the weekly retrain promotes a new version almost every
week, and `SageMakerScoring` refuses an endpoint that reports another version than `CURRENT`.
Deploying is therefore part of the training job rather than a manual step.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

Action = Literal["unchanged", "updated", "created", "not needed"]


@dataclass(frozen=True)
class DeploymentResult:
    """What `deploy` did for one model, as the asset reports it."""

    model_id: str
    version: str
    endpoint: str
    action: Action
    seconds: float
    endpoint_config: str | None = None
    previous_config: str | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "endpoint": self.endpoint,
            "action": self.action,
            "seconds": round(self.seconds, 3),
        }


class ModelDeploymentResource(dg.ConfigurableResource, abc.ABC):
    """Makes a model's scoring endpoint serve a given version."""

    @abc.abstractmethod
    def deploy(self, model_id: str, version: str) -> DeploymentResult:
        """Ensure `version` is what scoring of `model_id` uses; idempotent."""

    @abc.abstractmethod
    def deployed_version(self, model_id: str) -> str | None:
        """The version scoring of `model_id` uses now; None when nothing (recognisable) is deployed."""
