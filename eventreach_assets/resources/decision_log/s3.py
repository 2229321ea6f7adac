"""The AWS deployment's decision log: the same Parquet layout under an S3 prefix."""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster_aws.s3 import S3Resource
from pydantic import Field

from eventreach_assets.resources.decision_log.base import PART_FILE, DecisionLogResource
from eventreach_assets.resources.s3_objects import get_parquet, join_key, list_keys, put_parquet, s3_client, safe_prefix


class S3DecisionLog(DecisionLogResource):
    """Decisions in S3 under `<prefix>/<stage>/event=<id>/part-0.parquet` (Athena/DuckDB-readable)."""

    s3: S3Resource
    bucket: str = Field(description="Bucket of the decision log.")
    prefix: str = Field(default="decisions", description="Key prefix, e.g. 'eventreach/decisions'.")

    def client(self) -> Any:
        return s3_client(self.s3)

    def _key(self, relative: str) -> str:
        return join_key(safe_prefix(self.prefix), relative)

    def _write_frame(self, relative: str, frame: pl.DataFrame) -> str:
        key = self._key(relative)
        put_parquet(self.client(), self.bucket, key, frame)
        return f"s3://{self.bucket}/{key}"

    def _write_bytes(self, relative: str, data: bytes) -> str:
        key = self._key(relative)
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def _read_frame(self, relative: str, missing: str) -> pl.LazyFrame:
        return get_parquet(self.client(), self.bucket, self._key(relative), missing).lazy()

    def _read_stage(self, stage: str) -> pl.LazyFrame:
        client = self.client()
        stage_prefix = self._key(stage) + "/"
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
