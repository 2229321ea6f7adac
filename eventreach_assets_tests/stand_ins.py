"""Real-protocol stand-ins for the production services, started on 127.0.0.1 by the tests.

moto in server mode answers DynamoDB, S3, Glue, SNS, SES and CloudWatch over real HTTP, so
boto3 (and dagster-aws) talk to it exactly as they would to AWS. Nothing here listens on
anything but loopback, and every server is stopped when its fixture ends.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from eventreach_assets.provider_standins import LoopbackHTTPServer, serving

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")


def serialize_moto_dynamodb_writes() -> None:
    """Make moto's DynamoDB writes atomic with respect to each other, as DynamoDB's are.

    moto runs `TransactWriteItems` on a deep copy of the tables and puts the copy back when the
    transaction is cancelled, so a write another request made in between is lost (two ledger runs
    racing for the same keys could then both be granted one). One lock around every item write, in
    this process's moto only, gives the tests DynamoDB's own guarantee to test our code against."""
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend, "_eventreach_serialized", False):
        return
    lock = threading.RLock()

    def locked(write: Any) -> Any:
        @functools.wraps(write)
        def under_lock(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return write(*args, **kwargs)

        return under_lock

    for name in _DYNAMODB_WRITES:
        setattr(DynamoDBBackend, name, locked(getattr(DynamoDBBackend, name)))
    DynamoDBBackend._eventreach_serialized = True


@contextmanager
def moto_server() -> Iterator[str]:
    """A ThreadedMotoServer on a free loopback port (its DynamoDB writes atomic, see
    `serialize_moto_dynamodb_writes`); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    serialize_moto_dynamodb_writes()

    previous = {key: os.environ.get(key) for key in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def reset_moto(endpoint: str) -> None:
    """Forget every table, bucket and metric (moto's own reset API), so tests do not share state."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


# ---- Snowflake: fakesnow ------------------------------------------------------------------
# fakesnow 0.12.1 has no `cursor.fetch_arrow_batches()`, the connector call SnowflakeWarehouse
# streams results with, so `_fetch_arrow_batches` supplies it the way the real connector
# behaves: several batches, each NUMBER column in the narrowest integer type that fits that
# batch, and no batch at all for an empty result.


def _narrowest_ints(batch: pa.RecordBatch) -> pa.Table:
    """A batch as Snowflake ships it: integers in the smallest type this batch's values fit."""
    columns = []
    for column in batch.columns:
        if pa.types.is_integer(column.type) and len(column) and column.null_count < len(column):
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            for narrow in (pa.int8(), pa.int16(), pa.int32(), pa.int64()):
                limit = 2 ** (narrow.bit_width - 1)
                if -limit <= low and high < limit:
                    column = column.cast(narrow)
                    break
        columns.append(column)
    return pa.Table.from_arrays(columns, names=batch.schema.names)


def _fetch_arrow_batches(self: Any, force_microsecond_precision: bool = False) -> Iterator[pa.Table]:
    table = self._arrow_table
    if table is None or table.num_rows == 0:
        return
    for batch in table.to_batches(max_chunksize=3_000):
        yield _narrowest_ints(batch)


@contextmanager
def fake_snowflake_connector() -> Iterator[None]:
    """snowflake.connector patched to fakesnow (an in-process DuckDB, no network)."""
    import fakesnow
    import pytest
    from fakesnow.cursor import FakeSnowflakeCursor

    with fakesnow.patch(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeSnowflakeCursor, "fetch_arrow_batches", _fetch_arrow_batches, raising=False)
        yield


# ---- SMTP: aiosmtpd --------------------------------------------------------------------------


class RecordingSmtpHandler:
    """An aiosmtpd handler that keeps every message and can refuse recipients with a given reply.

    `refuse` maps a recipient address to the reply sent to its RCPT TO (e.g. "550 5.1.1 no
    such user"). Each received message is (peer, mail_from, rcpt_tos, raw bytes); the peer
    (client host, port) tells connections apart, so a test can count them.
    """

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.refuse = dict(refuse or {})
        self.messages: list[tuple[Any, str, list[str], bytes]] = []
        self.auth_logins: list[str] = []
        self.quits = 0
        self.loop: Any = None  # the controller's event loop, set by smtp_server
        self._servers: list[Any] = []

    def drop_connections(self) -> None:
        """Close every client connection from the server side, as an idle timeout would."""
        import time

        for server in self._servers:
            if server.transport is not None:
                self.loop.call_soon_threadsafe(server.transport.close)
        time.sleep(0.1)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self._servers.append(server)
        self.messages.append(
            (session.peer, envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        )
        return "250 2.0.0 Ok: queued"

    @property
    def sessions(self) -> int:
        return len({peer for peer, *_ in self.messages})


@contextmanager
def smtp_server(
    refuse: dict[str, str] | None = None, credentials: tuple[str, str] | None = None
) -> Iterator[tuple[str, int, RecordingSmtpHandler]]:
    """An aiosmtpd server on a free loopback port; yields (host, port, handler).

    With `credentials`, AUTH is required (over plain TCP: the test has no certificate).
    """
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    handler = RecordingSmtpHandler(refuse)
    options: dict[str, Any] = {}
    if credentials is not None:

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            ok = (
                isinstance(auth_data, LoginPassword)
                and (auth_data.login.decode(), auth_data.password.decode()) == credentials
            )
            if ok:
                handler.auth_logins.append(auth_data.login.decode())
            return AuthResult(success=ok, handled=False)

        options = {"authenticator": authenticate, "auth_required": True, "auth_require_tls": False}
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    handler.loop = controller.loop
    try:
        yield "127.0.0.1", controller.port, handler
    finally:
        controller.stop()


# ---- HTTP webhook receiver ------------------------------------------------------------------


class WebhookRecorder:
    """What a loopback webhook receiver got, and the replies it gives, in order (then 200)."""

    def __init__(self, replies: list[tuple[int, str]] | None = None) -> None:
        self.replies = list(replies or [])
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.url = ""


@contextmanager
def webhook_receiver(replies: list[tuple[int, str]] | None = None) -> Iterator[WebhookRecorder]:
    """A threaded http.server on a free loopback port that records POSTs; yields its recorder.

    Each request gets the next scripted (status, body) reply, then `200 {"id": "msg-<n>"}`.
    """
    import http.server
    import threading

    recorder = WebhookRecorder(replies)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                recorder.requests.append((self.path, dict(self.headers.items()), body))
                status, text = (
                    recorder.replies.pop(0) if recorder.replies else (200, f'{{"id": "msg-{len(recorder.requests)}"}}')
                )
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/v1/banners"
    with serving(server):
        yield recorder


# ---- Long-running processes: the Dagster webserver and daemon ---------------------------------


@contextmanager
def background_process(args: list[str], cwd: str, env: dict[str, str], log_path: str) -> Iterator[Any]:
    """A subprocess in its own process group, stdout+stderr to `log_path`; the whole group is stopped on exit.

    Dagster's webserver and daemon start code servers and run workers of their own, so stopping
    only the parent would leave those behind: SIGTERM goes to the group, SIGKILL to what is left 20 s later.
    """
    import signal
    import subprocess
    from contextlib import suppress

    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            with suppress(ProcessLookupError):  # whatever of the group is left: code servers, run workers
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for_http(url: str, timeout: float, processes: list[Any], describe: Callable[[], str] | None = None) -> None:
    """Poll `url` until it answers 200 (bounded); fail early, with `describe()`, if a process died."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p.args for p in processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"process exited before {url} answered: {dead}\n{describe() if describe else ''}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s\n{describe() if describe else ''}")
