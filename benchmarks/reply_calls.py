"""The calls a bootstrap request makes besides aiohttp and its own filter, each timed alone (issue 20): this tree and
--base side by side in one run, each in a fresh process importing `pipeline` from its tree.

On the teacher's event loop, per request: the cache key, the cache lookup (as fastpath.py makes it in each tree),
the request body, the endpoint pick, the reply read and settled, and the commit of one reply. On the stream's
thread: the manifest's count of the records a reply wrote (RunDir.counts, read from the start by a fresh RunDir,
over 2,000 kept records and 300 rejected ones written as bootstrap writes them), and a candidate's token ids.

Each figure is the least CPU (time.thread_time) of --repeat passes over --calls calls, in microseconds a call (the
count: a record), so other jobs on the machine lengthen it little. End to end, the same work is timed by
stage_threads.py and client_cpu.py.

    nice -n -5 python benchmarks/reply_calls.py --base main
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import client_cpu  # noqa: E402  (benchmarks/ is not a package)

LABELS = ("cache key", "cache lookup (loop)", "request body", "endpoint pick", "reply read and settled",
          "commit of one reply", "manifest count, a record", "token ids, a candidate")


def least(fn, calls: int, repeat: int) -> float:
    """Microseconds of CPU a call: the least of `repeat` passes."""
    best = float("inf")
    for _ in range(repeat):
        t = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, time.thread_time() - t)
    return 1e6 * best / calls


def child(args: argparse.Namespace) -> dict[str, float]:
    from pipeline.cache import ResponseCache
    from pipeline.records import Task
    from pipeline.similarity import RougeLIndex
    from pipeline.store import JsonlWriter, RunDir
    from pipeline.teachers.base import Completion, GenParams, Request
    from pipeline.teachers.openai_compat import OpenAITeacher
    from pipeline.teachers.wire import decoded, read_reply

    folder = Path(tempfile.mkdtemp(prefix="reply-calls-"))
    t = OpenAITeacher("bench", base_url="http://127.0.0.1:9/v1", concurrency=64, api="chat", structured="off", seed=1)
    t.cache, t.session, t.usage_model = ResponseCache(folder / "cache.sqlite"), "s", "bench"
    texts = client_cpu.pool_texts(2400)
    listed = "\n".join(f"{i}. {text}" for i, text in enumerate(texts[:8], 1))
    prompt = (client_cpu.REPO / "prompts" / "bootstrap.txt").read_text().replace("$tasks", listed)
    params = GenParams(max_tokens=1024, temperature=0.7, top_p=0.5, stop=("\n\n", "\n16", "16.", "16 ."))
    reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "\n".join(
        f"{i}. {text}" for i, text in enumerate(texts[8:15], 9))}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 120}}).encode()
    t.cache.record_many([(f"{i:064x}", Completion("x", "stop", 1, 1), "s", "bootstrap", {"calls": 1}, "bench")
                         for i in range(3000)])
    req = Request(1, prompt, "salt")
    key = t.cache_key(req, params)
    alone = "alone" in inspect.signature(t.lookup).parameters  # the loop's own lookup, where the tree has one
    counts, owner = [0], [0]
    n = iter(range(10**9))

    def commit() -> None:
        c = Completion("a reply", "stop", 300, 120)
        t.cache.record_many([(f"k{next(n)}", c, "s", "bootstrap", {"calls": 1}, "bench")])

    def settle() -> None:
        t.settle(req, read_reply("chat", decoded("u", 200, {}, reply), False), params, "bootstrap", key)

    run = RunDir(folder / "run")
    with JsonlWriter(run.stage_file("bootstrap"), hold_s=float("inf")) as kept, \
            JsonlWriter(run.rejected_file, hold_s=float("inf")) as rejected:
        for i, text in enumerate(texts[:2300]):
            task = Task(id=f"t{i}", instruction=text, stage="bootstrap", round=i // 7, teacher="openai:bench",
                        prompt="bootstrap.txt", avg_similarity_score=0.1 + i / 1e5,
                        most_similar_instructions={other: 0.2 + j / 100 for j, other in enumerate(texts[i + 1:i + 11])})
            if i % 8 == 7:
                rejected.write(task.rejected(f"rouge_l: 0.8{i % 10} > 0.7 vs {texts[i + 1]!r}", "bootstrap"))
            else:
                kept.write(task)
            if i % 7 == 6:  # a reply's records, in one write each file
                kept.flush()
                rejected.flush()
    index = RougeLIndex()
    for text in texts[:2000]:
        index.add(text)
    candidates = iter(texts[2000:2400] * 10**6)

    def ids() -> None:
        index._ids(next(candidates))

    c, r = args.calls, args.repeat
    return {
        "cache key": least(lambda: t.cache_key(req, params), c, r),
        "cache lookup (loop)": least((lambda: t.lookup(req, params, key, alone=True)) if alone else
                                     (lambda: t.lookup(req, params, key)), c, r),
        "request body": least(lambda: json.dumps(t.body_of("chat", prompt, params, "salt", 1024)).encode(), c, r),
        "endpoint pick": least(lambda: t.failover.pick(counts, owner), c, r),
        "reply read and settled": least(settle, c, r),
        "commit of one reply": least(commit, max(1, c // 10), r),
        "manifest count, a record": least(lambda: RunDir(folder / "run").counts(), 1, r) / 2300,
        "token ids, a candidate": least(ids, 400, r),
    }


def main() -> None:
    ap = client_cpu.side_by_side_parser(__doc__, "main")
    ap.add_argument("--calls", type=int, default=2000, help="calls a pass")
    ap.add_argument("--repeat", type=int, default=7, help="passes; the least is kept")
    args = ap.parse_args()
    if client_cpu.answered_child(args, child):
        return
    print(client_cpu.header(args.base, f"least CPU of {args.repeat} passes of {args.calls} calls") + "\n")
    out, rows = Path(tempfile.mkdtemp()) / "r.json", {}
    for label, tree in (("this tree", client_cpu.REPO), (f"base {args.base}", client_cpu.extract(args.base))):
        rows[label] = (client_cpu.run_child(__file__, tree, out, "calls", "--calls", str(args.calls), "--repeat",
                                            str(args.repeat)), os.getloadavg()[0])
    names = list(rows)
    print(f"| us a call | {' | '.join(names)} |\n|---|" + "---:|" * len(names))
    for label in LABELS:
        print(f"| {label} | {' | '.join(f'{rows[n][0][label]:.2f}' for n in names)} |")
    print(f"| load avg (1 min) after | {' | '.join(f'{rows[n][1]:.1f}' for n in names)} |")


if __name__ == "__main__":
    main()
