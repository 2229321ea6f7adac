"""DynamoDB plumbing shared by the resources that keep one table each (delivery ledger, engagement store).

`DynamoDBClient` is their common base: the connection fields, one low-level client per process,
the table created at run start when asked, and a thread pool for per-item requests. The table's
shape stays with the resource (`_table_definition`); the candidate store, which manages its own
client and retries, shares only `run_parallel`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import dagster as dg
from botocore.exceptions import ClientError
from pydantic import Field

from eventreach_assets.resources.aws import aws_client

T = TypeVar("T")
R = TypeVar("R")


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (pid, workers) -> the process's pool of that size
_POOLS_LOCK = threading.Lock()
_IN_POOL = threading.local()  # set on a pool thread while it runs a task: nested calls run inline


def _shared_pool(max_workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per process and size: starting threads per call cost more than the requests
    (a send loop calls this for every window of messages)."""
    key = (os.getpid(), max_workers)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dynamodb")
        return pool


def run_parallel(function: Callable[[T], R], work: Sequence[T], max_workers: int) -> list[R]:
    """`function` over `work` in order, on up to `max_workers` threads: DynamoDB has no batch for
    conditional writes or updates, so per-item requests are spread instead of waited on one by one.
    Called from inside one of those tasks, it runs inline (a task waiting on its own pool could deadlock)."""
    if len(work) <= 1 or max_workers == 1 or getattr(_IN_POOL, "active", False):
        return [function(piece) for piece in work]

    def task(piece: T) -> R:
        _IN_POOL.active = True
        try:
            return function(piece)
        finally:
            _IN_POOL.active = False

    return list(_shared_pool(max_workers).map(task, work))


def is_conditional_failure(error: ClientError) -> bool:
    """Whether a write was refused by its condition: an answer (the key is taken), not an error."""
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def create_table_if_missing(client: Any, definition: dict[str, Any]) -> bool:
    """Create the table of a `CreateTable` request unless it exists, then wait until it is active;
    returns whether created (an existing table is left as it is)."""
    table_name = definition["TableName"]
    try:
        client.describe_table(TableName=table_name)
        created = False
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        client.create_table(**definition)
        created = True
    client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 600})
    return created


class DynamoDBClient(dg.ConfigurableResource):
    """Base of a resource on one DynamoDB table; list it before the resource's interface.

    A subclass declares `table_name` and `max_parallel_requests` (their descriptions name its
    table and requests) and sets `_table_definition` to its `CreateTable` request builder.
    """

    if TYPE_CHECKING:
        table_name: str
        max_parallel_requests: int

    region_name: str | None = Field(default=None, description="AWS region; None uses AWS_REGION / the profile.")
    endpoint_url: str | None = Field(default=None, description="Custom endpoint (DynamoDB Local, moto); None is AWS.")
    create_table_on_setup: bool = Field(default=False, description="Create the table at run start if missing.")

    _table_definition: ClassVar[Callable[[str], dict[str, Any]]]

    def client(self) -> Any:
        """The low-level DynamoDB client, one per process (thread-safe, not fork-safe)."""
        return aws_client(
            "dynamodb",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            max_attempts=9,
            max_pool_connections=2 * self.max_parallel_requests,
        )

    def create_table(self) -> bool:
        """Create the table if missing (tests, first deployment); returns whether created."""
        return create_table_if_missing(self.client(), self._table_definition(self.table_name))

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.create_table_on_setup:
            self.create_table()

    def _parallel(self, function: Callable[[T], R], work: Sequence[T]) -> list[R]:
        return run_parallel(function, work, self.max_parallel_requests)
