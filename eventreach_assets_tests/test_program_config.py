import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eventreach_assets.program.config import (
    DEFAULT_PROGRAM_PATH,
    ProgramConfigError,
    aws_cron_to_unix,
    load_program,
    parse_program,
)


def document() -> dict:
    return yaml.safe_load(DEFAULT_PROGRAM_PATH.read_text())


def test_packaged_program_has_the_use_case_values():
    program = load_program()
    assert program.program_id == "event-invitations"
    assert [f.filter_id for f in program.ordered_filters] == [
        "trust", "eligibility", "interest-match", "geographic", "frequency-cap"
    ]  # fmt: skip
    assert program.filter_chain[2].parameters == {"minMatchScore": 0.7}
    assert program.candidate_ttl_days == 14
    assert program.scoring.batch_size == 5000
    assert program.storage.batch_write_size == 25
    assert program.event_config.capacity_limit == 10000
    assert [c.channel_id for c in program.invitation_channels] == ["email", "in-app"]
    assert program.model("event-attendance-v3").endpoint_name == "event-attendance-v3"
    assert program.batch_cron == "0 2 * * 1"
    assert program.export_cron == "30 4 * * 1"


def test_chain_order_follows_order_field_not_file_position():
    data = document()
    data["filterChain"].reverse()
    program = parse_program(data)
    assert [f.registry_key for f in program.ordered_filters] == [
        "trust", "eligibility", "interest-match", "geographic", "frequency-cap"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(candidateTTLDays=0), "candidateTTLDays"),
        (lambda d: d["scoringModels"][0].update(endpoint="http://x"), "scoringModels.0.endpoint"),
        (lambda d: d["filterChain"][1].update(order=1), "orders must be unique"),
        (lambda d: d.update(batchSchedule="every monday"), "batchSchedule"),
        (lambda d: d["eventConfig"]["reminderSchedule"][1].update(time="9am"), "reminderSchedule.1.time"),
        (lambda d: d.pop("channels"), "channels"),
    ],
)
def test_bad_config_names_the_field(mutate, expected):
    data = document()
    mutate(data)
    with pytest.raises(ProgramConfigError) as error:
        parse_program(data, "test.yaml")
    assert expected in str(error.value)
    assert "test.yaml" in str(error.value)


# A filter entry's own parameters belong to its filter class (domain/filters.py): the schema
# keeps them as written, and `check_program_filters` rejects them (test_filters.py).
@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["filterChain"][2]["parameters"].update(minMatchScore="high"),
        lambda d: d["filterChain"][2]["parameters"].update(minMatchScor=0.5),
        lambda d: d["filterChain"][4].update(filterId="no-such-rule"),
    ],
)
def test_the_schema_leaves_filter_parameters_to_the_filters(mutate):
    data = document()
    mutate(data)
    program = parse_program(data, "test.yaml")
    assert [spec.model_dump(by_alias=True, exclude_unset=True) for spec in program.filter_chain] == data["filterChain"]


def test_the_program_package_imports_nothing_from_the_domain():
    """program/ is the bottom layer: loading a program pulls in no domain, resource or asset module."""
    code = (
        "import sys; from eventreach_assets.program import load_program; load_program(); "
        "print(sorted(m for m in sys.modules if m.startswith('eventreach_assets.') "
        "and not m.startswith('eventreach_assets.program')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_unreadable_file_is_a_config_error(tmp_path: Path):
    bad = tmp_path / "p.yaml"
    bad.write_text("programId: [unclosed")
    with pytest.raises(ProgramConfigError, match="not valid YAML"):
        load_program(bad)
    with pytest.raises(ProgramConfigError, match="cannot read"):
        load_program(tmp_path / "missing.yaml")


def test_the_program_is_parsed_by_libyaml_into_what_pure_python_yaml_reads(tmp_path: Path):
    """Programs load through libyaml's parser (every sensor tick and run loads one): it must read
    the packaged program, and a YAML mistake, as PyYAML's pure-Python safe loader does."""
    assert yaml.__with_libyaml__, "PyYAML without libyaml: programs would load with the pure-Python parser"
    assert load_program() == parse_program(yaml.load(DEFAULT_PROGRAM_PATH.read_text(), Loader=yaml.SafeLoader))
    bad = tmp_path / "p.yaml"
    bad.write_text("programId: [unclosed")
    with pytest.raises(ProgramConfigError, match=r"flow sequence\n  in .*, line 1, column 12"):
        load_program(bad)


def test_aws_cron_translation():
    assert aws_cron_to_unix("cron(0 2 ? * MON *)") == "0 2 * * 1"
    assert aws_cron_to_unix("cron(59 23 * * ? *)") == "59 23 * * *"
    with pytest.raises(ValueError, match="EventBridge"):
        aws_cron_to_unix("0 2 * * 1")


def test_a_run_decides_with_one_program_even_when_the_yaml_is_edited_meanwhile(tmp_path: Path):
    """Every step of a run gets the program its first use read (the filter step and the policy
    check that recomputes it must not decide with two); the next run, and a load outside a run,
    read the edit."""
    import dagster as dg

    from eventreach_assets.resources.program import ProgramResource

    path = tmp_path / "program.yaml"
    path.write_text(yaml.safe_dump(document()))
    seen: list[int] = []

    def edited(ttl_days: int) -> None:
        path.write_text(yaml.safe_dump({**document(), "candidateTTLDays": ttl_days}))

    @dg.asset
    def first_step(program: ProgramResource) -> None:
        seen.append(program.load().candidate_ttl_days)
        edited(seen[-1] + 1)  # the YAML changes while the run is going

    @dg.asset(deps=[first_step])
    def second_step(program: ProgramResource) -> None:
        seen.append(program.load().candidate_ttl_days)

    defs = dg.Definitions(assets=[first_step, second_step], resources={"program": ProgramResource(path=str(path))})
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process().success
    assert seen == [14, 14]
    assert ProgramResource(path=str(path)).load().candidate_ttl_days == 15  # outside a run: the file as it is
    assert job.execute_in_process().success
    assert seen[2:] == [15, 15]  # the next run reads the edit (and keeps it through its own edit)
