"""Making the scoring endpoints serve each model's current version: nothing to do locally,
SageMaker models, endpoint configs and endpoints on AWS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.lazy_exports import lazy_exports
from eventreach_assets.resources.model_deployment.base import Action, DeploymentResult, ModelDeploymentResource
from eventreach_assets.resources.model_deployment.in_process import IN_PROCESS, InProcessDeployment

if TYPE_CHECKING:
    from eventreach_assets.resources.model_deployment.sagemaker import (
        MANAGED_BY,
        TAG_MANAGED_BY,
        TAG_MODEL_ID,
        TAG_MODEL_VERSION,
        ModelDeploymentError,
        SageMakerDeployment,
        SageMakerPackager,
        sagemaker_name,
    )

__all__ = [
    "IN_PROCESS",
    "MANAGED_BY",
    "TAG_MANAGED_BY",
    "TAG_MODEL_ID",
    "TAG_MODEL_VERSION",
    "Action",
    "DeploymentResult",
    "InProcessDeployment",
    "ModelDeploymentError",
    "ModelDeploymentResource",
    "SageMakerDeployment",
    "SageMakerPackager",
    "sagemaker_name",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(
    __name__,
    {
        "MANAGED_BY": "sagemaker",
        "TAG_MANAGED_BY": "sagemaker",
        "TAG_MODEL_ID": "sagemaker",
        "TAG_MODEL_VERSION": "sagemaker",
        "ModelDeploymentError": "sagemaker",
        "SageMakerDeployment": "sagemaker",
        "SageMakerPackager": "sagemaker",
        "sagemaker_name": "sagemaker",
    },
)
