"""Scoring with the registry's current models: in process locally, SageMaker endpoints on AWS."""

from eventreach_assets.resources.scoring.base import ScoringResource
from eventreach_assets.resources.scoring.in_process import InProcessScoring
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
