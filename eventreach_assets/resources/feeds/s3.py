"""Feeds as S3 prefixes: `s3://<bucket>/<prefix>/<feed>/<file>.jsonl`."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field

from eventreach_assets.resources.feeds.base import EngagementFeedResource, is_feed_file
from eventreach_assets.resources.s3_objects import s3_client


class S3Feed(EngagementFeedResource):
    """Feeds as S3 prefixes: `s3://<bucket>/<prefix>/<feed>/<file>.jsonl`."""

    s3: S3Resource  # a nested resource, like the S3 export's (a ResourceDependency refused a direct instance)
    bucket: str = Field(description="Bucket the event platform and the tracking service drop feed files in.")
    prefix: str = Field(default="eventreach/feeds", description="Folder of the feeds inside the bucket.")

    def client(self) -> Any:
        """The S3 client, shared by every caller in this process with the same settings."""
        return s3_client(self.s3)

    def _key(self, feed: str, name: str = "") -> str:
        # An empty prefix puts the feeds at the bucket's root (no leading "/" in the keys).
        return "/".join(part for part in (self.prefix.strip("/"), feed) if part) + f"/{name}"

    def _list_files(self, feed: str, after: str | None, limit: int) -> list[str]:
        base = self._key(feed)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
        if after is not None:
            kwargs["StartAfter"] = base + after
        names: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(**kwargs):
            for item in page.get("Contents", []):
                name = item["Key"][len(base) :]
                if is_feed_file(name):  # keys in "sub-folders" contain "/" and are not feed files
                    names.append(name)
                    if len(names) >= limit:
                        return names
        return names

    def _read_file(self, feed: str, name: str) -> bytes:
        try:
            return self.client().get_object(Bucket=self.bucket, Key=self._key(feed, name))["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            raise FileNotFoundError(
                f"feed file {name!r} is not in s3://{self.bucket}/{self._key(feed)} (was it moved or deleted?)"
            ) from error

    def _write_file(self, feed: str, name: str, data: bytes) -> str:
        key = self._key(feed, name)
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"
