"""Does scoring a bootstrap reply's lines together pay? (issue 20) Client CPU per reply of 7 candidate lines, each
asked for its max, top-10 and mean against the pool: one line at a time (RougeLIndex: one row per line) against
all 7 scored together (ScoredTogether: the tail read once, the per-line set-up of the frozen pass in one call),
side by side in one process, alternating, at pool sizes of real Alpaca and seed instructions then synthetic ones
(benchmarks/client_cpu.py `pool_texts`; the last 200 added after the freeze, so the tail is scanned too).

    PYTHONPATH=. python3 benchmarks/bootstrap_together.py [--pools 500,2000,20000] [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import SentenceGenerator  # noqa: E402
from client_cpu import pool_texts  # noqa: E402

from pipeline.similarity import RougeLIndex  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", default="500,2000,20000")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--replies", type=int, default=30)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}\n\n| pool | one line at a time, ms/reply (min / median) "
          "| together, ms/reply (min / median) | load avg (1 min) |\n|---:|---:|---:|---:|")
    for n in map(int, args.pools.split(",")):
        texts = pool_texts(n)
        index = RougeLIndex()
        for text in texts[:n - 200]:
            index.add(text)
        index.max_score("freeze the pool")
        for text in texts[n - 200:]:
            index.add(text)
        gen = SentenceGenerator(99)
        gen.history.extend(texts)
        replies = [[gen.sentence() for _ in range(7)] for _ in range(args.replies)]

        def one_by_one(lines: list[str], index: RougeLIndex = index) -> None:
            for line in lines:
                index.max_score(line), index.top_k(line, 10), float(np.mean(index.scores(line)))

        def together(lines: list[str], index: RougeLIndex = index) -> None:
            rows = index.scored_together(lines)
            for line in lines:
                rows.max_score(line), rows.top_k(line, 10), float(np.mean(rows.scores(line)))

        for fn in (one_by_one, together):
            fn(replies[0])  # kernels compiled or loaded
        times: dict[str, list[float]] = {"one_by_one": [], "together": []}
        for _ in range(args.rounds):
            for fn in (one_by_one, together):
                cpu = time.process_time()
                for lines in replies:
                    fn(lines)
                times[fn.__name__].append(1000 * (time.process_time() - cpu) / len(replies))
        a, b = times["one_by_one"], times["together"]
        print(f"| {n:,} | {min(a):.3f} / {statistics.median(a):.3f} | {min(b):.3f} / {statistics.median(b):.3f} "
              f"| {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
