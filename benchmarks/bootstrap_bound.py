"""What sets bootstrap's pace against a fast teacher? (issue 20) Bootstrap from the 175 seeds to --instructions,
client_cpu.py's (c) workload (50 ms latency, 64 in flight, ideal 1,280 requests/s, the fake teacher of
_latency_server.py --replies self-instruct), in arms that change one thing each, side by side, each run in a fresh
process against a fake teacher of its own, --repeat rounds alternating the arms:

  shipped       this tree as it is (at 64 in flight the filter runs in a forked process, filter_worker.py);
  own-filter    the filter in the run's own process (bootstrap.filter_process = off), as before stop 34;
  reader        (this and the arms below filter in the run's own process, as own-filter does)
                each reply read (parsed, filtered, written) on a second thread, the stream's thread left to
                refill requests (a diagnostic: the pool then lags the replies, so records depend on timing);
  inline        each reply read, and the next requests pulled, on the event loop's thread itself, as each reply is
                committed there (fastpath.LoopStream with its hand-off to the stream replaced by a call): one thread
                does all the work, with no hand-off of the GIL between the loop and the stream;
  filter-free   the Self-Instruct filter (rules and ROUGE-L against the pool) replaced by "keep", in the run's own
                process: what bootstrap would reach if the paper's filter cost nothing (also a diagnostic; it keeps
                lines the filter would reject, so it needs fewer requests).

Every arm is timed the same way, from the start of the first reply's read to the end of the last one's (in the
reader arm the stream ends before its reader does), with the client's CPU over that span (the forked filter's
included: its whole CPU, read when it is reaped, as it works only within the reads) and the share of the span
the thread that reads the replies (MainThread, the reader, or the event loop) spent on a CPU; the whole stage (its
fixed costs too) beside it. The ratios need a quiet machine: other jobs take the cores these threads wait for.

    nice -n -5 python benchmarks/bootstrap_bound.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import client_cpu  # noqa: E402  (benchmarks/ is not a package)

FINISHED: list = []  # Bootstrap.finish's calls, as `reads` (those within a read too)
QUEUE: list = []  # (time, +n requests handed to the event loop | -1 a reply put for the stream | +1 one taken by it)
ARMS = ("shipped", "own-filter", "reader", "inline", "filter-free")


def patch(arm: str) -> list:
    """Apply `arm` to this process's pipeline; the list each read's (start, end, CPU at start, CPU at end) goes to."""
    from pipeline.stages import bootstrap, filter

    reads: list = []
    read = bootstrap.Bootstrap.read

    def timed(self, req, reply, **how):  # every read of an arm runs on one thread: its CPU clock is thread_time's
        start, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        try:
            return read(self, req, reply, **how)
        finally:
            reads.append((start, time.perf_counter(), cpu, time.process_time(), thread, time.thread_time()))

    bootstrap.Bootstrap.read = timed
    finish = bootstrap.Bootstrap.finish

    def finished(self, leave=0):  # the replies a read left with a forked filter, written after the last read
        start, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        try:
            return finish(self, leave)
        finally:
            FINISHED.append((start, time.perf_counter(), cpu, time.process_time(), thread, time.thread_time()))

    bootstrap.Bootstrap.finish = finished
    watch_queue()
    if arm != "shipped":  # the filter in the run's own process, as below 16 in flight (the other arms' base)
        bootstrap.forks = lambda cfg, concurrency, flowing=False: False
    if arm == "filter-free":
        filter.InstructionFilter.decide = lambda self, lines: [filter.Passed([], 0.0, False) for _ in lines]
    if arm == "reader":
        def run_bootstrap(teacher, seeds, cfg, run, prompts, log, *, on_kept=None, on_progress=None, say=None):
            with bootstrap.Bootstrap(teacher, seeds, cfg, run, prompts, log, on_kept=on_kept,
                                     on_progress=on_progress, say=say) as b:
                handed, failed, unread = queue.SimpleQueue(), [], threading.Condition()
                held = [0]  # replies handed to the reader, not yet read

                def reader() -> None:
                    while (item := handed.get()) is not None:
                        try:
                            b.read(*item)
                        except BaseException as e:  # noqa: BLE001 (raised again on the stream's thread)
                            failed.append(e)
                        with unread:
                            held[0] -= 1
                            unread.notify_all()

                def requests():
                    for req in b.requests():
                        if req is None and held[0]:  # WAIT while the reader holds replies: they may fill the
                            with unread:  # gap, and a stream with nothing in flight would end at a WAIT
                                unread.wait_for(lambda: held[0] == 0)
                            continue
                        yield req

                thread = threading.Thread(target=reader, name="bootstrap-reader")
                thread.start()
                try:
                    for req, reply in teacher.stream(requests(), b.params, kind="bootstrap"):
                        with unread:
                            held[0] += 1
                        handed.put((req, reply))
                finally:
                    handed.put(None)
                    thread.join()
                if failed:
                    raise failed[0]
            return b.result()

        bootstrap.run_bootstrap = run_bootstrap
    if arm == "inline":
        bootstrap.run_bootstrap = inline_bootstrap
    return reads


def watch_queue() -> None:
    """Each request handed to the event loop, and each reply the loop puts for the stream and the stream takes
    (QUEUE): whether the replies wait for the thread that reads them (it sets the pace) or the requests are few
    (prompts come too slowly)."""
    import queue as queues

    from pipeline.teachers import fastpath

    class Timed(queues.SimpleQueue):
        def put(self, item, *args, **kwargs):
            QUEUE.append((time.perf_counter(), "put", 1))
            super().put(item, *args, **kwargs)

        def get(self, *args, **kwargs):
            item = super().get(*args, **kwargs)
            QUEUE.append((time.perf_counter(), "got", 1))
            return item

    init, start = fastpath.LoopStream.__init__, fastpath.LoopStream.start

    def timed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.finished = Timed()

    def timed_start(self, batch):
        QUEUE.append((time.perf_counter(), "sent", len(batch)))
        return start(self, batch)

    fastpath.LoopStream.__init__, fastpath.LoopStream.start = timed_init, timed_start


def queue_means(since: float, until: float) -> tuple[float, float]:
    """The mean, over [since, until], of the requests at the teacher (sent, their replies not yet put) and of the
    replies waiting for the stream (put, not yet taken)."""
    at_teacher = waiting = 0
    area_teacher = area_waiting = 0.0
    last = since
    for when, what, n in sorted(QUEUE):
        span = max(0.0, min(when, until) - max(last, since))
        area_teacher, area_waiting = area_teacher + span * at_teacher, area_waiting + span * waiting
        last = max(last, when)
        if what == "sent":
            at_teacher += n
        elif what == "put":
            at_teacher, waiting = at_teacher - n, waiting + n
        else:
            waiting -= n
    span = max(until - since, 1e-9)
    return area_teacher / span, area_waiting / span


def inline_bootstrap(teacher, seeds, cfg, run, prompts, log, *, on_kept=None, on_progress=None, say=None):
    """run_bootstrap with every read and refill on the event loop's thread (the inline arm)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from pipeline.stages import bootstrap
    from pipeline.teachers import fastpath

    with bootstrap.Bootstrap(teacher, seeds, cfg, run, prompts, log, on_kept=on_kept, on_progress=on_progress,
                             say=say) as b:
        if teacher._pool is None:
            teacher._pool = ThreadPoolExecutor(max_workers=teacher.concurrency, thread_name_prefix="teacher")
        stream = fastpath.LoopStream(teacher, teacher._pool)
        requests, over, state = b.requests(), threading.Event(), {"in_flight": 0, "ended": False, "error": None}

        def refill() -> None:
            batch = []
            while not state["ended"] and stream.failover.fatal is None and state["in_flight"] < stream.failover.limit:
                req = teacher.pull(requests)
                if req is False or (req is None and state["in_flight"] == 0):
                    state["ended"] = True
                    break
                if req is None:
                    break
                batch.append((req, req.params or b.params, "bootstrap"))
                state["in_flight"] += 1
            stream.start(batch)
            if state["in_flight"] == 0:
                over.set()

        def deliver(item) -> None:
            req, out = item
            state["in_flight"] -= 1
            try:
                if isinstance(out, Future):
                    out = out.result()
                if isinstance(out, BaseException):
                    raise out
                b.read(req, out)
                refill()
            except BaseException as e:  # noqa: BLE001 (raised again on the caller's thread)
                state["error"] = e
                over.set()

        class Handed:  # LoopStream.finished: a reply committed on the loop is read there at once
            def put(self, item) -> None:
                QUEUE.append((time.perf_counter(), "put", 1))
                QUEUE.append((time.perf_counter(), "got", 1))  # taken at once, or queued on the loop
                if threading.current_thread() is loop_thread:
                    deliver(item)
                else:  # a retry's reply, from the teacher's threads
                    stream.loop.call_soon_threadsafe(deliver, item)

        def begin() -> None:
            nonlocal loop_thread
            loop_thread = threading.current_thread()
            refill()

        loop_thread = None
        stream.finished = Handed()
        stream.loop.call_soon_threadsafe(begin)
        over.wait()
        if state["error"] is not None:
            raise state["error"]
    return b.result()


def measure_arm(args: argparse.Namespace) -> dict:
    reads = patch(args.child)
    client_cpu.warm_up()
    run_args = argparse.Namespace(url=args.url, requests=4000, pool=0, server_pid=args.server_pid,
                                  stages=["bootstrap"], bootstrap=args.instructions)
    children = os.times()
    whole = client_cpu.stages(run_args)["bootstrap"]
    # The forked filter's CPU (reaped when bootstrap ended): all of it is its verdicts, asked within the reads
    children = sum(os.times()[2:4]) - sum(children[2:4])
    first, last = reads[0], max(reads + FINISHED, key=lambda r: r[1])  # a forked filter's last reply: finish
    last_read = max(reads, key=lambda r: r[1])  # on the reading thread (a finish after the stream may not be)
    at_teacher, waiting = queue_means(first[0], last[1])
    return {"replies": len(reads), "span_s": last[1] - first[0], "cpu_s": last[3] - first[2] + children,
            "at_teacher": at_teacher, "waiting": waiting,
            "filter_cpu_s": children, "reading_cpu_s": last_read[5] - first[4],
            "stage_requests": whole["stage_requests"], "stage_wall_s": whole["stage_wall_s"],
            "stage_cpu_s": whole["stage_cpu_s"], "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the arms")
    ap.add_argument("--instructions", type=int, default=2000, help="bootstrap.num_instructions")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms to run (of {', '.join(ARMS)})")
    for hidden in ("--child", "--url", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if client_cpu.answered_child(args, measure_arm):
        return
    if unknown := set(args.arms.split(",")) - set(ARMS):
        ap.error(f"--arms: no arm {', '.join(sorted(unknown))}; the arms are {', '.join(ARMS)}")
    out = Path(tempfile.mkdtemp()) / "r.json"
    print(f"commit {client_cpu.head()}; bootstrap from the seeds to {args.instructions:,}; {client_cpu.IN_FLIGHT} in "
          f"flight, {client_cpu.LATENCY * 1000:.0f} ms latency, ideal {client_cpu.IDEAL:,.0f} requests/s; "
          f"{os.cpu_count()} cores; load average before: {os.getloadavg()}\n")
    print("| arm | round | requests | of ideal, first read to last | client CPU ms/request, same span "
          "| of it, the forked filter's | reading thread busy | requests at the teacher, mean | replies waiting to be "
          "read, mean | whole stage wall s | whole stage, requests/s | load avg (1 min) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(args.repeat):
        for arm in args.arms.split(","):
            server, url = client_cpu.start_server("self-instruct")
            try:
                r = client_cpu.run_child(__file__, client_cpu.REPO, out, arm, "--url", url, "--server-pid",
                                         str(server.pid), "--instructions", str(args.instructions),
                                         env=client_cpu.SERVER_ENV)
            finally:
                server.kill()
                server.wait()
            rate = (r["replies"] - 1) / r["span_s"]
            print(f"| {arm} | {i + 1} | {r['stage_requests']:,} | {rate / client_cpu.IDEAL:.2f} "
                  f"| {1000 * r['cpu_s'] / max(1, r['replies'] - 1):.2f} "
                  f"| {1000 * r['filter_cpu_s'] / max(1, r['replies'] - 1):.2f} | {r['reading_cpu_s'] / r['span_s']:.2f} "
                  f"| {r['at_teacher']:.1f} | {r['waiting']:.1f} "
                  f"| {r['stage_wall_s']:.3f} | {r['stage_requests'] / r['stage_wall_s']:,.0f} | {r['load']:.1f} |",
                  flush=True)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
