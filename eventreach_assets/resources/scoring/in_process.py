"""The local deployment's scoring: the trained estimator predicts in this process."""

from __future__ import annotations

import numpy as np

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.resources.scoring.base import ScoringResource


class InProcessScoring(ScoringResource):
    """The local deployment: the trained estimator predicts in this process."""

    def predict(self, model: TrainedModel, matrix: np.ndarray) -> np.ndarray:
        return model.predict_matrix(matrix)
