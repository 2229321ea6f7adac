"""Asset values and the decision log in S3 (moto over real HTTP), same layout as the local ones."""

import io

import boto3
import dagster as dg
import polars as pl
import pyarrow.parquet as pq
import pytest
from dagster_aws.s3 import S3Resource
from polars.testing import assert_frame_equal

from eventreach_assets.resources.decision_log import S3DecisionLog
from eventreach_assets.resources.parquet_io import S3PolarsParquetIOManager
from eventreach_assets.resources.parquet_io.base import ROWS_OF, SOURCE_ROW
from eventreach_assets.resources.s3_objects import s3_client
from eventreach_assets_tests.stand_ins import REGION

pytestmark = pytest.mark.integration

BUCKET = "eventreach-state"


@pytest.fixture
def s3(aws_endpoint):
    client = boto3.client("s3", endpoint_url=aws_endpoint, region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def s3_resource(aws_endpoint, s3) -> S3Resource:
    return S3Resource(endpoint_url=aws_endpoint, region_name=REGION)


def keys(s3, prefix: str = "") -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def read_object(s3, key: str) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


events = dg.StaticPartitionsDefinition(["evt-1", "evt-2"])


@dg.asset(partitions_def=events)
def upstream(context: dg.AssetExecutionContext) -> pl.DataFrame:
    return pl.DataFrame({"event": [context.partition_key] * 3, "n": [1, 2, 3]})


@dg.asset(partitions_def=events)
def downstream(upstream: pl.DataFrame) -> pl.DataFrame:
    return upstream.with_columns(doubled=pl.col("n") * 2)


@dg.asset(key_prefix=["models"])
def model_table() -> pl.DataFrame:
    return pl.DataFrame({"version": ["v1"], "auc": [0.81]})


@dg.asset
def model_summary(model_table: pl.DataFrame) -> pl.DataFrame:
    return model_table.select(best=pl.col("auc").max())


def test_io_manager_round_trip_partitioned_and_unpartitioned(s3, s3_resource):
    io_manager = S3PolarsParquetIOManager(s3=s3_resource, bucket=BUCKET, prefix="/eventreach/assets/")
    resources = {"io_manager": io_manager}
    with dg.instance_for_test() as instance:
        for key in ("evt-1", "evt-2"):
            result = dg.materialize([upstream, downstream], partition_key=key, resources=resources, instance=instance)
            assert result.success
        assert dg.materialize([model_table, model_summary], resources=resources, instance=instance).success
        # The downstream step of the second run loaded its input back from S3.
        materialization = result.asset_materializations_for_node("downstream")[0]
        assert materialization.metadata["stored_at"].value.startswith(f"s3://{BUCKET}/eventreach/assets/downstream/")

    assert keys(s3) == [
        "eventreach/assets/downstream/evt-1.parquet",
        "eventreach/assets/downstream/evt-2.parquet",
        "eventreach/assets/model_summary.parquet",
        "eventreach/assets/models/model_table.parquet",
        "eventreach/assets/upstream/evt-1.parquet",
        "eventreach/assets/upstream/evt-2.parquet",
    ]
    assert_frame_equal(
        read_object(s3, "eventreach/assets/downstream/evt-2.parquet"),
        pl.DataFrame({"event": ["evt-2"] * 3, "n": [1, 2, 3], "doubled": [2, 4, 6]}),
    )
    assert read_object(s3, "eventreach/assets/model_summary.parquet").to_dicts() == [{"best": 0.81}]

    # And the same through dagster's input context, as another job would load it.
    context = dg.build_input_context(
        asset_key=dg.AssetKey("upstream"), partition_key="evt-1", asset_partitions_def=events
    )
    assert io_manager.load_input(context)["event"].to_list() == ["evt-1"] * 3


def test_io_manager_direct_contexts_and_missing_value(s3, s3_resource):
    io_manager = S3PolarsParquetIOManager(s3=s3_resource, bucket=BUCKET)
    frame = pl.DataFrame({"a": [1, 2]})
    output = dg.build_output_context(asset_key=dg.AssetKey(["scored", "candidates"]))
    io_manager.handle_output(output, frame)
    assert keys(s3) == ["assets/scored/candidates.parquet"]
    loaded = io_manager.load_input(dg.build_input_context(asset_key=dg.AssetKey(["scored", "candidates"])))
    assert_frame_equal(loaded, frame)
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        io_manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("never_built")))
    with pytest.raises(TypeError, match=r"expected polars\.DataFrame"):
        io_manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("x")), {"not": "a frame"})
    # A value is one row group, however long (test_parquet_io.py says why).
    long = pl.DataFrame({"n": range(600_000)})
    io_manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("long")), long)
    stored = s3.get_object(Bucket=BUCKET, Key="assets/long.parquet")["Body"].read()
    assert pq.ParquetFile(io.BytesIO(stored)).metadata.num_row_groups == 1


def test_a_value_drawn_from_another_round_trips_through_s3_as_row_numbers(s3, s3_resource):
    from eventreach_assets_tests.test_parquet_io import DRAWN, drawn, profiles, reads_drawn

    resources = {"io_manager": S3PolarsParquetIOManager(s3=s3_resource, bucket=BUCKET)}
    graph = [profiles, drawn, reads_drawn]
    DRAWN.clear()
    assert dg.materialize(graph, resources=resources).success
    body = s3.get_object(Bucket=BUCKET, Key="assets/drawn.parquet")["Body"].read()
    assert pl.read_parquet_metadata(io.BytesIO(body))[ROWS_OF] == "profiles.parquet"
    assert pl.read_parquet(io.BytesIO(body))[SOURCE_ROW].to_list() == [3, 1]
    assert dg.materialize(graph, selection=[reads_drawn], resources=resources).success  # rebuilt from S3
    in_run, rebuilt = DRAWN
    assert_frame_equal(rebuilt, in_run)
    assert dg.materialize(graph, selection=[profiles], resources=resources).success
    stale = dg.materialize(graph, selection=[reads_drawn], resources=resources, raise_on_error=False)
    assert not stale.success and "which has been written again since" in str(stale.all_events)


def test_decision_log_write_read(s3, s3_resource):
    log = S3DecisionLog(s3=s3_resource, bucket=BUCKET, prefix="eventreach/decisions")
    rejections_1 = pl.DataFrame({"customer_id": ["c1", "c2"], "filter_id": ["trust", "geographic"]})
    rejections_2 = pl.DataFrame({"customer_id": ["c3"], "filter_id": ["trust"]})
    uri = log.write("rejections", "evt-1", rejections_1)
    log.write("rejections", "evt-2", rejections_2)
    log.write("quarantine", "evt-1", pl.DataFrame({"customer_id": ["c9"], "reason": ["unknown_region"]}))
    assert uri == f"s3://{BUCKET}/eventreach/decisions/rejections/event=evt-1/part-0.parquet"
    assert keys(s3, "eventreach/decisions/rejections/") == [
        "eventreach/decisions/rejections/event=evt-1/part-0.parquet",
        "eventreach/decisions/rejections/event=evt-2/part-0.parquet",
    ]

    one = log.read("rejections", "evt-1").collect()
    assert_frame_equal(one, rejections_1.with_columns(event_id=pl.lit("evt-1")))
    every = log.read("rejections").collect().sort("customer_id")
    assert every["event_id"].to_list() == ["evt-1", "evt-1", "evt-2"]
    assert every.columns == ["customer_id", "filter_id", "event_id"]

    log.write("rejections", "evt-1", rejections_2)  # a re-run replaces the event's decisions
    assert log.read("rejections", "evt-1").collect()["customer_id"].to_list() == ["c3"]

    with pytest.raises(FileNotFoundError, match="no rejections decisions recorded for event 'evt-3'"):
        log.read("rejections", "evt-3")
    with pytest.raises(FileNotFoundError, match="no scoring decisions recorded yet"):
        log.read("scoring")
    with pytest.raises(ValueError, match="unsafe key"):
        log.write("rejections", "../evt", rejections_1)


def test_the_s3_client_keeps_the_s3_resource_settings():
    """The factory builds it: dagster-aws's `max_attempts` (retries) becomes total attempts + 1."""
    client = s3_client(S3Resource(region_name=REGION, endpoint_url="http://127.0.0.1:9", max_attempts=3))
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert (client.meta.region_name, client.meta.endpoint_url) == (REGION, "http://127.0.0.1:9")
    assert s3_client(S3Resource(region_name=REGION, endpoint_url="http://127.0.0.1:9", max_attempts=3)) is client
    with pytest.raises(ValueError, match="use_unsigned_session"):
        s3_client(S3Resource(region_name=REGION, use_unsigned_session=True))
