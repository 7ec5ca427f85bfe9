"""Helpers shared by the CLI tests."""

import json
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli


def invoke(*args, expect=0):
    """Run the CLI in-process; assert its exit code."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def teacher_flags(server, tmp_path, name="r"):
    """Flags that point a command at the fake server and a run directory under tmp_path."""
    return ["--teacher", "openai:fake-model", "--base-url", server.url, "--output-dir", tmp_path, "--run-name", name]


def read(path):
    """Every record of a JSONL file (each line must be valid JSON)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
