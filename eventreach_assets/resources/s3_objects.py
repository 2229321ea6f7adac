"""S3 plumbing shared by the S3 backends (IO manager, decision log, export, model registry).

The deployment configures one dagster-aws `S3Resource` (region, endpoint) and nests it in each
S3 backend; `s3_client` turns it into a client built by the project's one client factory. A
PutObject replaces an object atomically (readers see the old body or the new one), which is
what the local backends get from write-then-rename.
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from eventreach_assets.resources.aws import aws_client
from eventreach_assets.resources.files import ZSTD_LEVEL, safe_key

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


def s3_client(resource: S3Resource) -> Any:
    """The S3 client for an `S3Resource`'s settings, from `aws_client` (cached per process).

    `S3Resource.max_attempts` is botocore's retry count (the first try excluded); the factory
    counts every attempt, hence the +1. Settings the factory does not model are refused rather
    than silently dropped.
    """
    if resource.use_unsigned_session or not resource.use_ssl or resource.verify is not None:
        raise ValueError("S3Resource: use_unsigned_session, use_ssl=False and verify are not supported here")
    return aws_client(
        "s3",
        region_name=resource.region_name,
        endpoint_url=resource.endpoint_url,
        max_attempts=resource.max_attempts + 1,
        profile_name=resource.profile_name,
        aws_access_key_id=resource.aws_access_key_id,
        aws_secret_access_key=resource.aws_secret_access_key,
        aws_session_token=resource.aws_session_token,
    )


def join_key(prefix: str, *parts: str) -> str:
    """An S3 key from a prefix (slashes trimmed, may be empty) and already-safe parts."""
    return "/".join(segment for segment in (prefix.strip("/"), *parts) if segment)


def safe_prefix(prefix: str) -> str:
    """The prefix with its segments each checked like a partition key (no '..', no odd characters)."""
    return "/".join(safe_key(segment) for segment in prefix.strip("/").split("/") if segment)


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under `prefix`, across pages."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_missing(error: ClientError) -> bool:
    return error_code(error) in {"NoSuchKey", "404", "NotFound"}


def parquet_bytes(
    frame: pl.DataFrame, row_group_size: int | None = None, metadata: dict[str, str] | None = None
) -> bytes:
    """`frame` as one zstd Parquet file with statistics, the shape every S3 backend stores
    (`metadata`: the file's key-value metadata)."""
    buffer = io.BytesIO()
    frame.write_parquet(
        buffer,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        statistics=True,
        row_group_size=row_group_size,
        metadata=metadata,
    )
    return buffer.getvalue()


def put_parquet(
    client: Any,
    bucket: str,
    key: str,
    frame: pl.DataFrame,
    row_group_size: int | None = None,
    metadata: dict[str, str] | None = None,
) -> int:
    """Write `frame` as one Parquet object; returns its size in bytes."""
    body = parquet_bytes(frame, row_group_size, metadata)
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=PARQUET_CONTENT_TYPE)
    return len(body)


def _object_body(client: Any, bucket: str, key: str, missing: str) -> bytes:
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if is_missing(error):
            raise FileNotFoundError(missing) from None
        raise
    return response["Body"].read()


def get_parquet(client: Any, bucket: str, key: str, missing: str, columns: list[str] | None = None) -> pl.DataFrame:
    """Read one Parquet object (`columns` of it, or all); FileNotFoundError(`missing`) if it does not exist."""
    return pl.read_parquet(io.BytesIO(_object_body(client, bucket, key, missing)), columns=columns)


def get_parquet_and_metadata(client: Any, bucket: str, key: str, missing: str) -> tuple[pl.DataFrame, dict[str, str]]:
    """One Parquet object and its key-value metadata (the IO manager's value ids), fetched once;
    FileNotFoundError(`missing`) if it does not exist."""
    body = _object_body(client, bucket, key, missing)
    return pl.read_parquet(io.BytesIO(body)), pl.read_parquet_metadata(io.BytesIO(body))
