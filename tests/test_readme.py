"""README.md and docs/ stay true: the config reference is the real default config, the commands exist."""

import re
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import default_toml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
README_LIMIT = 12_000  # characters: the README says what and how; depth lives in docs/
DOCS = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))}


def test_config_reference_is_the_default_config():
    assert "```toml\n" + default_toml() + "```" in DOCS["config.md"], "run: python scripts/update_readme_config.py"


def test_every_documented_command_exists_and_every_command_is_documented():
    documented = set(re.findall(r"`seed2lora (\w[\w-]*)", "\n".join([README, *DOCS.values()])))
    commands = set(cli.commands)
    assert documented - commands == set()
    assert commands - set(re.findall(r"`seed2lora (\w[\w-]*)", README)) == set()  # the README's table lists them all


def test_readme_main_and_test_commands_are_those_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh && python3 -m pytest -q" in README and "bash scripts/setup.sh && python3 -m pytest -q" in ci
    assert "seed2lora run --config configs/quickstart.toml" in README
    assert CliRunner().invoke(cli, ["run", "--help"]).exit_code == 0



def test_readme_is_short():
    assert len(README) <= README_LIMIT, f"README.md has {len(README)} characters; move depth into docs/"
