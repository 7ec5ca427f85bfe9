"""Helpers shared by the CLI tests."""

import json
import os
import signal
import subprocess
import sys
import time
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


def run_and_kill(server, tmp_path, kill_when, *flags):
    """Start `seed2lora run` (run "k" under tmp_path) in a process and kill -9 it once kill_when() is true;
    the command and environment come back, to run it again."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pipeline", "run", "--teacher", "openai:fake-model", "--base-url", server.url,
           "--output-dir", str(tmp_path), "--run-name", "k", *map(str, flags)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not kill_when() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before the kill point: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return cmd, env
