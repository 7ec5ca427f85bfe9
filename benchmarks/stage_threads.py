"""Where a stage's client CPU goes, thread by thread (issue 20): benchmarks/client_cpu.py (c), each stage of one run
against benchmarks/_latency_server.py at 50 ms latency and 64 in flight, with each thread's CPU over the whole stage
(pthread CPU clocks; a thread that ends, as a stage's reply reader does, counts at its end) and the CPU spent in a
few calls of the reply path, timed on the thread that makes them (time.thread_time around the call).

Side by side in one run, this tree and --base alternating, each measurement in a fresh process with a fresh server:

    nice -n -10 python benchmarks/stage_threads.py --base d42d301 --repeat 2
    nice -n -10 python benchmarks/stage_threads.py --base main --repeat 2 --writer   # and a third arm, below

Where a request's first try runs on the event loop (pipeline/teachers/fastpath.py), the replies of one turn of the
loop are committed there together (`LoopStream.flush`): `loop commit` is its CPU, `loop commit wall` the time the
loop stood still in it, `replies/commit` how many replies a commit took. `--writer` adds an arm of this tree with
those commits handed to one writer thread instead (the stream is given a reply once that thread has committed it),
patched in by this script only, to weigh the two.

Threads: `teacher_N` the teacher's request threads (cache lookup, the hand-over to the HTTP loop, the reply's commit),
`teacher-http` the HTTP event loop (aiohttp), `MainThread` the stream (refilling the slots; evolve reads its replies
here), `reply-reader` a per-task stage's reader (parsing, records). Timing the calls costs a little CPU of its own.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import client_cpu  # noqa: E402  (benchmarks/ is not a package)

STAGES = ("bootstrap", "classify", "instances", "evolve", "score")
# (module, class or None, attribute, label): calls of the reply path whose CPU is summed per stage, where the tree
# has them (the base may lack some)
CALLS = (("pipeline.cache", "ResponseCache", "get", "cache lookup"),
         ("pipeline.cache", "ResponseCache", "get_alone", "cache lookup"),  # the event loop's, where the tree has it
         ("pipeline.cache", "ResponseCache", "record", "cache commit"),
         ("pipeline.teachers.base", "BaseTeacher", "cache_key", "cache key"),
         ("pipeline.teachers.retries", "Retries", "call", "HTTP hand-over"),
         ("pipeline.store", "JsonlWriter", "write", "record write"),
         ("pipeline.teachers.fastpath", "LoopStream", "flush", "loop commit"))
WALL = {"loop commit"}  # of these, the wall time is kept too: how long the event loop stood still in the call


def writer_thread_commits() -> None:
    """The `--writer` arm: LoopStream.flush hands its replies to one writer thread, which commits them (all those
    waiting, in one transaction) and only then gives them to the stream; the loop goes on at once."""
    import queue

    from pipeline.teachers import fastpath

    handed: queue.SimpleQueue = queue.SimpleQueue()

    def write() -> None:
        while True:
            batch = handed.get()
            while not handed.empty():
                batch += handed.get()
            stream = batch[0][0]
            try:
                stream.teacher.cache.record_many([row for _, _, _, row in batch])
            except Exception as e:  # noqa: BLE001 (the stream raises it)
                for s, req, _, _ in batch:
                    s.finished.put((req, e))
                continue
            for s, req, c, _ in batch:
                s.finished.put((req, c))

    threading.Thread(target=write, daemon=True, name="cache-writer").start()

    def flush(self) -> None:
        batch, self.settled = self.settled, []
        handed.put([(self, req, c, row) for req, c, row in batch])

    fastpath.LoopStream.flush = flush


def group(name: str) -> str:
    return re.sub(r"_\d+$", "_N", name)


def child(args: argparse.Namespace) -> dict:
    """One run of client_cpu.stages() in this process, with thread CPU and the calls' CPU per stage."""
    import importlib

    ended: collections.Counter = collections.Counter()  # CPU of threads that ended, by group
    run = threading.Thread.run

    def counted_run(self):
        try:
            run(self)
        finally:
            ended[group(self.name)] += time.thread_time()

    threading.Thread.run = counted_run

    def snapshot() -> collections.Counter:
        out = collections.Counter(ended)
        for t in threading.enumerate():
            try:
                out[group(t.name)] += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except (OSError, TypeError):
                pass
        return out

    stage = [""]
    spent: collections.Counter = collections.Counter()
    lock = threading.Lock()
    def timing(f, label: str):
        def timed(*a, **k):
            t, w = time.thread_time(), time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                with lock:
                    spent[(stage[0], label)] += time.thread_time() - t
                    if label in WALL:
                        spent[(stage[0], label + " wall")] += time.perf_counter() - w
                        spent[(stage[0], label + " calls")] += 1
        return timed

    if args.child == "writer":
        writer_thread_commits()
    for module, cls, attr, label in CALLS:
        try:
            owner = getattr(importlib.import_module(module), cls)
        except ImportError:  # a tree without this module (the base, before fastpath.py)
            continue
        if attr in vars(owner):
            setattr(owner, attr, timing(vars(owner)[attr], label))

    threads: dict[str, dict[str, float]] = {}
    measure = client_cpu.measure

    def by_stage(fn):
        stage[0] = fn.__defaults__[0] if fn.__defaults__ else ""
        before = snapshot()
        out = measure(fn)
        after = snapshot()
        threads[stage[0]] = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0.001}
        return out

    client_cpu.measure = by_stage
    rows = client_cpu.stages(args)
    return {s: {**rows[s], "threads": threads.get(s, {}),
                "calls": {label: v for (st, label), v in spent.items() if st == s}} for s in STAGES if s in rows}


def main() -> None:
    ap = client_cpu.side_by_side_parser(__doc__, "d42d301", server=True)
    ap.add_argument("--repeat", type=int, default=1, help="this tree and the base, this many times each")
    ap.add_argument("--requests", type=int, default=4000, help="as client_cpu.py: the run makes requests // 2 tasks")
    ap.add_argument("--writer", action="store_true",
                    help="add an arm of this tree whose loop commits go to one writer thread (see above)")
    ap.add_argument("--stages", default="", help="comma-separated stages to run (bootstrap first, as a run "
                    "needs): all by default")
    ap.add_argument("--bootstrap", type=int, default=0,
                    help="instructions to bootstrap (default requests // 2): 8000 runs it past the manifest's first "
                         "refresh, 2 s in, where a short run never gets")
    args = ap.parse_args()
    args.pool = 0
    args.stages = tuple(s for s in args.stages.split(",") if s)
    if client_cpu.answered_child(args, child):
        return
    print(client_cpu.header(args.base, f"64 in flight, 50 ms latency; stages {','.join(args.stages) or 'all'}, "
                                       f"bootstrap to {args.bootstrap or max(64, args.requests // 2)}"))
    base_tree, out = client_cpu.extract(args.base), Path(tempfile.mkdtemp()) / "r.json"
    runs = []
    for i in range(args.repeat):
        arms = [("this", client_cpu.REPO, "stages"), (f"base {args.base}", base_tree, "stages")]
        if args.writer:
            arms.insert(1, ("this, writer thread", client_cpu.REPO, "writer"))
        for label, tree, how in arms:
            server, url = client_cpu.start_server("self-instruct")
            try:
                rows = client_cpu.run_child(__file__, tree, out, how, "--url", url, "--requests", str(args.requests),
                                            "--server-pid", str(server.pid), "--stages", ",".join(args.stages),
                                            "--bootstrap", str(args.bootstrap), env=client_cpu.SERVER_ENV)
            finally:
                server.kill()
                server.wait()
            runs.append((label + (f" #{i + 1}" if args.repeat > 1 else ""), rows, os.getloadavg()[0]))
    kinds = ("teacher_N", "teacher-http", "MainThread", "reply-reader")
    labels = list(dict.fromkeys(label for _, _, _, label in CALLS)) + [label + " wall" for label in sorted(WALL)]
    print("\nms of CPU per request over the whole stage, by thread and in the reply path's calls; of ideal and client "
          "CPU from the first reply to the last, as client_cpu.py (c)\n")
    print(f"| stage | tree | of ideal | client CPU ms/request | {' | '.join(kinds)} | other threads | "
          f"{' | '.join(labels)} | load avg (1 min) |")
    print("|---|---|" + "---:|" * (4 + len(kinds) + len(labels)))
    per_commit = {}
    for stage in STAGES:
        for label, rows, load in runs:
            r = rows.get(stage)
            if not r or not r["requests"]:
                continue
            n = r["stage_requests"] or r["requests"]
            th = r["threads"]
            other = sum(v for k, v in th.items() if k not in kinds)
            cells = [f"{1000 * th.get(k, 0.0) / n:.3f}" for k in kinds]
            calls = [f"{1000 * r['calls'][c] / n:.3f}" if c in r["calls"] else "-" for c in labels]
            commits = r["calls"].get("loop commit calls")
            if commits:
                per_commit[(stage, label)] = (r["stage_requests"] or r["requests"]) / commits
            print(f"| {stage} | {label} | {r['requests'] / r['wall_s'] / client_cpu.IDEAL:.2f} "
                  f"| {1000 * r['cpu_s'] / r['requests']:.2f} | {' | '.join(cells)} | {1000 * other / n:.3f} "
                  f"| {' | '.join(calls)} | {load:.1f} |", flush=True)
    if per_commit:
        print("\nreplies per loop commit (requests of the stage / LoopStream.flush calls): " + ", ".join(
            f"{stage} {label} {v:.1f}" for (stage, label), v in per_commit.items()))
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
