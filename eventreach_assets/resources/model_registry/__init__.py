"""Where trained models live: a directory locally, an S3 bucket on AWS (which also packages
versions for SageMaker endpoints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.lazy_exports import lazy_exports
from eventreach_assets.resources.model_registry.base import CURRENT, ModelNotTrainedError, ModelRegistryResource
from eventreach_assets.resources.model_registry.local import LocalModelRegistry
from eventreach_assets.resources.model_registry.sagemaker_package import PACKAGE_NAME, write_sagemaker_tarball

if TYPE_CHECKING:
    from eventreach_assets.resources.model_registry.s3 import S3ModelRegistry

__all__ = [
    "CURRENT",
    "PACKAGE_NAME",
    "LocalModelRegistry",
    "ModelNotTrainedError",
    "ModelRegistryResource",
    "S3ModelRegistry",
    "write_sagemaker_tarball",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(__name__, {"S3ModelRegistry": "s3"})
