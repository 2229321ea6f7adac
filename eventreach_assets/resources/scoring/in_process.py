"""The local deployment's scoring: the model's trees (`TreeEnsemble`) predict in this process."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.domain.scoring import predict_together
from eventreach_assets.resources.scoring.base import ScoringResource


class InProcessScoring(ScoringResource):
    """The local deployment: the model's trees predict in this process, all batches of a model at once."""

    def predict(self, model: TrainedModel, matrix: np.ndarray) -> np.ndarray:
        return model.predict_matrix(matrix)

    def predict_batches(self, model: TrainedModel, matrices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The batches' matrices evaluated as one (`scoring.predict_together`): the same values."""
        return predict_together(model, matrices)
