"""Candidate items between polars frames and DynamoDB attribute values (the low-level client's wire form).

Numbers travel as exact decimal strings, timestamps as the SQLite store's fixed-width text
(`ci.TIME_TEXT_FORMAT`: strings compare in time order), and null or NaN attributes are left out, as a
`PutItem` would drop them; reads turn items back into the frame every store returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import polars as pl
from boto3.dynamodb.types import DYNAMODB_CONTEXT

from eventreach_assets.domain import candidate_items as ci
from eventreach_assets.resources.candidate_store.tables import TTL_ATTRIBUTE

_TINY = Decimal("1E-129")  # DynamoDB numbers go down to 1E-130; anything smaller is stored as 0


def number_value(value: float | int) -> str:
    """The DynamoDB wire form of a number: exact for floats (shortest repr), as boto3 would send."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"DynamoDB cannot store {value!r}")
    number = Decimal(repr(value))
    if number != 0 and abs(number) < _TINY:
        return "0"
    return str(DYNAMODB_CONTEXT.create_decimal(number))


def _string_attrs(names: Sequence[str]) -> set[str]:
    return {n for n in names if n not in (ci.GSI1_SORT_KEY, TTL_ATTRIBUTE) and not n.startswith(ci.PROBABILITY_PREFIX)}


def to_dynamo_items(frame: pl.DataFrame) -> list[dict[str, dict[str, str]]]:
    """Item frames (keys + attributes, as `build_candidate_items` makes them) as DynamoDB items.

    Timestamps use the SQLite store's fixed-width format (strings compare in time order);
    null and NaN attributes are left out, as a `PutItem` would drop them.
    """
    stored = ci.text_item_times(frame)
    strings = _string_attrs(stored.columns)
    items = []
    for row in stored.iter_rows(named=True):
        item: dict[str, dict[str, str]] = {}
        for name, value in row.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            item[name] = {"S": value} if name in strings else {"N": number_value(value)}
        items.append(item)
    return items


def plain_value(value: dict[str, Any] | None, name: str) -> Any:
    """A DynamoDB attribute value as Python: str, float, int for the TTL, None when absent."""
    if value is None or "NULL" in value:
        return None
    if "S" in value:
        return value["S"]
    if "N" in value:
        return int(value["N"]) if name == TTL_ATTRIBUTE else float(value["N"])
    raise ValueError(f"unexpected attribute value for {name}: {value}")


def plain_values(item: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A DynamoDB item's attributes as Python values (see `plain_value`)."""
    return {name: plain_value(value, name) for name, value in item.items()}


def items_frame(items: Sequence[dict[str, dict[str, Any]]]) -> pl.DataFrame:
    """DynamoDB items as the frame every read returns (`ci.item_columns`, no keys, typed)."""
    probabilities = sorted({name for item in items for name in item if name.startswith(ci.PROBABILITY_PREFIX)})
    schema = ci.text_item_schema(probabilities)
    frame = pl.DataFrame(
        {name: [plain_value(item.get(name), name) for item in items] for name in schema}, schema=schema
    )
    return ci.drop_empty_probabilities(ci.typed_item_times(frame))


def attribute_names(*names: str) -> dict[str, str]:
    """ExpressionAttributeNames for every attribute used: many names (status, ...) are reserved."""
    return {f"#{name}": name for name in names}
