"""A model server that follows SageMaker's inference container contract.

Production scoring sends feature matrices to SageMaker endpoints; this is the program the
endpoint's container runs, and the same program is the loopback stand-in the tests (and a
developer) score against, so the remote path is exercised with the project's own model
rather than a canned reply.

Contract (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html):

* `GET /ping` answers 200 once the model is loaded (JSON: the model ids and versions served).
* `POST /invocations` scores one payload. SageMaker's runtime forwards `invoke_endpoint`
  calls here. `POST /endpoints/<name>/invocations` is the runtime API's own path (what boto3
  requests when given an `endpoint_url`), so a client can talk to this server directly; one
  server may host several models, each under its model id as the endpoint name.
* Request `Content-Type`:
  - `text/csv`: one row of the feature matrix per line, no header, values in the model's
    `feature_names` order; an empty value or `nan` is a missing number.
  - `application/json`: `{"instances": [[...], ...]}`; `null` is a missing number.
* Response in the `Accept` type (default: the request's type): `text/csv`, one probability
  per line, or `application/json`, `{"predictions": [...]}`. Floats are written with
  `repr` (shortest exact representation), so they round-trip bit for bit.
* The response header `X-Amzn-SageMaker-Custom-Attributes: model_id=<id>,model_version=<v>`
  (SageMaker forwards it as `CustomAttributes`) lets the client check that the endpoint
  serves the version the registry says is current.
* Errors are 4xx (bad payload: the message names the model and, for a wrong width, the
  expected column count) or 5xx, with an AWS-style JSON body `{"message": ...}` and an
  `x-amzn-ErrorType` header, so botocore reports them like SageMaker's own errors.

The artifact is the file `TrainedModel.save` writes, read from SageMaker's model dir
(`/opt/ml/model`, where SageMaker unpacks `model.tar.gz`; overridden by env `SM_MODEL_DIR` or
`--model-dir`). Run it with

    python -m eventreach_assets.serving.model_server [serve] [--model-dir DIR ...] [--host H] [--port P]

`--host` defaults to 127.0.0.1 (local use); the container must pass `--host 0.0.0.0` and listen
on 8080 (the default port, or env `SAGEMAKER_BIND_TO_PORT`). SageMaker starts the container
with the argument `serve`, which is accepted and ignored. The payload formats are
`domain/sagemaker_wire.py` (shared with the scoring client); packaging is
`resources/model_registry/sagemaker_package.py`, deploying `resources/model_deployment/sagemaker.py`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import unquote, urlsplit

import numpy as np
import polars as pl

from eventreach_assets.domain.models import TrainedModel
from eventreach_assets.domain.sagemaker_wire import (
    ARTIFACT_NAME,
    CSV,
    CUSTOM_ATTRIBUTES_HEADER,
    JSON,
    MAX_PAYLOAD_BYTES,
    format_probabilities,
    media_type,
    model_attributes,
)

logger = logging.getLogger(__name__)

MODEL_DIR_ENV = "SM_MODEL_DIR"
DEFAULT_MODEL_DIR = "/opt/ml/model"
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
DEFAULT_PORT = 8080  # the port SageMaker sends /ping and /invocations to
CURRENT_POINTER = "CURRENT"  # LocalModelRegistry's pointer file, so a registry dir can be served too
_ENDPOINT_PATH = re.compile(r"/endpoints/([^/]+)/invocations")


# ---- the application (HTTP-independent, so tests can wrap it) -------------------------


@dataclass(frozen=True)
class Reply:
    """What the HTTP layer sends, kept apart from it so tests can wrap `ModelApp.invoke`."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


class InferenceError(Exception):
    """A request the server refuses: HTTP status, AWS-style error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def reply(self) -> Reply:
        body = json.dumps({"message": self.message, "code": self.code}).encode()
        return Reply(self.status, body, JSON, {"x-amzn-ErrorType": self.code})


def _bad_request(message: str) -> InferenceError:
    return InferenceError(400, "ValidationError", message)


class ModelApp:
    """Routes pings and invocations to the loaded models; subclass `invoke` to inject faults."""

    def __init__(
        self, models: TrainedModel | Mapping[str, TrainedModel], max_body_bytes: int = MAX_PAYLOAD_BYTES
    ) -> None:
        if isinstance(models, TrainedModel):
            models = {models.model_id: models}
        self.models: dict[str, TrainedModel] = dict(models)
        self.max_body_bytes = max_body_bytes

    def ping(self) -> Reply:
        if not self.models:
            return InferenceError(503, "ServiceUnavailable", "no model loaded").reply()
        served = {name: {"model_id": m.model_id, "version": m.version} for name, m in self.models.items()}
        return Reply(200, json.dumps({"status": "ok", "endpoints": served}).encode())

    def model_for(self, endpoint: str | None) -> TrainedModel:
        """The model behind an endpoint name; `None` (plain /invocations) needs exactly one model."""
        if endpoint is None:
            if len(self.models) != 1:
                raise _bad_request(
                    f"this server hosts {len(self.models)} models {sorted(self.models)}; "
                    "POST to /endpoints/<name>/invocations"
                )
            return next(iter(self.models.values()))
        try:
            return self.models[endpoint]
        except KeyError:
            raise InferenceError(
                404, "ValidationError", f"endpoint {endpoint!r} not found; this server hosts {sorted(self.models)}"
            ) from None

    def invoke(self, endpoint: str | None, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        """Score one payload: parse, predict with the endpoint's model, format in the Accept type."""
        model = self.model_for(endpoint)
        request_type = media_type(content_type)
        if request_type not in (CSV, JSON):
            raise InferenceError(
                415, "ValidationError", f"model {model.model_id!r}: unsupported Content-Type {content_type!r}; "
                f"send {CSV} or {JSON}",
            )  # fmt: skip
        response_type = _negotiate(accept, request_type, model.model_id)
        width = len(model.feature_names)
        parse = parse_csv if request_type == CSV else parse_json
        matrix = parse(body, width, model.model_id)
        probabilities = model.predict_matrix(matrix)
        headers = {CUSTOM_ATTRIBUTES_HEADER: model_attributes(model.model_id, model.version)}
        return Reply(200, format_probabilities(probabilities, response_type), response_type, headers)


def _negotiate(accept: str | None, request_type: str, model_id: str) -> str:
    """The first supported type in Accept; none or `*/*` means answer in the request's type."""
    offered = [media_type(part) for part in (accept or "").split(",") if part.strip()]
    if not offered:
        return request_type
    wildcards = {"*/*": request_type, "text/*": CSV, "application/*": JSON}
    for media in offered:
        if media in (CSV, JSON):
            return media
        if media in wildcards:
            return wildcards[media]
    message = f"model {model_id!r}: cannot answer in {accept!r}; accept {CSV} or {JSON}"
    raise InferenceError(406, "ValidationError", message)


def _decode(body: bytes, model_id: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _bad_request(f"model {model_id!r}: payload is not UTF-8 ({error})") from None


def parse_csv(body: bytes, width: int, model_id: str) -> np.ndarray:
    """CSV rows -> float64 matrix, refusing rows whose column count is not the model's."""
    lines = _decode(body, model_id).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return np.empty((0, width), dtype=np.float64)
    for number, line in enumerate(lines, start=1):
        columns = line.count(",") + 1
        if columns != width:
            raise _bad_request(
                f"model {model_id!r} expects {width} columns per row (its features, in order), "
                f"row {number} has {columns}"
            )
    schema = {f"f{i}": pl.Float64() for i in range(width)}
    try:
        frame = pl.read_csv(io.StringIO("\n".join(lines)), has_header=False, schema=schema)
    except pl.exceptions.PolarsError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _bad_request(f"model {model_id!r}: unreadable CSV payload: {first_line}") from None
    if frame.height != len(lines):
        raise _bad_request(f"model {model_id!r}: read {frame.height} rows from {len(lines)} CSV lines")
    return frame.to_numpy().astype(np.float64, copy=False)


def parse_json(body: bytes, width: int, model_id: str) -> np.ndarray:
    """`{"instances": [[...], ...]}` -> float64 matrix; numbers or null only, `width` per row."""
    try:
        payload = json.loads(_decode(body, model_id))
    except json.JSONDecodeError as error:
        raise _bad_request(f"model {model_id!r}: payload is not JSON ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise _bad_request(f'model {model_id!r}: JSON payload must be {{"instances": [[...], ...]}}')
    instances = payload["instances"]
    for number, row in enumerate(instances, start=1):
        if not isinstance(row, list) or len(row) != width:
            found = f"{len(row)} columns" if isinstance(row, list) else type(row).__name__
            raise _bad_request(
                f"model {model_id!r} expects {width} columns per row (its features, in order), row {number} has {found}"
            )
    kinds = {type(value) for row in instances for value in row}
    if not kinds <= {int, float, type(None)}:
        bad = sorted(kind.__name__ for kind in kinds - {int, float, type(None)})
        raise _bad_request(f"model {model_id!r}: instances must hold numbers or null, found {bad}")
    if not instances:
        return np.empty((0, width), dtype=np.float64)
    return np.array(instances, dtype=np.float64)


# ---- HTTP -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: ModelApp) -> None:
        super().__init__(address, _Handler)
        self.app = app


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: botocore reuses its pooled connections
    server: _Server

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/ping":
            self._send(self.server.app.ping())
        else:
            self._send(InferenceError(404, "UnknownOperation", f"no such path: GET {self.path}").reply())

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        match = _ENDPOINT_PATH.fullmatch(path)
        if path != "/invocations" and match is None:
            self.close_connection = True
            self._send(InferenceError(404, "UnknownOperation", f"no such path: POST {self.path}").reply())
            return
        body = self._read_body()
        if body is None:
            return
        endpoint = unquote(match.group(1)) if match else None
        try:
            reply = self.server.app.invoke(endpoint, body, self.headers.get("Content-Type"), self.headers.get("Accept"))
        except InferenceError as error:
            reply = error.reply()
        except Exception as error:
            logger.exception("invocation of %s failed", endpoint or "/invocations")
            reply = InferenceError(500, "InternalFailure", f"{type(error).__name__}: {error}").reply()
        self._send(reply)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413 (the connection is then closed)."""
        length = self.headers.get("Content-Length")
        limit = self.server.app.max_body_bytes
        if length is None or not length.isdigit():
            self.close_connection = True
            self._send(InferenceError(411, "ValidationError", "Content-Length required").reply())
            return None
        if int(length) > limit:
            self.close_connection = True
            message = f"payload of {length} bytes is over the {limit}-byte limit"
            self._send(InferenceError(413, "ValidationError", message).reply())
            return None
        return self.rfile.read(int(length))

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def serve_in_thread(
    target: ModelApp | TrainedModel | Mapping[str, TrainedModel], host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Start a server in a daemon thread (port 0: any free port); returns (base URL, stop)."""
    app = target if isinstance(target, ModelApp) else ModelApp(target)
    server = _Server((host, port), app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.name = f"model-server-{server.server_address[1]}"
    thread.start()
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    url_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{url_host}:{server.server_address[1]}", stop


# ---- artifacts and the command line ---------------------------------------------------


def find_artifact(model_dir: Path) -> Path:
    """The artifact to serve from a model dir.

    In order: `model.joblib` (what the SageMaker package holds); the version a `CURRENT`
    file names (a LocalModelRegistry model dir); the only `*.joblib` file. Anything else is
    ambiguous or empty, and the error lists what is there.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model dir {model_dir} does not exist (set --model-dir or ${MODEL_DIR_ENV})")
    if (model_dir / ARTIFACT_NAME).is_file():
        return model_dir / ARTIFACT_NAME
    pointer = model_dir / CURRENT_POINTER
    if pointer.is_file():
        current = model_dir / f"{pointer.read_text().strip()}.joblib"
        if not current.is_file():
            raise FileNotFoundError(f"{pointer} names {current.name}, which is missing")
        return current
    artifacts = sorted(model_dir.glob("*.joblib"))
    if len(artifacts) == 1:
        return artifacts[0]
    found = sorted(path.name for path in model_dir.iterdir())
    if not artifacts:
        raise FileNotFoundError(f"no *.joblib model artifact in {model_dir} (found {found})")
    raise FileNotFoundError(
        f"{len(artifacts)} artifacts in {model_dir} ({[a.name for a in artifacts]}): "
        f"name the one to serve {ARTIFACT_NAME} or add a {CURRENT_POINTER} file"
    )


def load_models(model_dirs: Sequence[Path]) -> dict[str, TrainedModel]:
    """Each dir's artifact, keyed by model id (the endpoint name it is served under)."""
    models: dict[str, TrainedModel] = {}
    for model_dir in model_dirs:
        artifact = find_artifact(Path(model_dir))
        model = TrainedModel.load(artifact)
        if model.model_id in models:
            raise ValueError(f"model {model.model_id!r} is in more than one model dir")
        models[model.model_id] = model
        logger.info("loaded %s version %s from %s", model.model_id, model.version, artifact)
    return models


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eventreach_assets.serving.model_server",
        description="Serve EventReach model artifacts with SageMaker's /ping and /invocations contract.",
    )
    parser.add_argument("command", nargs="?", choices=["serve"], help="SageMaker passes 'serve'; ignored")
    parser.add_argument(
        "--model-dir",
        action="append",
        type=Path,
        help=f"dir holding the artifact (repeat for several models); default ${MODEL_DIR_ENV} or {DEFAULT_MODEL_DIR}",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 inside the SageMaker container")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get(PORT_ENV, DEFAULT_PORT)), help=f"default ${PORT_ENV} or 8080"
    )
    parser.add_argument("--max-body-bytes", type=int, default=MAX_PAYLOAD_BYTES, help="largest accepted payload")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Load the artifacts, then serve until SIGTERM/SIGINT (SageMaker stops containers with SIGTERM)."""
    args = _parser().parse_args(argv)
    model_dirs = args.model_dir or [Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR))]
    try:
        models = load_models(model_dirs)
    except (OSError, ValueError) as error:
        logger.error("cannot load a model: %s", error)
        return 2
    server = _Server((args.host, args.port), ModelApp(models, max_body_bytes=args.max_body_bytes))

    def terminate(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    host, port = server.server_address[:2]
    logger.info("serving %s on http://%s:%s (/ping, /invocations)", sorted(models), host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
