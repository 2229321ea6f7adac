"""Who may call: API keys (constant-time) and the webhook's signed, timestamped body.

Pure: headers and bytes in, an `ApiError` 401 out when the caller is not who it says.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from eventreach_assets.serving.api.params import ApiError

SIGNATURE_HEADER = "x-eventreach-signature"
TIMESTAMP_HEADER = "x-eventreach-timestamp"
API_KEY_HEADER = "x-api-key"

MIN_API_KEY_LENGTH = 16
MIN_WEBHOOK_SECRET_LENGTH = 32
WEBHOOK_TOLERANCE_SECONDS = 300  # a delivery signed more than 5 minutes from now is refused


def checked_api_keys(api_keys: Sequence[str]) -> list[bytes]:
    keys = [key.encode() for key in api_keys]
    if not keys or any(len(key) < MIN_API_KEY_LENGTH for key in keys):
        raise ValueError(f"API keys: give at least one, each at least {MIN_API_KEY_LENGTH} characters")
    return keys


def checked_webhook_secret(webhook_secret: bytes | str) -> bytes:
    secret = webhook_secret.encode() if isinstance(webhook_secret, str) else webhook_secret
    if len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
        raise ValueError(f"the webhook secret must be at least {MIN_WEBHOOK_SECRET_LENGTH} characters")
    return secret


def api_key_matches(presented: str, keys: Sequence[bytes]) -> bool:
    """Constant-time comparison with every configured key (no early exit, so timing tells nothing)."""
    candidate = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


def presented_api_key(headers: Mapping[str, str]) -> str | None:
    value = headers.get(API_KEY_HEADER)
    if value:
        return value
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-EventReach-Signature` value of a delivery: HMAC-SHA256 of `<timestamp>.<body>`."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook(secret: bytes, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise a 401 ApiError unless the delivery is signed with `secret` within the tolerance."""
    timestamp, signature = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise ApiError(401, "X-EventReach-Timestamp and X-EventReach-Signature headers are required")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise ApiError(401, "X-EventReach-Timestamp must be unix seconds")
    if abs(now - int(timestamp)) > WEBHOOK_TOLERANCE_SECONDS:
        raise ApiError(401, f"X-EventReach-Timestamp is more than {WEBHOOK_TOLERANCE_SECONDS} s from the server's time")
    if not hmac.compare_digest(signature.encode(), webhook_signature(secret, timestamp, body).encode()):
        raise ApiError(401, "X-EventReach-Signature does not match the body")
