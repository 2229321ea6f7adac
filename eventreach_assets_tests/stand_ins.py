"""Real-protocol stand-ins for the production services, started on 127.0.0.1 by the tests.

moto in server mode answers DynamoDB, S3, Glue, SNS, SES and CloudWatch over real HTTP, so
boto3 (and dagster-aws) talk to it exactly as they would to AWS. Nothing here listens on
anything but loopback, and every server is stopped when its fixture ends.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """A ThreadedMotoServer on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    previous = {key: os.environ.get(key) for key in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def reset_moto(endpoint: str) -> None:
    """Forget every table, bucket and metric (moto's own reset API), so tests do not share state."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


# ---- Snowflake: fakesnow ------------------------------------------------------------------
# fakesnow 0.12.1 has no `cursor.fetch_arrow_batches()`, the connector call SnowflakeWarehouse
# streams results with, so `_fetch_arrow_batches` supplies it the way the real connector
# behaves: several batches, each NUMBER column in the narrowest integer type that fits that
# batch, and no batch at all for an empty result.


def _narrowest_ints(batch: pa.RecordBatch) -> pa.Table:
    """A batch as Snowflake ships it: integers in the smallest type this batch's values fit."""
    columns = []
    for column in batch.columns:
        if pa.types.is_integer(column.type) and len(column) and column.null_count < len(column):
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            for narrow in (pa.int8(), pa.int16(), pa.int32(), pa.int64()):
                limit = 2 ** (narrow.bit_width - 1)
                if -limit <= low and high < limit:
                    column = column.cast(narrow)
                    break
        columns.append(column)
    return pa.Table.from_arrays(columns, names=batch.schema.names)


def _fetch_arrow_batches(self: Any, force_microsecond_precision: bool = False) -> Iterator[pa.Table]:
    table = self._arrow_table
    if table is None or table.num_rows == 0:
        return
    for batch in table.to_batches(max_chunksize=3_000):
        yield _narrowest_ints(batch)


@contextmanager
def fake_snowflake_connector() -> Iterator[None]:
    """snowflake.connector patched to fakesnow (an in-process DuckDB, no network)."""
    import fakesnow
    import pytest
    from fakesnow.cursor import FakeSnowflakeCursor

    with fakesnow.patch(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeSnowflakeCursor, "fetch_arrow_batches", _fetch_arrow_batches, raising=False)
        yield
