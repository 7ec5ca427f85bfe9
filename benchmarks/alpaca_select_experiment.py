"""Does choosing rows beat a random choice on real teacher data? Issue 21's experiment on Alpaca's davinci rows.

Data: ../shared/data/alpaca_davinci_4000.jsonl, 4,000 rows of the Stanford Alpaca data set (Taori et al.
2023), written by text-davinci-003 with a Self-Instruct-style pipeline; CC BY-NC 4.0, research use, credit
the Stanford Alpaca authors (see ../shared/data/README.md). Student: the embedded SmolLM2-135M-Instruct.

1. prepare: the rows become a run directory (WORK/data/filter.jsonl, one task per row), as if a strong
   teacher's run of this tool had just passed its filter;
2. ifd: the student's instruction-following difficulty of every row (pipeline.train.ifd, Cherry LLM);
3. score: the judge, the embedded model, rates every row by the log-probability of Yes to "Good example?"
   (score.method logprobs: an AlpaGasus-style quality rating, from a 135M judge instead of ChatGPT);
4. one arm per selection, each of --size rows, each in its own run directory WORK/arm-NAME:
   - random: a seeded random sample;
   - ifd: the highest IFD below 1.0 (Cherry LLM's direction; IFD >= 1 dropped as misaligned);
   - judge: the highest ratings (AlpaGasus's direction);
   - random-dedup: a random sample after near-duplicate removal (pipeline.neardup, select.near_dup_threshold);
   - all: every row (--no-all to skip it);
   each trained with the same settings for the same number of optimizer updates (--epochs over --size rows),
   so the all-rows arm sees each row a quarter as often, and no arm gets more training than another. No seed
   rows in any arm: the 252 references share the Self-Instruct authors' style with the seed tasks, so seed
   rows would decide the result (issue 21);
5. eval of the base and every arm on the 252 user-oriented tasks (../shared/data/user_oriented_instructions.jsonl):
   the reference loss on all of them (pipeline.train.eval.reference_losses), ROUGE-L and mean answer length
   on a fixed seeded sample of --rouge-n (greedy generation is the slow part on CPU). Each arm against the base
   and against the random arm: the paired difference with a bootstrap 95% interval (eval.paired_summary).

Writes WORK/results.json and WORK/results.md (the table, after every arm, so a partial run shows what it has)
and prints the wall and CPU seconds of every phase (WORK/phases.json keeps them across resumed runs).
Resumable: every phase writes its outputs under WORK and a re-run skips what is there; IFD and judge scores
are appended as they come, and training resumes from its last checkpoint (every --save-steps updates).

    python benchmarks/alpaca_select_experiment.py --work-dir /tmp/quick --quick   # smoke test, about a minute
    python benchmarks/alpaca_select_experiment.py --work-dir WORK                 # the experiment (CPU hours)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline.train  # noqa: E402, F401 -- first: sets OMP_WAIT_POLICY before torch loads (busy cores: ~4x faster)

DATA = REPO.parent / "shared" / "data"
ALPACA = DATA / "alpaca_davinci_4000.jsonl"
EVAL_TASKS = DATA / "user_oriented_instructions.jsonl"
# arm -> (select.by, near-duplicate removal). Only random-dedup removes near-duplicates, so it alone
# measures what removal is worth; IFD and the judge are ranked as their papers rank, on all rows.
ARMS = {"random": ("random", False), "ifd": ("ifd", False), "judge": ("judge", False),
        "random-dedup": ("random", True), "all": ("all", False)}


class Clock:
    """Wall and CPU seconds per phase, kept in WORK/phases.json across resumed runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.phases: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, name: str):
        clock = self

        class Phase:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()
                print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)

            def __exit__(self, kind, *rest):
                done = {"wall_s": round(time.perf_counter() - self.wall, 1), "cpu_s": round(time.process_time() - self.cpu, 1)}
                old = clock.phases.get(name)
                if old and old.get("interrupted"):  # resumed (scores appended, training from a checkpoint): add up
                    done = {k: round(done[k] + old[k], 1) for k in ("wall_s", "cpu_s")} | {"resumed": True}
                if kind is not None:
                    done["interrupted"] = True
                clock.phases[name] = done
                clock.path.write_text(json.dumps(clock.phases, indent=1) + "\n")
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {done}", flush=True)

        return Phase()


def settings(args: argparse.Namespace) -> dict:
    """The run settings every arm shares, as dotted config keys."""
    return {
        "output_dir": str(args.work_dir), "seed": args.seed, "teacher.spec": "embedded",
        "score.teacher.spec": "embedded", "score.method": "logprobs",
        "select.top": args.size, "select.seed": args.seed,
        # No seed rows (see the docstring); every selected row trains: the eval is the 252 tasks, not a split.
        "export.include": ["selected"], "export.include_seeds": False, "export.eval_fraction": 0.0,
        "export.formats": "messages",
        "train.model": args.student,
        # LoRA on the fp32 base, not QLoRA: on CPU the 4-bit base is about 2x slower (de-quantized in every
        # matmul) and the 135M base fits in memory many times over (RESULTS.md, QLoRA training, CPU).
        "train.quant": False,
        # 8 rows x 2 = 16 rows per update, qlora.py's effective batch; plain rows grouped by length (no packing),
        # so equal updates over equal-sized arms mean each row is seen equally often in every arm.
        "train.batch_size": args.batch_size, "train.grad_accum": args.grad_accum, "train.packing": False,
        "train.max_steps": updates(args),
        # Alpaca rows average far under 512 tokens with the template; the few longer are cut, the same in every arm
        "train.max_seq_len": 512,
        "train.gradient_checkpointing": False,  # memory is plentiful for 135M; recomputation only costs CPU time
        "train.optim": "adamw_torch",  # paged optimizer states are a GPU feature (bitsandbytes falls back on CPU)
        "train.save_steps": args.save_steps, "train.save_total_limit": 1,  # an interruption loses at most save_steps
        "train.eval_steps": 10 ** 6, "train.seed": args.seed,
    }


def updates(args: argparse.Namespace) -> int:
    """Optimizer updates of every arm: --epochs over --size rows at batch_size x grad_accum rows per update."""
    return args.updates or max(1, math.ceil(args.epochs * args.size / (args.batch_size * args.grad_accum)))


def prepare(args, clock) -> Path:
    """WORK/data/filter.jsonl: the first --rows Alpaca rows as filtered tasks (ids alpaca-NNNN)."""
    from pipeline.records import Instance, Task
    from pipeline.store import RunDir, write_jsonl_atomic

    run = RunDir(args.work_dir / "data").ensure()
    if run.stage_file("filter").is_file():
        return run.path
    with clock("prepare"):
        rows = [json.loads(line) for line in ALPACA.read_text(encoding="utf-8").splitlines() if line.strip()][:args.rows]
        write_jsonl_atomic(run.stage_file("filter"), [
            Task(id=f"alpaca-{i:04d}", instruction=r["instruction"], instances=[Instance(r.get("input", ""), r["output"])],
                 stage="filter", teacher="text-davinci-003 (Stanford Alpaca)") for i, r in enumerate(rows)])
    return run.path


def config(args, run_name: str, **over):
    from pipeline.config import load_config

    return load_config(None, {**settings(args), "run_name": run_name, **over})


def score_and_ifd(args, clock) -> None:
    from pipeline.runner import Session

    cfg = config(args, "data")
    n = args.rows
    run = cfg.run_dir
    if sum(1 for _ in _lines(run / "ifd.jsonl")) < n:
        with clock("ifd (student)"):
            Session(cfg, log=print).run_steps(["ifd"])
    rated = sum(1 for _ in _lines(run / "score.jsonl"))
    unrated = sum(1 for line in _lines(run / "rejected.jsonl") if json.loads(line).get("stage") == "score")
    if rated + unrated < n:
        with clock("score (judge)"):
            Session(cfg, log=print).run_steps(["score"])


def _lines(path: Path):
    if path.is_file():
        yield from (line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def arm(args, clock, name: str) -> Path:
    """Select, export and train one arm in its own run directory (a copy of the scored data); the adapter folder."""
    import shutil

    from pipeline.runner import Session

    by, dedup = ARMS[name]
    dest = args.work_dir / f"arm-{name}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("filter.jsonl", "score.jsonl", "ifd.jsonl", "rejected.jsonl"):
        src = args.work_dir / "data" / f
        if src.is_file() and not (dest / f).is_file():
            shutil.copy2(src, dest / f)
    over = {"select.by": by, "select.top": 0 if by == "all" else args.size}
    if not dedup:
        over["select.near_dup_threshold"] = 0.0
    cfg = config(args, dest.name, **over)
    session = Session(cfg, log=print)
    if not (session.export_dir / "export.json").is_file():
        with clock(f"{name}: select + export"):
            session.run_steps(["select", "export"])
    adapter = session.adapter_dir
    if not (adapter / "training_summary.json").is_file():
        with clock(f"{name}: train"):
            Session(cfg, log=print).run_steps(["train"])
    return adapter


def eval_items(args) -> tuple[list, list[int]]:
    """The eval items (first instance of each task; all 252) and the fixed sample that is answered and ROUGE-scored."""
    from pipeline.train.eval import load_eval_items

    items = load_eval_items(str(EVAL_TASKS))
    first = {}
    for it in items:  # ids "<task>-<k>": keep k = 0 (the user-oriented tasks have one instance each today)
        first.setdefault(it.id.rsplit("-", 1)[0], it)
    items = list(first.values())[:args.loss_n or None]
    sample = sorted(random.Random(0).sample(range(len(items)), min(args.rouge_n, len(items))))
    return items, sample


def evaluate_model(args, clock, name: str, adapter: Path | None) -> dict:
    """Reference losses on every item and answers on the sample, for the base (adapter None) or an arm."""
    out = args.work_dir / "eval" / f"{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    import torch

    from pipeline.train.eval import generate, reference_losses
    from pipeline.train.model import load_base, load_tokenizer, load_with_adapter, resolve_model

    items, sample = eval_items(args)
    with clock(f"eval: {name}"):
        if adapter is None:
            path = resolve_model(args.student)
            model, tok = load_base(path, quant_config=None, dtype=torch.float32).eval(), load_tokenizer(path)
        else:
            model, tok = load_with_adapter(adapter, quant="none")
        losses = reference_losses(model, tok, items, batch_size=8)
        answers = generate(model, tok, [items[i].messages for i in sample], max_new_tokens=args.max_new_tokens,
                           batch_size=8)
    result = {"ids": [it.id for it in items], "losses": losses, "sample": sample, "answers": answers}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def compare(args, evals: dict[str, dict]) -> dict:
    """Per arm: reference loss and ROUGE-L against the base and against random, paired over the same items."""
    from pipeline.similarity import rouge_l
    from pipeline.train.eval import paired_summary

    items, sample = eval_items(args)
    refs = [items[i].reference for i in sample]
    rouge = {n: [rouge_l(a, r) for a, r in zip(e["answers"], refs, strict=True)] for n, e in evals.items()}
    words = {n: round(sum(len(a.split()) for a in e["answers"]) / max(1, len(e["answers"])), 1) for n, e in evals.items()}

    def vs(a: str, b: str) -> dict:
        # nan (a reference cut away entirely) on either side leaves that item out of the pair
        pairs = [(x, y) for x, y in zip(evals[a]["losses"], evals[b]["losses"], strict=True)
                 if math.isfinite(x) and math.isfinite(y)]
        return {"reference_loss": paired_summary([x for x, _ in pairs], [y for _, y in pairs], seed=0),
                "rouge_l": paired_summary(rouge[a], rouge[b], seed=0) if refs else None}

    arms = [n for n in evals if n != "base"]
    return {"n_loss": len(items), "n_rouge": len(sample), "reference_words": round(sum(len(r.split()) for r in refs)
                                                                                  / max(1, len(refs)), 1),
            "answer_words": words,
            "vs_base": {n: vs("base", n) for n in arms},
            "vs_random": {n: vs("random", n) for n in arms if n != "random" and "random" in evals}}


def table(results: dict) -> str:
    c = results["compare"]

    def cell(s: dict | None) -> str:
        if not s:
            return "-"
        return f"{s['delta']:+.4f} [{s['delta_ci95'][0]:+.4f}, {s['delta_ci95'][1]:+.4f}]"

    base_loss = next(iter(c["vs_base"].values()))["reference_loss"]["base"] if c["vs_base"] else None
    base_rouge = next(iter(c["vs_base"].values()))["rouge_l"] if c["vs_base"] else None
    lines = ["| arm | train rows | updates | reference loss | vs base (95% CI) | lower than base on | vs random (95% CI) "
             "| ROUGE-L | vs base (95% CI) | vs random (95% CI) | answer words |",
             "|---|---:|---:|---:|---|---:|---|---:|---|---|---:|"]
    def num(s: dict | None, side: str) -> str:
        return f"{s[side]:.4f}" if s else "-"

    if base_loss is not None:
        lines.append(f"| base | - | 0 | {base_loss:.4f} | | | | {num(base_rouge, 'base')} | | | "
                     f"{c['answer_words']['base']} |")
    for name, info in results["arms"].items():
        b = c["vs_base"].get(name)
        if b is None:
            continue
        r = c["vs_random"].get(name, {})
        loss, rouge = b["reference_loss"], b["rouge_l"]
        lines.append(f"| {name} | {info['train_rows']} | {info['updates']} | {loss['adapter']:.4f} | {cell(loss)} | "
                     f"{loss['base_higher']} of {loss['base_higher'] + loss['adapter_higher'] + loss['equal']} | "
                     f"{cell(r.get('reference_loss'))} | {num(rouge, 'adapter')} | {cell(rouge)} | "
                     f"{cell(r.get('rouge_l'))} | {c['answer_words'][name]} |")
    lines += ["", f"Reference loss: mean negative log-likelihood per reference token (lower is better) on "
              f"{c['n_loss']} user-oriented tasks; ROUGE-L and answer words on a fixed sample of {c['n_rouge']} "
              f"(references average {c['reference_words']} words). Intervals: paired bootstrap, 2,000 resamples."]
    if results.get("missing"):
        lines.append(f"Not finished yet: {', '.join(results['missing'])}.")
    return "\n".join(lines)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, required=True, help="every phase writes here; a re-run resumes")
    p.add_argument("--rows", type=int, default=4000, help="Alpaca rows to choose from (the first N; default all 4,000)")
    p.add_argument("--size", type=int, default=1000, help="rows per selected arm (default 1,000)")
    p.add_argument("--epochs", type=float, default=2.0,
                   help="passes over --size rows that set every arm's update count (default 2: 125 updates)")
    p.add_argument("--updates", type=int, default=0, help="optimizer updates per arm; 0 = from --epochs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--save-steps", type=int, default=10, help="checkpoint every N updates (default 10)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--no-all", action="store_true", help="skip the all-rows arm")
    p.add_argument("--loss-n", type=int, default=0, help="eval tasks for the reference loss; 0 = all 252")
    p.add_argument("--rouge-n", type=int, default=50, help="eval tasks answered for ROUGE-L (default 50: generation is slow)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length cap (default 256, as eval)")
    p.add_argument("--student", default="", help="the student's HF folder; empty = the embedded SmolLM2-135M-Instruct")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 40 rows, arms of 12, 2 updates, 8 eval tasks, 2 answered with 16 tokens")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.size, args.updates = min(args.rows, 40), min(args.size, 12), args.updates or 2
        args.batch_size, args.grad_accum, args.save_steps = 4, 1, 1
        args.loss_n, args.rouge_n, args.max_new_tokens = args.loss_n or 8, min(args.rouge_n, 2), 16
    if not ALPACA.is_file() or not EVAL_TASKS.is_file():
        raise SystemExit(f"{ALPACA} or {EVAL_TASKS} is absent: this experiment needs ../shared/data")
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.arms.split(",") if n and not (args.no_all and n == "all")]
    unknown = set(names) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; choose from {', '.join(ARMS)}")
    clock = Clock(args.work_dir / "phases.json")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID`: finish like Ctrl-C, so the phase's time so far is kept
    print(f"settings: {len(names)} arms of {args.size} rows from {args.rows}, {updates(args)} updates of "
          f"{args.batch_size * args.grad_accum} rows each; work dir {args.work_dir}", flush=True)
    prepare(args, clock)
    score_and_ifd(args, clock)
    evals = {"base": evaluate_model(args, clock, "base", None)}
    results: dict = {"settings": settings(args), "args": {k: str(v) for k, v in vars(args).items()}, "arms": {}}
    for name in names:
        adapter = arm(args, clock, name)
        evals[name] = evaluate_model(args, clock, name, adapter)
        summary = json.loads((adapter / "training_summary.json").read_text())
        select = json.loads((args.work_dir / f"arm-{name}" / "select.json").read_text())
        results["arms"][name] = {"train_rows": summary["train_data"]["examples"], "updates": summary["steps"],
                                 "selected": select["kept_rows"], "near_duplicates": select["near_duplicates"],
                                 "train_tokens": summary["train_data"]["tokens"], "train_s": summary["runtime_s"],
                                 "tokens_per_s": summary["tokens_per_s"], "train_loss": summary["train_loss"]["last"]}
        results["missing"] = names[names.index(name) + 1:]
        results["compare"] = compare(args, evals)
        results["phases"] = clock.phases
        (args.work_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.work_dir / "results.md").write_text(table(results) + "\n")
    print(table(results) if results["arms"] else "no arm run")
    print("\nphases (wall / CPU s):")
    for phase, t in clock.phases.items():
        print(f"  {phase}: {t['wall_s']} / {t['cpu_s']}")
    return results


if __name__ == "__main__":
    main()
