"""The body every list query answers with: items, count and the next page's cursor.

Pure. The items arrive as JSON object texts (stored, or built per row): a page is their join.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventreach_assets.domain.served_items import json_value


def page_body(items: Sequence[str], next_cursor: str | None) -> bytes:
    """`{"items":[...],"count":n,"nextCursor":...}` as UTF-8 bytes."""
    return f'{{"items":[{",".join(items)}],"count":{len(items)},"nextCursor":{json_value(next_cursor)}}}'.encode()
