"""README and --help stay true to the code."""

import dataclasses
import re
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.runner import section_classes
from stages import STAGE_NAMES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_config_key():
    for section, cls in section_classes().items():
        configuration = README.split("## Configuration")[1]
        row = next(line for line in configuration.splitlines() if line.startswith(f"| `{section}` |"))
        documented = set(re.findall(r"`(\w+)`", row))
        inherited = (
            {f.name for f in dataclasses.fields(section_classes()["teacher"])} if "same keys as" in row else set()
        )
        missing = {f.name for f in dataclasses.fields(cls)} - documented - inherited
        assert not missing, f"README does not document {section}.{sorted(missing)}"


def test_readme_shows_the_two_commands_and_every_stage_target():
    assert "make all" in README and "make test" in README
    for name in STAGE_NAMES:
        assert f"`make {name}`" in README


def test_every_command_has_help():
    for command in ("run", "stage", "status", "report", "clean"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and len(result.output.splitlines()) > 3
