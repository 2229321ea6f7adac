"""A request's query parameters, read and checked: the queries they make and the 400s they raise.

Pure: no Starlette, no store. Every bad parameter is an `ApiError` naming it, so the caller
learns which one to fix; an unknown one is refused (a typo must not silently widen a query).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

PAGE_LIMIT = 100  # the most any answer holds, and the default
MAX_CURSOR_LENGTH = 2048
STATUSES = ("registered", "waitlisted")
ID_PATTERN = r"^[^#\s]{1,128}$"  # ids are key segments: no '#', no whitespace
CURSOR_PATTERN = r"^[A-Za-z0-9_=-]+$"  # url-safe base64, what every cursor here is
# Each query's parameters (anything else is refused); the OpenAPI document lists the same.
CANDIDATES_PARAMETERS = ("program", "event", "channel", "minScore", "limit", "excludeRegistered", "cursor")
REGISTERED_PARAMETERS = ("program", "event", "status", "limit", "cursor")
CUSTOMER_PARAMETERS = ("program", "event", "limit", "cursor")

_ID = re.compile(ID_PATTERN)
_CURSOR = re.compile(CURSOR_PATTERN)
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


class ApiError(Exception):
    """An answer other than 200: status, a message for the caller and, for a 400, the parameter."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter


def bad_parameter(parameter: str, message: str) -> ApiError:
    return ApiError(400, f"{parameter}: {message}", parameter)


@dataclass(frozen=True)
class CandidatesQuery:
    program: str
    event: str
    channel: str
    min_score: float
    limit: int
    exclude_registered: bool
    cursor: str | None


@dataclass(frozen=True)
class RegisteredQuery:
    program: str
    event: str
    status: str
    limit: int
    cursor: str | None


@dataclass(frozen=True)
class CustomerQuery:
    program: str
    customer: str
    event: str | None
    limit: int
    cursor: str | None


class Params:
    """One request's query parameters: each read once, unknown or repeated ones refused."""

    def __init__(self, items: Sequence[tuple[str, str]], allowed: Sequence[str]) -> None:
        self._values: dict[str, str] = {}
        for name, value in items:
            if name not in allowed:
                raise bad_parameter(name, f"unknown parameter (allowed: {', '.join(allowed)})")
            if name in self._values:
                raise bad_parameter(name, "given more than once")
            self._values[name] = value

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self._values.get(name)
        if value is None or value == "":
            if required:
                raise bad_parameter(name, "required")
            return None
        return value

    def identifier(self, name: str, *, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is not None and not _ID.match(value):
            raise bad_parameter(name, "must be 1-128 characters without '#' or whitespace")
        return value

    def limit(self) -> int:
        value = self.text("limit")
        if value is None:
            return PAGE_LIMIT
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= PAGE_LIMIT:
            raise bad_parameter("limit", f"must be an integer from 1 to {PAGE_LIMIT}")
        return int(value)

    def score(self, name: str) -> float:
        value = self.text(name)
        if value is None:
            return 0.0
        try:
            number = float(value)
        except ValueError:
            raise bad_parameter(name, "must be a number from 0 to 1") from None
        if not math.isfinite(number) or not 0.0 <= number <= 1.0:
            raise bad_parameter(name, "must be a number from 0 to 1")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise bad_parameter(name, "must be true or false")

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.text(name) or default
        if value not in choices:
            raise bad_parameter(name, f"must be one of {', '.join(choices)}")
        return value

    def cursor(self) -> str | None:
        value = self.text("cursor")
        if value is not None and (len(value) > MAX_CURSOR_LENGTH or not _CURSOR.match(value)):
            raise bad_parameter("cursor", "not a cursor from a previous page")
        return value


def required_id(params: Params, name: str) -> str:
    value = params.identifier(name, required=True)
    assert value is not None  # required=True raised otherwise
    return value


def parse_candidates_query(items: Sequence[tuple[str, str]], channels: Sequence[str]) -> CandidatesQuery:
    """GetCandidatesForChannel's parameters, validated; `channels` are the program's invitation channels."""
    params = Params(items, CANDIDATES_PARAMETERS)
    program, event = required_id(params, "program"), required_id(params, "event")
    channel = params.text("channel", required=True)
    if channel not in channels:
        raise bad_parameter("channel", f"must be one of {', '.join(channels)}")
    return CandidatesQuery(
        program=program,
        event=event,
        channel=str(channel),
        min_score=params.score("minScore"),
        limit=params.limit(),
        exclude_registered=params.flag("excludeRegistered", True),
        cursor=params.cursor(),
    )


def parse_registered_query(items: Sequence[tuple[str, str]]) -> RegisteredQuery:
    """GetRegisteredCandidates' parameters, validated."""
    params = Params(items, REGISTERED_PARAMETERS)
    return RegisteredQuery(
        program=required_id(params, "program"),
        event=required_id(params, "event"),
        status=params.choice("status", STATUSES, "registered"),
        limit=params.limit(),
        cursor=params.cursor(),
    )


def parse_customer_query(customer: str, items: Sequence[tuple[str, str]]) -> CustomerQuery:
    """The candidate-by-customer query's parameters (the customer comes from the path)."""
    params = Params(items, CUSTOMER_PARAMETERS)
    if not _ID.match(customer):
        raise bad_parameter("customer", "must be 1-128 characters without '#' or whitespace")
    return CustomerQuery(
        program=required_id(params, "program"),
        customer=customer,
        event=params.identifier("event"),
        limit=params.limit(),
        cursor=params.cursor(),
    )
