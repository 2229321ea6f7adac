"""The repository's dagster.yaml loads, and limits what the operators rely on."""

import shutil
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def test_dagster_yaml_loads_with_run_and_pool_limits(tmp_path: Path):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1  # one send per channel pool at a time
        queue = config.run_queue_config
        assert queue.max_concurrent_runs == 2
        assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in (
            queue.tag_concurrency_limits
        )
    finally:
        instance.dispose()


def test_campaign_assets_declare_their_channel_pool():
    from eventreach_assets.definitions import defs

    pools = {
        spec.key.to_user_string(): assets_def.op.pool
        for assets_def in defs.resolve_asset_graph().assets_defs
        for spec in assets_def.specs
        if spec.group_name == "campaigns"
    }
    assert pools == {
        "email_invitations": "channel-email",
        "in_app_invitations": "channel-in-app",
        "push_reminders": "channel-push",
        "day_of_reminders": "channel-email",
        "post_event_surveys": "channel-email",
    }
