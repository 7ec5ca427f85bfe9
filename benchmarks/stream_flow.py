"""Tasks flowing on as they are kept, against the stages one after another, side by side in one invocation.

A Self-Instruct run (bootstrap to --n instructions from the real seeds in seeds/, classify,
instances, filter) against benchmarks/_latency_server.py --replies self-instruct: a fixed
latency per request, --capacity slots, every request's start and end logged on the server's
side. The run is the Python API's (pipeline.Run), as `seed2lora run` runs it:
- flowing: `run.run(stages)`, where a task bootstrap keeps goes on to classify and instances
  at once, through one teacher stream (pipeline/stages/flow.py);
- one after another: `run.run([stage])` for each stage in turn, in the same process, as the
  stage commands run them (each waits for the whole of the one before).
Each gets a fresh server and run folder; they alternate, --repeats times each.

Fraction of the ideal = busy slot-seconds / (C x span), from the server's log: C = the
teacher's concurrency, span = from the first stage request's start to the last one's end
(start-up excluded: imports, seed loading and the teacher's probes come before it). 1.0 means
all C slots the client may use busy from its first call to its last. Also the same from the first
reply on: until then only bootstrap's first prompts can be out, whatever the order (29 of 64 here:
the pool's target over the 7 places a prompt's list has left), which caps the whole-span fraction
near 0.85 at n=200, C=64 with a fixed latency even with no client time at all. Also: wall time of the
run call, calls by kind, client CPU ms per call and the load average (os.getloadavg()).

    python benchmarks/stream_flow.py                      # n=200, C=64, latency 2 s, 2 repeats
    python benchmarks/stream_flow.py --n 100 --repeats 1  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import Run  # noqa: E402

STAGES = ["bootstrap", "classify", "instances", "filter"]


def start_server(capacity: int, latency: float, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_latency_server.py")),
                             "--capacity", str(capacity), "--latency", str(latency), "--dist", "fixed",
                             "--replies", "self-instruct", "--log", str(log)], stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    return proc, f"http://127.0.0.1:{port}/v1"


def server_side(log: Path, concurrency: int) -> dict:
    """Busy slot-seconds over C x span, the stage requests only (probes left out), from the server's log."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    stage_rows = [r for r in rows if r["kind"] in ("bootstrap", "classify", "instances")]
    first, last = min(r["start"] for r in stage_rows), max(r["end"] for r in stage_rows)
    busy = sum(r["end"] - r["start"] for r in stage_rows)
    queued = sum(r["start"] - r["arrive"] for r in stage_rows)  # > 0: the server's slots, not the client, limited
    # Slots busy in each second of the span (their mean over it): where the teacher waited.
    profile = [sum(max(0.0, min(r["end"], first + t + 1) - max(r["start"], first + t)) for r in stage_rows)
               for t in range(int(last - first) + 1)]
    # The same from the first reply on: the first round trip can hold only bootstrap's first prompts, in either order.
    reply = min(r["end"] for r in stage_rows)
    busy_after = sum(max(0.0, r["end"] - max(r["start"], reply)) for r in stage_rows)
    return {"calls": dict(Counter(r["kind"] for r in stage_rows)), "span_s": last - first, "busy_slot_s": busy,
            "fraction_of_ideal": busy / (concurrency * (last - first)), "server_queue_s": queued,
            "after_first_reply": busy_after / (concurrency * (last - reply)),
            "busy_per_second": [round(x) for x in profile]}


def one_run(mode: str, args: argparse.Namespace, tmp: Path, name: str) -> dict:
    log = tmp / f"{name}.log"
    proc, url = start_server(args.capacity, args.latency, log)
    settings = {"bootstrap.num_instructions": args.n, "teacher.concurrency": args.concurrency,
                "teacher.base_url": url, "teacher.api": "chat", "teacher.structured": "off",
                "teacher.timeout_s": 60.0, "stages": STAGES}
    load_before = os.getloadavg()[0]
    try:
        with Run(settings=settings, teacher="openai:bench", name=name, output_dir=tmp, progress=False) as run:
            wall, cpu = time.perf_counter(), time.process_time()
            if mode == "flowing":
                run.run(STAGES)
            else:
                for stage in STAGES:
                    run.run([stage])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            counts = {s: len(run.records(s)) for s in STAGES}
    finally:
        proc.terminate()
        proc.wait()
    out = server_side(log, args.concurrency)
    calls = sum(out["calls"].values())
    return {"mode": mode, **out, "wall_s": wall, "cpu_ms_per_call": 1000 * cpu / calls, "records": counts,
            "load_avg": (load_before, os.getloadavg()[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="instructions bootstrap keeps (bootstrap.num_instructions)")
    ap.add_argument("--concurrency", type=int, default=64, help="requests the teacher keeps in flight (C)")
    ap.add_argument("--capacity", type=int, default=64, help="the server's slots (at least C: the client limits)")
    ap.add_argument("--latency", type=float, default=2.0, help="seconds per request, fixed")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one_run("flowing", argparse.Namespace(**{**vars(args), "n": 8}), Path(tmp), "warm-up")  # kernels compiled
        for i in range(args.repeats):
            for mode in ("flowing", "one-after-another") if i % 2 == 0 else ("one-after-another", "flowing"):
                rows.append(one_run(mode, args, Path(tmp), f"{mode}-{i}"))
                r = rows[-1]
                print(f"{mode:18} fraction {r['fraction_of_ideal']:.3f} ({r['after_first_reply']:.3f} after the first "
                      f"reply)  span {r['span_s']:6.2f} s  "
                      f"wall {r['wall_s']:6.2f} s  calls {r['calls']}  client CPU {r['cpu_ms_per_call']:.2f} ms/call  "
                      f"server queue {r['server_queue_s']:.1f} s  load {r['load_avg'][0]:.2f}-{r['load_avg'][1]:.2f}  "
                      f"records {r['records']}\n{'':18} slots busy, second by second: {r['busy_per_second']}", flush=True)
    print(f"\nn={args.n}, C={args.concurrency}, capacity {args.capacity}, fixed latency {args.latency} s; "
          "fraction = busy slot-seconds / (C x span), span from the first stage request's start to the last's end")
    print("| mode | fraction of the ideal | after the first reply | span s | wall s | calls | client CPU ms/call "
          "| load average |")
    print("|---|---:|---:|---:|---:|---|---:|---|")
    for r in rows:
        calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items())
        print(f"| {r['mode']} | {r['fraction_of_ideal']:.3f} | {r['after_first_reply']:.3f} | {r['span_s']:.2f} | {r['wall_s']:.2f} | {calls} | "
              f"{r['cpu_ms_per_call']:.2f} | {r['load_avg'][0]:.2f}-{r['load_avg'][1]:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
