"""Serving a deployment: its resources, its keys and secret from the environment, the command line.

`python -m eventreach_assets.serving.api` (`make serve`) runs `main`; uvicorn's workers each
build their app with `app_from_env`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from starlette.applications import Starlette

from eventreach_assets.deployments import DEPLOYMENT_ENV, eventreach_home, resources_for
from eventreach_assets.serving.api.app import PAGE_CACHE_BYTES, ServingDependencies, create_app
from eventreach_assets.serving.api.auth import MIN_API_KEY_LENGTH, MIN_WEBHOOK_SECRET_LENGTH
from eventreach_assets.serving.api.cursors import MIN_CURSOR_KEY_LENGTH

API_KEYS_ENV = "EVENTREACH_API_KEYS"
WEBHOOK_SECRET_ENV = "EVENTREACH_WEBHOOK_SECRET"
CURSOR_KEYS_ENV = "EVENTREACH_API_CURSOR_KEYS"
PAGE_CACHE_ENV = "EVENTREACH_API_PAGE_CACHE_MB"  # per worker; 0 turns the page cache off

SERVING_RESOURCES = ("program", "clock", "candidate_store", "engagement", "warehouse", "decision_log", "link_signing")


@contextlib.contextmanager
def deployment_dependencies(home: Path | None = None, deployment: str | None = None) -> Iterator[ServingDependencies]:
    """The API's dependencies from the deployment's own resources (deployments.py: `resources_for`),
    with every `dg.EnvVar` resolved as a run would resolve it; closed when the context ends."""
    import dagster as dg

    deployed = resources_for(deployment, home=home)
    with dg.build_resources({name: deployed[name] for name in SERVING_RESOURCES}) as resources:
        yield ServingDependencies(
            program=resources.program.load(),
            store=resources.candidate_store,
            engagement=resources.engagement,
            warehouse=resources.warehouse,
            decision_log=resources.decision_log,
            link_key=resources.link_signing.key(),
            clock=resources.clock.now,
        )


def local_secret_file(path: Path) -> str:
    """A random secret kept in `path` (mode 0600), created on first use (as the link secret is)."""
    from eventreach_assets.resources.link_signing import LocalLinkSecret

    return LocalLinkSecret(path=str(path)).key().decode()


def api_keys_from_env(home: Path, deployment: str) -> tuple[list[str], str]:
    """The API keys and where they came from; locally a generated key file when the env has none."""
    configured = [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
    if configured:
        return configured, f"env {API_KEYS_ENV}"
    if deployment != "local":
        raise RuntimeError(f"{API_KEYS_ENV} is not set (comma-separated API keys, each >= {MIN_API_KEY_LENGTH} chars)")
    path = home / "api_key"
    return [local_secret_file(path)], str(path)


def webhook_secret_from_env(home: Path, deployment: str) -> tuple[str, str]:
    """The webhook secret and where it came from; locally a generated file when the env has none."""
    configured = os.environ.get(WEBHOOK_SECRET_ENV, "").strip()
    if configured:
        return configured, f"env {WEBHOOK_SECRET_ENV}"
    if deployment != "local":
        raise RuntimeError(f"{WEBHOOK_SECRET_ENV} is not set (>= {MIN_WEBHOOK_SECRET_LENGTH} characters)")
    path = home / "webhook_secret"
    return local_secret_file(path), str(path)


def cursor_keys_from_env(home: Path, deployment: str) -> tuple[list[str], str]:
    """The keys signing page cursors (first signs, any verifies) and where they came from; locally
    a generated file when the env has none. Never per process: every worker must verify the
    cursors the others issued."""
    configured = [key.strip() for key in os.environ.get(CURSOR_KEYS_ENV, "").split(",") if key.strip()]
    if configured:
        return configured, f"env {CURSOR_KEYS_ENV}"
    if deployment != "local":
        raise RuntimeError(
            f"{CURSOR_KEYS_ENV} is not set (comma-separated cursor signing keys, each >= {MIN_CURSOR_KEY_LENGTH} chars)"
        )
    path = home / "cursor_key"
    return [local_secret_file(path)], str(path)


def page_cache_bytes_from_env() -> int:
    """Each worker's page cache bound from PAGE_CACHE_ENV (MB; 0: no cache), else the default."""
    configured = os.environ.get(PAGE_CACHE_ENV, "").strip()
    if not configured:
        return PAGE_CACHE_BYTES
    if not configured.isdigit():
        raise RuntimeError(f"{PAGE_CACHE_ENV} must be whole megabytes (0: no page cache), got {configured!r}")
    return int(configured) * 2**20


def _deployment_settings() -> tuple[Path, str]:
    return eventreach_home(), os.environ.get(DEPLOYMENT_ENV, "local")


def app_from_env() -> Starlette:
    """The app for the environment's deployment (uvicorn's factory; each worker process calls it)."""
    home, deployment = _deployment_settings()
    keys, _ = api_keys_from_env(home, deployment)
    secret, _ = webhook_secret_from_env(home, deployment)
    cursor_keys, _ = cursor_keys_from_env(home, deployment)
    stack = contextlib.ExitStack()
    dependencies = stack.enter_context(deployment_dependencies(home if deployment == "local" else None, deployment))
    app = create_app(
        dependencies, api_keys=keys, webhook_secret=secret, cursor_keys=cursor_keys,
        page_cache_bytes=page_cache_bytes_from_env(), on_shutdown=stack.close,
    )  # fmt: skip
    # Start-up leaves millions of long-lived objects (Dagster definitions, libraries); a full
    # collection walking them all took hundreds of ms mid-request. Freeze them out of the GC.
    gc.collect()
    gc.freeze()
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m eventreach_assets.serving.api`: serve the deployment named by the environment."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="eventreach-serving-api", description="EventReach Serving API")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--home", type=Path, help="local data dir (default: EVENTREACH_HOME or ./.eventreach)")
    args = parser.parse_args(argv)
    if args.home is not None:
        os.environ["EVENTREACH_HOME"] = str(args.home.resolve())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The API's counts (app.py logs under the package's name); libraries stay at warnings.
    logging.getLogger(__package__).setLevel(logging.INFO)
    home, deployment = _deployment_settings()
    # Created (locally) before the workers start, and named by where they are, never by value.
    _, keys_from = api_keys_from_env(home, deployment)
    _, secret_from = webhook_secret_from_env(home, deployment)
    _, cursor_keys_from = cursor_keys_from_env(home, deployment)
    cache_bytes = page_cache_bytes_from_env()  # checked before the workers start
    print(f"EventReach Serving API ({deployment}) on http://{args.host}:{args.port}", flush=True)
    print(f"  API keys from {keys_from}; webhook secret from {secret_from}", flush=True)
    print(f"  cursor keys from {cursor_keys_from}", flush=True)
    print(f"  page cache: {cache_bytes // 2**20} MB per worker ({PAGE_CACHE_ENV}; local stores only)", flush=True)
    uvicorn.run(
        "eventreach_assets.serving.api.cli:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,  # request lines carry customer ids: not logged
        log_level="info",
    )
    return 0
