"""The model registry on S3 (the aws deployment), and packaging a model for SageMaker.

Same layout and semantics as `LocalModelRegistry`, under `s3://<bucket>/<prefix>/`:

    <model_id>/<version>.joblib                     the artifact `TrainedModel.save` writes
    <model_id>/CURRENT                              the version scoring uses (text)
    <model_id>/sagemaker/<version>/model.tar.gz     `model.joblib` inside, for a SageMaker model

The artifact is uploaded before `CURRENT` is rewritten, and each is a single PUT, so a reader
sees either the old or the new version, never a pointer to a missing file. A model below the
AUC floor is saved with `promote=False`: stored for inspection, never current.

Deploying a model version to its SageMaker endpoint (endpoint names are the program's
`scoringModels[].endpoint`, e.g. `sagemaker://event-attendance-v3`):

1. The inference image, once per code release: this project installed with `constraints.txt`
   (the artifact only loads with the scikit-learn it was trained with) and the model server
   as entrypoint, listening on 0.0.0.0:8080 as SageMaker requires::

       FROM python:3.11-slim
       COPY . /opt/eventreach
       RUN pip install --no-cache-dir -c /opt/eventreach/constraints.txt /opt/eventreach
       ENTRYPOINT ["python", "-m", "eventreach_assets.serving.model_server", "--host", "0.0.0.0", "--port", "8080"]

   pushed to ECR as `$ACCOUNT.dkr.ecr.$REGION.amazonaws.com/eventreach-model-server:$TAG`.
   SageMaker runs it with the argument `serve` and unpacks `model.tar.gz` into
   `/opt/ml/model`, where the server finds `model.joblib`.
2. The package: `S3ModelRegistry(...).package_for_sagemaker("event-attendance-v3")` writes
   `model.tar.gz` for the current version and returns its S3 URI.
3. The model, an endpoint config and the endpoint (later versions: a new model and config,
   then `aws sagemaker update-endpoint`, which switches without downtime)::

       MODEL=event-attendance-v3-$VERSION   # $MODEL_DATA: the URI from step 2
       aws sagemaker create-model --model-name $MODEL \\
         --primary-container Image=$IMAGE,ModelDataUrl=$MODEL_DATA \\
         --execution-role-arn $SAGEMAKER_ROLE_ARN   # may read the bucket and pull the image
       aws sagemaker create-endpoint-config --endpoint-config-name $MODEL \\
         --production-variants VariantName=AllTraffic,ModelName=$MODEL,InstanceType=ml.m5.large,InitialInstanceCount=1
       aws sagemaker create-endpoint --endpoint-name event-attendance-v3 --endpoint-config-name $MODEL
       aws sagemaker wait endpoint-in-service --endpoint-name event-attendance-v3

   `SageMakerScoring` refuses an endpoint whose reported version is not `CURRENT`, so deploy
   after every promotion (the weekly training runs before the batch).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.resources.models import ModelNotTrainedError, ModelRegistryResource
from eventreach_assets.resources.storage import safe_key
from eventreach_assets.serving.model_server import ARTIFACT_NAME

CURRENT = "CURRENT"
PACKAGE_NAME = "model.tar.gz"


def write_sagemaker_tarball(artifact: Path, destination: Path) -> Path:
    """`model.tar.gz` holding the artifact as `model.joblib`; identical input, identical bytes."""
    info = tarfile.TarInfo(ARTIFACT_NAME)
    info.size = Path(artifact).stat().st_size
    info.mode = 0o644
    info.mtime = 0
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with (
        destination.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
        Path(artifact).open("rb") as handle,
    ):
        archive.addfile(info, handle)
    return destination


class S3ModelRegistry(ModelRegistryResource):
    """Versioned artifacts and a `CURRENT` pointer per model in an S3 bucket (dagster-aws `S3Resource`)."""

    s3: S3Resource
    bucket: str = Field(description="bucket holding the artifacts")
    prefix: str = Field(default="models", description="key prefix; '' puts model dirs at the bucket root")

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _client: Any = PrivateAttr(default=None)

    def client(self) -> Any:
        """One S3 client per resource: `S3Resource.get_client` builds a new session (~0.15 s) each call."""
        with self._lock:
            if self._client is None:
                self._client = self.s3.get_client()
            return self._client

    def _key(self, model_id: str, *parts: str) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), safe_key(model_id), *parts) if p)

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
            code = error.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                return None
            if code == "NoSuchBucket":
                raise FileNotFoundError(f"model registry bucket {self.bucket!r} does not exist") from error
            raise

    def save(self, model: TrainedModel, promote: bool) -> str:
        """Upload the artifact; then, if promoted, point `CURRENT` at it. Returns the artifact's URI."""
        key = self.artifact_key(model.model_id, model.version)
        client = self.client()
        with tempfile.TemporaryDirectory(prefix="eventreach-model-") as tmp:
            path = Path(tmp, ARTIFACT_NAME)
            model.save(path)
            with path.open("rb") as handle:
                client.put_object(Bucket=self.bucket, Key=key, Body=handle, ContentType="application/octet-stream")
        if promote:
            client.put_object(
                Bucket=self.bucket,
                Key=self._key(model.model_id, CURRENT),
                Body=model.version.encode(),
                ContentType="text/plain",
            )
        return self._uri(key)

    def current_version(self, model_id: str) -> str | None:
        """The promoted version, None when the model was never promoted."""
        pointer = self._get(self._key(model_id, CURRENT))
        return pointer.decode().strip() if pointer is not None else None

    def _download(self, model_id: str, version: str, directory: Path) -> Path:
        key = self.artifact_key(model_id, version)
        data = self._get(key)
        if data is None:
            raise ModelNotTrainedError(f"model {model_id!r} version {version!r}: {self._uri(key)} does not exist")
        path = Path(directory, f"{safe_key(version)}.joblib")
        path.write_bytes(data)
        return path

    def load_version(self, model_id: str, version: str) -> TrainedModel:
        with tempfile.TemporaryDirectory(prefix="eventreach-model-") as tmp:
            return TrainedModel.load(self._download(model_id, version, Path(tmp)))

    def load_current(self, model_id: str) -> TrainedModel:
        version = self.current_version(model_id)
        if version is None:
            raise ModelNotTrainedError(
                f"model {model_id!r} has not been trained yet (no {self._uri(self._key(model_id, CURRENT))}): "
                "materialize the model assets (job `train_models`)"
            )
        return self.load_version(model_id, version)

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
