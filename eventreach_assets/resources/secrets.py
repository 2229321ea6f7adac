"""The key that signs tracking, registration and unsubscribe links.

Production reads it from the environment (`dg.EnvVar("EVENTREACH_LINK_SECRET")`). The local
deployment needs no account and no secret in the repository, so it creates a random key once
in its data dir (mode 0600) and reuses it, which keeps links valid across runs.
"""

import os
import secrets
from pathlib import Path

import dagster as dg


class LinkSigningResource(dg.ConfigurableResource):
    def key(self) -> bytes:
        raise NotImplementedError


class EnvLinkSecret(LinkSigningResource):
    """The signing key itself, from `dg.EnvVar("EVENTREACH_LINK_SECRET")`."""

    secret: str

    def key(self) -> bytes:
        if len(self.secret) < 32:
            raise ValueError("EVENTREACH_LINK_SECRET must be at least 32 characters")
        return self.secret.encode()


class LocalLinkSecret(LinkSigningResource):
    """A random key kept in a file of the local data dir, created on first use."""

    path: str

    def key(self) -> bytes:
        path = Path(self.path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            try:
                os.link(temporary, path)  # atomic, and fails if another process won the race
            except FileExistsError:
                pass
            finally:
                temporary.unlink()
        return path.read_text().strip().encode()
