"""The SageMaker inference wire format both ends of a scoring request share.

The model server (`serving/model_server.py`, the program a SageMaker endpoint's container
runs) and the scoring client (`resources/scoring/sagemaker.py`) must agree byte for byte on
payloads, content types, the custom attributes naming the served model version, and the
artifact's name inside `model.tar.gz`; that agreement lives here, below both.

* Requests: `text/csv`, one row of the feature matrix per line, no header, values in the
  model's `feature_names` order (`csv_lines`).
* Responses: `text/csv`, one probability per line, or `application/json`,
  `{"predictions": [...]}` (`format_probabilities` / `parse_probabilities`). Floats are written
  in their shortest exact form, so they round-trip bit for bit.
* `X-Amzn-SageMaker-Custom-Attributes: model_id=<id>,model_version=<v>` (SageMaker forwards it
  as `CustomAttributes`) lets the client refuse an endpoint serving another version.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl

CSV = "text/csv"
JSON = "application/json"
ARTIFACT_NAME = "model.joblib"  # the name `package_for_sagemaker` gives the artifact in model.tar.gz
# SageMaker rejects real-time invocation payloads above 6 MB before they reach the container;
# the server enforces the same limit so a client that would overflow it fails locally too.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def media_type(header: str | None) -> str:
    """The media type of a Content-Type / Accept entry, lower-case, parameters dropped."""
    return (header or "").split(";", 1)[0].strip().lower()


def csv_lines(matrix: np.ndarray) -> list[str]:
    """One CSV line per matrix row, each float in its shortest exact form (NaN as `NaN`).

    polars writes floats with the shortest representation that parses back to the same bits
    (like `repr`), about 5x faster than formatting in Python; the tests check the round trip.
    """
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-d matrix, got shape {matrix.shape}")
    if matrix.shape[0] == 0:
        return []
    text = pl.DataFrame(np.ascontiguousarray(matrix, dtype=np.float64)).write_csv(
        include_header=False, line_terminator="\n"
    )
    return text.split("\n")[:-1]


def format_probabilities(values: np.ndarray, content_type: str) -> bytes:
    """Probabilities as `text/csv` (one per line) or `application/json` (`{"predictions": [...]}`)."""
    floats = np.asarray(values, dtype=np.float64).tolist()  # Python floats: json and repr are exact
    if content_type == JSON:
        return json.dumps({"predictions": floats}).encode()
    return "".join(f"{v!r}\n" for v in floats).encode()


def parse_probabilities(body: bytes, content_type: str | None) -> np.ndarray:
    """The inverse of `format_probabilities` (what a client reads back)."""
    text = body.decode("utf-8")
    if media_type(content_type) == JSON:
        return np.asarray(json.loads(text)["predictions"], dtype=np.float64)
    return np.asarray([float(line) for line in text.split()], dtype=np.float64)


def model_attributes(model_id: str, version: str) -> str:
    """The custom-attributes value naming the model and version that answered."""
    return f"model_id={model_id},model_version={version}"


def parse_attributes(value: str | None) -> dict[str, str]:
    """`k=v,k=v` custom attributes as a dict (empty when absent)."""
    pairs = (item.partition("=") for item in (value or "").split(",") if "=" in item)
    return {key.strip(): val.strip() for key, _, val in pairs}
