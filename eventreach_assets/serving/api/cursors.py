"""Page cursors that cannot be bent: signed (HMAC-SHA256) and bound to the query that issued them.

Pure. A cursor is url-safe base64 (no padding) of `version byte | MAC (32 bytes) | position`,
the position a JSON list of strings (the sort key of the last row served, or the candidate
store's own cursor). The MAC covers the version, the query's binding (route and every
parameter that selects rows, not `limit`) and the position, so a cursor altered by one bit,
written by a client, or carried to another query fails the check: a 400 naming `cursor`.
Signed with the first key, verified with any (key rotation: add the new key first, drop the old
one once its cursors have aged out). After the MAC check the position is still checked strictly.

The position is not encrypted: it holds only what the page already showed (ids, a score).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass

from eventreach_assets.serving.api.params import ApiError, bad_parameter

CURSOR_VERSION = b"\x01"
MIN_CURSOR_KEY_LENGTH = 32
MAX_POSITION_TEXT = 1024  # longer than any id or store cursor the API issues (ids: <= 128 characters)
_MAC_BYTES = 32
_REFUSED = "not a cursor this query issued (altered, from another query, or signed with a retired key)"


def query_binding(route: str, *parameters: str | float | bool | None) -> bytes:
    """What a cursor is bound to: the route and the parameters that select its rows (JSON, so
    no two queries share a binding)."""
    return json.dumps([route, *parameters], separators=(",", ":")).encode()


def _unpadded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _refused() -> ApiError:
    return bad_parameter("cursor", _REFUSED)


@dataclass(frozen=True)
class CursorSigner:
    """Issues and redeems the API's cursors with shared keys (every worker process holds the same)."""

    keys: tuple[bytes, ...]

    @classmethod
    def from_keys(cls, keys: Sequence[bytes | str]) -> CursorSigner:
        encoded = tuple(key.encode() if isinstance(key, str) else key for key in keys)
        if not encoded or any(len(key) < MIN_CURSOR_KEY_LENGTH for key in encoded):
            raise ValueError(f"cursor keys: give at least one, each at least {MIN_CURSOR_KEY_LENGTH} characters")
        return cls(encoded)

    def _mac(self, key: bytes, binding: bytes, position: bytes) -> bytes:
        return hmac.new(key, CURSOR_VERSION + binding + b"\n" + position, hashlib.sha256).digest()

    def issue(self, binding: bytes, position: Sequence[str]) -> str:
        """The cursor continuing after `position` in the query `binding`."""
        payload = json.dumps(list(position), separators=(",", ":")).encode()
        return _unpadded(CURSOR_VERSION + self._mac(self.keys[0], binding, payload) + payload)

    def redeem(self, cursor: str, binding: bytes, width: int) -> list[str]:
        """The position in `cursor`, if this query issued it (else a 400 naming `cursor`): a list of
        `width` strings."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (ValueError, binascii.Error):
            raise _refused() from None
        if _unpadded(raw) != cursor or len(raw) <= 1 + _MAC_BYTES or raw[:1] != CURSOR_VERSION:
            raise _refused()  # one spelling per cursor: no padding, no spare bits
        mac, payload = raw[1 : 1 + _MAC_BYTES], raw[1 + _MAC_BYTES :]
        if not any(hmac.compare_digest(mac, self._mac(key, binding, payload)) for key in self.keys):
            raise _refused()
        try:
            position = json.loads(payload)
        except ValueError:
            raise _refused() from None
        if (
            not isinstance(position, list)
            or len(position) != width
            or not all(isinstance(value, str) and 0 < len(value) <= MAX_POSITION_TEXT for value in position)
        ):
            raise _refused()
        return position
