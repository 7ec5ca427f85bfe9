"""Does choosing rows beat having more? All machine rows vs the judge's top half vs the IFD top half vs a random half.

Issue 14's experiment, on the embedded SmolLM2-135M-Instruct as teacher, judge and student:

1. generate: Self-Instruct with the embedded teacher (bootstrap, classify, instances,
   filter) until at least --tasks machine tasks survive the filter;
2. score (the judge: --judge, default the same embedded model, which rates by the log-probability
   of Yes to "Good example?": score.method auto; a server judge writes a 1-5 rating) and ifd
   (the student);
3. one arm per selection, each in its own copy of the run: select (near-duplicates out in
   every arm, then by = all | judge | ifd | random with frac 0.5; IFD keeps HIGH IFD below
   1.0, as Cherry LLM does), export --include selected with the human seed tasks added to
   the train split the same way in every arm, train with the same settings (the same
   epochs; the halves therefore take fewer steps);
4. evaluate every adapter on the same fixed sample of --eval-n user-oriented tasks
   (../shared/data/user_oriented_instructions.jsonl, sample seed 0): base answers once,
   each adapter's answers, ROUGE-L against the reference, and paired bootstrap 95%
   intervals of each arm against the base and against the all-rows arm.

Writes <out>/results.json and prints a Markdown table for benchmarks/RESULTS.md, with the
wall and CPU time of every phase. Resumable: each phase skips what its files already hold.

    python benchmarks/select_experiment.py --tiny          # smoke test: a few tasks, 2 steps, 4 eval prompts
    python benchmarks/select_experiment.py                 # the experiment (hours on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = ("all", "judge", "ifd", "random")
COPIED = ("filter.jsonl", "score.jsonl", "ifd.jsonl", "rejected.jsonl", "manifest.json")  # what an arm starts from


class Clock:
    """Wall and CPU seconds per phase."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        clock = self

        class Phase:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()
                print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)

            def __exit__(self, *exc):
                done = {"wall_s": round(time.perf_counter() - self.wall, 1), "cpu_s": round(time.process_time() - self.cpu, 1)}
                clock.phases[name] = done
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {done}", flush=True)

        return Phase()


def settings(args: argparse.Namespace) -> dict:
    """Every setting of the run as dotted config keys; --tiny shrinks the costly ones."""
    s = {"output_dir": str(args.out), "run_name": "gen", "seed": args.seed, "teacher.spec": "embedded",
         "stages": ["bootstrap", "classify", "instances", "filter"],
         "bootstrap.num_instructions": math.ceil(args.tasks * 1.25),  # the filter drops some; topped up below
         "select.frac": 0.5, "export.include": ["selected"], "export.include_seeds": True,
         "train.epochs": args.epochs, "train.max_seq_len": 512, "train.save_steps": 10 ** 6,
         # a 135M student fits in memory many times over; recomputing activations only costs CPU time
         "train.gradient_checkpointing": False}
    # The judge is its own teacher so that its retries can differ: a server judge that cannot write a rating
    # should not cost 7 calls a row (the embedded 135M model, asked for a written rating, returned no usable
    # one for any of 10 instances in 7 tries each; it is now asked Yes or No instead, score.method auto).
    s.update({"score.teacher.spec": args.judge or "embedded", "score.teacher.max_retries": args.judge_retries})
    if args.judge_base_url:
        s["score.teacher.base_url"] = args.judge_base_url
    if args.tiny:
        s.update({"bootstrap.max_tokens": 96, "bootstrap.max_requests": 12, "instances.max_tokens": 64,
                  "train.max_steps": 2, "train.batch_size": 2, "train.grad_accum": 1, "score.max_tokens": 24})
    return s


def generate(args, clock) -> Path:
    from pipeline.config import load_config
    from pipeline.runner import Session
    from pipeline.stages.score import run_score

    cfg = load_config(None, settings(args))
    run = cfg.run_dir
    for attempt in range(4):  # top up the bootstrap target until enough tasks survive the filter
        with clock(f"generate (pass {attempt + 1})"):
            Session(cfg, log=print).run_all()
        kept = sum(1 for line in (run / "filter.jsonl").read_text().splitlines() if line.strip())
        print(f"generate: {kept} machine tasks kept by the filter")
        if kept >= args.tasks or args.tiny:
            break
        cfg.bootstrap.num_instructions += math.ceil((args.tasks - kept) * 1.5)
    with clock("score (judge)"):
        session = Session(cfg, log=print)
        tasks = session.run.read_stage("filter")
        try:  # a probe first: a judge that rates none of the first rows is not asked about the rest
            run_score(session.judge, tasks[:args.judge_probe], cfg, session.run, session.prompts)
        finally:
            session.close()
        if session.run.read_stage("score"):
            Session(cfg, log=print).run_steps(["score"])
        else:
            print(f"score: the judge rated none of the first {args.judge_probe} tasks' rows; the rest are not asked")
    with clock("ifd (student)"):
        Session(cfg, log=print).run_steps(["ifd"])
    return run


def arm(args, clock, run: Path, name: str) -> Path:
    """Select, export and train one arm in its own copy of the run; returns the adapter folder."""
    from pipeline.config import load_config
    from pipeline.runner import Session

    dest = args.out / f"arm-{name}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in COPIED:
        if (run / f).is_file() and not (dest / f).is_file():
            shutil.copy2(run / f, dest / f)
    over = {**settings(args), "run_name": dest.name, "select.by": name}
    cfg = load_config(None, over)
    session = Session(cfg, log=print)
    with clock(f"{name}: select + export"):
        session.run_steps(["select", "export"])
    with clock(f"{name}: train"):
        Session(cfg, log=print).run_steps(["train"])
    return session.adapter_dir


def evaluate(args, clock, adapters: dict[str, Path]) -> dict:
    from pipeline.config import EvalConfig
    from pipeline.similarity import rouge_l
    from pipeline.train.eval import generate as answer
    from pipeline.train.eval import load_eval_items, load_with_adapter, score_summary

    data = REPO.parent / "shared" / "data" / "user_oriented_instructions.jsonl"
    cfg = EvalConfig(data=str(data), limit=args.eval_n, seed=0, max_new_tokens=32 if args.tiny else 256)
    items = [it if isinstance(it, dict) else vars(it) for it in load_eval_items(cfg.data, cfg.limit, cfg.seed)]
    prompts = [it["messages"] for it in items]
    kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, repetition_penalty=cfg.repetition_penalty)
    answers_file = args.out / "answers.json"
    answers = json.loads(answers_file.read_text()) if answers_file.is_file() else {}
    for name, adapter in adapters.items():
        if name in answers and (name != "all" or "base" in answers):
            continue
        model, tokenizer = load_with_adapter(adapter, quant=cfg.quant)
        if "base" not in answers:
            with clock("eval: base answers"), model.disable_adapter():
                answers["base"] = answer(model, tokenizer, prompts, **kw)
        with clock(f"eval: {name} answers"):
            answers[name] = answer(model, tokenizer, prompts, **kw)
        answers_file.write_text(json.dumps(answers, indent=1))
    scores = {name: [rouge_l(a, it["reference"]) for a, it in zip(texts, items, strict=True)]
              for name, texts in answers.items()}

    class Pair(dict):  # score_summary reads items as dicts or as EvalItem attributes, depending on its version
        __getattr__ = dict.__getitem__

    def paired(a: str, b: str) -> dict:
        """b against a on the same prompts: b's mean minus a's, with the paired bootstrap interval and sign test."""
        return score_summary([Pair(rouge_l_base=x, rouge_l_adapter=y) for x, y in zip(scores[a], scores[b], strict=True)],
                             seed=0)

    halves = [n for n in ("judge", "ifd", "random") if n in adapters]
    return {"data": str(data), "n_prompts": len(items), "n_tasks": args.eval_n, "max_new_tokens": cfg.max_new_tokens,
            "vs_base": {n: paired("base", n) for n in adapters}, "vs_all": {n: paired("all", n) for n in adapters if n != "all" and "all" in adapters},
            # the halves against each other: does a selection beat a random half of the same size?
            "between_halves": {f"{b} vs {a}": paired(a, b) for i, a in enumerate(halves) for b in halves[i + 1:]}}


def table(results: dict) -> str:
    ev, arms = results["eval"], results["arms"]
    lines = ["| arm | train rows | ROUGE-L | vs base (95% CI) | vs all (95% CI) |", "|---|---:|---:|---|---|"]
    for name in arms:
        b = ev["vs_base"][name]
        a = ev["vs_all"].get(name)
        cell = lambda s: f"{s['delta']:+.4f} [{s['delta_ci95'][0]:+.4f}, {s['delta_ci95'][1]:+.4f}]"  # noqa: E731
        lines.append(f"| {name} | {arms[name]['train_rows']} | {b['adapter']:.4f} | {cell(b)} | {cell(a) if a else '-'} |")
    base = next(iter(ev["vs_base"].values()))["base"]
    lines.append(f"\nBase ROUGE-L {base:.4f} on {ev['n_prompts']} prompts from {ev['n_tasks']} user-oriented tasks.")
    for pair, x in ev.get("between_halves", {}).items():
        lines.append(f"{pair}: {x['delta']:+.4f} [{x['delta_ci95'][0]:+.4f}, {x['delta_ci95'][1]:+.4f}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "select_experiment")
    p.add_argument("--tasks", type=int, default=200, help="machine tasks the filter must keep (default 200)")
    p.add_argument("--eval-n", type=int, default=100, help="user-oriented tasks in the fixed eval sample (default 100)")
    p.add_argument("--epochs", type=float, default=3.0, help="epochs of every arm (default 3, as Self-Instruct)")
    p.add_argument("--judge", default="", help="judge teacher spec, e.g. openai:MODEL (default: the embedded teacher)")
    p.add_argument("--judge-base-url", default="", help="the judge's OpenAI-compatible server")
    p.add_argument("--judge-retries", type=int, default=1, help="re-asks of an unparseable rating (default 1)")
    p.add_argument("--judge-probe", type=int, default=20, help="tasks the judge is tried on first (default 20)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tiny", action="store_true", help="smoke test: 8 tasks, 2 training steps, 4 eval tasks")
    args = p.parse_args(argv)
    if args.tiny:
        args.tasks, args.eval_n = min(args.tasks, 8), min(args.eval_n, 4)
        if args.out == REPO / "outputs" / "select_experiment":
            args.out = REPO / "outputs" / "select_experiment_tiny"
    args.out = args.out.resolve()
    from pipeline.errors import Seed2LoraError
    clock = Clock()
    run = generate(args, clock)
    adapters, arms, skipped = {}, {}, {}
    for name in args.arms.split(","):
        try:
            adapters[name] = arm(args, clock, run, name)
        except Seed2LoraError as e:  # e.g. a judge that rated nothing: the arm would be a random one in disguise
            skipped[name] = str(e)
            print(f"arm {name} not run: {e}")
            continue
        info = json.loads((args.out / f"arm-{name}" / "export" / "export.json").read_text())
        arms[name] = {"train_rows": info["counts"]["train_rows"], "eval_rows": info["counts"]["eval_rows"],
                      "selected": json.loads((args.out / f"arm-{name}" / "select.json").read_text())["kept_rows"]}
    results = {"settings": settings(args), "tiny": args.tiny, "arms": arms, "skipped": skipped,
               "eval": evaluate(args, clock, adapters)}
    results["phases"] = clock.phases
    results["total_cpu_s"] = round(sum(p["cpu_s"] for p in clock.phases.values()), 1)
    results["total_wall_s"] = round(sum(p["wall_s"] for p in clock.phases.values()), 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    for name, why in skipped.items():
        print(f"- {name}: not run ({why})")
    print(f"\nwall {results['total_wall_s']} s, CPU {results['total_cpu_s']} s (this process; torch threads included)")


if __name__ == "__main__":
    main()
