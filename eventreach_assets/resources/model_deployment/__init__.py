"""Making the scoring endpoints serve each model's current version: nothing to do locally,
SageMaker models, endpoint configs and endpoints on AWS."""

from eventreach_assets.resources.model_deployment.base import Action, DeploymentResult, ModelDeploymentResource
from eventreach_assets.resources.model_deployment.in_process import IN_PROCESS, InProcessDeployment
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
