"""Teacher throughput, side by side in one run.

Against a local OpenAI-compatible server (benchmarks/_latency_server.py, its own process)
with a fixed or lognormal latency per request and a capacity of C concurrent requests:
- ours: pipeline.teachers.OpenAITeacher, C requests in flight, refilled as each finishes;
- Alpaca-style: 5 prompts per completions request, one request at a time (measured on a
  sample, since it is slow; its rate does not depend on how many prompts follow);
- batch-synchronous: C requests at a time, waiting for the whole batch before the next.
Reports prompts/s, the fraction of the concurrency-bound ideal (C / mean latency) and the
client's CPU time per request. Then the local HF teacher's tokens/s on the embedded model,
batched against one prompt at a time.

    python benchmarks/generation.py                 # everything
    python benchmarks/generation.py --no-hf --n 1024  # server part only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from pipeline.teachers import GenParams  # noqa: E402
from pipeline.teachers.openai_compat import OpenAITeacher  # noqa: E402

PARAMS = GenParams(max_tokens=64, temperature=0.7, top_p=0.5)


def start_server(capacity: int, latency: float, dist: str, sigma: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_latency_server.py")),
                             "--capacity", str(capacity), "--latency", str(latency), "--dist", dist,
                             "--sigma", str(sigma)], stdout=subprocess.PIPE, text=True)
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
    ap.add_argument("--no-hf", action="store_true", help="skip the embedded-model part")
    ap.add_argument("--hf-prompts", type=int, default=32)
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--hf-tokens", type=int, default=48)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    results = {"server": [server_scenario(d, args) for d in ("fixed", "lognormal")]}
    for s in results["server"]:
        print(f"\n== {s['dist']} latency, mean {s['mean_latency_s']} s, capacity {s['capacity']}: "
              f"ideal {s['ideal_prompts_per_s']:.0f} prompts/s")
        print(f"{'client':<20}{'prompts':>8}{'wall s':>9}{'prompts/s':>11}{'of ideal':>10}{'client CPU ms/req':>19}")
        for name, r in s["clients"].items():
            note = "  (sampled)" if r.get("sampled") else ""
            print(f"{name:<20}{r['prompts']:>8}{r['wall_s']:>9.2f}{r['prompts_per_s']:>11.1f}"
                  f"{r['fraction_of_ideal']:>10.2f}{r['cpu_ms_per_request']:>19.2f}{note}")
        print(f"ours / batch-synchronous: {s['ours_vs_batch_sync']:.2f}x; ours / Alpaca-style: {s['ours_vs_alpaca']:.1f}x")
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
