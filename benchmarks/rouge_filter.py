"""Benchmark the Self-Instruct ROUGE-L diversity filter (reject if F > 0.7).

Side by side, on the same incremental workload (seed instructions added to the
pool, then every further sentence filtered against the pool as it grows):

1. the Stanford Alpaca loop: per candidate, a multiprocessing Pool maps
   rouge_scorer._score_lcs over the pre-tokenized pool, then most-similar
   top-10 via argsort and the mean score (as generate_instruction.py does);
2. rouge-score-rs ``score_batch`` (candidate repeated against the pool texts);
3. ours: RougeLIndex.filter_batch in batches, and filter_batch_detailed
   (top-10 + mean for every candidate), plus the add_if_novel loop.

The two baselines are too slow to run in full: they are timed on a sample of
candidates, at their real position against the pool as it stood then, and the
per-pair cost is extrapolated to all pairs of the run; the output says so.
Their decisions and scores on the sample are checked against ours.

    python benchmarks/rouge_filter.py                  # 1K, 5K, 20K, 52K
    python benchmarks/rouge_filter.py --fast           # CI smoke test
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import multiprocessing
import os
import platform
import random
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import instructions, seed_instructions  # noqa: E402

from pipeline.similarity import RougeLIndex  # noqa: E402

try:
    from rouge_score_rs import rouge_scorer as rs_scorer
except ImportError:
    rs_scorer = None

THRESHOLD = 0.7


# ------------------------------------------------------------------ measuring
def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Peak resident memory of a phase, above the RSS when it started (Linux).

    Resets the kernel's high-water mark through /proc/self/clear_refs, so no
    allocation tracing slows the timed code down.
    """

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = _status_mib("VmRSS")
        return self

    def __exit__(self, *exc):
        self.mib = _status_mib("VmHWM") - self.base

    def __str__(self):
        return f"+{self.mib:.0f} MiB"


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip()
                     for line in subprocess.run(["lscpu"], capture_output=True, text=True
                                                ).stdout.splitlines()
                     if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    pkgs = ", ".join(f"{p} {version(p)}" for p in
                     ("numba", "rapidfuzz", "numpy", "rouge-score", "rouge-score-rs"))
    return (f"{os.cpu_count()}-core {platform.machine()} CPU ({model}), "
            f"Python {platform.python_version()}, {pkgs}")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------- workloads
class Workload:
    def __init__(self, size: int, seed: int):
        texts = instructions(size, seed)
        self.n_seed = min(len(seed_instructions()), size)
        self.seeds, self.candidates = texts[:self.n_seed], texts[self.n_seed:]


def run_ours(w: Workload, mode: str, batch: int):
    """Full run of one of our modes; returns (seconds, per-candidate results, PeakRSS)."""
    idx = RougeLIndex()
    for s in w.seeds:
        idx.add(s)
    with PeakRSS() as mem:
        t = time.perf_counter()
        if mode == "loop":
            out = [idx.add_if_novel(c, THRESHOLD) for c in w.candidates]
        else:
            run = idx.filter_batch if mode == "filter" else idx.filter_batch_detailed
            out = []
            for b in range(0, len(w.candidates), batch):
                out += run(w.candidates[b:b + batch], THRESHOLD)
        t = time.perf_counter() - t
    return t, out, mem


def pools_at(w: Workload, decisions):
    """Pool size before each candidate, and the order in which texts joined."""
    sizes, pool = [], list(w.seeds)
    for c, d in zip(w.candidates, decisions, strict=True):
        sizes.append(len(pool))
        if d[0]:
            pool.append(c)
    return sizes, pool


def alpaca_candidate(procs, tokens, all_texts, pool_tokens):
    """Stanford Alpaca generate_instruction.py, per new instruction."""
    with multiprocessing.Pool(procs) as p:
        rouge_scores = p.map(partial(rouge_scorer._score_lcs, tokens), pool_tokens)
    rouge_scores = [score.fmeasure for score in rouge_scores]
    most_similar = {all_texts[i]: rouge_scores[i] for i in np.argsort(rouge_scores)[-10:][::-1]}
    return max(rouge_scores), float(np.mean(rouge_scores)), most_similar


def rs_candidate(scorer, text, pool_texts):
    scores = scorer.score_batch([text] * len(pool_texts), pool_texts)
    return max(s["rougeL"].fmeasure for s in scores)


def sampled_baselines(w: Workload, decisions, detailed, sample: int, seed: int):
    """Time the baselines on sampled candidates; check them against our results."""
    sizes, joined = pools_at(w, decisions)
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(len(w.candidates)), min(sample, len(w.candidates))))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tokens = {t: scorer._tokenizer.tokenize(t) for t in set(joined) | {w.candidates[j] for j in picks}}
    procs = os.cpu_count()
    rs = rs_scorer.RougeScorer(["rougeL"], use_stemmer=False) if rs_scorer else None
    res = {"pairs": sum(sizes[j] for j in picks), "alpaca_s": 0.0, "rs_s": 0.0,
           "mismatch": 0, "rs_mismatch": 0, "checked": len(picks)}
    with PeakRSS() as mem:
        for j in picks:
            pool = joined[:sizes[j]]
            pool_tokens = [tokens[t] for t in pool]
            t = time.perf_counter()
            best, mean, most_similar = alpaca_candidate(procs, tokens[w.candidates[j]],
                                                        pool, pool_tokens)
            res["alpaca_s"] += time.perf_counter() - t
            ours, det = decisions[j], detailed[j]
            top_values = sorted(most_similar.values(), reverse=True)
            if ((best <= THRESHOLD) != ours[0] or float(best).hex() != ours[1].hex()
                    or float(mean).hex() != det.mean_score.hex()
                    or top_values != sorted({pool[i]: s for i, s in det.top_k}.values(), reverse=True)):
                res["mismatch"] += 1
            if rs is not None:
                t = time.perf_counter()
                rs_best = rs_candidate(rs, w.candidates[j], pool)
                res["rs_s"] += time.perf_counter() - t
                res["rs_mismatch"] += (rs_best <= THRESHOLD) != ours[0] or rs_best != ours[1]
    res["alpaca_mem"] = f"{mem} (parent process, sample)"
    return res, sum(sizes)


# ---------------------------------------------------------------------- main
def fmt_time(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s" if s >= 0.1 else f"{s * 1e3:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,5000,20000,52000",
                    help="comma-separated numbers of sentences (seeds included)")
    ap.add_argument("--sample", type=int, default=8,
                    help="candidates per size on which the baselines are timed and checked")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=100,
                    help="candidates per filter_batch call (Alpaca makes ~100 per round)")
    ap.add_argument("--no-loop", action="store_true", help="skip the add_if_novel loop")
    ap.add_argument("--fast", action="store_true", help="CI smoke: --sizes 1000 --sample 2")
    args = ap.parse_args()
    sizes = [1000] if args.fast else [int(s) for s in args.sizes.split(",")]
    sample = 2 if args.fast else args.sample

    print(f"# ROUGE-L filter benchmark\n\n{machine()}\n")
    print(f"threshold {THRESHOLD}, seed {args.seed}, batch {args.batch}, {load()} at start")
    if rs_scorer is None:
        print("rouge-score-rs: not installed (pip install rouge-score-rs failed or skipped)")

    t = time.perf_counter()
    warm = RougeLIndex()  # numba compiles (or loads its cache) on first use
    warm.add("first call")
    warm.filter_batch_detailed(["first call latency", "x " * 100])
    warm.max_score("y " * 70)
    print(f"first-call latency (numba compile or cache load): {fmt_time(time.perf_counter() - t)}"
          f", backend {warm.backend}\n")

    for size in sizes:
        w = Workload(size, args.seed)
        n = len(w.candidates)
        t_f, dec, mem_f = run_ours(w, "filter", args.batch)
        t_d, det, mem_d = run_ours(w, "detailed", args.batch)
        assert [(d.added, d.max_score) for d in det] == dec
        loop = None if args.no_loop else run_ours(w, "loop", args.batch)
        assert loop is None or loop[1] == dec
        base, pairs = sampled_baselines(w, dec, det, sample, args.seed)
        alpaca = base["alpaca_s"] / base["pairs"] * pairs
        rs = base["rs_s"] / base["pairs"] * pairs if rs_scorer else None
        kept = sum(d[0] for d in dec)
        print(f"\n## {size:,} sentences: {w.n_seed} seeds + {n:,} candidates, {kept:,} kept, "
              f"{pairs:,} pairs\n")
        print("| method | total | pairs/s | candidates/s | peak memory | vs Alpaca | vs rs | "
              "decisions on sample |\n|---|---|---|---|---|---|---|---|")
        ok = f"{base['checked'] - base['mismatch']}/{base['checked']} equal to Alpaca"
        rows = [("Alpaca loop (rouge-score, Pool) *", alpaca, base["alpaca_mem"], "reference")]
        if rs:
            rows.append(("rouge-score-rs score_batch *", rs, "-",
                         f"{base['checked'] - base['rs_mismatch']}/{base['checked']} equal"))
        rows += [("ours: filter_batch", t_f, mem_f, ok),
                 ("ours: filter_batch_detailed (top-10 + mean)", t_d, mem_d, ok)]
        if loop:
            rows.append(("ours: add_if_novel loop", loop[0], loop[2], ok))
        for method, total, mem, check in rows:
            ours = method.startswith("ours")
            vs_alpaca = f"{alpaca / total:,.0f}x" if ours else "-"
            vs_rs = f"{rs / total:,.1f}x" if ours and rs else "-"
            print(f"| {method} | {fmt_time(total)} | {pairs / total:,.0f} | {n / total:,.1f} | "
                  f"{mem} | {vs_alpaca} | {vs_rs} | {check} |")
        print(f"\n\\* extrapolated: timed on {base['checked']} sampled candidates "
              f"({base['pairs']:,} pairs) against the pool as it stood for each, "
              f"per-pair cost x {pairs:,} pairs.")
        if base["mismatch"] or base["rs_mismatch"]:
            print(f"!! mismatches: ours vs Alpaca {base['mismatch']}, rs vs ours {base['rs_mismatch']}")
    print(f"\n{load()} at end")


if __name__ == "__main__":
    main()
