"""Feeds as folders in the local data dir: `<base_dir>/<feed>/<file>.jsonl`."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from eventreach_assets.resources.feeds.base import EngagementFeedResource, is_feed_file
from eventreach_assets.resources.files import write_bytes_atomically


class LocalFolderFeed(EngagementFeedResource):
    """Feeds as folders under the local data dir."""

    base_dir: str = Field(description="Folder holding one sub-folder per feed.")

    def _list_files(self, feed: str, after: str | None, limit: int) -> list[str]:
        folder = Path(self.base_dir, feed)
        if not folder.is_dir():
            return []
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and is_feed_file(entry.name))
        return [name for name in names if after is None or name > after][:limit]

    def _read_file(self, feed: str, name: str) -> bytes:
        folder = Path(self.base_dir, feed)
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"feed file {name!r} is not in {folder} (was it moved or deleted?)")
        return path.read_bytes()

    def _write_file(self, feed: str, name: str, data: bytes) -> str:
        path = Path(self.base_dir, feed, name)
        write_bytes_atomically(data, path)  # its temporary file is hidden: never listed half-written
        return str(path)
