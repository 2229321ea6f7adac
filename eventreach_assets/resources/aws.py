"""The one way this project builds a boto3 client: endpoint, region, retries, timeouts, pool size.

Every AWS adapter (DynamoDB stores, S3/Glue export, SES/SNS channels, CloudWatch, SageMaker, S3
feeds and models) asks `aws_client` instead of building its own `Session`/`Config`, so a
retry policy, a timeout or a local endpoint (moto on 127.0.0.1) is set in one place.

Clients are cached per process and per settings: boto3 clients are thread-safe but not
fork-safe, and creating one costs milliseconds that a hot path (a send, a score) should not pay.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

_LOCK = threading.Lock()
_CLIENTS: dict[tuple[int, AwsClientSettings], Any] = {}
_SESSIONS: dict[tuple[int, str | None], boto3.session.Session] = {}


@dataclass(frozen=True)
class AwsClientSettings:
    """What tells one client from another. `max_attempts=1` turns botocore's retries off for an
    adapter that retries (and counts retries) itself; `None` timeouts keep botocore's defaults."""

    service: str
    region_name: str | None = None
    endpoint_url: str | None = None
    max_attempts: int = 5
    connect_timeout_s: float | None = None
    read_timeout_s: float | None = None
    max_pool_connections: int = 10
    profile_name: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None

    def config(self) -> Config:
        options: dict[str, Any] = {
            "retries": {"mode": "standard", "total_max_attempts": self.max_attempts},
            "max_pool_connections": self.max_pool_connections,
        }
        if self.connect_timeout_s is not None:
            options["connect_timeout"] = self.connect_timeout_s
        if self.read_timeout_s is not None:
            options["read_timeout"] = self.read_timeout_s
        return Config(**options)


def aws_client(
    service: str,
    *,
    region_name: str | None = None,
    endpoint_url: str | None = None,
    max_attempts: int = 5,
    timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    read_timeout_s: float | None = None,
    max_pool_connections: int = 10,
    profile_name: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
) -> Any:
    """A low-level boto3 client for `service`, shared by every caller in this process with the same
    settings. `timeout_s` sets both connect and read timeouts; an empty `endpoint_url` means AWS."""
    settings = AwsClientSettings(
        service=service,
        region_name=region_name or None,
        endpoint_url=endpoint_url or None,
        max_attempts=max_attempts,
        connect_timeout_s=connect_timeout_s if connect_timeout_s is not None else timeout_s,
        read_timeout_s=read_timeout_s if read_timeout_s is not None else timeout_s,
        max_pool_connections=max_pool_connections,
        profile_name=profile_name or None,
        aws_access_key_id=aws_access_key_id or None,
        aws_secret_access_key=aws_secret_access_key or None,
        aws_session_token=aws_session_token or None,
    )
    return client_for(settings)


def client_for(settings: AwsClientSettings) -> Any:
    """The cached client for `settings` (built on first use in this process)."""
    key = (os.getpid(), settings)
    client = _CLIENTS.get(key)
    if client is not None:
        return client
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            session_key = (os.getpid(), settings.profile_name)
            session = _SESSIONS.get(session_key)
            if session is None:
                session = _SESSIONS[session_key] = boto3.session.Session(profile_name=settings.profile_name)
            client = _CLIENTS[key] = session.client(
                settings.service,
                region_name=settings.region_name,
                endpoint_url=settings.endpoint_url,
                aws_access_key_id=settings.aws_access_key_id,
                aws_secret_access_key=settings.aws_secret_access_key,
                aws_session_token=settings.aws_session_token,
                config=settings.config(),
            )
    return client
