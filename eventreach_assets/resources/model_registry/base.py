"""The model registry interface: versioned model artifacts with a "current" pointer per model.

The model assets save artifacts here; scoring loads the current version of each model. Every
backend keeps the same layout under its root (a directory, an S3 prefix):

    <model_id>/<version>.joblib     the artifact `TrainedModel.save` writes
    <model_id>/CURRENT              the version scoring uses (text)

The artifact is stored before `CURRENT` is rewritten, and each is replaced atomically, so a
reader sees either the old or the new version, never a pointer to a missing file. A model
below the AUC floor is saved with `promote=False`: stored for inspection, never current.
"""

from __future__ import annotations

import abc

import dagster as dg

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.resources.files import safe_key

CURRENT = "CURRENT"


class ModelNotTrainedError(LookupError):
    """Scoring asked for a model no model asset has materialized yet."""


class ModelRegistryResource(dg.ConfigurableResource, abc.ABC):
    """Versioned model artifacts with a "current" pointer per model."""

    def save(self, model: TrainedModel, promote: bool) -> str:
        """Store the artifact; make it the version scoring uses only when `promote` is true.
        Returns where the artifact is."""
        location = self._write_artifact(safe_key(model.model_id), safe_key(model.version), model)
        if promote:
            self._write_pointer(model.model_id, model.version)
        return location

    def current_version(self, model_id: str) -> str | None:
        """The promoted version, None when the model was never promoted."""
        return self._read_pointer(safe_key(model_id))

    def load_version(self, model_id: str, version: str) -> TrainedModel:
        return self._read_artifact(safe_key(model_id), safe_key(version))

    def load_current(self, model_id: str) -> TrainedModel:
        version = self.current_version(model_id)
        if version is None:
            raise ModelNotTrainedError(
                f"model {model_id!r} has not been trained yet (no {self._pointer_location(model_id)}): "
                "materialize the model assets (job `train_models`)"
            )
        return self.load_version(model_id, version)

    @abc.abstractmethod
    def _write_artifact(self, model_id: str, version: str, model: TrainedModel) -> str:
        """Store the artifact of `model` as `<model_id>/<version>.joblib`; returns its location."""

    @abc.abstractmethod
    def _write_pointer(self, model_id: str, version: str) -> None:
        """Make `<model_id>/CURRENT` name `version`, atomically."""

    @abc.abstractmethod
    def _read_pointer(self, model_id: str) -> str | None:
        """The version `<model_id>/CURRENT` names, None when there is no pointer."""

    @abc.abstractmethod
    def _read_artifact(self, model_id: str, version: str) -> TrainedModel:
        """The artifact `<model_id>/<version>.joblib`."""

    @abc.abstractmethod
    def _pointer_location(self, model_id: str) -> str:
        """Where `<model_id>/CURRENT` is, as a message shows it."""
