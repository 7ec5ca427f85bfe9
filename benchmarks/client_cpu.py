"""Is the client the bottleneck? (issue 20) Client CPU per request and the fraction of the concurrency-bound ideal,
against benchmarks/_latency_server.py (its own process: its CPU is not counted) at 50 ms latency, 64 in flight.

Side by side in one run, each measurement in a fresh process:
  (a) the plain client, ms of client CPU per request: this tree, the tree at --base (the openai SDK's models on
      the hot path), and the raw openai SDK (chat.completions.create on 64 threads, a client per 8 as ours);
  (b) bootstrap with a pool of --pool instructions (real Alpaca and seed instructions, then synthetic ones from
      benchmarks/_synthetic.py), ms of client CPU per bootstrap request: this tree and --base;
  (c) the fraction of the ideal rate (64 / 50 ms = 1,280 requests/s) of each stage of one run: bootstrap,
      classify, instances, evolve and score.
(b) and (c) time each teacher stream from its first reply to its last (the steady state); the whole stage, with
its fixed costs, is given beside it.

    python benchmarks/client_cpu.py                       # about 3 minutes on an idle 2-core machine
    python benchmarks/client_cpu.py --base e073522 --requests 4000 --pool 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
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


def child(kind: str, tree: Path, args: argparse.Namespace, url: str, out: Path) -> dict:
    """One measurement in a fresh process importing `pipeline` from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENAI_API_KEY": "not-needed"}
    cmd = [sys.executable, __file__, "--child", kind, "--url", url, "--requests", str(args.requests), "--pool",
           str(args.pool), "--out", str(out)]
    subprocess.run(cmd, env=env, check=True, cwd=tree)
    return json.loads(out.read_text())


def fresh_child(kind: str, tree: Path, args: argparse.Namespace, out: Path) -> dict:
    """child() against a fake teacher of its own: its synthetic instructions start from the same state for each
    tree (a shared one went on where the last child left it, and gave the second tree fewer near-duplicates of
    its pool to reject: 301 requests for 2,000 kept instead of 330, whichever tree ran second)."""
    server, url = start_server("self-instruct")
    try:
        return child(kind, tree, args, url, out)
    finally:
        server.kill()
        server.wait()


def measure(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


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


def instrument() -> list:
    """Time every teacher stream from its first reply to its end: the steady state of a stage, without its fixed
    cost (reading and indexing the pool, preflight, the first round trip). Each stream adds (replies after the
    first, CPU s, wall s)."""
    from pipeline.teachers import base

    spans, original = [], base.BaseTeacher.stream

    def stream(self, *args, **kwargs):
        n, first = 0, (0.0, 0.0)
        for item in original(self, *args, **kwargs):
            if n == 0:
                first = (time.process_time(), time.perf_counter())
            n += 1
            yield item
        if n > 1:
            spans.append((n - 1, time.process_time() - first[0], time.perf_counter() - first[1]))

    base.BaseTeacher.stream = stream
    return spans


def warm_up() -> None:
    """numba's kernels compiled (or loaded from its cache) before the clock starts, in either tree: a query of
    common words, one of rare ones and a mixed one, each against a frozen pool and again with entries added since
    (a tree extracted by `git archive` has no cache of compiled kernels: one compiled in the steady state cost it
    1-3 ms a request)."""
    from pipeline.similarity import RougeLIndex

    index, texts = RougeLIndex(), pool_texts(1400)
    queries = ["Write a list of the things to do in the city", "zebra quokka", "Write a poem about the sea",
               " ".join(texts[:12])]  # over 64 tokens: the multi-word kernels
    for part in (texts[:1000], texts[1000:]):
        for text in part:
            index.add(text)
        for query in queries:
            index.max_score(query)
            index.top_k(query, 10)
            index.scores(query)
    index.filter_batch(["Write a poem about the sea", "Write a song"], 0.7)


def steady(spans: list, since: int = 0) -> dict:
    part = spans[since:]
    return {"requests": sum(s[0] for s in part), "cpu_s": sum(s[1] for s in part), "wall_s": sum(s[2] for s in part)}


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
    spans = instrument()
    n = max(64, args.requests // 2)
    run = new_run(args, {"bootstrap.num_instructions": n, "evolve.rounds": 1}, "stages")
    rows = {}
    for stage in ("bootstrap", "classify", "instances", "filter", "evolve", "score"):
        before, since = calls(run), len(spans)
        cpu, wall = measure(lambda s=stage: run.run([s]))
        rows[stage] = {**steady(spans, since), "stage_requests": calls(run) - before, "stage_wall_s": wall,
                       "stage_cpu_s": cpu}
    return rows


def extract(base: str) -> Path:
    """The tree at commit `base` (pipeline/, prompts/, seeds/), for the before column."""
    folder = Path(tempfile.mkdtemp(prefix="client-cpu-base-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", base, "pipeline", "prompts", "seeds"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="e073522", help="the commit to compare with (the SDK-parsing client)")
    ap.add_argument("--requests", type=int, default=4000, help="requests per plain-client measurement")
    ap.add_argument("--pool", type=int, default=20000, help="instructions in the pool before bootstrap")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: a, b, c")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps({"plain": plain, "sdk": sdk, "bootstrap": bootstrap,
                                              "stages": stages}[args.child](args)))
        return
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = " (uncommitted changes)" if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "pipeline"],
                                                       capture_output=True, text=True).stdout.strip() else ""
    base_tree, skip, out = extract(args.base), set(args.skip.split(",")), Path(tempfile.mkdtemp()) / "r.json"
    print(f"commit {commit}{dirty}, base {args.base}; {IN_FLIGHT} in flight, {LATENCY * 1000:.0f} ms latency, "
          f"ideal {IDEAL:,.0f} requests/s; load average before: {os.getloadavg()}")
    server, url = start_server("self-instruct")
    try:
        if "a" not in skip:
            print(f"\n(a) plain client, {args.requests:,} requests\n\n| client | requests | wall s | of ideal "
                  "| client CPU ms/request | load avg (1 min) |\n|---|---:|---:|---:|---:|---:|")
            for label, kind, tree in (("this tree (wire.py)", "plain", REPO),
                                      (f"base {args.base} (SDK models)", "plain", base_tree),
                                      ("raw openai SDK, 64 threads", "sdk", REPO)):
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
            print("\n(c) each stage of one run, this tree: from its first reply to its last (the whole stage in "
                  "brackets: reading, preflight, the first round trip)\n\n| stage | requests | wall s | requests/s "
                  "| of ideal | client CPU ms/request |\n|---|---:|---:|---:|---:|---:|")
            rows = child("stages", REPO, args, url, out)
            for stage, r in rows.items():
                if r["stage_requests"]:
                    rate, whole = r["requests"] / max(r["wall_s"], 1e-9), r["stage_requests"] / r["stage_wall_s"]
                    print(f"| {stage} | {r['stage_requests']:,} | {r['wall_s']:.2f} ({r['stage_wall_s']:.2f}) "
                          f"| {rate:,.0f} ({whole:,.0f}) | {rate / IDEAL:.2f} ({whole / IDEAL:.2f}) "
                          f"| {1000 * r['cpu_s'] / max(1, r['requests']):.2f} "
                          f"({1000 * r['stage_cpu_s'] / r['stage_requests']:.2f}) |", flush=True)
            print(f"\nload average after: {os.getloadavg()}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
