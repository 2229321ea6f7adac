"""The interface of the key that signs tracking, registration and unsubscribe links."""

from __future__ import annotations

import abc

import dagster as dg


class LinkSigningResource(dg.ConfigurableResource, abc.ABC):
    """Gives the link-signing key; every link a message carries is signed and checked with it."""

    @abc.abstractmethod
    def key(self) -> bytes:
        """The signing key (the same on every call, so links stay valid across runs)."""
