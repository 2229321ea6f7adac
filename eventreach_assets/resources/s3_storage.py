"""The AWS deployment's shared storage: asset values and the decision log as Parquet in S3.

Same layout and semantics as resources/storage.py with an S3 prefix in place of the data
dir. A PutObject replaces an object atomically (readers see the old body or the new one),
which is what the local versions get from write-then-rename.
"""

from __future__ import annotations

import io
from typing import Any

import dagster as dg
import polars as pl
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from eventreach_assets.resources.storage import DecisionLogResource, safe_key

__all__ = ["S3DecisionLog", "S3PolarsParquetIOManager", "join_key", "list_keys"]

PART_FILE = "part-0.parquet"


def join_key(prefix: str, *parts: str) -> str:
    """An S3 key from a prefix (slashes trimmed, may be empty) and already-safe parts."""
    return "/".join(segment for segment in (prefix.strip("/"), *parts) if segment)


def _prefix_parts(prefix: str) -> list[str]:
    """The prefix's segments, each checked like a partition key (no '..', no odd characters)."""
    return [safe_key(segment) for segment in prefix.strip("/").split("/") if segment]


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under `prefix`, across pages."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def _is_missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}


def put_parquet(client: Any, bucket: str, key: str, frame: pl.DataFrame) -> int:
    """Write `frame` as one Parquet object; returns its size in bytes."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=True)
    body = buffer.getvalue()
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/vnd.apache.parquet")
    return len(body)


def get_parquet(client: Any, bucket: str, key: str, missing: str) -> pl.DataFrame:
    """Read one Parquet object; FileNotFoundError(`missing`) if it does not exist."""
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _is_missing(error):
            raise FileNotFoundError(missing) from None
        raise
    return pl.read_parquet(io.BytesIO(response["Body"].read()))


class S3PolarsParquetIOManager(dg.ConfigurableIOManager):
    """Polars asset values in S3: `s3://<bucket>/<prefix>/<asset path>/<partition>.parquet`
    (unpartitioned: `<prefix>/<asset path>.parquet`), like PolarsParquetIOManager."""

    s3: S3Resource
    bucket: str = Field(description="Bucket of the asset values.")
    prefix: str = Field(default="assets", description="Key prefix, e.g. 'eventreach/assets'.")
    _client: Any = PrivateAttr(default=None)

    def client(self) -> Any:
        """The S3 client, built once per resource instance (building one costs ~0.2 s)."""
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    def _key(self, context: dg.OutputContext | dg.InputContext) -> str:
        asset_path = [safe_key(part) for part in context.asset_key.path]
        if context.has_asset_partitions:
            return join_key(
                "/".join(_prefix_parts(self.prefix)),
                *asset_path,
                f"{safe_key(context.asset_partition_key)}.parquet",
            )
        return join_key("/".join(_prefix_parts(self.prefix)), *asset_path[:-1], f"{asset_path[-1]}.parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, expected polars.DataFrame"
            )
        key = self._key(context)
        size = put_parquet(self.client(), self.bucket, key, obj)
        context.add_output_metadata({"stored_at": f"s3://{self.bucket}/{key}", "stored_bytes": size})

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        key = self._key(context)
        return get_parquet(
            self.client(),
            self.bucket,
            key,
            f"no stored value for {context.asset_key.to_user_string()} at s3://{self.bucket}/{key}: "
            "materialize it first",
        )


class S3DecisionLog(DecisionLogResource):
    """Decisions in S3 under `<prefix>/<stage>/event=<id>/part-0.parquet` (Athena/DuckDB-readable)."""

    s3: S3Resource
    bucket: str = Field(description="Bucket of the decision log.")
    prefix: str = Field(default="decisions", description="Key prefix, e.g. 'eventreach/decisions'.")
    _client: Any = PrivateAttr(default=None)

    def client(self) -> Any:
        """The S3 client, built once per resource instance (building one costs ~0.2 s)."""
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    def _stage_prefix(self, stage: str) -> str:
        return join_key("/".join(_prefix_parts(self.prefix)), safe_key(stage)) + "/"

    def _key(self, stage: str, event_id: str) -> str:
        return f"{self._stage_prefix(stage)}event={safe_key(event_id)}/{PART_FILE}"

    def write(self, stage: str, event_id: str, frame: pl.DataFrame) -> str:
        key = self._key(stage, event_id)
        put_parquet(self.client(), self.bucket, key, frame)
        return f"s3://{self.bucket}/{key}"

    def write_file(self, stage: str, event_id: str, name: str, data: bytes) -> str:
        key = f"{self._stage_prefix(stage)}event={safe_key(event_id)}/{safe_key(name)}"
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def read(self, stage: str, event_id: str | None = None) -> pl.LazyFrame:
        client = self.client()
        if event_id is not None:
            frame = get_parquet(
                client,
                self.bucket,
                self._key(stage, event_id),
                f"no {stage} decisions recorded for event {event_id!r}",
            )
            return frame.lazy().with_columns(event_id=pl.lit(event_id, dtype=pl.String))
        stage_prefix = self._stage_prefix(stage)
        frames = []
        for key in sorted(list_keys(client, self.bucket, stage_prefix)):
            event_part, _, file_name = key.removeprefix(stage_prefix).partition("/")
            if not event_part.startswith("event=") or file_name != PART_FILE:
                continue
            frame = get_parquet(client, self.bucket, key, f"{key} vanished while reading")
            frames.append(frame.with_columns(event_id=pl.lit(event_part.removeprefix("event="), dtype=pl.String)))
        if not frames:
            raise FileNotFoundError(f"no {stage} decisions recorded yet under s3://{self.bucket}/{stage_prefix}")
        return pl.concat(frames, how="diagonal_relaxed").lazy()
