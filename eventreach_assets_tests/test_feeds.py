"""Engagement feeds: the local folder and S3 (moto server over HTTP) behave the same."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import boto3
import pytest
from dagster_aws.s3 import S3Resource

from eventreach_assets.resources.feeds import (
    FEEDS,
    EngagementFeedResource,
    FeedError,
    LocalFolderFeed,
    S3Feed,
    parse_lines,
)
from eventreach_assets_tests.stand_ins import REGION

BUCKET = "eventreach-feeds"
PREFIX = "eventreach/feeds"
NAMES = ["20261130T101500Z-0001.jsonl", "20261130T101500Z-0002.jsonl", "20261201T080000Z-0001.jsonl"]


@dataclass
class Feeds:
    feed: EngagementFeedResource
    put_raw: Callable[[str, str, bytes], None]  # (feed, object name, bytes) as another writer would leave them


@pytest.fixture(params=["local", "s3"])
def feeds(request, tmp_path) -> Feeds:
    if request.param == "local":
        base = tmp_path / "feeds"

        def put_local(feed: str, name: str, data: bytes) -> None:
            (base / feed).mkdir(parents=True, exist_ok=True)
            (base / feed / name).write_bytes(data)

        return Feeds(LocalFolderFeed(base_dir=str(base)), put_local)
    endpoint = request.getfixturevalue("aws_endpoint")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    client.create_bucket(Bucket=BUCKET)

    def put_s3(feed: str, name: str, data: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{feed}/{name}", Body=data)

    feed = S3Feed(s3=S3Resource(endpoint_url=endpoint, region_name=REGION), bucket=BUCKET, prefix=PREFIX + "/")
    return Feeds(feed, put_s3)


def drop_all(feed: EngagementFeedResource, names: list[str] = NAMES) -> None:
    for number, name in enumerate(reversed(names)):  # dropped out of order on purpose
        feed.drop("tracking", name, [{"n": number}])


# ---- listing ------------------------------------------------------------------------------


def test_new_files_are_in_name_order_after_the_cursor_and_limited(feeds):
    feed = feeds.feed
    assert feed.new_files("tracking") == []  # nothing dropped yet
    drop_all(feed)
    assert feed.new_files("tracking") == NAMES
    assert feed.new_files("tracking", after=NAMES[0]) == NAMES[1:]
    assert feed.new_files("tracking", after=NAMES[-1]) == []
    assert feed.new_files("tracking", after="20261130T120000Z-0000.jsonl") == NAMES[2:]  # a cursor need not exist
    assert feed.new_files("tracking", limit=2) == NAMES[:2]
    assert feed.new_files("tracking", after=NAMES[0], limit=1) == NAMES[1:2]
    assert feed.new_files("registrations") == []  # feeds are separate
    with pytest.raises(FeedError, match="limit must be at least 1"):
        feed.new_files("tracking", limit=0)


def test_a_sensor_walking_the_cursor_sees_every_file_once(feeds):
    feed = feeds.feed
    drop_all(feed)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):  # bounded: 3 files, one per tick
        batch = feed.new_files("tracking", after=cursor, limit=1)
        if not batch:
            break
        seen += batch
        cursor = batch[-1]
    feed.drop("tracking", "20261202T000000Z-0001.jsonl", [{"late": True}])
    seen += feed.new_files("tracking", after=cursor)
    assert seen == [*NAMES, "20261202T000000Z-0001.jsonl"]


def test_hidden_and_foreign_files_are_never_listed(feeds):
    feed = feeds.feed
    drop_all(feed)
    for name in [".20261130T101500Z-0003.jsonl", ".20261130T101500Z-0003.jsonl.123.tmp", "notes.txt", "x.json"]:
        feeds.put_raw("tracking", name, b'{"hidden": true}\n')
    assert feed.new_files("tracking") == NAMES
    assert feed.new_files("tracking", after=NAMES[0]) == NAMES[1:]


def test_local_drop_leaves_no_temporary_file(tmp_path):
    feed = LocalFolderFeed(base_dir=str(tmp_path))
    uri = feed.drop("survey", NAMES[0], [{"rating": 5}])
    assert uri == str(tmp_path / "survey" / NAMES[0])
    assert sorted(path.name for path in (tmp_path / "survey").iterdir()) == [NAMES[0]]
    (tmp_path / "survey" / "sub.jsonl").mkdir()  # a folder with a feed-like name is not a file
    assert feed.new_files("survey") == [NAMES[0]]


def test_s3_keys_follow_the_prefix(aws_endpoint):
    client = boto3.client("s3", endpoint_url=aws_endpoint, region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    s3 = S3Resource(endpoint_url=aws_endpoint, region_name=REGION)
    assert S3Feed(s3=s3, bucket=BUCKET).drop("attendance", NAMES[0], []) == (
        f"s3://{BUCKET}/eventreach/feeds/attendance/{NAMES[0]}"
    )
    root = S3Feed(s3=s3, bucket=BUCKET, prefix="")
    assert root.drop("attendance", NAMES[1], [{"a": 1}]) == f"s3://{BUCKET}/attendance/{NAMES[1]}"
    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == [f"attendance/{NAMES[1]}", f"eventreach/feeds/attendance/{NAMES[0]}"]
    assert root.new_files("attendance") == [NAMES[1]]
    client.put_object(Bucket=BUCKET, Key=f"attendance/archive/{NAMES[2]}", Body=b"{}\n")  # a sub-folder's file
    assert root.new_files("attendance") == [NAMES[1]]
    assert root.read("attendance", [NAMES[1]]) == [{"a": 1, "_source": NAMES[1], "_line": 1}]


# ---- reading ------------------------------------------------------------------------------


def test_drop_then_read_round_trips_in_file_then_line_order(feeds):
    feed = feeds.feed
    first = [
        {"registration_id": "r1", "event_id": "evt-1", "customer_id": "C1", "registered_at": "2026-11-30T10:15:00Z"},
        {"registration_id": "r2", "event_id": "evt-1", "customer_id": "C2", "nested": {"a": [1, 2]}, "n": None},
    ]
    second = [{"registration_id": "r3", "registered_at": datetime(2026, 11, 30, 11, 0)}]  # written as text
    uri = feed.drop("registrations", NAMES[1], second)
    assert NAMES[1] in uri
    feed.drop("registrations", NAMES[0], first)
    records = feed.read("registrations", feed.new_files("registrations"))
    assert records == [
        {**first[0], "_source": NAMES[0], "_line": 1},
        {**first[1], "_source": NAMES[0], "_line": 2},
        {"registration_id": "r3", "registered_at": "2026-11-30 11:00:00", "_source": NAMES[1], "_line": 1},
    ]
    # A retried run reads exactly the same records again.
    assert feed.read("registrations", NAMES[:2]) == records
    assert feed.read("registrations", []) == []


def test_bad_lines_are_kept_with_their_reason_and_blank_lines_skipped(feeds):
    content = (
        b'{"ok": 1}\n'
        b"\n"
        b"   \n"
        b"this is not json\n"
        b"[1, 2]\n"
        b'{"crlf": true}\r\n'
        b'{"bad": "\xff"}\n'
        b'{"text": "line\xe2\x80\xa8separator"}\n'  # U+2028 inside a JSON string is one line, not two
        b'{"last": "no newline"}'
    )
    feeds.put_raw("tracking", NAMES[0], content)
    records = feeds.feed.read("tracking", [NAMES[0]])
    assert [record["_line"] for record in records] == [1, 4, 5, 6, 7, 8, 9]
    assert all(record["_source"] == NAMES[0] for record in records)
    ok, not_json, not_object, crlf, not_utf8, separator, last = records
    assert ok == {"ok": 1, "_source": NAMES[0], "_line": 1}
    assert not_json["_error"].startswith("not JSON")
    assert not_json["_raw"] == "this is not json"
    assert not_object == {"_error": "not a JSON object", "_raw": "[1, 2]", "_source": NAMES[0], "_line": 5}
    assert crlf["crlf"] is True
    assert not_utf8["_error"].startswith("not UTF-8")
    assert not_utf8["_raw"] == '{"bad": "\ufffd"}'
    assert separator["text"] == "line\u2028separator"
    assert last["last"] == "no newline"


def test_a_byte_order_mark_does_not_spoil_the_first_line():
    assert parse_lines("f.jsonl", b'\xef\xbb\xbf{"a": 1}\n{"b": 2}\n') == [
        {"a": 1, "_source": "f.jsonl", "_line": 1},
        {"b": 2, "_source": "f.jsonl", "_line": 2},
    ]


def test_reading_a_file_that_is_gone_names_it(feeds):
    feeds.feed.drop("survey", NAMES[0], [{"rating": 4}])
    with pytest.raises(FileNotFoundError, match=NAMES[1]):
        feeds.feed.read("survey", [NAMES[0], NAMES[1]])


# ---- refusals -----------------------------------------------------------------------------


def test_unknown_feed_is_refused(feeds):
    feed = feeds.feed
    for call in (
        lambda: feed.new_files("clicks"),
        lambda: feed.read("clicks", [NAMES[0]]),
        lambda: feed.drop("clicks", NAMES[0], []),
        lambda: feed.new_files("../registrations"),
    ):
        with pytest.raises(FeedError, match="unknown engagement feed"):
            call()
    assert set(FEEDS) == {"registrations", "tracking", "attendance", "survey", "provider"}


@pytest.mark.parametrize(
    "name",
    [
        "../escape.jsonl",
        "sub/x.jsonl",
        "/abs.jsonl",
        ".hidden.jsonl",
        "x.json",
        "x.jsonl\n",
        "x.jsonl/",
        "",
        "x y.jsonl",
        "é.jsonl",
    ],
)
def test_unsafe_file_names_are_refused(feeds, name):
    feed = feeds.feed
    with pytest.raises(FeedError, match="must be a plain"):
        feed.drop("tracking", name, [{"a": 1}])
    with pytest.raises(FeedError, match="must be a plain"):
        feed.read("tracking", [name])
    with pytest.raises(FeedError, match="must be a plain"):
        feed.new_files("tracking", after=name)
    assert feed.new_files("tracking") == []  # nothing was written


def test_nothing_escapes_the_local_base_dir(tmp_path: Path):
    feed = LocalFolderFeed(base_dir=str(tmp_path / "feeds"))
    with pytest.raises(FeedError):
        feed.drop("tracking", "../../outside.jsonl", [{"a": 1}])
    assert not list(tmp_path.rglob("outside.jsonl"))


@pytest.mark.parametrize("option", [{"use_ssl": False}, {"verify": False}, {"use_unsigned_session": True}])
def test_s3_feed_refuses_session_options_its_client_does_not_offer(option):
    feed = S3Feed(s3=S3Resource(region_name=REGION, **option), bucket=BUCKET)
    with pytest.raises(ValueError, match="not supported here"):
        feed.new_files("tracking")
