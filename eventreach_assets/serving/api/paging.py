"""Pages of an in-memory list: opaque cursors tied to their query, and the body every list answers.

Pure: a cursor is the sort key of the last row served (url-safe base64 JSON), refused when it
comes back with another query.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from eventreach_assets.serving.api.params import bad_parameter
from eventreach_assets.serving.api.views import public_rows


def encode_position(query_key: str, after: Sequence[Any]) -> str:
    """An opaque cursor: the sort key of the last row served, tied to the query that served it."""
    raw = json.dumps({"k": query_key, "a": list(after)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_position(cursor: str, query_key: str, width: int) -> list[Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        key, after = data["k"], data["a"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad_parameter("cursor", "not a cursor from a previous page") from None
    if key != query_key:
        raise bad_parameter("cursor", "belongs to a different query (program, event, status or customer changed)")
    if not isinstance(after, list) or len(after) != width or not all(isinstance(v, str) for v in after):
        raise bad_parameter("cursor", "not a cursor from a previous page")
    return after


def page_after(
    frame: pl.DataFrame, keys: Sequence[str], limit: int, query_key: str, cursor: str | None
) -> tuple[pl.DataFrame, str | None]:
    """The page of `frame` (sorted by the string columns `keys`, unique) after `cursor`, and the
    next page's cursor (None when this page is the last)."""
    rest = frame
    if cursor is not None:
        after = decode_position(cursor, query_key, len(keys))
        # Strictly after the row in lexicographic (keys) order: k1 > a1 or (k1 == a1 and (k2 > a2 ...)).
        condition = pl.col(keys[-1]) > after[-1]
        for key, value in zip(reversed(keys[:-1]), reversed(after[:-1]), strict=True):
            condition = (pl.col(key) > value) | ((pl.col(key) == value) & condition)
        rest = frame.filter(condition)
    page = rest.head(limit)
    if rest.height <= limit:
        return page, None
    return page, encode_position(query_key, list(page.row(limit - 1, named=True)[key] for key in keys))


def page_body(rows: pl.DataFrame, next_cursor: str | None) -> bytes:
    """The response of every list query: items, count and the next page's cursor."""
    tail = json.dumps({"count": rows.height, "nextCursor": next_cursor}, separators=(",", ":"))
    return b'{"items":' + public_rows(rows) + b"," + tail[1:].encode()
