"""Providers on 127.0.0.1 that answer after a provider's latency: for `make bench-sends` and the kill tests.

Each is the real server our channels talk to (moto's own WSGI application for SES, SNS and
DynamoDB; aiosmtpd for SMTP; an HTTP server for the in-app webhook), with one addition: the
sending calls are answered after `latency_s`, as a remote provider's round trip would be, while
the ledger's DynamoDB calls are not delayed. Each counts what it received, per recipient, so a
benchmark or a test can check "no customer messaged twice" on the provider's side, not on ours.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import BytesHeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DELAYED_SERVICES = frozenset({"ses", "sns"})  # the providers; DynamoDB (the ledger) answers at once
_SIGNED_SERVICE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")
_SIGNED_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/([^/]+/[^/]+)/aws4_request")  # region/service


def signed_service(environ: dict[str, Any]) -> str:
    """The AWS service a request is signed for (`ses` for SES v1 and v2, `sns`, `dynamodb`)."""
    found = _SIGNED_SERVICE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return found.group(1) if found else ""


def _routed_dispatcher() -> type:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    class RoutedDispatcher(DomainDispatcherApplication):
        """moto's dispatcher, remembering which backend a kind of request goes to.

        moto finds a request's backend anew each time, under one lock, by walking its service modules
        on disk (~30 `stat` calls a request): a third of its CPU per SES message. A signed request's
        scope (service, region) and first path segment decide the backend (SES v1 `/` vs v2 `/v2/`,
        DynamoDB, SNS), so the answer is kept per that key; moto's own API (`/moto-api`) and unsigned
        requests go the whole way, as before.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._routes: dict[tuple[str, str], Any] = {}

        def get_application(self, environ: dict[str, Any]) -> Any:
            scope = _SIGNED_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
            path = environ.get("PATH_INFO", "")
            if scope is None or path.startswith("/moto-api"):
                return super().get_application(environ)
            key = (scope.group(0), path.split("/", 2)[1] if path.count("/") > 1 else "")
            app = self._routes.get(key)
            if app is None:
                app = self._routes.setdefault(key, super().get_application(environ))
            return app

    return RoutedDispatcher


class LatentMotoServer:
    """moto's application (every AWS service, real HTTP) whose SES and SNS calls answer after `latency_s`.

    Served by waitress rather than moto's own werkzeug development server, which closes the
    connection after every answer and starts a thread per connection: at hundreds of sends a
    second that doubled moto's CPU per request and made every boto3 call open a new connection.
    waitress keeps connections alive and answers on a fixed pool of `threads` (more than the
    senders' concurrency, since each delayed answer holds its thread for `latency_s`).
    """

    def __init__(self, latency_s: float = 0.0, account_id: str = "123456789012", threads: int = 64) -> None:
        from moto.moto_server.werkzeug_app import create_backend_app
        from waitress.server import create_server

        self.latency_s, self.account_id = latency_s, account_id
        app = _routed_dispatcher()(create_backend_app)

        def latent(environ: dict[str, Any], start_response: Any) -> Any:
            if self.latency_s and signed_service(environ) in DELAYED_SERVICES:
                time.sleep(self.latency_s)
            return app(environ, start_response)

        self._server: Any = create_server(
            latent, host="127.0.0.1", port=0, threads=threads, connection_limit=1000, backlog=1024,
            channel_timeout=300, ident="moto", clear_untrusted_proxy_headers=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._server.run, name="moto-standin", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.effective_port}"

    def start(self) -> LatentMotoServer:
        logging.getLogger("waitress").setLevel(logging.ERROR)  # no warning per queued request
        self._thread.start()
        self.warm_up()
        return self

    def stop(self) -> None:
        from waitress import wasyncore

        self._server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self._server._map)  # the listener and every kept-alive connection: the loop ends
        self._thread.join(timeout=10)

    def warm_up(self, region: str = "us-east-1") -> None:
        """One call per service we use, before any sender connects.

        moto builds a service's request router on its first request and keeps it, but without a lock:
        32 senders arriving at once on a cold server each build it (~0.2 s of CPU apiece, all under
        one GIL), which costs seconds at the start of every run. One call each builds them once.
        """
        from eventreach_assets.resources import aws

        fake = {"aws_access_key_id": "warm-up", "aws_secret_access_key": "warm-up"}
        clients = {name: aws.aws_client(name, region_name=region, endpoint_url=self.endpoint, **fake)
                   for name in ("ses", "sesv2", "sns", "dynamodb")}  # fmt: skip
        clients["ses"].get_send_quota()
        clients["sesv2"].list_email_identities()
        clients["sns"].list_topics()
        clients["dynamodb"].list_tables()

    def ses_recipients(self, region: str = "us-east-1") -> Counter[str]:
        """Messages SES accepted per recipient address (moto's own record of what it was sent)."""
        from moto.ses.models import ses_backends

        backend = ses_backends[self.account_id][region]
        return Counter(
            address.lower() for message in backend.sent_messages for address in set(message.destinations)
        )  # moto adds the To header's addresses to the envelope's: each once per message

    def sns_published(self, region: str = "us-east-1") -> int:
        """Messages SNS accepted on its topics (moto's count of publishes)."""
        from moto.sns.models import sns_backends

        backend = sns_backends[self.account_id][region]
        return sum(len(topic.sent_notifications) for topic in backend.topics.values())


@contextmanager
def moto_server(latency_s: float = 0.0) -> Iterator[LatentMotoServer]:
    server = LatentMotoServer(latency_s).start()
    try:
        yield server
    finally:
        server.stop()


class LatentSmtpHandler:
    """An aiosmtpd handler that records every message it receives and answers it after `latency_s`."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.recipients: Counter[str] = Counter()
        self.message_ids: Counter[str] = Counter()

    @property
    def received(self) -> int:
        return sum(self.message_ids.values())

    def reset(self) -> None:
        self.recipients.clear()
        self.message_ids.clear()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        headers = BytesHeaderParser().parsebytes(envelope.original_content or envelope.content)
        self.recipients.update(address.lower() for address in envelope.rcpt_tos)
        self.message_ids[str(headers.get("Message-ID", ""))] += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return "250 2.0.0 Ok: queued"


@contextmanager
def smtp_server(latency_s: float = 0.0) -> Iterator[tuple[int, LatentSmtpHandler]]:
    """aiosmtpd on a free loopback port; yields (port, handler)."""
    from aiosmtpd.controller import Controller

    from eventreach_assets.serving.bench import free_port

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = LatentSmtpHandler(latency_s)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A thread-per-connection HTTP server for stand-ins that many senders connect to at once.

    The standard library listens with a backlog of 5: 32 senders connecting at the same moment on a
    busy machine overflow it, and a dropped connection reaches the channel as a closed connection
    (flaky tests, not a feature of the provider). A backlog of 128 takes them all.
    """

    daemon_threads = True
    request_queue_size = 128


class InAppService(LoopbackHTTPServer):
    """The in-app service's webhook: takes a banner once per Idempotency-Key, answers after `latency_s`."""

    def __init__(self, latency_s: float) -> None:
        super().__init__(("127.0.0.1", 0), _InAppHandler)
        self.latency_s = latency_s
        self.keys: Counter[str] = Counter()  # posts per Idempotency-Key (the service deduplicates on it)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/banners"

    @property
    def received(self) -> int:
        return len(self.keys)


class _InAppHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service offers
    server: InAppService

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = self.headers.get("Idempotency-Key", "")
        with self.server.lock:
            self.server.keys[key] += 1
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        answer = json.dumps({"message_id": f"banner-{abs(hash(key)) % 10**12}", "bytes": len(body)}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:  # no line per request
        return


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    """Run `server` on a background thread until the block ends, then shut it down and close it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def in_app_service(latency_s: float = 0.0) -> Iterator[InAppService]:
    server = InAppService(latency_s)
    with serving(server):
        yield server
