"""An Alpaca-scale Self-Instruct run, end to end, against a fast fake teacher.

`seed2lora run` (the real CLI and runner, in its own process) grows --target instructions through bootstrap,
classify, instances and filter against benchmarks/_latency_server.py --replies self-instruct (its own process:
--latency seconds a request, --concurrency slots; bootstrap replies are new synthetic instructions, about 15%
near-duplicates of earlier ones, so the ROUGE-L filter works as on real data). One process, no resume.

Measured: wall time; the client's CPU time (user + system, from wait4) per kept instruction and per request;
the client's peak RSS (wait4's ru_maxrss); the run directory's size; and whether time per instruction stays flat
as the pool grows: each stage file is sampled as it grows, and the rate (records a second) of its last quarter is
divided by that of its first quarter (1.0 = flat; under 1 = slower late), once by the wall clock and once by the
client's CPU clock (/proc/PID/stat): records per CPU second do not move with the machine's load as the wall rate
does. Bootstrap's is the pool's; a file written whole at its stage's end (filter.jsonl) has none.

    PYTHONPATH=. python3 benchmarks/alpaca_scale.py --target 3000      # a check, minutes
    PYTHONPATH=. python3 benchmarks/alpaca_scale.py                    # 52,000: Alpaca's size
    PYTHONPATH=. python3 benchmarks/alpaca_scale.py --apart            # each stage alone: its own quarter ratio
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.cache import CACHE_FILE, ResponseCache  # noqa: E402

STAGES = ("bootstrap", "classify", "instances", "filter")


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_latency_server.py")), "--capacity",
                             str(args.concurrency), "--latency", str(args.latency), "--replies", "self-instruct"],
                            stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    if not port:
        raise SystemExit(f"the fake teacher did not start (exit {proc.wait()})")
    return proc, f"http://127.0.0.1:{port}/v1"


class Growth(threading.Thread):
    """Samples (seconds since start, lines) of each stage file every `every` seconds, reading only new bytes."""

    def __init__(self, run: Path, every: float):
        super().__init__(daemon=True)
        self.run_dir, self.every, self.start_t = run, every, time.perf_counter()
        self.samples: dict[str, list[tuple[float, int]]] = {s: [] for s in STAGES}  # (seconds, lines)
        self.cpu_samples: dict[str, list[tuple[float, int]]] = {s: [] for s in STAGES}  # (client CPU seconds, lines)
        self.pid = 0  # the client, whose CPU time /proc gives while it runs
        self.base = 0.0  # CPU seconds of the clients that ran before it (--apart: one a stage)
        self.cpu = 0.0  # all their CPU seconds at the last look (set from wait4 once the last has ended)
        self._seen = {s: (0, 0) for s in self.samples}  # bytes read, lines counted
        self.stop = threading.Event()

    def client_cpu(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.cpu = self.base + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):
            pass  # ended: the last reading (or wait4's) stands
        return self.cpu

    def sample(self) -> None:
        now, cpu = time.perf_counter() - self.start_t, self.client_cpu()
        for stage, (offset, lines) in self._seen.items():
            path = self.run_dir / f"{stage}.jsonl"
            if path.is_file():
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                chunk = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written counts next time
                offset, lines = offset + len(chunk), lines + chunk.count(b"\n")
                self._seen[stage] = (offset, lines)
            self.samples[stage].append((now, lines))
            self.cpu_samples[stage].append((cpu, lines))

    def run(self) -> None:  # noqa: D102 (threading.Thread's)
        while not self.stop.wait(self.every):
            self.sample()


GROWTH_STEPS = 8  # a file seen growing in fewer looks than this was written whole (filter's is): no rate to compare


def quarter_ratio(samples: list[tuple[float, int]]) -> float | None:
    """Rate of the last quarter of the lines over the rate of the first quarter, from (clock, lines) samples (the
    clock: wall seconds, or the client's CPU seconds); None for a file written whole or nearly so."""
    steps = sum(1 for (_, a), (_, b) in zip(samples, samples[1:], strict=False) if b > a)
    if not samples or samples[-1][1] < GROWTH_STEPS or steps < GROWTH_STEPS:
        return None
    n = samples[-1][1]

    def when(k: float) -> float:  # the time the file reached k lines, interpolated between samples
        for (t0, n0), (t1, n1) in zip(samples, samples[1:], strict=False):
            if n0 < k <= n1:
                return t0 + (t1 - t0) * (k - n0) / (n1 - n0)
        return samples[0][0]

    first = when(1 + n / 4) - when(1)  # from the first line on: the run's start-up is not the pool's
    last = when(n) - when(3 * n / 4)
    return (first / last) if first > 0 and last > 0 else None


class Usage:
    """The clients' resource use, summed over the processes (--apart: one a stage); peak RSS the largest."""

    def __init__(self):
        self.ru_utime = self.ru_stime = 0.0
        self.ru_maxrss = 0

    def add(self, u: Any) -> None:
        self.ru_utime += u.ru_utime
        self.ru_stime += u.ru_stime
        self.ru_maxrss = max(self.ru_maxrss, u.ru_maxrss)


def client_run(cmd: list[str], env: dict[str, str], log: Path, growth: Growth) -> Any:
    """One `seed2lora run` to its end, its CPU time watched by `growth`; its resource use (wait4's)."""
    with log.open("ab") as sink:
        client = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        growth.pid = client.pid
        _, status, usage = os.wait4(client.pid, 0)
    growth.pid, growth.base = 0, growth.base + usage.ru_utime + usage.ru_stime
    growth.cpu = growth.base
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"seed2lora run failed (exit {os.waitstatus_to_exitcode(status)}):\n"
                         + log.read_text(errors="replace")[-3000:])
    return usage


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=int, default=52_000, help="instructions to grow (default 52,000, Alpaca's size)")
    ap.add_argument("--latency", type=float, default=0.05, help="the fake teacher's seconds per request (0.05)")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight, and the teacher's slots (64)")
    ap.add_argument("--sample-s", type=float, default=0.5, help="seconds between two looks at the stage files")
    ap.add_argument("--keep", default="", help="keep the run directory here (default: a temporary one, removed)")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    ap.add_argument("--apart", action="store_true",
                    help="run the stages one after another, a `seed2lora run` each, instead of flowing as one: each "
                         "stage's quarter ratio is then its own, not mixed with the stages running beside it")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="alpaca_scale_"))
    out_dir = Path(args.keep) if args.keep else tmp
    run = out_dir / "alpaca_scale"
    if run.exists():
        raise SystemExit(f"{run} exists: this benchmark runs once, from nothing. Fix: remove it or give another --keep")
    server, url = start_server(args)
    load_before = os.getloadavg()
    cmd = [sys.executable, "-m", "pipeline", "run", "--teacher", "openai:bench", "--base-url", url,
           "--num-instructions", str(args.target), "--output-dir", str(out_dir), "--run-name", "alpaca_scale",
           "--set", f"teacher.concurrency={args.concurrency}", "--set", "teacher.api=chat",
           "--set", "teacher.structured=off", "--set", "teacher.max_retries=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-bench", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("OPENAI_BASE_URL", None)
    log = tmp / "client.log"
    growth = Growth(run, args.sample_s)
    try:
        start = time.perf_counter()
        growth.start()
        usage = Usage()
        for stages in ([[s] for s in STAGES] if args.apart else [list(STAGES)]):
            usage.add(client_run([*cmd, "--set", f"stages={json.dumps(stages)}"], env, log, growth))
        wall = time.perf_counter() - start
        growth.stop.set()
        growth.join()
        growth.pid, growth.cpu = 0, usage.ru_utime + usage.ru_stime
        growth.sample()
        figures = measure(args, run, wall, usage, growth, load_before)
    finally:
        server.terminate()
        server.wait()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


def measure(args: argparse.Namespace, run: Path, wall: float, usage: Any, growth: Growth,
            load_before: tuple[float, float, float]) -> dict[str, Any]:
    counts = {s: sum(1 for line in (run / f"{s}.jsonl").open("rb") if line.strip()) for s in STAGES}
    db = ResponseCache(run / CACHE_FILE)
    calls = {kind: u["calls"] for kind, u in db.usage().items()}
    db.close()
    kept, requests = counts["filter"], sum(calls.values())
    cpu = usage.ru_utime + usage.ru_stime
    return {"target": args.target, "latency_s": args.latency, "concurrency": args.concurrency, "kept": kept,
            "mode": "stages one after another (--apart)" if args.apart else "flowing (one `seed2lora run`)",
            "records": counts, "requests": calls, "wall_s": round(wall, 1), "client_cpu_s": round(cpu, 1),
            "cpu_ms_per_kept": round(1000 * cpu / max(1, kept), 2),
            "cpu_ms_per_request": round(1000 * cpu / max(1, requests), 2),
            "ideal_s": round(requests * args.latency / args.concurrency, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports kilobytes
            "run_dir_mb": round(size_mb(run), 1),
            "last_over_first_quarter": {s: quarter_ratio(v) for s, v in growth.samples.items()},
            "last_over_first_quarter_cpu": {s: quarter_ratio(v) for s, v in growth.cpu_samples.items()},
            "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
            "cpus": os.cpu_count()}


def print_table(f: dict[str, Any]) -> None:
    ratio = {s: ("written whole" if r is None else f"{r:.2f}") for s, r in f["last_over_first_quarter"].items()}
    cpu_ratio = {s: ("written whole" if r is None else f"{r:.2f}")
                 for s, r in f["last_over_first_quarter_cpu"].items()}
    rows = [
        ("target instructions", f"{f['target']:,}"),
        ("stages", f["mode"]),
        ("kept (filter.jsonl)", f"{f['kept']:,}  (bootstrap {f['records']['bootstrap']:,}, "
                                f"instances {f['records']['instances']:,})"),
        ("teacher requests", f"{sum(f['requests'].values()):,}  ("
                             + ", ".join(f"{k} {v:,}" for k, v in f["requests"].items()) + ")"),
        ("fake teacher", f"{f['latency_s'] * 1000:.0f} ms a request, {f['concurrency']} in flight"),
        ("wall time", f"{f['wall_s']:,.1f} s  (concurrency-bound ideal {f['ideal_s']:,.1f} s)"),
        ("client CPU", f"{f['client_cpu_s']:,.1f} s: {f['cpu_ms_per_kept']:.2f} ms per kept instruction, "
                       f"{f['cpu_ms_per_request']:.2f} ms per request"),
        ("client peak RSS", f"{f['peak_rss_mb']:,.0f} MB"),
        ("run directory", f"{f['run_dir_mb']:,.1f} MB"),
        ("last/first quarter rate", ", ".join(f"{k} {v}" for k, v in ratio.items()) + "  (wall clock; 1.00 = flat)"),
        ("  the same in client CPU", ", ".join(f"{k} {v}" for k, v in cpu_ratio.items())
         + "  (records per CPU second: load-independent)"),
        ("load average", f"{f['load_average']['before']} before, {f['load_average']['after']} after "
                         f"({f['cpus']} CPUs)"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"Alpaca-scale Self-Instruct run through `seed2lora run` ({', '.join(STAGES)})")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    main()
