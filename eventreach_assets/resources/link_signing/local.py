"""The local deployment's link-signing key: random, created once in the data dir."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from eventreach_assets.resources.link_signing.base import LinkSigningResource


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
