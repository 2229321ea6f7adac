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
from functools import lru_cache
from json.encoder import encode_basestring_ascii  # what json.dumps uses for str (C speed)
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


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the link signing secret must not be empty")
    return key


class _HmacSha256:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer hash states computed once.

    `hmac.new` or `hmac.digest` re-derive them on every call (about 3x the cost of the two
    hashes); a campaign signs five tokens per message with one key.
    """

    _BLOCK = 64

    def __init__(self, key: bytes) -> None:
        if len(key) > self._BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(self._BLOCK, b"\0")
        self.inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self.outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def digest(self, data: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(data)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@lru_cache(maxsize=16)
def _hmac_for(key: bytes) -> _HmacSha256:
    return _HmacSha256(key)


def _signature(secret: bytes | str, payload_b64: str) -> bytes:
    return _hmac_for(_key(secret)).digest(f"v{_TOKEN_VERSION}.{payload_b64}".encode("ascii"))


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


_SIGNED_PREFIX = f"v{_TOKEN_VERSION}.".encode("ascii")  # what the signature covers: version, payload


class LinkSigner:
    """Signs the links of one campaign (secret, event, channel, campaign): what every token of it
    shares is computed once, so a token costs two hashes and a base64.

    `token(customer_id, action)` equals `sign_link_token(...)` with the same claims, byte for byte.
    """

    def __init__(self, secret: bytes | str, *, event_id: str, channel: str, campaign_id: str) -> None:
        key = _hmac_for(_key(secret))
        self._inner, self._outer = key.inner, key.outer
        shared = f',"ch":{encode_basestring_ascii(channel)},"e":{encode_basestring_ascii(event_id)}'
        self._claims_tail = f'{shared},"k":{encode_basestring_ascii(campaign_id)},"v":{_TOKEN_VERSION}}}'
        self._claims_heads = {action: f'{{"a":{encode_basestring_ascii(action)},"c":' for action in LINK_ACTIONS}

    def token(self, customer_id: str, action: str) -> str:
        return self.tokens(customer_id, (action,))[action]

    def tokens(self, customer_id: str, actions: tuple[str, ...]) -> dict[str, str]:
        """One customer's token for each of `actions`."""
        customer = encode_basestring_ascii(customer_id)
        signed = {}
        for action in actions:
            head = self._claims_heads.get(action)
            if head is None:
                raise ValueError(f"unknown link action {action!r}; expected one of {sorted(LINK_ACTIONS)}")
            claims = f"{head}{customer}{self._claims_tail}".encode("ascii")
            payload = binascii.b2a_base64(claims, newline=False).translate(_URLSAFE).rstrip(b"=")
            inner = self._inner.copy()  # HMAC-SHA256 as _HmacSha256.digest, inlined (four tokens a message)
            inner.update(_SIGNED_PREFIX + payload)
            outer = self._outer.copy()
            outer.update(inner.digest())
            signature = binascii.b2a_base64(outer.digest(), newline=False).translate(_URLSAFE).rstrip(b"=")
            signed[action] = (payload + b"." + signature).decode()
        return signed


@lru_cache(maxsize=256)
def link_signer(secret: bytes | str, event_id: str, channel: str, campaign_id: str) -> LinkSigner:
    """The (cached) LinkSigner of one campaign: rendering asks for it once per message."""
    return LinkSigner(secret, event_id=event_id, channel=channel, campaign_id=campaign_id)


@lru_cache(maxsize=256)
def link_prefix(base_url: str, action: str) -> str:
    """`{base_url}/{action}?t=`: a URL-safe token (`sign_link_token`'s alphabet) appends as is."""
    return link(base_url, action, "")


def link(base_url: str, action: str, token: str) -> str:
    """`{base_url}/{action}?t={token}`: the URL a tracking/landing service serves for `action`.

    `action` is the path; it is usually the token's action, but e.g. "join" or "calendar" paths
    carry a "click" token.
    """
    if not re.fullmatch(r"[a-z][a-z0-9-]*", action):
        raise ValueError(f"link path must be a lowercase slug, got {action!r}")
    return f"{base_url.rstrip('/')}/{action}?t={quote(token, safe='')}"
