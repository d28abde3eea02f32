"""The README documents every command and every params.yaml key (as sqlite-utils checks its
docs), and params.yaml lists every key with the code's default."""

from __future__ import annotations

import dataclasses
import re

import yaml
from click.testing import CliRunner
from helpers import PROJECT_ROOT

from pipeline import params as params_module
from pipeline.cli import COMMANDS, cli

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
SECTIONS = {"convert": params_module.ConvertParams, "split": params_module.SplitParams,
            "train": params_module.TrainParams, "evaluate": params_module.EvaluateParams,
            "gate": params_module.GateParams, "report": params_module.ReportParams}


def parameter_rows() -> dict[str, set[str]]:
    """README's parameter table: the key of each row (`convert.*`, `classes`) -> the names
    in backticks in that row."""
    section = README.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) > 2 and cells[1].strip().startswith("`"):
            rows[cells[1].strip().strip("`")] = set(re.findall(r"`([^`]+)`", line))
    return rows


def test_every_command_is_documented_and_has_help() -> None:
    for name in COMMANDS:
        assert f"segpipe {name}" in README, f"README does not show `segpipe {name}`"
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_every_params_key_is_in_the_readme_table() -> None:
    rows = parameter_rows()
    for key in ("classes", "ignore_labels", "aliases"):
        assert key in rows, f"README's parameter table has no row for `{key}`"
    for section, cls in SECTIONS.items():
        documented = rows.get(f"{section}.*", set())
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
        assert not missing, f"README's `{section}.*` row does not name {missing}"


def test_params_yaml_lists_every_key_with_the_code_default() -> None:
    shipped = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    for section, cls in SECTIONS.items():
        assert set(shipped[section]) == {f.name for f in dataclasses.fields(cls)}, section
    # the shipped values are the defaults, except the sample's own choices
    sample_choices = {("split", "group_pattern"), ("split", "benchmark")}
    for section, cls in SECTIONS.items():
        defaults = cls()
        for field in dataclasses.fields(cls):
            if (section, field.name) in sample_choices:
                continue
            value = shipped[section][field.name]
            value = tuple(value) if isinstance(value, list) else value
            assert value == getattr(defaults, field.name), f"{section}.{field.name}"
