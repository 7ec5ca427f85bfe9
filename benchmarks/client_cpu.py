"""Is the client the bottleneck? (issue 20) Client CPU per request and the fraction of the concurrency-bound ideal,
against benchmarks/_latency_server.py (its own process: its CPU is counted apart) at 50 ms latency, 64 in flight.

Side by side in one run, each measurement in a fresh process:
  (a) the plain client, ms of client CPU per request: this tree, the tree at --base, the raw openai SDK
      (chat.completions.create on 64 threads, a client per 8), and aiohttp alone on one event loop, and the
      teacher's own HTTP/1.1 connections (pipeline/teachers/http1.py) alone (the floor: what this machine gives
      a client that does nothing with its replies);
  (b) bootstrap with a pool of --pool instructions (real Alpaca and seed instructions, then synthetic ones from
      benchmarks/_synthetic.py), ms of client CPU per bootstrap request: this tree and --base;
  (c) the fraction of the ideal rate (64 / 50 ms = 1,280 requests/s) of each stage of one run (bootstrap,
      classify, instances, evolve and score), this tree and --base, --repeat times each; with the server's CPU
      per request over the same span and the ceiling that CPU alone allows on this machine (`ceiling`).
(b) and (c) time each teacher stream from its first reply to its last (the steady state); the whole stage, with
its fixed costs, is given beside it.

    python benchmarks/client_cpu.py                       # about 4 minutes on an idle 2-core machine
    python benchmarks/client_cpu.py --base 85506e8 --requests 4000 --pool 20000
    nice -n -10 python benchmarks/client_cpu.py --skip a,b --repeat 2    # (c) only, this tree and the base twice
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "alpaca_davinci_4000.jsonl"
IN_FLIGHT, LATENCY = 64, 0.05
IDEAL = IN_FLIGHT / LATENCY  # requests per second when the server is the only limit


def start_server(replies: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "_latency_server.py"), "--latency",
                             str(LATENCY), "--capacity", str(4 * IN_FLIGHT), "--replies", replies],
                            stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"


# ---------------------------------------------------------------- shared by the side-by-side benchmarks
# (this file, stage_threads.py, reply_calls.py): their flags, the child process of each measurement, the header


def side_by_side_parser(doc: str, base: str, base_help: str = "the commit to compare with", *,
                        server: bool = False) -> argparse.ArgumentParser:
    """--base, the flags the caller adds after it, and the hidden ones of the child process each measurement runs
    in: --child (what to measure) and --out (where its figures go); server: --url and --server-pid too (the
    _latency_server.py it talks to)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=base, help=base_help)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    if server:
        ap.add_argument("--url", help=argparse.SUPPRESS)
        ap.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    return ap


def answered_child(args: argparse.Namespace, measure_child: Callable[[argparse.Namespace], dict]) -> bool:
    """In a child process (--child given): its figures, measure_child(args), written to --out as JSON; True there,
    and the script ends."""
    if not args.child:
        return False
    Path(args.out).write_text(json.dumps(measure_child(args)))
    return True


# What a child that talks to _latency_server.py through the teacher needs in its environment
SERVER_ENV = {"OPENAI_API_KEY": "not-needed"}


def run_child(script: str, tree: Path, out: Path, kind: str, *flags: str, env: dict[str, str] | None = None) -> dict:
    """One measurement in a fresh process: `script` --child `kind` importing `pipeline` from `tree`, with `env` added
    to this one's; its figures."""
    env = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
    subprocess.run([sys.executable, script, "--child", kind, "--out", str(out), *flags], env=env, check=True, cwd=tree)
    return json.loads(out.read_text())


def header(base: str, what: str, dirty: str = "") -> str:
    """A benchmark's first line: the commit measured, the base, what runs, and the load average before."""
    return f"commit {head()}{dirty}, base {base}; {what}; load average before: {os.getloadavg()}"


def child(kind: str, tree: Path, args: argparse.Namespace, url: str, out: Path) -> dict:
    """One measurement in a fresh process importing `pipeline` from `tree`."""
    return run_child(__file__, tree, out, kind, "--url", url, "--requests", str(args.requests), "--pool",
                     str(args.pool), "--server-pid", str(args.server_pid), env=SERVER_ENV)


def fresh_child(kind: str, tree: Path, args: argparse.Namespace, out: Path) -> dict:
    """child() against a fake teacher of its own: its synthetic instructions start from the same state for each
    tree (a shared one went on where the last child left it, and gave the second tree fewer near-duplicates of
    its pool to reject: 301 requests for 2,000 kept instead of 330, whichever tree ran second). Its CPU is the
    server CPU the child reports."""
    server, url = start_server("self-instruct")
    try:
        return child(kind, tree, argparse.Namespace(**{**vars(args), "server_pid": server.pid}), url, out)
    finally:
        server.kill()
        server.wait()


def client_cpu_s() -> float:
    """CPU seconds of this process and of its children: bootstrap's filter runs in a forked child at 64 in flight
    (bootstrap.filter_process, issue 20), and its CPU is the client's. A live child's from /proc (nanoseconds, every
    thread of it), a reaped one's from os.times."""
    times = os.times()
    total = time.process_time() + times.children_user + times.children_system
    for task in Path("/proc/self/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            for thread in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    total += int((thread / "schedstat").read_text().split()[0]) / 1e9
                except (OSError, ValueError, IndexError):
                    pass
    return total


def measure(fn) -> tuple[float, float]:
    cpu, wall = client_cpu_s(), time.perf_counter()
    fn()
    return client_cpu_s() - cpu, time.perf_counter() - wall


def plain(args: argparse.Namespace) -> dict:
    from pipeline.teachers import GenParams
    from pipeline.teachers.openai_compat import OpenAITeacher

    t = OpenAITeacher("bench", base_url=args.url, concurrency=IN_FLIGHT, api="chat", structured="off")
    t.preflight()
    params = GenParams(max_tokens=16, temperature=0.7)
    t.generate([f"warm-up {i}" for i in range(256)], params, kind="warm")
    prompts = [f"Write a short poem about the number {i}." for i in range(args.requests)]
    out: list = []
    cpu, wall = measure(lambda: out.extend(t.generate(prompts, params, kind="bench")))
    assert all(c.ok for c in out), [c.error for c in out if not c.ok][:3]
    return {"requests": len(out), "cpu_s": cpu, "wall_s": wall}


def sdk(args: argparse.Namespace) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import openai

    clients = [openai.OpenAI(api_key="x", base_url=args.url, max_retries=0) for _ in range(IN_FLIGHT // 8)]

    def one(i: int) -> str:
        r = clients[i % len(clients)].chat.completions.create(
            model="bench", messages=[{"role": "user", "content": f"Write a short poem about the number {i}."}],
            max_tokens=16, temperature=0.7)
        return r.choices[0].message.content

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(one, range(256)))
        cpu, wall = measure(lambda: list(pool.map(one, range(args.requests))))
    return {"requests": args.requests, "cpu_s": cpu, "wall_s": wall}


def pool_texts(n: int) -> list[str]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _synthetic import SentenceGenerator, seed_instructions

    real = [json.loads(line)["instruction"] for line in DATA.open(encoding="utf-8")] if DATA.is_file() else []
    texts = list(dict.fromkeys(real + seed_instructions()))[:n]
    gen = SentenceGenerator(11)
    gen.history.extend(texts)
    while len(texts) < n:
        texts.append(gen.sentence())
    return texts


def new_run(args: argparse.Namespace, settings: dict, name: str):
    from pipeline import Run

    base = {"teacher.concurrency": IN_FLIGHT, "teacher.api": "chat", "teacher.structured": "off",
            "bootstrap.yield_stop": 0.0}
    return Run(settings={**base, **settings}, teacher="openai:bench", base_url=args.url, name=name,
               output_dir=tempfile.mkdtemp(prefix="client-cpu-"), progress=False)


def calls(run) -> int:
    return sum(u.get("calls", 0) for k, u in (run.manifest().get("usage") or {}).items() if isinstance(u, dict))


def server_cpu(pid: int | None) -> float:
    """CPU seconds the fake server's process has used (Linux /proc), 0 where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def instrument(server_pid: int | None = None) -> list:
    """Time every teacher stream from its first reply to its end: the steady state of a stage, without its fixed
    cost (reading and indexing the pool, preflight, the first round trip). Each stream adds (replies after the
    first, CPU s, wall s, the server's CPU s, the run's own process's CPU s: the client's less a forked filter's).
    Wraps `stream` wherever a teacher class defines it (a tree whose OpenAITeacher has its own, and BaseTeacher)."""
    from pipeline.teachers import base, openai_compat

    spans = []

    def wrap(original):
        def stream(self, *args, **kwargs):
            n, first = 0, (0.0, 0.0, 0.0, 0.0)
            for item in original(self, *args, **kwargs):
                if n == 0:
                    first = (client_cpu_s(), time.perf_counter(), server_cpu(server_pid), time.process_time())
                n += 1
                yield item
            if n > 1:
                spans.append((n - 1, client_cpu_s() - first[0], time.perf_counter() - first[1],
                              server_cpu(server_pid) - first[2], time.process_time() - first[3]))
        return stream

    for cls in (base.BaseTeacher, openai_compat.OpenAITeacher):
        if "stream" in vars(cls):
            cls.stream = wrap(vars(cls)["stream"])
    return spans


def warm_up() -> None:
    """numba's kernels compiled (or loaded from its cache) before the clock starts, in either tree: a query of
    common words, one of rare ones and a mixed one, each against a frozen pool and again with entries added since
    (a tree extracted by `git archive` has no cache of compiled kernels: one compiled in the steady state cost it
    1-3 ms a request)."""
    from pipeline.similarity import RougeLIndex

    index, texts = RougeLIndex(), pool_texts(3400)  # past similarity._SCAN_WHOLE: the frozen arrays' kernels
    queries = ["Write a list of the things to do in the city", "zebra quokka", "Write a poem about the sea",
               " ".join(texts[:12])]  # over 64 tokens: the multi-word kernels
    for part in (texts[:3000], texts[3000:]):
        for text in part:
            index.add(text)
        for query in queries:
            index.max_score(query)
            index.top_k(query, 10)
            index.scores(query)
            if hasattr(index, "summary"):  # the filter's one call (trees since 3b86309)
                index.summary(query, 10)
    index.filter_batch(["Write a poem about the sea", "Write a song"], 0.7)
    small = RougeLIndex()  # a pool under _SCAN_WHOLE (bootstrap from the seeds): its row kernels
    for text in texts[:100]:
        small.add(text)
    for query in queries:
        small.max_score(query)
        small.top_k(query, 10)
        if hasattr(small, "summary"):
            small.summary(query, 10)


def steady(spans: list, since: int = 0) -> dict:
    part = spans[since:]
    return {"requests": sum(s[0] for s in part), "cpu_s": sum(s[1] for s in part), "wall_s": sum(s[2] for s in part),
            "server_cpu_s": sum(s[3] for s in part), "own_cpu_s": sum(s[4] for s in part)}


def bootstrap(args: argparse.Namespace) -> dict:
    """Bootstrap from a pool of args.pool instructions already kept, to args.requests // 2 more."""
    from pipeline.records import Task, task_id
    from pipeline.store import JsonlWriter

    warm_up()
    spans = instrument()
    run = new_run(args, {"bootstrap.num_instructions": args.pool + args.requests // 2}, "bootstrap")
    path = Path(run.path) / "bootstrap.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with JsonlWriter(path) as out:
        for i, text in enumerate(pool_texts(args.pool)):
            out.write(Task(id=task_id("machine", text), instruction=text, stage="bootstrap", round=i))
    cpu, wall = measure(lambda: run.run(["bootstrap"]))
    return {**steady(spans), "kept": len(run.records("bootstrap")) - args.pool, "run_cpu_s": cpu, "run_wall_s": wall}


def stages(args: argparse.Namespace) -> dict:
    """One run, stage by stage: each stage's wall time and requests, and its steady state (instrument)."""
    warm_up()
    spans = instrument(args.server_pid)
    n = getattr(args, "bootstrap", None) or max(64, args.requests // 2)
    run = new_run(args, {"bootstrap.num_instructions": n, "evolve.rounds": 1}, "stages")
    rows = {}
    for stage in getattr(args, "stages", None) or ("bootstrap", "classify", "instances", "filter", "evolve", "score"):
        before, since = calls(run), len(spans)
        cpu, wall = measure(lambda s=stage: run.run([s]))
        rows[stage] = {**steady(spans, since), "stage_requests": calls(run) - before, "stage_wall_s": wall,
                       "stage_cpu_s": cpu, "load": os.getloadavg()[0]}
    return rows


def ceilings(client_ms: float, server_ms: float, own_ms: float | None = None) -> tuple[float, float]:
    """The fractions of the ideal rate that CPU alone allows on this machine, were nothing else running (other jobs
    take their share: see the load average). The server is one thread (1,000 / server_ms requests a second at
    most). (1) All of the run's own process's CPU (`own_ms`: the client's less a forked filter's, which has a GIL
    of its own) under its GIL, on one core: 1,000 / own_ms. (2) The client's CPU, the forked filter's included,
    spread over the cores left by the server, os.cpu_count() * 1,000 / (client_ms + server_ms): its threads give
    up the GIL in SQLite, file and socket calls, so the truth lies between (1) and (2)."""
    own_ms = client_ms if own_ms is None else own_ms
    if client_ms <= 0 or server_ms <= 0 or own_ms <= 0:
        return float("nan"), float("nan")
    cores, server = os.cpu_count() or 1, 1000 / server_ms / IDEAL
    return (min(1.0, server, 1000 / own_ms / IDEAL),
            min(1.0, server, cores * 1000 / (client_ms + server_ms) / IDEAL))


def stage_table(args: argparse.Namespace, out: Path, base_tree: Path) -> None:
    """(c): each stage of one run, this tree and --base, one after the other, --repeat times, each run against a
    fake teacher of its own (fresh_child): with one shared server, bootstrap's two trees were given different
    replies (the base 302 requests, this tree 331, in the section "Client transport and the fraction of the
    ideal")."""
    print("\n(c) each stage of one run, this tree and the base: from its first reply to its last (the whole stage in "
          "brackets: reading, preflight, the first round trip); server CPU over the same span; the ceilings are what "
          "CPU alone allows, the run's own process on one core or the client on all (`ceilings`)\n\n| stage | tree "
          "| requests | wall s | requests/s | of ideal | client CPU ms/request | of it, the run's own process "
          "| server CPU ms/request | CPU ceiling, 1 core / all | load avg (1 min) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs = []
    for i in range(args.repeat):
        for label, tree in (("this", REPO), (f"base {args.base}", base_tree)):
            runs.append((f"{label}" + (f" #{i + 1}" if args.repeat > 1 else ""), fresh_child("stages", tree, args, out)))
    for stage in ("bootstrap", "classify", "instances", "evolve", "score"):
        for label, rows in runs:
            r = rows.get(stage, {})
            if not r.get("stage_requests"):
                continue
            rate, whole = r["requests"] / max(r["wall_s"], 1e-9), r["stage_requests"] / r["stage_wall_s"]
            client_ms, server_ms, own_ms = (1000 * r.get(k, r["cpu_s"]) / max(1, r["requests"])
                                            for k in ("cpu_s", "server_cpu_s", "own_cpu_s"))
            print(f"| {stage} | {label} | {r['stage_requests']:,} | {r['wall_s']:.2f} ({r['stage_wall_s']:.2f}) "
                  f"| {rate:,.0f} ({whole:,.0f}) | {rate / IDEAL:.2f} ({whole / IDEAL:.2f}) "
                  f"| {client_ms:.2f} ({1000 * r['stage_cpu_s'] / r['stage_requests']:.2f}) | {own_ms:.2f} "
                  f"| {server_ms:.3f} "
                  f"| {'{:.2f} / {:.2f}'.format(*ceilings(client_ms, server_ms, own_ms))} | {r['load']:.1f} |",
                  flush=True)
    print(f"\nload average after: {os.getloadavg()}")


def floor(args: argparse.Namespace, lean: bool = False) -> dict:
    """aiohttp alone on one event loop (or with `lean`, the teacher's own http1.Pool alone), 64 requests in flight
    and nothing done with the replies but json.loads: the rate this machine gives a client that costs next to
    nothing."""
    import asyncio

    import aiohttp

    async def main() -> tuple[float, float]:
        async with aiohttp.ClientSession() as session:
            gate = asyncio.Semaphore(IN_FLIGHT)
            if lean:
                from pipeline.teachers.http1 import Pool

                pool = Pool(args.url, {"Content-Type": "application/json"}, 1000, None, asyncio.get_running_loop())

            async def one(i: int) -> None:
                body = json.dumps({"model": "bench", "max_tokens": 16, "messages": [
                    {"role": "user", "content": f"Write a short poem about the number {i}."}]}).encode()
                async with gate:
                    if lean:
                        json.loads((await pool.post(args.url + "/chat/completions", body, 60))[2])
                        return
                    async with session.post(args.url + "/chat/completions", data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                        json.loads(await r.read())

            await asyncio.gather(*(one(i) for i in range(256)))
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(args.requests)))
            return time.process_time() - cpu, time.perf_counter() - wall

    cpu, wall = asyncio.run(main())
    return {"requests": args.requests, "cpu_s": cpu, "wall_s": wall}


def head() -> str:
    """This tree's commit, short, for a benchmark's header."""
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def extract(base: str) -> Path:
    """The tree at commit `base` (pipeline/, prompts/, seeds/), for the before column."""
    folder = Path(tempfile.mkdtemp(prefix="client-cpu-base-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", base, "pipeline", "prompts", "seeds"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    ap = side_by_side_parser(__doc__, "85506e8", "the commit to compare with (85506e8: the httpx client)",
                             server=True)
    ap.add_argument("--repeat", type=int, default=1, help="(c): run this tree and the base this many times each")
    ap.add_argument("--requests", type=int, default=4000, help="requests per plain-client measurement")
    ap.add_argument("--pool", type=int, default=20000, help="instructions in the pool before bootstrap")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: a, b, c")
    args = ap.parse_args()
    kinds = {"plain": plain, "sdk": sdk, "bootstrap": bootstrap, "stages": stages, "floor": floor,
             "floor-http1": lambda a: floor(a, lean=True)}
    if answered_child(args, lambda a: kinds[a.child](a)):
        return
    dirty = " (uncommitted changes)" if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "pipeline"],
                                                       capture_output=True, text=True).stdout.strip() else ""
    base_tree, skip, out = extract(args.base), set(args.skip.split(",")), Path(tempfile.mkdtemp()) / "r.json"
    print(header(args.base, f"{IN_FLIGHT} in flight, {LATENCY * 1000:.0f} ms latency, ideal {IDEAL:,.0f} "
                            "requests/s", dirty))
    server, url = start_server("self-instruct")
    args.server_pid = server.pid
    try:
        if "a" not in skip:
            print(f"\n(a) plain client, {args.requests:,} requests\n\n| client | requests | wall s | of ideal "
                  "| client CPU ms/request | load avg (1 min) |\n|---|---:|---:|---:|---:|---:|")
            for label, kind, tree in (("this tree (wire.py)", "plain", REPO),
                                      (f"base {args.base}", "plain", base_tree),
                                      ("raw openai SDK, 64 threads", "sdk", REPO),
                                      ("aiohttp alone, one loop, replies only decoded", "floor", REPO),
                                      ("http1.Pool alone, the same (the floor)", "floor-http1", REPO)):
                r = child(kind, tree, args, url, out)
                print(f"| {label} | {r['requests']:,} | {r['wall_s']:.2f} | {r['requests'] / r['wall_s'] / IDEAL:.2f} "
                      f"| {1000 * r['cpu_s'] / r['requests']:.2f} | {os.getloadavg()[0]:.1f} |", flush=True)
        if "b" not in skip:
            print(f"\n(b) bootstrap from a pool of {args.pool:,} instructions to {args.requests // 2:,} more; from the "
                  "first reply to the last (the whole run in brackets: reading and indexing the pool included)\n\n"
                  "| client | requests | kept | wall s | client CPU ms/request | load avg (1 min) |\n"
                  "|---|---:|---:|---:|---:|---:|")
            for label, tree in (("this tree", REPO), (f"base {args.base}", base_tree)):
                r = fresh_child("bootstrap", tree, args, out)
                print(f"| {label} | {r['requests']:,} | {r['kept']:,} | {r['wall_s']:.2f} ({r['run_wall_s']:.2f}) "
                      f"| {1000 * r['cpu_s'] / max(1, r['requests']):.2f} "
                      f"({1000 * r['run_cpu_s'] / max(1, r['requests'] + 1):.2f}) | {os.getloadavg()[0]:.1f} |",
                      flush=True)
        if "c" not in skip:
            stage_table(args, out, base_tree)
    finally:
        server.kill()


if __name__ == "__main__":
    main()
