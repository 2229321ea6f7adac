"""Scoring through SageMaker real-time endpoints (the aws deployment's `scoring_service`).

Only `predict` goes remote: the models are still loaded from the registry, because the
feature vocabularies live in the artifact and the score cache is keyed by its version. Each
feature matrix (one `scoring.batchSize` batch of one model) is sent as CSV, split into
requests of at most `rows_per_request` rows and `max_payload_bytes` bytes (SageMaker refuses
payloads over 6 MB), `max_in_flight` of them at once. Throttling, 5xx and connection errors
are retried with capped exponential backoff and jitter, `max_attempts` tries in all (botocore's
own retries are off, so the bound is this one); a 4xx fails at once with the endpoint, status,
error code and message. The endpoint answers with the model version it serves (custom
attributes); a version other than the registry's current one is an error, since its
probabilities would be cached under the wrong version.

Credentials and, when `region_name` is unset, the region come from the environment
(boto3's default chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
`AWS_PROFILE`, the instance or task role; `AWS_REGION`/`AWS_DEFAULT_REGION`). `endpoint_url`
points the client at `eventreach_assets.serving.model_server` on loopback for tests and local
runs; boto3 then POSTs to `{endpoint_url}/endpoints/{name}/invocations`. The payload formats are
`domain/sagemaker_wire.py`, shared with that server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import Field

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.domain.sagemaker_wire import CSV, csv_lines, parse_attributes, parse_probabilities
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.aws import aws_client
from eventreach_assets.resources.scoring.base import ScoringResource

# Error codes worth another try: throttling, a model still starting, transient server faults.
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ModelNotReadyException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalDependencyException",
    }
)


class SageMakerEndpointError(RuntimeError):
    """An endpoint refused or failed a request; the message names the endpoint."""

    def __init__(self, endpoint: str, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.code = code


def endpoints_from_program(program: ProgramConfig) -> dict[str, str]:
    """model_id -> endpoint name, from the program's `scoringModels[].endpoint` (sagemaker://<name>)."""
    return {spec.model_id: spec.endpoint_name for spec in program.scoring_models}


def endpoint_for(endpoints: Mapping[str, str], model_id: str) -> str:
    """The endpoint serving `model_id`; a KeyError naming the configured ones otherwise."""
    try:
        return endpoints[model_id]
    except KeyError:
        message = f"no SageMaker endpoint configured for model {model_id!r}; configured: {dict(endpoints)}"
        raise KeyError(message) from None


def _retryable(status: int | None, code: str | None, response: dict[str, Any]) -> bool:
    if code in RETRYABLE_CODES or status == 429 or (status is not None and status >= 500):
        return True
    # ModelError (424): the container itself answered an error; retry only its transient ones.
    original = response.get("OriginalStatusCode")
    return code == "ModelError" and isinstance(original, int) and (original == 429 or original >= 500)


class SageMakerScoring(ScoringResource):
    """Predicts with SageMaker endpoints; models (features, version) still come from `registry`."""

    endpoints: dict[str, str] = Field(
        description="model_id -> SageMaker endpoint name; `endpoints_from_program` reads the program's URIs"
    )
    region_name: str | None = Field(default=None, description="AWS region; None: AWS_REGION / AWS_DEFAULT_REGION")
    endpoint_url: str | None = Field(default=None, description="override the runtime URL (a loopback model server)")
    rows_per_request: int = Field(default=1000, gt=0, description="rows per invoke_endpoint call")
    max_payload_bytes: int = Field(default=5_000_000, gt=0, description="CSV bytes per call; SageMaker's limit is 6 MB")
    max_in_flight: int = Field(default=4, gt=0, description="concurrent invoke_endpoint calls per batch")
    max_attempts: int = Field(default=5, gt=0, description="tries per request, the first included")
    backoff_seconds: float = Field(default=0.2, ge=0, description="wait before the first retry; doubles each time")
    max_backoff_seconds: float = Field(default=5.0, ge=0, description="cap on one wait")
    timeout_seconds: float = Field(default=65.0, gt=0, description="read timeout; SageMaker allows 60 s per call")
    check_model_version: bool = Field(
        default=True, description="fail when an endpoint reports a version other than the registry's current one"
    )

    def endpoint_for(self, model_id: str) -> str:
        return endpoint_for(self.endpoints, model_id)

    def client(self) -> Any:
        """The sagemaker-runtime client, botocore retries off (`_invoke` retries and counts itself)."""
        return aws_client(
            "sagemaker-runtime",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            max_attempts=1,
            connect_timeout_s=10,
            read_timeout_s=self.timeout_seconds,
            max_pool_connections=max(10, self.max_in_flight),
        )

    def predict(self, model: TrainedModel, matrix: np.ndarray) -> np.ndarray:
        """P(label) per row, in row order, from the model's endpoint."""
        endpoint = self.endpoint_for(model.model_id)
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(model.feature_names):
            raise ValueError(
                f"{model.model_id}: expected a matrix with {len(model.feature_names)} columns, got {matrix.shape}"
            )
        requests = self._requests(endpoint, model, matrix)
        if not requests:
            return np.empty(0, dtype=np.float64)
        if len(requests) == 1:
            return self._invoke(endpoint, model, *requests[0])
        with ThreadPoolExecutor(max_workers=min(self.max_in_flight, len(requests))) as pool:
            futures: list[Future[np.ndarray]] = [
                pool.submit(self._invoke, endpoint, model, body, rows) for body, rows in requests
            ]
            try:
                return np.concatenate([future.result() for future in futures])
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _requests(self, endpoint: str, model: TrainedModel, matrix: np.ndarray) -> list[tuple[bytes, int]]:
        """CSV bodies with their row counts, each within the row and byte limits."""
        requests: list[tuple[bytes, int]] = []
        chunk: list[str] = []
        size = 0
        for line in csv_lines(matrix):
            length = len(line) + 1
            if length > self.max_payload_bytes:
                raise SageMakerEndpointError(
                    endpoint,
                    f"SageMaker endpoint {endpoint!r}: one row of {model.model_id} is {length} bytes of CSV, "
                    f"over max_payload_bytes={self.max_payload_bytes}",
                )
            if chunk and (len(chunk) >= self.rows_per_request or size + length > self.max_payload_bytes):
                requests.append(("\n".join(chunk).encode() + b"\n", len(chunk)))
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            requests.append(("\n".join(chunk).encode() + b"\n", len(chunk)))
        return requests

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter (half fixed, half random), after try `attempt`."""
        delay = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        return delay * (0.5 + random.random() / 2)

    def _invoke(self, endpoint: str, model: TrainedModel, body: bytes, rows: int) -> np.ndarray:
        """One request, retried while the failure is transient; checks count and model version."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.client().invoke_endpoint(EndpointName=endpoint, Body=body, ContentType=CSV, Accept=CSV)
                payload = response["Body"].read()
                break
            except ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = error.response.get("Error", {}).get("Code")
                message = error.response.get("Error", {}).get("Message")
                retryable = _retryable(status, code, error.response)
                if not retryable or attempt == self.max_attempts:
                    tries = f" after {attempt} tries" if retryable else ""
                    raise SageMakerEndpointError(
                        endpoint,
                        f"SageMaker endpoint {endpoint!r} ({model.model_id}) failed{tries}: "
                        f"HTTP {status} {code}: {message}",
                        status,
                        code,
                    ) from error
            except (BotoConnectionError, HTTPClientError) as error:
                if attempt == self.max_attempts:
                    raise SageMakerEndpointError(
                        endpoint, f"SageMaker endpoint {endpoint!r} unreachable after {attempt} tries: {error}"
                    ) from error
            time.sleep(self._backoff(attempt))
        served = parse_attributes(response.get("CustomAttributes")).get("model_version")
        if self.check_model_version and served is not None and served != model.version:
            raise SageMakerEndpointError(
                endpoint,
                f"SageMaker endpoint {endpoint!r} serves {model.model_id} version {served}, but the registry's "
                f"current version is {model.version}: deploy it (the `model_endpoints` asset) before scoring",
            )
        try:
            probabilities = parse_probabilities(payload, response.get("ContentType"))
        except (ValueError, KeyError, TypeError) as error:
            message = f"SageMaker endpoint {endpoint!r}: unreadable reply: {error}"
            raise SageMakerEndpointError(endpoint, message) from error
        if probabilities.shape != (rows,):
            raise SageMakerEndpointError(
                endpoint, f"SageMaker endpoint {endpoint!r} returned {probabilities.size} probabilities for {rows} rows"
            )
        return probabilities
