"""Scoring with the registry's current models: in process locally, SageMaker endpoints on AWS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.lazy_exports import lazy_exports
from eventreach_assets.resources.scoring.base import ScoringResource
from eventreach_assets.resources.scoring.in_process import InProcessScoring

if TYPE_CHECKING:
    from eventreach_assets.resources.scoring.sagemaker import (
        SageMakerEndpointError,
        SageMakerScoring,
        endpoint_for,
        endpoints_from_program,
    )

__all__ = [
    "InProcessScoring",
    "SageMakerEndpointError",
    "SageMakerScoring",
    "ScoringResource",
    "endpoint_for",
    "endpoints_from_program",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(
    __name__,
    {
        "SageMakerEndpointError": "sagemaker",
        "SageMakerScoring": "sagemaker",
        "endpoint_for": "sagemaker",
        "endpoints_from_program": "sagemaker",
    },
)
