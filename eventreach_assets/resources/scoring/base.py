"""The scoring interface: feature matrices in, probabilities out, with the current version of
each model.

Models always come from the registry (the feature vocabularies live in the artifact and the
score cache is keyed by its version); only `predict` differs between backends: in process
locally, a SageMaker endpoint in production.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import dagster as dg
import numpy as np

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.resources.model_registry import ModelRegistryResource


class ScoringResource(dg.ConfigurableResource, abc.ABC):
    """Scores feature matrices with the current version of each model."""

    registry: ModelRegistryResource

    def load_models(self, model_ids: Sequence[str]) -> dict[str, TrainedModel]:
        return {model_id: self.registry.load_current(model_id) for model_id in model_ids}

    @abc.abstractmethod
    def predict(self, model: TrainedModel, matrix: np.ndarray) -> np.ndarray:
        """P(label) per row of `matrix` (built by `feature_matrix` for `model`), in row order."""

    def predict_batches(self, model: TrainedModel, matrices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` for each batch's matrix, in order (what `scoring.score_in_batches` calls); a
        backend may evaluate them together."""
        return [self.predict(model, matrix) for matrix in matrices]
