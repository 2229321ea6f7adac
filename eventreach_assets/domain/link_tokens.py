"""Signed links: the token every link in a message carries, and its check when the link comes back.

A token names customer, event, channel, campaign and action, so a click, a registration or an
unsubscribe can be attributed and cannot be forged for someone else. The rendering signs them
(domain/rendering.py); the feeds, the webhook and the tracking service verify them
(domain/feed_records.py, domain/registrations.py). Pure code, no Dagster.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from urllib.parse import quote

LINK_ACTIONS: frozenset[str] = frozenset({"register", "unsubscribe", "open", "click", "survey"})
_TOKEN_VERSION = 1


class InvalidLinkToken(ValueError):
    """A link token that is malformed, forged, tampered with, or used for the wrong action."""


@dataclass(frozen=True)
class LinkClaims:
    """Who and what a verified link token is about."""

    customer_id: str
    event_id: str
    channel: str
    campaign_id: str
    action: str


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the link signing secret must not be empty")
    return key


def _signature(secret: bytes | str, payload_b64: str) -> bytes:
    return hmac.new(_key(secret), f"v{_TOKEN_VERSION}.{payload_b64}".encode("ascii"), hashlib.sha256).digest()


def sign_link_token(
    secret: bytes | str, *, customer_id: str, event_id: str, channel: str, campaign_id: str, action: str
) -> str:
    """URL-safe token `payload.signature`: HMAC-SHA256 over canonical JSON (sorted keys, compact).

    Deterministic (no timestamp): the same message renders the same links on every retry, and an
    unsubscribe link keeps working for as long as the mail sits in an inbox.
    """
    if action not in LINK_ACTIONS:
        raise ValueError(f"unknown link action {action!r}; expected one of {sorted(LINK_ACTIONS)}")
    claims = {"a": action, "c": customer_id, "ch": channel, "e": event_id, "k": campaign_id, "v": _TOKEN_VERSION}
    payload_b64 = _b64encode(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    return f"{payload_b64}.{_b64encode(_signature(secret, payload_b64))}"


def verify_link_token(secret: bytes | str, token: str, *, action: str | None = None) -> LinkClaims:
    """The claims of a genuine token; raises InvalidLinkToken saying why otherwise.

    The signature is checked (in constant time) before the payload is parsed, so nothing an
    attacker controls is interpreted unless we signed it. `action`, when given, must match: an
    open-pixel token cannot be replayed as an unsubscribe or a registration.
    """
    if not isinstance(token, str) or token.count(".") != 1:
        raise InvalidLinkToken("malformed token: expected payload.signature")
    payload_b64, signature_b64 = token.split(".")
    try:
        signature = _b64decode(signature_b64)
        payload_bytes = _b64decode(payload_b64)
    except (binascii.Error, ValueError) as error:
        raise InvalidLinkToken("malformed token: not URL-safe base64") from error
    if not hmac.compare_digest(signature, _signature(secret, payload_b64)):
        raise InvalidLinkToken("bad signature: token was not issued by us or was altered")
    try:
        claims = json.loads(payload_bytes)
        parsed = LinkClaims(
            customer_id=claims["c"],
            event_id=claims["e"],
            channel=claims["ch"],
            campaign_id=claims["k"],
            action=claims["a"],
        )
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidLinkToken("malformed token: payload is not a claims object") from error
    if claims.get("v") != _TOKEN_VERSION:
        raise InvalidLinkToken(f"unsupported token version {claims.get('v')!r}")
    if action is not None and parsed.action != action:
        raise InvalidLinkToken(f"token is for action {parsed.action!r}, not {action!r}")
    return parsed


def link(base_url: str, action: str, token: str) -> str:
    """`{base_url}/{action}?t={token}`: the URL a tracking/landing service serves for `action`.

    `action` is the path; it is usually the token's action, but e.g. "join" or "calendar" paths
    carry a "click" token.
    """
    if not re.fullmatch(r"[a-z][a-z0-9-]*", action):
        raise ValueError(f"link path must be a lowercase slug, got {action!r}")
    return f"{base_url.rstrip('/')}/{action}?t={quote(token, safe='')}"
