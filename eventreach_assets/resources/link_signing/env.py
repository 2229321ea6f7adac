"""The production link-signing key, from the environment."""

from __future__ import annotations

from eventreach_assets.resources.link_signing.base import LinkSigningResource


class EnvLinkSecret(LinkSigningResource):
    """The signing key itself, from `dg.EnvVar("EVENTREACH_LINK_SECRET")`."""

    secret: str

    def key(self) -> bytes:
        if len(self.secret) < 32:
            raise ValueError("EVENTREACH_LINK_SECRET must be at least 32 characters")
        return self.secret.encode()
