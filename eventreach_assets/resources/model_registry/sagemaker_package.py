"""Packaging a model version for a SageMaker endpoint: `model.tar.gz` with the artifact inside.

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

   The `model_endpoints` asset does steps 2 and 3 after every training run
   (`resources/model_deployment/sagemaker.py`).
"""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

from eventreach_assets.domain.sagemaker_wire import ARTIFACT_NAME

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
