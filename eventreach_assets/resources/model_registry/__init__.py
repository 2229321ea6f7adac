"""Where trained models live: a directory locally, an S3 bucket on AWS (which also packages
versions for SageMaker endpoints)."""

from eventreach_assets.resources.model_registry.base import CURRENT, ModelNotTrainedError, ModelRegistryResource
from eventreach_assets.resources.model_registry.local import LocalModelRegistry
from eventreach_assets.resources.model_registry.s3 import S3ModelRegistry
from eventreach_assets.resources.model_registry.sagemaker_package import PACKAGE_NAME, write_sagemaker_tarball

__all__ = [
    "CURRENT",
    "PACKAGE_NAME",
    "LocalModelRegistry",
    "ModelNotTrainedError",
    "ModelRegistryResource",
    "S3ModelRegistry",
    "write_sagemaker_tarball",
]
