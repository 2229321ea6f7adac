"""Where trained models live and how candidates get scored with them.

The model assets save artifacts to a registry; scoring loads the current version of each
model from it. Locally the model predicts in process; in production the same artifact is
served behind a SageMaker endpoint and only the `predict` step changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.resources.storage import safe_key


class ModelNotTrainedError(LookupError):
    """Scoring asked for a model no model asset has materialized yet."""


class ModelRegistryResource(dg.ConfigurableResource):
    """Versioned model artifacts with a "current" pointer per model."""

    def save(self, model: TrainedModel, promote: bool) -> str:
        """Store the artifact; make it the version scoring uses only when `promote` is true."""
        raise NotImplementedError

    def load_current(self, model_id: str) -> TrainedModel:
        raise NotImplementedError


class LocalModelRegistry(ModelRegistryResource):
    """`<base_dir>/<model_id>/<version>.joblib` plus a `CURRENT` file naming the version in use."""

    base_dir: str

    def _dir(self, model_id: str) -> Path:
        return Path(self.base_dir, safe_key(model_id))

    def save(self, model: TrainedModel, promote: bool) -> str:
        path = self._dir(model.model_id) / f"{safe_key(model.version)}.joblib"
        model.save(path)
        if not promote:
            return str(path)
        pointer = self._dir(model.model_id) / "CURRENT"
        temporary = pointer.with_name(f".CURRENT.{os.getpid()}.tmp")
        temporary.write_text(model.version)
        os.replace(temporary, pointer)
        return str(path)

    def load_current(self, model_id: str) -> TrainedModel:
        pointer = self._dir(model_id) / "CURRENT"
        if not pointer.exists():
            raise ModelNotTrainedError(
                f"model {model_id!r} has not been trained yet: materialize the model assets (job `train_models`)"
            )
        return TrainedModel.load(self._dir(model_id) / f"{pointer.read_text().strip()}.joblib")


class ScoringResource(dg.ConfigurableResource):
    """Scores feature matrices with the current version of each model."""

    registry: ModelRegistryResource

    def load_models(self, model_ids: Sequence[str]) -> dict[str, TrainedModel]:
        return {model_id: self.registry.load_current(model_id) for model_id in model_ids}

    def predict(self, model: TrainedModel, matrix: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class InProcessScoring(ScoringResource):
    """The local deployment: the trained estimator predicts in this process."""

    def predict(self, model: TrainedModel, matrix: np.ndarray) -> np.ndarray:
        return model.predict_matrix(matrix)
