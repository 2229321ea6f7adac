"""Pages of an in-memory list, continued by signed cursors, and the body every list answers.

Pure: a cursor (see `cursors`) holds the sort key of the last row served, bound to its query.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import polars as pl

from eventreach_assets.serving.api.cursors import CursorSigner
from eventreach_assets.serving.api.views import public_rows


def page_after(
    frame: pl.DataFrame,
    keys: Sequence[str],
    limit: int,
    cursors: CursorSigner,
    binding: bytes,
    cursor: str | None,
) -> tuple[pl.DataFrame, str | None]:
    """The page of `frame` (sorted by the string columns `keys`, unique) after `cursor`, and the
    next page's cursor (None when this page is the last), bound to the query `binding`."""
    rest = frame
    if cursor is not None:
        after = cursors.redeem(cursor, binding, len(keys))
        # Strictly after the row in lexicographic (keys) order: k1 > a1 or (k1 == a1 and (k2 > a2 ...)).
        condition = pl.col(keys[-1]) > after[-1]
        for key, value in zip(reversed(keys[:-1]), reversed(after[:-1]), strict=True):
            condition = (pl.col(key) > value) | ((pl.col(key) == value) & condition)
        rest = frame.filter(condition)
    page = rest.head(limit)
    if rest.height <= limit:
        return page, None
    last = page.row(limit - 1, named=True)
    return page, cursors.issue(binding, [last[key] for key in keys])


def page_body(rows: pl.DataFrame, next_cursor: str | None) -> bytes:
    """The response of every list query: items, count and the next page's cursor."""
    tail = json.dumps({"count": rows.height, "nextCursor": next_cursor}, separators=(",", ":"))
    return b'{"items":' + public_rows(rows) + b"," + tail[1:].encode()
