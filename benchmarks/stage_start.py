"""What a per-task stage reads before its first request: `classify` resumed on a run of 2,000 bootstrap tasks,
1,000 of them classified and 150 rejected, this tree and --base side by side, each in a fresh process importing
`pipeline` from its tree.

The start is what the loop and the stage do before any request: the loop's bar (map_progress: the tasks done
already) and the stage's TaskMap (the same, to skip them). Counted: the whole-file JSONL reads of each file
(store.read_jsonl) and the wall and CPU time of the two, the least of --repeat starts.

    python benchmarks/stage_start.py --base main
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import client_cpu  # noqa: E402  (benchmarks/ is not a package)

TASKS, CLASSIFIED, REJECTED = 2000, 1000, 150


def make_run(folder: Path) -> Path:
    """The run: bootstrap.jsonl with TASKS tasks, classify.jsonl with the first CLASSIFIED, rejected.jsonl with
    REJECTED of the rest rejected by classify, each record as bootstrap and classify write them."""
    from pipeline.records import Task
    from pipeline.store import RunDir, write_jsonl_atomic

    run = RunDir(folder / "run").ensure()
    texts = client_cpu.pool_texts(TASKS + 10)
    tasks = [Task(id=f"t{i}", instruction=text, stage="bootstrap", round=i // 7, teacher="openai:bench",
                  prompt="bootstrap.txt", avg_similarity_score=0.1,
                  most_similar_instructions={other: 0.2 for other in texts[i + 1:i + 11]})
             for i, text in enumerate(texts[:TASKS])]
    write_jsonl_atomic(run.stage_file("bootstrap"), tasks)
    write_jsonl_atomic(run.stage_file("classify"), [Task(**{**t.to_dict(), "stage": "classify",
                                                            "is_classification": i % 3 == 0})
                                                    for i, t in enumerate(tasks[:CLASSIFIED])])
    write_jsonl_atomic(run.rejected_file, [t.rejected("classify_unparsed: no Yes or No", "classify")
                                           for t in tasks[CLASSIFIED:CLASSIFIED + REJECTED]])
    return run.path


def child(args) -> dict:
    from types import SimpleNamespace

    from pipeline import store
    from pipeline.context import Records
    from pipeline.stages.common import TaskMap, map_progress
    from pipeline.teachers import GenParams

    run = store.RunDir(Path(args.run))
    records = Records(store.read_tasks(run.stage_file("bootstrap")), "bootstrap")
    reads: collections.Counter = collections.Counter()
    real = store.read_jsonl

    def counted(path, **kw):
        reads[Path(path).name] += 1
        return real(path, **kw)

    best_wall = best_cpu = float("inf")
    for i in range(args.repeat):
        run = store.RunDir(Path(args.run))  # each start a fresh RunDir, as each command's
        store.read_jsonl = counted if i == 0 else real
        wall, cpu = time.perf_counter(), time.process_time()
        bar = map_progress(SimpleNamespace(run=run), "classify", records)
        with TaskMap(run, "classify", GenParams(max_tokens=3), prompt_for=lambda t: "p",
                     finish=lambda t, r, last: t, max_retries=0) as task_map:
            done = len(task_map.done)
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    store.read_jsonl = real
    return {"reads": dict(reads), "wall_ms": 1000 * best_wall, "cpu_ms": 1000 * best_cpu, "bar": list(bar),
            "done": done}


def main() -> None:
    ap = client_cpu.side_by_side_parser(__doc__, "main")
    ap.add_argument("--repeat", type=int, default=5, help="starts; the least time is kept")
    ap.add_argument("--run", help="the run to start on (default: one made here)")
    args = ap.parse_args()
    if client_cpu.answered_child(args, child):
        return
    folder = Path(tempfile.mkdtemp(prefix="stage-start-"))
    if not args.run:
        sys.path.insert(0, str(client_cpu.REPO))
        args.run = str(make_run(folder))
    print(client_cpu.header(args.base, f"classify resumed on {TASKS:,} tasks, {CLASSIFIED:,} classified, "
                                       f"{REJECTED} rejected; least of {args.repeat} starts") + "\n")
    out, rows = folder / "r.json", {}
    for label, tree in (("this tree", client_cpu.REPO), (f"base {args.base}", client_cpu.extract(args.base))):
        rows[label] = (client_cpu.run_child(__file__, tree, out, "start", "--run", args.run, "--repeat",
                                            str(args.repeat)), os.getloadavg()[0])
    names = list(rows)

    def row(what: str, cell) -> None:
        print(f"| {what} | {' | '.join(cell(rows[n][0]) for n in names)} |")

    print(f"| at the start | {' | '.join(names)} |\n|---|" + "---:|" * len(names))
    for f in sorted({f for r, _ in rows.values() for f in r["reads"]}):
        row(f"whole reads of {f}", lambda r, f=f: str(r["reads"].get(f, 0)))
    row("wall ms", lambda r: f"{r['wall_ms']:.1f}")
    row("CPU ms", lambda r: f"{r['cpu_ms']:.1f}")
    row("bar (stage, total, done); TaskMap's done", lambda r: f"{tuple(r['bar'])}; {r['done']}")
    print(f"| load avg (1 min) after | {' | '.join(f'{rows[n][1]:.1f}' for n in names)} |")

if __name__ == "__main__":
    main()
