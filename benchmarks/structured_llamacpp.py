"""Structured replies against a real llama.cpp server: JSON schema on chat, text on chat, text on completions.

Starts llama-cpp-python's OpenAI-compatible server on the embedded SmolLM2-135M-Instruct GGUF
(OMP_WAIT_POLICY=PASSIVE: spin-waiting threads made one check 16x slower under load), then
runs the same Self-Instruct run (bootstrap, classify, instances, filter) once per mode:

- completions: `--api completions`, the paper's list continuations (what `--api auto` picks here);
- chat: `--api chat`, the prompts as a user turn, replies read by the text parsers;
- structured: `--api chat --set teacher.structured=on`, each reply bound to the stage's JSON schema.

Prints, per mode and measured from the run's own files: bootstrap instructions kept per prompt,
the share of replies that were unparseable per stage, instances per task, rows after the
filter, and wall time. Each mode's run folder is kept under --work-dir, so a re-run resumes.

    python benchmarks/structured_llamacpp.py --num-instructions 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "completions": ["--api", "completions", "--set", "teacher.structured=off"],
    "chat": ["--api", "chat", "--set", "teacher.structured=off"],
    "structured": ["--api", "chat", "--set", "teacher.structured=on"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
                             "--n_threads", str(threads), "--n_ctx", "4096", "--model_alias", "smollm2"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama.cpp server exited with {proc.returncode}; see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"llama.cpp server did not answer in 300 s; see {log}")


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def measure(run: Path, wall: float, rc: int) -> dict:
    manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}
    rejected = read(run / "rejected.jsonl")
    usage = manifest.get("usage", {})

    def unparseable(stage: str) -> int:
        return sum(1 for r in rejected if r["stage"] == stage and r["reject_reason"].startswith("unparseable"))

    calls = {k: usage.get(k, {}).get("calls", 0) for k in ("bootstrap", "classify", "instances")}
    kept = len(read(run / "bootstrap.jsonl"))
    instances = read(run / "instances.jsonl")
    return {
        "exit": rc, "wall_s": round(wall), "teacher": manifest.get("teacher", {}).get("structured_choice"),
        "bootstrap_prompts": calls["bootstrap"], "kept": kept,
        "kept_per_prompt": round(kept / calls["bootstrap"], 2) if calls["bootstrap"] else None,
        "bootstrap_unparseable": unparseable("bootstrap"),
        "classify_calls": calls["classify"],
        "classify_yes": sum(1 for t in read(run / "classify.jsonl") if t.get("is_classification")),
        "instances_calls": calls["instances"], "instances_unparseable_tasks": unparseable("instances"),
        "instances_per_task": round(sum(len(t["instances"]) for t in instances) / len(instances), 2) if instances else 0,
        "filter_rows": sum(len(t["instances"]) for t in read(run / "filter.jsonl")),
    }


def classify_agreement(port: int, work: Path, mode: str) -> dict:
    """Classify the bundled seed tasks (their labels removed) in one mode; agreement with the human labels."""
    seeds = [json.loads(x) for x in (ROOT / "seeds" / "seed_tasks.jsonl").read_text().splitlines() if x.strip()]
    unlabelled = work / "seeds_unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({**t, "is_classification": None}) + "\n" for t in seeds))
    name = f"classify-{mode}"
    cmd = [sys.executable, "-m", "pipeline", "classify", str(work / name), "--teacher", "openai:smollm2",
           "--base-url", f"http://127.0.0.1:{port}/v1", "--input", str(unlabelled), *MODES[mode],
           "--set", "teacher.concurrency=1", "--set", "teacher.timeout_s=600"]
    rc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": ""}).returncode
    truth = {t["id"]: bool(t["is_classification"]) for t in seeds}
    got = {t["id"]: bool(t["is_classification"]) for t in read(work / name / "classify.jsonl")}
    both = [i for i in got if i in truth]
    return {"exit": rc, "tasks": len(both), "agree": round(sum(got[i] == truth[i] for i in both) / len(both), 3),
            "said_yes": sum(got[i] for i in both), "labelled_yes": sum(truth[i] for i in both)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-instructions", type=int, default=10)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/s2l-structured"))
    ap.add_argument("--gguf", type=Path, default=None, help="default: the embedded SmolLM2-135M-Instruct Q4_1 file")
    ap.add_argument("--classify-seeds", action="store_true",
                    help="also classify the 175 seed tasks in each chat mode: agreement with their human labels")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline.teachers.embedded import gguf_path

    gguf = args.gguf or gguf_path()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(gguf, port, args.threads, args.work_dir / "server.log")
    results = {}
    try:
        for mode in args.modes.split(","):
            cmd = [sys.executable, "-m", "pipeline", "run", "--teacher", "openai:smollm2", "--base-url",
                   f"http://127.0.0.1:{port}/v1", "--output-dir", str(args.work_dir), "--run-name", mode,
                   "--num-instructions", str(args.num_instructions), *MODES[mode],
                   # llama-cpp-python's server answers one request at a time
                   "--set", "teacher.concurrency=1", "--set", "teacher.timeout_s=600",
                   "--set", f"bootstrap.max_requests={6 * args.num_instructions}"]
            started = time.monotonic()
            rc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": ""}).returncode
            results[mode] = measure(args.work_dir / mode, time.monotonic() - started, rc)
            print(json.dumps({mode: results[mode]}), flush=True)
        if args.classify_seeds:
            for mode in ("chat", "structured"):
                print(json.dumps({f"classify seeds, {mode}": classify_agreement(port, args.work_dir, mode)}), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=1))
    keys = list(next(iter(results.values())))
    print("| mode | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for mode, r in results.items():
        print(f"| {mode} | " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
