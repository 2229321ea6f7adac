"""The candidate store's DynamoDB tables as code: their `CreateTable` requests and shape checks.

`candidate_table_definition` / `score_cache_table_definition` are the `CreateTable` requests,
`create_candidate_tables` creates them and turns TTL on, and `check_candidate_tables` is what
`DynamoDBCandidateStore.setup_for_execution` runs so a run against a table of the wrong shape
fails at start with the table named and every difference listed. The command-line tool
(`python -m eventreach_assets.resources.candidate_store.cli`) calls both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from eventreach_assets.domain import candidate_items as ci

GSI1 = "GSI1"
GSI2 = "GSI2"
TTL_ATTRIBUTE = "expires_at"


class TableShapeError(RuntimeError):
    """A table the store uses is missing or lacks a key, an index or TTL the store relies on."""


def _key(name: str, key_type: str) -> dict[str, str]:
    return {"AttributeName": name, "KeyType": key_type}


def candidate_table_definition(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the candidates table (TTL is set separately, on expires_at).

    Both GSIs project ALL attributes: every read returns whole items, and an item is well under
    1 KB, so a projected write costs the same one write unit as a keys-only one.
    """
    return {
        "TableName": name,
        "KeySchema": [_key("pk", "HASH"), _key("sk", "RANGE")],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "gsi1pk", "AttributeType": "S"},
            {"AttributeName": ci.GSI1_SORT_KEY, "AttributeType": "N"},
            {"AttributeName": "gsi2pk", "AttributeType": "S"},
            {"AttributeName": "gsi2sk", "AttributeType": "S"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": GSI1,
                "KeySchema": [_key("gsi1pk", "HASH"), _key(ci.GSI1_SORT_KEY, "RANGE")],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": GSI2,
                "KeySchema": [_key("gsi2pk", "HASH"), _key("gsi2sk", "RANGE")],
                "Projection": {"ProjectionType": "ALL"},
            },
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def score_cache_table_definition(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the score cache (PK customer, SK event x model x version)."""
    return {
        "TableName": name,
        "KeySchema": [_key("pk", "HASH"), _key("sk", "RANGE")],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def _table_exists(client: Any, name: str) -> bool:
    try:
        client.describe_table(TableName=name)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return False
        raise
    return True


def _ttl_status(client: Any, name: str) -> tuple[str, str | None]:
    description = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    return description.get("TimeToLiveStatus", "DISABLED"), description.get("AttributeName")


def create_candidate_tables(
    client: Any, table_name: str, cache_table_name: str, wait_seconds: float = 2.0
) -> list[str]:
    """Create whichever of the two tables is missing, wait until active, enable TTL; then check.

    Returns what was done, one line per step. An existing table is left as it is apart from
    enabling TTL when it is off; a shape that differs otherwise raises `TableShapeError`.
    """
    done: list[str] = []
    for definition in (candidate_table_definition(table_name), score_cache_table_definition(cache_table_name)):
        name = definition["TableName"]
        if _table_exists(client, name):
            done.append(f"table {name} exists")
        else:
            client.create_table(**definition)
            done.append(f"created table {name}")
        client.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": wait_seconds, "MaxAttempts": max(1, int(600 / wait_seconds))}
        )
        status, attribute = _ttl_status(client, name)
        if status in ("DISABLED", "DISABLING") or attribute is None:
            client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
            )
            done.append(f"enabled TTL on {name}.{TTL_ATTRIBUTE}")
    check_candidate_tables(client, table_name, cache_table_name)
    return done


def _describe_keys(keys: Sequence[dict[str, str]], types: dict[str, str]) -> str:
    return ", ".join(f"{k['AttributeName']} {k['KeyType']} ({types.get(k['AttributeName'], '?')})" for k in keys)


def table_shape_problems(client: Any, definition: dict[str, Any]) -> list[str]:
    """How the live table named in `definition` differs from it (empty when it fits).

    Checks the key schema and key attribute types, every GSI of the definition (keys,
    projection, ACTIVE) and TTL enabled on expires_at. Extra GSIs and the billing mode are the
    owner's business and not checked.
    """
    name = definition["TableName"]
    try:
        table = client.describe_table(TableName=name)["Table"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return ["the table does not exist"]
        raise
    want_types = {a["AttributeName"]: a["AttributeType"] for a in definition["AttributeDefinitions"]}
    have_types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    problems = []
    have_keys = table.get("KeySchema", [])
    if _describe_keys(have_keys, have_types) != _describe_keys(definition["KeySchema"], want_types):
        problems.append(
            f"key schema is [{_describe_keys(have_keys, have_types)}], "
            f"want [{_describe_keys(definition['KeySchema'], want_types)}]"
        )
    have_indexes = {index["IndexName"]: index for index in table.get("GlobalSecondaryIndexes", [])}
    for wanted in definition.get("GlobalSecondaryIndexes", []):
        index_name = wanted["IndexName"]
        want = f"{_describe_keys(wanted['KeySchema'], want_types)}, projection {wanted['Projection']['ProjectionType']}"
        have_index = have_indexes.get(index_name)
        if have_index is None:
            problems.append(f"global secondary index {index_name} is missing (want {want})")
            continue
        have = (
            f"{_describe_keys(have_index['KeySchema'], have_types)}, "
            f"projection {have_index.get('Projection', {}).get('ProjectionType')}"
        )
        if have != want:
            problems.append(f"global secondary index {index_name} is [{have}], want [{want}]")
        elif have_index.get("IndexStatus", "ACTIVE") != "ACTIVE":
            problems.append(f"global secondary index {index_name} is {have_index['IndexStatus']}, not yet ACTIVE")
    status, attribute = _ttl_status(client, name)
    if status not in ("ENABLED", "ENABLING") or attribute != TTL_ATTRIBUTE:
        on = f" on {attribute!r}" if attribute else ""
        problems.append(f"TTL is {status}{on}, want ENABLED on {TTL_ATTRIBUTE!r}")
    return problems


def check_candidate_tables(client: Any, table_name: str, cache_table_name: str) -> None:
    """Raise `TableShapeError` naming each table whose shape differs and how."""
    messages = []
    for definition in (candidate_table_definition(table_name), score_cache_table_definition(cache_table_name)):
        problems = table_shape_problems(client, definition)
        if problems:
            listed = "".join(f"\n  - {problem}" for problem in problems)
            messages.append(f"DynamoDB table {definition['TableName']!r} does not fit the candidate store:{listed}")
    if messages:
        raise TableShapeError(
            "\n".join(messages)
            + "\nCreate or fix the tables with `python -m eventreach_assets.resources.candidate_store.cli"
            f" create-tables --table {table_name} --cache-table {cache_table_name}` (see its --help)."
        )
