"""The local model registry: artifacts and pointers under the deployment's data dir."""

from __future__ import annotations

from pathlib import Path

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.resources.files import write_bytes_atomically
from eventreach_assets.resources.model_registry.base import CURRENT, ModelRegistryResource


class LocalModelRegistry(ModelRegistryResource):
    """`<base_dir>/<model_id>/<version>.joblib` plus a `CURRENT` file naming the version in use."""

    base_dir: str

    def _dir(self, model_id: str) -> Path:
        return Path(self.base_dir, model_id)

    def _write_artifact(self, model_id: str, version: str, model: TrainedModel) -> str:
        path = self._dir(model_id) / f"{version}.joblib"
        model.save(path)
        return str(path)

    def _write_pointer(self, model_id: str, version: str) -> None:
        write_bytes_atomically(version.encode(), self._dir(model_id) / CURRENT)

    def _read_pointer(self, model_id: str) -> str | None:
        pointer = self._dir(model_id) / CURRENT
        return pointer.read_text().strip() if pointer.exists() else None

    def _read_artifact(self, model_id: str, version: str) -> TrainedModel:
        return TrainedModel.load(self._dir(model_id) / f"{version}.joblib")

    def _pointer_location(self, model_id: str) -> str:
        return str(self._dir(model_id) / CURRENT)
