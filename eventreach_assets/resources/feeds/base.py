"""The engagement feed interface, its file-name rules and its record format.

One feed per kind of engagement (`FEEDS`), each an ordered set of files named so they sort
in drop order (a UTC timestamp prefix, e.g. `20261130T101500Z-0001.jsonl`). Sensors remember
the last file they handed to a run (their cursor) and ask for the files after it; the run
reads exactly the files it was given, so a retried run reads the same rows again and the
idempotent stores make that harmless.

Record formats (one JSON object per line; times are ISO 8601, UTC when no offset):
- registrations: registration_id, event_id, customer_id, registered_at, token (the signed
  "register" link token of the invitation the customer followed)
- tracking: token (signed open / click / unsubscribe token), path (the URL path hit: open,
  click, join, calendar, unsubscribe), occurred_at
- attendance: event_id, customer_id, joined_at, minutes_watched
- survey: token (the signed "survey" token of the survey email), rating (1-5), comment,
  submitted_at
- provider: the email providers' feedback: Amazon SES event publishing records (Delivery,
  Bounce, Complaint, Reject; a configuration set's Kinesis Data Firehose destination writes them
  to this feed's S3 prefix) and SMTP delivery status notifications as {"dsn": "<message>"}
  (domain/feedback.py documents both)

A line that is not a JSON object is not dropped: `read` returns it as
`{"_error": "...", "_raw": "<line>"}` so ingestion can quarantine it with its reason.
`_source` (file name) and `_line` (1-based) are added to every record.
"""

from __future__ import annotations

import abc
import codecs
import json
import re
from collections.abc import Sequence
from typing import Any

import dagster as dg

FEEDS: tuple[str, ...] = ("registrations", "tracking", "attendance", "survey", "provider")
FEED_SUFFIX = ".jsonl"
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]+\.jsonl")  # used with fullmatch: "$" would let "x.jsonl\n" through


class FeedError(ValueError):
    """A feed request that is not acceptable (unknown feed, unsafe file name, limit below 1)."""


def check_feed(feed: str) -> str:
    """The feed name, or a FeedError naming the known feeds."""
    if feed not in FEEDS:
        raise FeedError(f"unknown engagement feed {feed!r}; expected one of {list(FEEDS)}")
    return feed


def is_feed_file(name: str) -> bool:
    """Whether a listed name is a feed file (hidden names, e.g. half-written temporaries, are not)."""
    return _FILE_NAME.fullmatch(name) is not None and not name.startswith(".")


def check_file_name(name: str) -> str:
    """The file name, or a FeedError: names become paths and keys, so only plain *.jsonl names pass."""
    if not isinstance(name, str) or not is_feed_file(name):
        raise FeedError(f"feed file name {name!r} must be a plain *.jsonl name (letters, digits, . _ -)")
    return name


def check_limit(limit: int) -> int:
    """How many files one call may return (at least one)."""
    if limit < 1:
        raise FeedError(f"limit must be at least 1, got {limit}")
    return limit


def parse_lines(source: str, data: bytes | str) -> list[dict[str, Any]]:
    """Records of one file; blank lines skipped, a bad line kept as an error record.

    Lines end at "\n" only (`str.splitlines` would also split at U+2028 and other characters a
    JSON string may hold), and each line is decoded on its own, so one bad byte costs one line.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    records: list[dict[str, Any]] = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        chunk = chunk.removesuffix(b"\r")
        if number == 1:
            chunk = chunk.removeprefix(codecs.BOM_UTF8)
        if not chunk.strip():
            continue
        where = {"_source": source, "_line": number}
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as error:
            raw_line = chunk.decode("utf-8", errors="replace")
            records.append({"_error": f"not UTF-8: {error.reason}", "_raw": raw_line, **where})
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            records.append({"_error": f"not JSON: {error.msg}", "_raw": line, **where})
            continue
        if not isinstance(value, dict):
            records.append({"_error": "not a JSON object", "_raw": line, **where})
            continue
        records.append({**value, **where})
    return records


def to_lines(records: Sequence[dict[str, Any]]) -> bytes:
    """JSON lines as a feed file holds them (non-JSON values such as datetimes as text)."""
    return "".join(json.dumps(record, default=str, sort_keys=True) + "\n" for record in records).encode("utf-8")


class EngagementFeedResource(dg.ConfigurableResource, abc.ABC):
    """Where engagement arrives from the event platform and the tracking service.

    The public methods check every feed name, file name and limit before a backend sees them,
    so a backend only lists, reads and writes plain files of a known feed.
    """

    def new_files(self, feed: str, after: str | None = None, limit: int = 1_000) -> list[str]:
        """File names of `feed` sorting after `after` (all when None), in order, at most `limit`."""
        check_feed(feed)
        check_limit(limit)
        if after is not None:
            check_file_name(after)
        return self._list_files(feed, after, limit)

    def read(self, feed: str, names: Sequence[str]) -> list[dict[str, Any]]:
        """The records of the named files, in file then line order (see module docs)."""
        check_feed(feed)
        records: list[dict[str, Any]] = []
        for name in names:
            records.extend(parse_lines(name, self._read_file(feed, check_file_name(name))))
        return records

    def drop(self, feed: str, name: str, records: Sequence[dict[str, Any]]) -> str:
        """Write one feed file atomically (the simulator and tests play the platform); returns its URI."""
        return self._write_file(check_feed(feed), check_file_name(name), to_lines(records))

    @abc.abstractmethod
    def _list_files(self, feed: str, after: str | None, limit: int) -> list[str]:
        """Feed file names sorting after `after`, in order, at most `limit` (hidden and foreign names left out)."""

    @abc.abstractmethod
    def _read_file(self, feed: str, name: str) -> bytes:
        """The bytes of one feed file; FileNotFoundError when it is not there."""

    @abc.abstractmethod
    def _write_file(self, feed: str, name: str, data: bytes) -> str:
        """Write one feed file so no reader sees it half-written; returns its URI."""
