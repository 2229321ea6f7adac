"""The key that signs tracking, registration and unsubscribe links.

Production reads it from the environment (`EnvLinkSecret`, `env.py`:
`dg.EnvVar("EVENTREACH_LINK_SECRET")`). The local deployment needs no account and no secret in
the repository, so it creates a random key once in its data dir (mode 0600) and reuses it,
which keeps links valid across runs (`LocalLinkSecret`, `local.py`).
"""

from eventreach_assets.resources.link_signing.base import LinkSigningResource
from eventreach_assets.resources.link_signing.env import EnvLinkSecret
from eventreach_assets.resources.link_signing.local import LocalLinkSecret

__all__ = ["EnvLinkSecret", "LinkSigningResource", "LocalLinkSecret"]
