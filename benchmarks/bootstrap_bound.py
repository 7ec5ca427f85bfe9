"""What sets bootstrap's pace against a fast teacher? (issue 20) Bootstrap from the 175 seeds to --instructions,
client_cpu.py's (c) workload (50 ms latency, 64 in flight, ideal 1,280 requests/s, the fake teacher of
_latency_server.py --replies self-instruct), in arms that change one thing each, side by side, each run in a fresh
process against a fake teacher of its own, --repeat rounds alternating the arms:

  shipped       this tree as it is;
  reader        each reply read (parsed, filtered, written) on a second thread, the stream's thread left to
                refill requests (a diagnostic: the pool then lags the replies, so records depend on timing);
  filter-free   the Self-Instruct filter (rules and ROUGE-L against the pool) replaced by "keep": what bootstrap
                would reach if the paper's filter cost nothing (also a diagnostic; it keeps lines the filter
                would reject, so it needs fewer requests).

Every arm is timed the same way, from the start of the first reply's read to the end of the last one's (in the
reader arm the stream ends before its reader does), with the client's CPU over that span and the share of it the
stream's thread (MainThread) spent on CPU; the whole stage (its fixed costs too) beside it.

    nice -n -5 python benchmarks/bootstrap_bound.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import client_cpu  # noqa: E402  (benchmarks/ is not a package)

ARMS = ("shipped", "reader", "filter-free")


def patch(arm: str) -> list:
    """Apply `arm` to this process's pipeline; the list each read's (start, end, CPU at start, CPU at end) goes to."""
    from pipeline.stages import bootstrap, filter

    reads: list = []
    read = bootstrap.Bootstrap.read

    main = time.pthread_getcpuclockid(threading.main_thread().ident)

    def timed(self, req, reply):
        start, cpu, stream = time.perf_counter(), time.process_time(), time.clock_gettime(main)
        try:
            return read(self, req, reply)
        finally:
            reads.append((start, time.perf_counter(), cpu, time.process_time(), stream, time.clock_gettime(main)))

    bootstrap.Bootstrap.read = timed
    if arm == "filter-free":
        filter.InstructionFilter.check = lambda self, task, ignore=(): None
        filter.InstructionFilter.add = lambda self, instruction: None
    if arm == "reader":
        def run_bootstrap(teacher, seeds, cfg, run, prompts, log, *, on_kept=None, on_progress=None, say=None):
            with bootstrap.Bootstrap(teacher, seeds, cfg, run, prompts, log, on_kept=on_kept,
                                     on_progress=on_progress, say=say) as b:
                handed, failed = queue.SimpleQueue(), []

                def reader() -> None:
                    while (item := handed.get()) is not None:
                        try:
                            b.read(*item)
                        except BaseException as e:  # noqa: BLE001 (raised again on the stream's thread)
                            failed.append(e)

                thread = threading.Thread(target=reader, name="bootstrap-reader")
                thread.start()
                try:
                    for req, reply in teacher.stream(b.requests(), b.params, kind="bootstrap"):
                        handed.put((req, reply))
                finally:
                    handed.put(None)
                    thread.join()
                if failed:
                    raise failed[0]
            return b.result()

        bootstrap.run_bootstrap = run_bootstrap
    return reads


def measure_arm(args: argparse.Namespace) -> dict:
    reads = patch(args.child)
    client_cpu.warm_up()
    run_args = argparse.Namespace(url=args.url, requests=4000, pool=0, server_pid=args.server_pid,
                                  stages=["bootstrap"], bootstrap=args.instructions)
    whole = client_cpu.stages(run_args)["bootstrap"]
    first, last = reads[0], max(reads, key=lambda r: r[1])
    return {"replies": len(reads), "span_s": last[1] - first[0], "cpu_s": last[3] - first[2],
            "stream_cpu_s": last[5] - first[4],
            "stage_requests": whole["stage_requests"], "stage_wall_s": whole["stage_wall_s"],
            "stage_cpu_s": whole["stage_cpu_s"], "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the three arms")
    ap.add_argument("--instructions", type=int, default=2000, help="bootstrap.num_instructions")
    ap.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps(measure_arm(args)))
        return
    out = Path(tempfile.mkdtemp()) / "r.json"
    print(f"commit {client_cpu.head()}; bootstrap from the seeds to {args.instructions:,}; {client_cpu.IN_FLIGHT} in "
          f"flight, {client_cpu.LATENCY * 1000:.0f} ms latency, ideal {client_cpu.IDEAL:,.0f} requests/s; "
          f"{os.cpu_count()} cores; load average before: {os.getloadavg()}\n")
    print("| arm | round | requests | of ideal, first read to last | client CPU ms/request, same span "
          "| stream's thread busy | whole stage wall s | whole stage, requests/s | load avg (1 min) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(args.repeat):
        for arm in ARMS:
            server, url = client_cpu.start_server("self-instruct")
            try:
                env = {**os.environ, "PYTHONPATH": str(client_cpu.REPO), "OPENAI_API_KEY": "not-needed"}
                subprocess.run([sys.executable, __file__, "--child", arm, "--url", url, "--out", str(out),
                                "--server-pid", str(server.pid), "--instructions", str(args.instructions)],
                               env=env, check=True, cwd=client_cpu.REPO)
            finally:
                server.kill()
                server.wait()
            r = json.loads(out.read_text())
            rate = (r["replies"] - 1) / r["span_s"]
            print(f"| {arm} | {i + 1} | {r['stage_requests']:,} | {rate / client_cpu.IDEAL:.2f} "
                  f"| {1000 * r['cpu_s'] / max(1, r['replies'] - 1):.2f} | {r['stream_cpu_s'] / r['span_s']:.2f} "
                  f"| {r['stage_wall_s']:.3f} "
                  f"| {r['stage_requests'] / r['stage_wall_s']:,.0f} | {r['load']:.1f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
