"""Tasks flowing on as they are kept, against the stages one after another, side by side in one invocation.

A Self-Instruct run (bootstrap to --instructions from the real seeds in seeds/, classify,
instances, filter) against benchmarks/_latency_server.py --replies self-instruct: a fixed
latency per request, --capacity slots, every request's start and end logged on the server's
side. The run is the Python API's (pipeline.Run), as `seed2lora run` runs it:
- flowing: `run.run(stages)`, where a task bootstrap keeps goes on to classify and instances
  at once, through one teacher stream (pipeline/stages/flow.py);
- one after another: `run.run([stage])` for each stage in turn, in the same process, as the
  stage commands run them (each waits for the whole of the one before).
Each gets a fresh server and run folder; they alternate, --repeats times each.

Several run sizes can be measured in one invocation (--instructions 200 1000): each repeat runs every
size, both modes, the order of the modes alternating from one repeat to the next.

Fraction of the ideal = busy slot-seconds / (C x span), from the server's log: C = the
teacher's concurrency, span = from the first stage request's start to the last one's end
(start-up excluded: imports, seed loading and the teacher's probes come before it). 1.0 means
all C slots the client may use busy from its first call to its last. Also the same from the first
reply on: until then only bootstrap's first prompts can be out, whatever the order (29 of 64 at
n=200: the pool's target over the 7 places a prompt's list has left; bootstrap sends no more until it
sees its yield, so that it does not pay for lines past the target).

Bound: the most any order of the same calls could reach, computed from each run's own log. Of its N stage
calls, w (the first wave) started before the first reply came; the other N - w start after it, at most C at a
time, so some slot carries ceil((N - w) / C) of them one after another, each lasting at least d (the shortest
call seen). The span is then at least d x (1 + ceil((N - w) / C)) and the fraction at most busy / (C x that);
from the first reply on, at most busy after it / (C x d x ceil((N - w) / C)). At n=200, C=64, 2 s: w = 29,
N = 434, 7 rounds after the first, 0.848. The bound counts slots only, not the chain each task goes
through (bootstrap, classify, instances, one after another), so for a run of a few rounds it is loose. Also: wall time of the run call, calls by kind, client CPU ms per
call and the load average (os.getloadavg(), 1-minute, before and after each run).

    python benchmarks/stream_flow.py                              # 200 instructions, C=64, latency 2 s, 2 repeats
    python benchmarks/stream_flow.py --instructions 200 1000      # two run sizes side by side
    python benchmarks/stream_flow.py --instructions 100 --repeats 1  # quicker
"""

from __future__ import annotations

import argparse
import json
import math
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
    """Busy slot-seconds over C x span, the stage requests only (probes left out), from the server's log; the
    same from the first reply on; and the bound on both that the run's first wave and call count set."""
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
    # The bound (module docstring): the first wave, the rounds the rest need at C a round, the shortest call.
    wave = sum(r["start"] < reply for r in stage_rows)
    rounds = math.ceil((len(stage_rows) - wave) / concurrency)
    shortest = min(r["end"] - r["start"] for r in stage_rows)
    return {"calls": dict(Counter(r["kind"] for r in stage_rows)), "span_s": last - first, "busy_slot_s": busy,
            "fraction_of_ideal": busy / (concurrency * (last - first)), "server_queue_s": queued,
            "after_first_reply": busy_after / (concurrency * (last - reply)),
            "first_wave": wave, "rounds_after": rounds, "shortest_call_s": shortest,
            "min_span_s": shortest * (1 + rounds), "bound": busy / (concurrency * shortest * (1 + rounds)),
            "bound_after": busy_after / (concurrency * shortest * rounds) if rounds else 1.0,
            "busy_per_second": [round(x) for x in profile]}


def one_run(mode: str, n: int, args: argparse.Namespace, tmp: Path, name: str) -> dict:
    log = tmp / f"{name}.log"
    proc, url = start_server(args.capacity, args.latency, log)
    settings = {"bootstrap.num_instructions": n, "teacher.concurrency": args.concurrency,
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
    return {"mode": mode, "instructions": n, **out, "wall_s": wall, "cpu_ms_per_call": 1000 * cpu / calls, "records": counts,
            "load_avg": (load_before, os.getloadavg()[0])}


def show(r: dict) -> str:
    return (f"{r['mode']:18} n={r['instructions']:<5} fraction {r['fraction_of_ideal']:.3f} of a bound "
            f"{r['bound']:.3f}, {r['after_first_reply']:.3f} of {r['bound_after']:.3f} after the first reply  "
            f"span {r['span_s']:6.2f} s (at least {r['min_span_s']:.2f})  first wave {r['first_wave']}  "
            f"wall {r['wall_s']:6.2f} s  calls {r['calls']}  client CPU {r['cpu_ms_per_call']:.2f} ms/call  "
            f"server queue {r['server_queue_s']:.1f} s  load {r['load_avg'][0]:.2f}-{r['load_avg'][1]:.2f}  "
            f"records {r['records']}\n{'':18} slots busy, second by second: {r['busy_per_second']}")


def table(rows: list[dict]) -> None:
    print("| instructions | mode | fraction of the ideal | its bound | after the first reply | its bound | first wave "
          "| span s | wall s | calls | client CPU ms/call | load average |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for r in rows:
        calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items())
        print(f"| {r['instructions']} | {r['mode']} | {r['fraction_of_ideal']:.3f} | {r['bound']:.3f} "
              f"| {r['after_first_reply']:.3f} | {r['bound_after']:.3f} | {r['first_wave']} | {r['span_s']:.2f} "
              f"| {r['wall_s']:.2f} | {calls} | {r['cpu_ms_per_call']:.2f} "
              f"| {r['load_avg'][0]:.2f}-{r['load_avg'][1]:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instructions", "--n", dest="instructions", type=int, nargs="+", default=[200],
                    help="run sizes: instructions bootstrap keeps (bootstrap.num_instructions), each measured")
    ap.add_argument("--concurrency", type=int, default=64, help="requests the teacher keeps in flight (C)")
    ap.add_argument("--capacity", type=int, default=64, help="the server's slots (at least C: the client limits)")
    ap.add_argument("--latency", type=float, default=2.0, help="seconds per request, fixed")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one_run("flowing", 8, args, Path(tmp), "warm-up")  # kernels compiled
        for i in range(args.repeats):
            for n in args.instructions:
                for mode in ("flowing", "one-after-another") if i % 2 == 0 else ("one-after-another", "flowing"):
                    rows.append(one_run(mode, n, args, Path(tmp), f"{mode}-{n}-{i}"))
                    print(show(rows[-1]), flush=True)
    print(f"\nC={args.concurrency}, capacity {args.capacity}, fixed latency {args.latency} s; "
          "fraction = busy slot-seconds / (C x span), span from the first stage request's start to the last's end; "
          "bound = busy / (C x d x (1 + ceil((calls - first wave) / C))), d the shortest call")
    table(sorted(rows, key=lambda r: r["instructions"]))  # stable: each size's runs in the order they ran
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
