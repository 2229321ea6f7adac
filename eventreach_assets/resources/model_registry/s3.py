"""The model registry on S3 (the aws deployment), which also packages versions for SageMaker.

Same layout and semantics as `LocalModelRegistry`, under `s3://<bucket>/<prefix>/`, plus

    <model_id>/sagemaker/<version>/model.tar.gz     `model.joblib` inside, for a SageMaker model

(see `sagemaker_package.py` for the package and the deployment steps).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.domain.sagemaker_wire import ARTIFACT_NAME
from eventreach_assets.resources.files import safe_key
from eventreach_assets.resources.model_registry.base import CURRENT, ModelNotTrainedError, ModelRegistryResource
from eventreach_assets.resources.model_registry.sagemaker_package import PACKAGE_NAME, write_sagemaker_tarball
from eventreach_assets.resources.s3_objects import error_code, is_missing, join_key, s3_client


class S3ModelRegistry(ModelRegistryResource):
    """Versioned artifacts and a `CURRENT` pointer per model in an S3 bucket (dagster-aws `S3Resource`)."""

    s3: S3Resource
    bucket: str = Field(description="bucket holding the artifacts")
    prefix: str = Field(default="models", description="key prefix; '' puts model dirs at the bucket root")

    def client(self) -> Any:
        return s3_client(self.s3)

    def _key(self, model_id: str, *parts: str) -> str:
        return join_key(self.prefix, safe_key(model_id), *parts)

    def artifact_key(self, model_id: str, version: str) -> str:
        return self._key(model_id, f"{safe_key(version)}.joblib")

    def package_key(self, model_id: str, version: str) -> str:
        return self._key(model_id, "sagemaker", safe_key(version), PACKAGE_NAME)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _get(self, key: str) -> bytes | None:
        """The object's bytes, None when the key does not exist; a missing bucket is an error."""
        try:
            return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if is_missing(error):
                return None
            if error_code(error) == "NoSuchBucket":
                raise FileNotFoundError(f"model registry bucket {self.bucket!r} does not exist") from error
            raise

    # ---- the backend -----------------------------------------------------------------------

    def _write_artifact(self, model_id: str, version: str, model: TrainedModel) -> str:
        key = self.artifact_key(model_id, version)
        with tempfile.TemporaryDirectory(prefix="eventreach-model-") as tmp:
            path = Path(tmp, ARTIFACT_NAME)
            model.save(path)
            with path.open("rb") as handle:
                self.client().put_object(
                    Bucket=self.bucket, Key=key, Body=handle, ContentType="application/octet-stream"
                )
        return self._uri(key)

    def _write_pointer(self, model_id: str, version: str) -> None:
        self.client().put_object(
            Bucket=self.bucket, Key=self._key(model_id, CURRENT), Body=version.encode(), ContentType="text/plain"
        )

    def _read_pointer(self, model_id: str) -> str | None:
        pointer = self._get(self._key(model_id, CURRENT))
        return pointer.decode().strip() if pointer is not None else None

    def _read_artifact(self, model_id: str, version: str) -> TrainedModel:
        with tempfile.TemporaryDirectory(prefix="eventreach-model-") as tmp:
            return TrainedModel.load(self._download(model_id, version, Path(tmp)))

    def _pointer_location(self, model_id: str) -> str:
        return self._uri(self._key(model_id, CURRENT))

    def _download(self, model_id: str, version: str, directory: Path) -> Path:
        key = self.artifact_key(model_id, version)
        data = self._get(key)
        if data is None:
            raise ModelNotTrainedError(f"model {model_id!r} version {version!r}: {self._uri(key)} does not exist")
        path = Path(directory, f"{safe_key(version)}.joblib")
        path.write_bytes(data)
        return path

    # ---- SageMaker -------------------------------------------------------------------------

    def package_for_sagemaker(self, model_id: str, version: str | None = None) -> str:
        """Write `model.tar.gz` for a version (default: current); returns the URI for `ModelDataUrl`."""
        version = version or self.current_version(model_id)
        if version is None:
            raise ModelNotTrainedError(f"model {model_id!r} has no current version to package")
        key = self.package_key(model_id, version)
        with tempfile.TemporaryDirectory(prefix="eventreach-model-") as tmp:
            artifact = self._download(model_id, version, Path(tmp))
            TrainedModel.load(artifact)  # refuse to package an artifact the server could not load
            package = write_sagemaker_tarball(artifact, Path(tmp, PACKAGE_NAME))
            body = io.BytesIO(package.read_bytes())
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/gzip")
        return self._uri(key)
