"""Engagement feeds: JSON-lines files the event platform and the tracking service drop.

`base.py` holds the interface, the file-name rules and the record formats; `LocalFolderFeed`
(`local.py`) keeps each feed in `<base_dir>/<feed>/`, `S3Feed` (`s3.py`) under
`s3://<bucket>/<prefix>/<feed>/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.feeds.base import (
    FEED_SUFFIX,
    FEEDS,
    EngagementFeedResource,
    FeedError,
    check_feed,
    check_file_name,
    check_limit,
    is_feed_file,
    parse_lines,
    to_lines,
)
from eventreach_assets.resources.feeds.local import LocalFolderFeed
from eventreach_assets.resources.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from eventreach_assets.resources.feeds.s3 import S3Feed

__all__ = [
    "FEEDS",
    "FEED_SUFFIX",
    "EngagementFeedResource",
    "FeedError",
    "LocalFolderFeed",
    "S3Feed",
    "check_feed",
    "check_file_name",
    "check_limit",
    "is_feed_file",
    "parse_lines",
    "to_lines",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(__name__, {"S3Feed": "s3"})
