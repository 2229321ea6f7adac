"""The S3 + Glue export against moto over real HTTP: same Parquet as the local export, Glue
table and partitions registered, re-export replaces."""

from __future__ import annotations

from datetime import UTC, date, datetime

import boto3
import polars as pl
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from dagster_aws.s3 import S3Resource
from polars.testing import assert_frame_equal

from eventreach_assets.domain.candidate_items import EXPORT_EXCLUDED_COLUMNS, build_candidate_items, export_frame
from eventreach_assets.resources.export import PARQUET_SERDE, S3GlueExport, hive_type
from eventreach_assets_tests.stand_ins import REGION

pytestmark = pytest.mark.integration

PROGRAM = "event-invitations"
NOW = datetime(2025, 1, 6, 4, 30, tzinfo=UTC)
RUN_DATE = date(2025, 1, 6)
BUCKET = "eventreach-export"
DATABASE = "eventreach"
TABLE = "event_candidates"


def items(event_id: str, customers: int, *, extra_probability: bool = False) -> pl.DataFrame:
    scored = pl.DataFrame({"customer_id": [f"c{i:04d}" for i in range(customers)]}).with_columns(
        score=(pl.int_range(customers) % 100) / 100,
        score_band=pl.lit("medium"),
        p_event_attendance_v3=pl.lit(0.5),
        marketplace=pl.lit("US"),
        email=pl.format("{}@example.test", pl.col("customer_id")),
    )
    if extra_probability:
        scored = scored.with_columns(p_interest_affinity_v1=pl.lit(0.25))
    return build_candidate_items(PROGRAM, event_id, scored, ["email", "in-app"], NOW, 14)


@pytest.fixture
def clients(aws_endpoint):
    s3 = boto3.client("s3", endpoint_url=aws_endpoint, region_name=REGION)
    glue = boto3.client("glue", endpoint_url=aws_endpoint, region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    glue.create_database(DatabaseInput={"Name": DATABASE})
    return s3, glue


@pytest.fixture
def exporter(aws_endpoint, clients) -> S3GlueExport:
    return S3GlueExport(
        s3=S3Resource(endpoint_url=aws_endpoint, region_name=REGION),
        bucket=BUCKET,
        prefix="exports/candidates/",
        glue_database=DATABASE,
        glue_table=TABLE,
        region_name=REGION,
        endpoint_url=aws_endpoint,
    )


def keys(s3) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_export_writes_hive_object_without_excluded_columns(aws_endpoint, clients, exporter):
    s3, _ = clients
    data = items("evt-1", 30).with_columns(phone=pl.lit("+1 555"))  # not a store attribute: never exported
    result = exporter.export_event(PROGRAM, "evt-1", RUN_DATE, data)

    key = "exports/candidates/program=event-invitations/event=evt-1/dt=2025-01-06/part-0.parquet"
    assert result.uri == f"s3://{BUCKET}/{key}" and result.path == key
    assert keys(s3) == [key]
    assert result.rows == 60 and result.bytes == s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    assert result.partition == {"program": PROGRAM, "event": "evt-1", "dt": "2025-01-06"}
    for column in (*EXPORT_EXCLUDED_COLUMNS, "pk", "sk", "gsi1pk", "phone"):
        assert column not in result.columns

    # Read back with pyarrow's own S3 filesystem pointed at moto, as an analyst's tool would.
    filesystem = pafs.S3FileSystem(
        endpoint_override=aws_endpoint, scheme="http", region=REGION, access_key="testing", secret_key="testing"
    )
    dataset = pads.dataset(f"{BUCKET}/exports/candidates", filesystem=filesystem, format="parquet", partitioning="hive")
    table = pl.from_arrow(dataset.to_table())
    assert set(table["program"]) == {PROGRAM} and set(table["event"]) == {"evt-1"}
    assert set(table["dt"].cast(pl.String)) == {"2025-01-06"}
    body = table.drop("program", "event", "dt")
    expected = data.drop(*EXPORT_EXCLUDED_COLUMNS, "pk", "sk", "gsi1pk", "gsi2pk", "gsi2sk", "phone")
    assert_frame_equal(body.sort("customer_id", "channel"), expected.sort("customer_id", "channel"))
    assert_frame_equal(exporter.read_event(PROGRAM, "evt-1", RUN_DATE), export_frame(data))
    compared = exporter.read_event(PROGRAM, "evt-1", RUN_DATE, columns=["channel", "customer_id"])
    assert_frame_equal(compared, export_frame(data).select("channel", "customer_id"))


def test_glue_table_and_partition(clients, exporter):
    _, glue = clients
    exporter.export_event(PROGRAM, "evt-1", RUN_DATE, items("evt-1", 5))
    exporter.export_event(PROGRAM, "evt-2", RUN_DATE, items("evt-2", 5))

    table = glue.get_table(DatabaseName=DATABASE, Name=TABLE)["Table"]
    assert table["TableType"] == "EXTERNAL_TABLE"
    assert [key["Name"] for key in table["PartitionKeys"]] == ["program", "event", "dt"]
    assert {key["Type"] for key in table["PartitionKeys"]} == {"string"}
    descriptor = table["StorageDescriptor"]
    assert descriptor["Location"] == f"s3://{BUCKET}/exports/candidates/"
    assert descriptor["SerdeInfo"]["SerializationLibrary"] == PARQUET_SERDE
    assert descriptor["InputFormat"].endswith("MapredParquetInputFormat")
    types = {column["Name"]: column["Type"] for column in descriptor["Columns"]}
    assert types["customer_id"] == "string" and types["score"] == "double" and types["expires_at"] == "bigint"
    assert types["written_at"] == "timestamp" and types["batch_date"] == "date"
    assert "email" not in types and "program" not in types

    partitions = glue.get_partitions(DatabaseName=DATABASE, TableName=TABLE)["Partitions"]
    assert sorted(tuple(partition["Values"]) for partition in partitions) == [
        (PROGRAM, "evt-1", "2025-01-06"),
        (PROGRAM, "evt-2", "2025-01-06"),
    ]
    one = glue.get_partition(DatabaseName=DATABASE, TableName=TABLE, PartitionValues=[PROGRAM, "evt-2", "2025-01-06"])[
        "Partition"
    ]
    assert (
        one["StorageDescriptor"]["Location"]
        == f"s3://{BUCKET}/exports/candidates/program=event-invitations/event=evt-2/dt=2025-01-06/"
    )


def test_reexport_same_day_replaces_and_updates_partition(clients, exporter):
    s3, glue = clients
    exporter.export_event(PROGRAM, "evt-1", RUN_DATE, items("evt-1", 40))
    partition_prefix = "exports/candidates/program=event-invitations/event=evt-1/dt=2025-01-06/"
    s3.put_object(Bucket=BUCKET, Key=partition_prefix + "part-1.parquet", Body=b"stale")  # an older writer's file

    smaller = items("evt-1", 3, extra_probability=True)
    result = exporter.export_event(PROGRAM, "evt-1", RUN_DATE, smaller)
    assert keys(s3) == [partition_prefix + "part-0.parquet"]
    assert result.rows == 6
    assert_frame_equal(exporter.read_event(PROGRAM, "evt-1", RUN_DATE), export_frame(smaller))

    partitions = glue.get_partitions(DatabaseName=DATABASE, TableName=TABLE)["Partitions"]
    assert len(partitions) == 1
    partition_columns = [column["Name"] for column in partitions[0]["StorageDescriptor"]["Columns"]]
    assert "p_interest_affinity_v1" in partition_columns
    table_columns = [
        column["Name"]
        for column in glue.get_table(DatabaseName=DATABASE, Name=TABLE)["Table"]["StorageDescriptor"]["Columns"]
    ]
    assert table_columns[-1] == "p_interest_affinity_v1" and "p_event_attendance_v3" in table_columns

    # A later day is a new partition; the earlier one stays.
    exporter.export_event(PROGRAM, "evt-1", date(2025, 1, 13), smaller)
    assert len(glue.get_partitions(DatabaseName=DATABASE, TableName=TABLE)["Partitions"]) == 2
    assert len(keys(s3)) == 2


def test_missing_export_and_database(aws_endpoint, clients, exporter):
    with pytest.raises(FileNotFoundError, match="no export"):
        exporter.read_event(PROGRAM, "evt-9", RUN_DATE)
    no_database = exporter.model_copy(update={"glue_database": "absent"})
    with pytest.raises(RuntimeError, match="Glue database 'absent' does not exist"):
        no_database.export_event(PROGRAM, "evt-1", RUN_DATE, items("evt-1", 2))
    with pytest.raises(ValueError, match="cannot be a partition value"):
        exporter.export_event(PROGRAM, "../evt", RUN_DATE, items("evt-1", 2))


def test_hive_types():
    assert hive_type(pl.List(pl.String)) == "array<string>"
    assert hive_type(pl.Struct({"a": pl.Int32, "b": pl.Float64})) == "struct<a:int,b:double>"
    assert hive_type(pl.Decimal(12, 2)) == "decimal(12,2)"
    assert hive_type(pl.Datetime("us", "UTC")) == "timestamp"
