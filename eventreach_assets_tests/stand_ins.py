"""Real-protocol stand-ins for the production services, started on 127.0.0.1 by the tests.

moto in server mode answers DynamoDB, S3, Glue, SNS, SES and CloudWatch over real HTTP, so
boto3 (and dagster-aws) talk to it exactly as they would to AWS. Nothing here listens on
anything but loopback, and every server is stopped when its fixture ends.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def moto_server() -> Iterator[str]:
    """A ThreadedMotoServer on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

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
