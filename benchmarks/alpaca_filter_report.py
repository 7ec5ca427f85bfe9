"""The filter, the report and decontamination on real teacher data: Alpaca's 4,000 davinci rows (issue 21).

Data: ../shared/data/alpaca_davinci_4000.jsonl (Stanford Alpaca, CC BY-NC 4.0; credit the Alpaca authors),
the Self-Instruct paper's 175 seed tasks (the seeds Alpaca generated from) and its 252 user-oriented eval
tasks (Apache-2.0). Nothing here calls a teacher.

1. filter: the rows become WORK/alpaca/instances.jsonl (one task per row, ids alpaca-NNNN, origin machine),
   and `seed2lora filter`'s step runs over them with the 175 Self-Instruct seeds as the run's seeds. Prints
   each rule's rejections with every rejected row (there are few), so each can be judged by eye.
2. report: `seed2lora report`'s figures (pipeline.report) of the kept rows, beside what the Self-Instruct
   paper and the Alpaca repository published (PUBLISHED: each number with where it was read; "not found"
   where no source was at hand).
3. decontamination: how many of the 4,000 rows overlap the 252 eval tasks (instruction + input), by a shared
   13-gram (the default), a shared 8-gram, and ROUGE-L above 0.7 / 0.6 / 0.5, with the matches.

    python benchmarks/alpaca_filter_report.py --work-dir /tmp/alpaca-filter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
ALPACA = DATA / "alpaca_davinci_4000.jsonl"
SEEDS = DATA / "self_instruct_seed_tasks.jsonl"
EVAL_TASKS = DATA / "user_oriented_instructions.jsonl"

SELF_INSTRUCT = "Self-Instruct paper (Wang et al. 2022, arXiv:2212.10560)"
ALPACA_REPO = "Alpaca repository README (tatsu-lab/stanford_alpaca)"
# What the sources say, each with where it was read; None = not found in any source searched (see RESULTS.md).
PUBLISHED = {
    "instructions": [("52K instructions, 82K instances", "self-instruct README (data/gpt3-generations, 'all_instances_82K')"),
                     ("52K rows; 'each of the 52K instructions is unique'", ALPACA_REPO)],
    "with_input": [(None, SELF_INSTRUCT + " Table 1 (not found)"), ("around 40% of the examples have an input", ALPACA_REPO)],
    "verb_noun": [("top 20 root verbs x top 4 nouns cover 14% of instructions; many have no verb-noun structure",
                   SELF_INSTRUCT + ", Figure 3 caption"),
                  ("a verb-noun sunburst (assets/parse_analysis.png), no numbers; 'much more diverse than' "
                   "Self-Instruct's data", ALPACA_REPO)],
    "rouge_seed": [("a histogram only (Figure 4), no summary numbers", SELF_INSTRUCT + ", Figure 4"),
                   (None, ALPACA_REPO + " (ROUGE-L < 0.7 filter in generate_instruction.py, no figures)")],
    "lengths": [("histograms only (Figure 5); the means of Table 1 not found", SELF_INSTRUCT + ", Figure 5"),
                (None, ALPACA_REPO)],
    "quality": [("92% valid instructions, 79% appropriate inputs, 58% correct outputs, 54% all valid "
                 "(200 rows reviewed)", SELF_INSTRUCT + ", Table 2"), (None, ALPACA_REPO)],
}


def prepare(work: Path) -> Path:
    """WORK/alpaca: the rows as the instances stage would leave them (teacher named on each record)."""
    from pipeline.records import Instance, Task
    from pipeline.store import RunDir, write_jsonl_atomic

    run = RunDir(work / "alpaca").ensure()
    rows = [json.loads(line) for line in ALPACA.read_text(encoding="utf-8").splitlines() if line.strip()]
    write_jsonl_atomic(run.stage_file("instances"), [
        Task(id=f"alpaca-{i:04d}", instruction=r["instruction"], instances=[Instance(r.get("input", ""), r["output"])],
             stage="instances", teacher="text-davinci-003 (Stanford Alpaca)") for i, r in enumerate(rows)])
    return run.path


def run_filter(work: Path) -> tuple[Path, float]:
    from pipeline.config import load_config
    from pipeline.runner import Session

    prepare(work)
    cfg = load_config(None, {"output_dir": str(work), "run_name": "alpaca", "seed_tasks": str(SEEDS)})
    start = time.perf_counter()
    print(Session(cfg, log=lambda m: None).run_steps(["filter"])[0])
    return cfg.run_dir, time.perf_counter() - start


def filter_table(run: Path) -> None:
    from pipeline.store import RunDir, reason_kind

    rejected = RunDir(run).read_rejected()
    counts = Counter(reason_kind(t.reject_reason) for t in rejected)
    print("\n## 1. Filter rejections (4,000 rows, Self-Instruct's 175 seeds in the pool)\n")
    print("| rule | records |\n|---|---:|")
    for rule, n in counts.most_common():
        print(f"| {rule} | {n} |")
    print("\nEvery rejected record:")
    for t in rejected:
        inst = t.instances[0] if t.instances else None
        shown = f" | input {inst.input[:60]!r} | output {inst.output[:80]!r}" if inst else ""
        print(f"- {t.id}: {t.reject_reason[:90]} | {t.instruction[:70]!r}{shown}")


def _share(values, below: float) -> float:
    return sum(1 for v in values if v < below) / len(values) if values else 0.0


def report_table(run: Path) -> float:
    from pipeline.report import write_report

    start = time.perf_counter()
    page = write_report(run, seeds_path=SEEDS)
    seconds = time.perf_counter() - start
    f = json.loads((page.parent / "report.json").read_text(encoding="utf-8"))
    n, lengths, verbs, seed = f["kept"], f["lengths"], f["verbs"], f["rouge"]["seed"]
    top_pairs = sum(o["count"] for v in verbs["top"] for o in v["objects"])
    ours = {
        "instructions": f"{n} kept of 4,000 rows, {lengths['instances']} instances",
        "with_input": f"{1 - lengths['empty_inputs'] / lengths['instances']:.1%} of rows have an input",
        "verb_noun": (f"{verbs['with_verb_object'] / n:.0%} have a root verb with a direct object, "
                      f"{verbs['with_verb'] / n:.0%} a root verb; {verbs['unique_verbs']} verbs, "
                      f"{verbs['unique_pairs']} verb-noun pairs; top 20 verbs x top 4 nouns cover {top_pairs / n:.0%} "
                      f"(parser {verbs['parser']})"),
        "rouge_seed": (f"mean {seed['mean']:.3f}, median {seed['median']:.3f}, max {seed['max']:.3f}; "
                       f"{_share(seed['values'], 0.5):.1%} below 0.5, {_share(seed['values'], 0.7):.1%} below 0.7"),
        "lengths": ("words, mean / median: instruction {:.1f} / {:.0f}, non-empty input {:.1f} / {:.0f}, output "
                    "{:.1f} / {:.0f}".format(*(lengths[k][s] for k in ("instruction", "input", "output")
                                               for s in ("mean", "median")))),
        "quality": "not measured here (the filter's rules only; see the rejections above)",
    }
    print("\n## 2. Diversity: the kept rows beside the published figures\n")
    print("| figure | these 4,000 Alpaca rows | Self-Instruct paper / repo | Alpaca repository |\n|---|---|---|---|")
    for key, mine in ours.items():
        (si, si_src), (al, al_src) = PUBLISHED[key]
        print(f"| {key} | {mine} | {si or 'not found'} ({si_src}) | {al or 'not found'} ({al_src}) |")
    print("\nTop verbs:", ", ".join(f"{v['verb']} {v['count']} ({', '.join(o['noun'] for o in v['objects'])})"
                                    for v in verbs["top"][:10]))
    return seconds


def decontamination_table() -> float:
    from pipeline.config import DecontamConfig
    from pipeline.decontam import contamination, row_text

    rows = [json.loads(line) for line in ALPACA.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [row_text(r["instruction"], r.get("input", "")) for r in rows]
    methods = {"13-gram (default)": DecontamConfig(method="ngram"),
               "8-gram": DecontamConfig(method="ngram", ngram=8),
               "ROUGE-L > 0.7": DecontamConfig(method="rouge"),
               "ROUGE-L > 0.6": DecontamConfig(method="rouge", rouge_threshold=0.6),
               "ROUGE-L > 0.5": DecontamConfig(method="rouge", rouge_threshold=0.5)}
    start = time.perf_counter()
    print(f"\n## 3. Decontamination: the 4,000 rows against the 252 user-oriented tasks ({EVAL_TASKS.name})\n")
    print("| method | rows flagged | seconds |\n|---|---:|---:|")
    found = {}
    for name, cfg in methods.items():
        t = time.perf_counter()
        c, _ = contamination(cfg)
        hits = [(i, h) for i, text in enumerate(texts) if (h := c.check(text))]
        found[name] = (c, hits)
        print(f"| {name} | {len(hits)} | {time.perf_counter() - t:.1f} |")
    for name, (c, hits) in found.items():
        if hits and name != "ROUGE-L > 0.5":
            print(f"\n{name}:")
            for i, h in hits:
                print(f"- alpaca-{i:04d} {texts[i][:80]!r} ~ {h['eval_id']} {h['eval_text'][:80]!r}: {c.reason(h)[:80]}")
    c, hits = found["ROUGE-L > 0.5"]
    print(f"\nROUGE-L > 0.5: {len(hits)} rows; the first 8:")
    for i, h in hits[:8]:
        print(f"- alpaca-{i:04d} {texts[i][:70]!r} ~ {h['eval_id']} {h['eval_text'][:70]!r} ({h['score']:.2f})")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, required=True)
    args = p.parse_args()
    missing = [f for f in (ALPACA, SEEDS, EVAL_TASKS) if not f.is_file()]
    if missing:
        sys.exit(f"missing {', '.join(map(str, missing))}: this benchmark reads ../shared/data (see its README)")
    load = os.getloadavg()
    run, filter_s = run_filter(args.work_dir)
    filter_table(run)
    report_s = report_table(run)
    decon_s = decontamination_table()
    print(f"\nseconds: filter {filter_s:.1f}, report {report_s:.1f}, decontamination (5 methods) {decon_s:.1f}; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at end "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
