"""Helpers shared by the CLI tests."""

import functools
import importlib.util
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


@functools.cache
def llama_cpp_unusable() -> str | None:
    """Why the llama.cpp checks cannot run here (scripts/llama_cpp_check.py: not installed, or a build that dies
    with SIGILL on this CPU), or None. Probed once a test process, in a process of its own: a wheel built for
    another CPU would otherwise end the whole test run at its first call."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "llama_cpp_check.py"
    spec = importlib.util.spec_from_file_location("llama_cpp_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    why = check.unusable()
    return None if why is None else f"{why}: the llama.cpp checks did not run"


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


def counts_row(run, stage):
    """The cells of `stage`'s row in show's Counts table: records, last session's generated, kept, rejected, pending."""
    for line in invoke("show", run, "--sample", 0).output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃|").split("│")]
        if cells and cells[0] == stage:
            return cells[1:]
    raise AssertionError(f"no {stage} row")


def left_in_files(run: Path, target: int) -> dict[str, int]:
    """What each flowing stage has still to do, counted here from the files: bootstrap's instructions short of the
    target; classify's and instances' input tasks with neither a record nor a rejection by the stage (instances'
    input: bootstrap's tasks but for classify's rejections, since those classify has still to do come next)."""
    rejected = read(run / "rejected.jsonl") if (run / "rejected.jsonl").exists() else []

    def ids(stage):
        return {t["id"] for t in read(run / f"{stage}.jsonl")} if (run / f"{stage}.jsonl").exists() else set()

    def done(stage):
        return ids(stage) | {t["id"] for t in rejected if t["stage"] == stage}

    classify_dropped = {t["id"] for t in rejected if t["stage"] == "classify"}
    return {"bootstrap": target - len(ids("bootstrap")), "classify": len(ids("bootstrap") - done("classify")),
            "instances": len(ids("bootstrap") - classify_dropped - done("instances"))}  # classify's to go come next


def pending_words(left: dict[str, int], target: int) -> str:
    parts = [f"bootstrap {left['bootstrap']} of {target} instructions to go"] if left["bootstrap"] else []
    parts += [f"{s} {left[s]} task{'s' if left[s] != 1 else ''}" for s in ("classify", "instances") if left[s]]
    return "pending: " + ", ".join(parts)


def filtered_file_run(tmp_path: Path, asks: list[str], name: str = "my_data.jsonl") -> tuple[Path, object]:
    """`seed2lora filter --input FILE` (no teacher) on Alpaca-style rows of these instructions: (the run, the result)."""
    rows = tmp_path / name
    rows.write_text("".join(json.dumps({"instruction": a, "input": "", "output": f"Answer {n}"}) + "\n"
                            for n, a in enumerate(asks)))
    result = CliRunner().invoke(cli, ["filter", "--input", str(rows), "--output-dir", str(tmp_path / "out"),
                                      "--run-name", "r"])
    assert result.exit_code == 0, result.output
    return tmp_path / "out" / "r", result
