"""Teacher throughput, side by side in one run.

Against a local OpenAI-compatible server (benchmarks/_latency_server.py, its own process)
with a fixed or lognormal latency per request and a capacity of C concurrent requests:
- ours: pipeline.teachers.OpenAITeacher, C requests in flight, refilled as each finishes;
- Alpaca-style: 5 prompts per completions request, one request at a time (measured on a
  sample, since it is slow; its rate does not depend on how many prompts follow);
- batch-synchronous: C requests at a time, waiting for the whole batch before the next.
Reports prompts/s, the fraction of the concurrency-bound ideal (C / mean latency) and the
client's CPU time per request. Then the evolve stage at fixed latency: pool instructions
evolved for some rounds, each slot's evolution, judgement and answer in one stream (the
server's replies keep every slot going to its answer); its ideal is calls x latency / C,
printed beside the fraction of our client above; once as a run calls it (SQLite response
cache and usage log written per reply) and once without the cache. Then the local HF teacher's tokens/s
on the embedded model, batched against one prompt at a time.

    python benchmarks/generation.py                 # everything
    python benchmarks/generation.py --no-hf --n 1024  # server part only
    python benchmarks/generation.py --no-hf --dists fixed  # fixed latency: the clients, then evolve
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402
from _synthetic import instructions  # noqa: E402

from pipeline.cache import CACHE_FILE, ResponseCache  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.prompts import Prompts  # noqa: E402
from pipeline.records import Task  # noqa: E402
from pipeline.stages.evolve import run_evolve  # noqa: E402
from pipeline.store import RunDir  # noqa: E402
from pipeline.teachers import GenParams  # noqa: E402
from pipeline.teachers.openai_compat import OpenAITeacher  # noqa: E402

PARAMS = GenParams(max_tokens=64, temperature=0.7, top_p=0.5)


def start_server(capacity: int, latency: float, dist: str, sigma: float,
                 replies: str = "fixed") -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_latency_server.py")),
                             "--capacity", str(capacity), "--latency", str(latency), "--dist", dist,
                             "--sigma", str(sigma), "--replies", replies], stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    return proc, f"http://127.0.0.1:{port}/v1"


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def ours(teacher: OpenAITeacher, prompts: list[str]) -> None:
    out = teacher.generate(prompts, PARAMS, kind="bench")
    assert all(x.ok for x in out), [x.error for x in out if not x.ok][:3]


def batch_sync(client: openai.OpenAI, prompts: list[str], c: int) -> None:
    def one(p: str) -> None:
        client.chat.completions.create(model="bench", messages=[{"role": "user", "content": p}], max_tokens=64)

    with ThreadPoolExecutor(max_workers=c) as pool:
        for i in range(0, len(prompts), c):
            list(pool.map(one, prompts[i:i + c]))  # the barrier: wait for the slowest of the batch


def alpaca_sequential(url: str, prompts: list[str]) -> None:
    client = openai.OpenAI(api_key="x", base_url=url, max_retries=0, timeout=60)
    for i in range(0, len(prompts), 5):
        client.completions.create(model="bench", prompt=prompts[i:i + 5], max_tokens=64)


def server_scenario(dist: str, args: argparse.Namespace) -> dict:
    c, lat = args.concurrency, args.latency
    proc, url = start_server(c, lat, dist, args.sigma)
    try:
        prompts = [f"Prompt number {i}: continue the list of tasks." for i in range(args.n)]
        # Both clients are built once and warmed up (connections opened), as in a real run.
        teacher = OpenAITeacher("bench", base_url=url, concurrency=c, max_retries=0, timeout_s=120)
        client = openai.OpenAI(api_key="x", base_url=url, max_retries=0, timeout=120)
        ours(teacher, prompts[:c])
        batch_sync(client, prompts[:c], c)
        rows = {}
        wall, cpu = timed(lambda: ours(teacher, prompts))
        rows["ours"] = {"prompts": args.n, "wall_s": wall, "cpu_ms_per_request": 1000 * cpu / args.n}
        wall, cpu = timed(lambda: batch_sync(client, prompts, c))
        rows["batch_sync"] = {"prompts": args.n, "wall_s": wall, "cpu_ms_per_request": 1000 * cpu / args.n}
        sample = prompts[: args.alpaca_sample]
        wall, cpu = timed(lambda: alpaca_sequential(url, sample))
        rows["alpaca_sequential"] = {"prompts": len(sample), "wall_s": wall,
                                     "cpu_ms_per_request": 1000 * cpu / (len(sample) / 5), "sampled": True}
    finally:
        proc.terminate()
    ideal = c / lat  # requests/s when every slot is always busy
    for r in rows.values():
        r["prompts_per_s"] = r["prompts"] / r["wall_s"]
        r["fraction_of_ideal"] = r["prompts_per_s"] / ideal
    return {"dist": dist, "capacity": c, "mean_latency_s": lat, "ideal_prompts_per_s": ideal, "clients": rows,
            "ours_vs_batch_sync": rows["ours"]["prompts_per_s"] / rows["batch_sync"]["prompts_per_s"],
            "ours_vs_alpaca": rows["ours"]["prompts_per_s"] / rows["alpaca_sequential"]["prompts_per_s"]}


def evolve_once(teacher: OpenAITeacher, pool: list[Task], rounds: int, out_dir: str, name: str,
                cache: bool = True) -> dict:
    """run_evolve as a run calls it: JSONL writes, the filter and (cache=True) the run's SQLite
    response cache and usage log, written once per reply."""
    cfg = load_config(None, {"output_dir": out_dir, "run_name": name, "evolve.rounds": rounds,
                             "teacher.concurrency": teacher.concurrency, "teacher.max_retries": 0})
    run = RunDir(cfg.run_dir)
    run.ensure()
    teacher.cache = ResponseCache(run.path / CACHE_FILE) if cache else None
    teacher.usage.by_kind.clear()
    out: dict = {}
    wall, cpu = timed(lambda: out.update(result=run_evolve(teacher, pool, cfg, run, Prompts(), source=name)))
    if teacher.cache is not None:
        teacher.cache.close()
    result, usage = out["result"], teacher.usage.to_dict()
    assert result.pending == 0 and result.errors == 0, result
    calls = sum(u["calls"] for u in usage.values())
    return {"calls": {k: u["calls"] for k, u in usage.items()}, "kept": result.kept, "rejected": dict(result.rejected),
            "wall_s": wall, "calls_per_s": calls / wall, "cpu_ms_per_call": 1000 * cpu / calls}


def evolve_scenario(args: argparse.Namespace) -> dict:
    c, lat = args.concurrency, args.latency
    texts = instructions(args.evolve_slots + 16)
    pool = [Task(id=f"p{i}", instruction=text) for i, text in enumerate(texts[16:])]
    proc, url = start_server(c, lat, "fixed", 0.0, replies="evolve")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            teacher = OpenAITeacher("bench", base_url=url, concurrency=c, max_retries=0, timeout_s=120)
            ours(teacher, [f"Warm-up prompt {i}." for i in range(c)])  # connections opened, as in a real run
            warm = [Task(id=f"w{i}", instruction=text) for i, text in enumerate(texts[:16])]
            evolve_once(teacher, warm, 1, tmp, "warm-up")  # the filter's compiled kernels loaded, as after a first stage
            rows = {"as_a_run": evolve_once(teacher, pool, args.evolve_rounds, tmp, "run"),
                    "no_cache": evolve_once(teacher, pool, args.evolve_rounds, tmp, "no-cache", cache=False)}
    finally:
        proc.terminate()
    for r in rows.values():
        r["ideal_s"] = sum(r["calls"].values()) * lat / c  # every one of the C slots busy from first call to last
        r["fraction_of_ideal"] = r["ideal_s"] / r["wall_s"]
    return {"capacity": c, "latency_s": lat, "slots": len(pool), "rounds": args.evolve_rounds, "rows": rows}


def hf_scenario(args: argparse.Namespace) -> dict:
    from pipeline.config import TeacherConfig
    from pipeline.teachers import make_teacher

    teacher = make_teacher(TeacherConfig(spec="embedded", batch_size=args.hf_batch))
    prompts = [f"{i + 1}. Write a short poem about the sea.\n{i + 2}. Explain why leaves change colour.\n{i + 3}."
               for i in range(args.hf_prompts)]
    params = GenParams(max_tokens=args.hf_tokens, temperature=0.0)
    teacher.generate(prompts[:2], params, kind="warmup")
    rows = {}
    for label, size in (("one_at_a_time", 1), ("batched", args.hf_batch)):
        teacher.batch_size = size
        before = teacher.usage.to_dict().get(label, {}).get("completion_tokens", 0)
        wall, _ = timed(lambda kind=label: teacher.generate(prompts, params, kind=kind))
        tokens = teacher.usage.to_dict()[label]["completion_tokens"] - before
        rows[label] = {"batch_size": size, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}
    return {"model": "SmolLM2-135M-Instruct (embedded)", "prompts": len(prompts), "max_new_tokens": args.hf_tokens,
            "rows": rows, "batched_vs_one": rows["batched"]["tokens_per_s"] / rows["one_at_a_time"]["tokens_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="prompts per client")
    ap.add_argument("--concurrency", type=int, default=256, help="server capacity = requests in flight")
    ap.add_argument("--latency", type=float, default=2.0,
                    help="mean seconds per request (a 7B model on vLLM takes seconds for a few hundred tokens)")
    ap.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma (reply lengths vary)")
    ap.add_argument("--alpaca-sample", type=int, default=50, help="prompts for the slow sequential baseline")
    ap.add_argument("--dists", default="fixed,lognormal", help="latency distributions of the client comparison")
    ap.add_argument("--evolve-slots", type=int, default=1024,
                    help="instructions evolved: 4 per request in flight, so the end of a round (3 calls deep) is a small part")
    ap.add_argument("--evolve-rounds", type=int, default=2)
    ap.add_argument("--no-evolve", action="store_true", help="skip the evolve-stage part")
    ap.add_argument("--no-hf", action="store_true", help="skip the embedded-model part")
    ap.add_argument("--hf-prompts", type=int, default=32)
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--hf-tokens", type=int, default=48)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    results = {"server": [server_scenario(d, args) for d in args.dists.split(",")]}
    for s in results["server"]:
        print(f"\n== {s['dist']} latency, mean {s['mean_latency_s']} s, capacity {s['capacity']}: "
              f"ideal {s['ideal_prompts_per_s']:.0f} prompts/s")
        print(f"{'client':<20}{'prompts':>8}{'wall s':>9}{'prompts/s':>11}{'of ideal':>10}{'client CPU ms/req':>19}")
        for name, r in s["clients"].items():
            note = "  (sampled)" if r.get("sampled") else ""
            print(f"{name:<20}{r['prompts']:>8}{r['wall_s']:>9.2f}{r['prompts_per_s']:>11.1f}"
                  f"{r['fraction_of_ideal']:>10.2f}{r['cpu_ms_per_request']:>19.2f}{note}")
        print(f"ours / batch-synchronous: {s['ours_vs_batch_sync']:.2f}x; ours / Alpaca-style: {s['ours_vs_alpaca']:.1f}x")
    if not args.no_evolve:
        e = results["evolve"] = evolve_scenario(args)
        print(f"\n== evolve stage, fixed latency {e['latency_s']} s, capacity {e['capacity']}: {e['slots']} slots x "
              f"{e['rounds']} rounds; ideal = calls x latency / C")
        print(f"{'run':<26}{'calls':>7}{'kept':>6}{'wall s':>9}{'ideal s':>9}{'calls/s':>9}{'of ideal':>10}"
              f"{'client CPU ms/call':>20}")
        for name, r in e["rows"].items():
            print(f"{name:<26}{sum(r['calls'].values()):>7}{r['kept']:>6}{r['wall_s']:>9.2f}{r['ideal_s']:>9.2f}"
                  f"{r['calls_per_s']:>9.1f}{r['fraction_of_ideal']:>10.2f}{r['cpu_ms_per_call']:>20.2f}")
        print(f"calls by kind {e['rows']['as_a_run']['calls']}, rejected {e['rows']['as_a_run']['rejected']}")
        fixed = next((s for s in results["server"] if s["dist"] == "fixed"), None)
        side = f"bootstrap-style prompts (ours) {fixed['clients']['ours']['fraction_of_ideal']:.2f}, " if fixed else ""
        print(f"fraction of ideal at fixed latency: {side}evolve {e['rows']['as_a_run']['fraction_of_ideal']:.2f} "
              f"(without the cache {e['rows']['no_cache']['fraction_of_ideal']:.2f}); target >= 0.9")
    if not args.no_hf:
        h = hf_scenario(args)
        results["hf"] = h
        print(f"\n== local HF teacher, {h['model']}, {h['prompts']} prompts, up to {h['max_new_tokens']} new tokens")
        for name, r in h["rows"].items():
            print(f"{name:<16} batch {r['batch_size']:>3}: {r['tokens']:>5} tokens in {r['wall_s']:.1f} s = "
                  f"{r['tokens_per_s']:.1f} tokens/s")
        print(f"batched / one at a time: {h['batched_vs_one']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
