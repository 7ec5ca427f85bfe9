"""Evaluation: base model versus base + adapter on held-out tasks.

Both answer every prompt greedily with the same settings, rendered with the same
template the adapter was trained on. Each answer is scored by ROUGE-L F against the
reference output, as the Self-Instruct paper scored SuperNI (pipeline.similarity.rouge_l:
rouge-score's tokenizer, no stemming). Optionally a judge (any teacher) compares the
two answers pairwise; A/B order is drawn per item from random.Random(seed) so position
bias cancels out, and the win rate counts a tie as half a win.

Input: JSONL of tasks {instruction, instances: [{input, output}], ...} (the Self-Instruct
user-oriented set, or any run's tasks), or Alpaca / chat rows.
Output: eval_report.json (scores, settings, every answer) and eval_report.md (a table).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import EvalConfig
from ..datasets_io import read_records
from ..errors import Seed2LoraError
from ..records import row_messages, user_text
from ..similarity import rouge_l
from ..store import write_text_atomic
from .data import check_rows, load_rows, prompt_text, train_eval_rows
from .model import SUMMARY, adapter_info, load_with_adapter

Log = Callable[[str], None]
USER_ORIENTED = "user_oriented_instructions.jsonl"


def default_eval_data(adapter_dir: str | Path) -> str:
    """The Self-Instruct user-oriented set if it sits in ../shared/data, else the adapter's held-out split."""
    here = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), here):
        candidate = base.parent / "shared" / "data" / USER_ORIENTED
        if candidate.is_file():
            return str(candidate)
    summary = Path(adapter_dir) / SUMMARY
    if summary.is_file():
        return "heldout:" + json.loads(summary.read_text(encoding="utf-8"))["data"]
    raise Seed2LoraError("no eval data: ../shared/data/user_oriented_instructions.jsonl is absent and the adapter "
                         "has no training summary. Fix: pass --data FILE.jsonl")


def load_eval_items(data: str, limit: int = 0, seed: int = 0, train_seed: int = 42,
                    eval_fraction: float = 0.1) -> list[dict[str, Any]]:
    """Items {id, category, messages (prompt), reference}; `limit` tasks drawn with random.Random(seed)."""
    if data.startswith("heldout:"):  # the eval split the adapter was trained without
        rows = train_eval_rows(load_rows(data.removeprefix("heldout:")), eval_fraction, train_seed)[1]
        groups = _group(rows, key=lambda r: r.get("task_id", r.get("id")))
    else:
        path = Path(data)
        raw = [obj for _, obj in read_records(path)[0]]
        if raw and "instances" in raw[0]:
            groups = [[{"id": f"{r.get('id', i)}-{k}", "instruction": r["instruction"], "input": inst.get("input", ""),
                        "output": inst.get("output", ""), "category": r.get("motivation_app", "")}
                       for k, inst in enumerate(r.get("instances") or [])] for i, r in enumerate(raw)]
        else:
            check_rows(raw, str(path))
            groups = [[{**r, "id": r.get("id", i)}] for i, r in enumerate(raw)]
    groups = [g for g in groups if g]
    if limit and limit < len(groups):
        keep = sorted(random.Random(seed).sample(range(len(groups)), limit))
        groups = [groups[i] for i in keep]
    items = []
    for group in groups:
        for r in group:
            msgs = row_messages(r)
            items.append({"id": str(r.get("id")), "category": r.get("category", ""), "messages": msgs[:-1],
                          "reference": msgs[-1]["content"]})
    if not items:
        raise Seed2LoraError(f"no eval items in {data}")
    return items


def _group(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> list[list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return list(groups.values())


def generate(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], *, max_new_tokens: int,
             batch_size: int = 8, repetition_penalty: float = 1.0) -> list[str]:
    """Greedy answers, batched by length with left padding (new tokens must follow each prompt)."""
    import torch

    texts = [prompt_text(tokenizer, m) for m in prompts]
    tokenizer.padding_side = "left"
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers = [""] * len(texts)
    dev = next(model.parameters()).device
    stop_ids = list({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, repetition_penalty=repetition_penalty, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        for i, row in zip(idx, out[:, enc["input_ids"].shape[1]:], strict=True):
            answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    tokenizer.padding_side = "right"
    return answers


def evaluate(adapter_dir: str | Path, cfg: EvalConfig, *, model: str = "", out_dir: str | Path | None = None,
             teacher: Any = None, log: Log = print) -> dict[str, Any]:
    """Score base and adapter answers; write eval_report.json and .md into out_dir (default <adapter>/eval)."""
    start = time.perf_counter()
    info = adapter_info(adapter_dir)
    train_cfg = info["config"]
    data = cfg.data or default_eval_data(adapter_dir)
    items = load_eval_items(data, cfg.limit, cfg.seed, train_seed=train_cfg.get("seed", 42),
                            eval_fraction=train_cfg.get("eval_fraction", 0.1))
    log(f"eval: {len(items)} prompts from {data}")
    peft_model, tokenizer = load_with_adapter(adapter_dir, model=model, quant=cfg.quant)
    prompts = [it["messages"] for it in items]
    kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, repetition_penalty=cfg.repetition_penalty)
    with peft_model.disable_adapter():
        base_answers = generate(peft_model, tokenizer, prompts, **kw)
    log("eval: base answers done")
    adapter_answers = generate(peft_model, tokenizer, prompts, **kw)
    log("eval: adapter answers done")
    for it, b, a in zip(items, base_answers, adapter_answers, strict=True):
        it.update(base=b, adapter=a, rouge_l_base=rouge_l(b, it["reference"]), rouge_l_adapter=rouge_l(a, it["reference"]))
    report = {
        "adapter": str(adapter_dir), "base_model": model or info["base"], "data": data, "limit": cfg.limit,
        "settings": {k: v for k, v in vars(cfg).items() if k != "data"},
        "n_prompts": len(items),
        "rouge_l": score_summary(items, seed=cfg.seed),
        "judge": None,
    }
    if cfg.judge or teacher is not None:
        report["judge"] = judge_pairwise(teacher or _make_judge(cfg.judge), items, random.Random(cfg.seed))
    report["runtime_s"] = round(time.perf_counter() - start, 1)
    report["items"] = [{k: v for k, v in it.items() if k != "messages"} | {"prompt": it["messages"][-1]["content"]}
                       for it in items]
    out = Path(out_dir) if out_dir else Path(adapter_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "eval_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "eval_report.md", report_markdown(report))
    report["report_dir"] = str(out)
    return report


def score_summary(items: list[dict[str, Any]], seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """Mean ROUGE-L of each side, the paired difference with a bootstrap 95% interval, and a sign test.

    A few dozen prompts give a noisy mean: the interval (percentiles of the mean paired
    difference over `resamples` resamplings of the prompts) says whether the difference
    could be noise; the sign test asks the same of the per-prompt wins, ignoring margins.
    """
    import numpy as np

    base = [it["rouge_l_base"] for it in items]
    adapter = [it["rouge_l_adapter"] for it in items]
    diff = np.asarray(adapter) - np.asarray(base)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
    up, down = int((diff > 0).sum()), int((diff < 0).sum())
    return {"base": round(statistics.fmean(base), 4), "adapter": round(statistics.fmean(adapter), 4),
            "delta": round(float(diff.mean()), 4), "delta_ci95": [round(float(low), 4), round(float(high), 4)],
            "adapter_higher": up, "base_higher": down, "equal": len(diff) - up - down,
            "sign_test_p": round(sign_test(up, down), 4)}


def summary_line(report: dict[str, Any]) -> str:
    """The report in one line: both means, the difference with its interval, per-prompt counts, the judge."""
    r = report["rouge_l"]
    return (f"ROUGE-L base {r['base']:.4f}, adapter {r['adapter']:.4f} ({r['delta']:+.4f}, 95% interval "
            f"{r['delta_ci95'][0]:+.4f} to {r['delta_ci95'][1]:+.4f}; adapter higher on {r['adapter_higher']}, "
            f"base on {r['base_higher']}) on {report['n_prompts']} prompts"
            + (f"; judge win rate {report['judge']['win_rate']}" if report.get("judge") else ""))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if each side wins half the time."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def _make_judge(spec: str) -> Any:
    from ..config import TeacherConfig
    from ..teachers import make_teacher

    return make_teacher(TeacherConfig(spec=spec))


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply (first verdict word wins); None if there is none."""
    m = re.search(r"\b(tie|A|B)\b", text.strip(), re.IGNORECASE)
    if not m:
        return None
    word = m.group(1)
    return "tie" if word.lower() == "tie" else word.upper()


def judge_pairwise(teacher: Any, items: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """Ask the judge which answer is better; adapter's win rate with ties as half a win."""
    from ..prompts import Prompts
    from ..teachers import GenParams

    prompts_lib = Prompts()
    swaps = [rng.random() < 0.5 for _ in items]  # True: the adapter's answer is shown as A
    prompts = []
    for it, swap in zip(items, swaps, strict=True):
        a, b = (it["adapter"], it["base"]) if swap else (it["base"], it["adapter"])
        prompts.append(prompts_lib.render("judge_pairwise.txt", request=it["messages"][-1]["content"],
                                          reference=it["reference"], answer_a=a or "(empty)", answer_b=b or "(empty)"))
    replies = teacher.generate(prompts, GenParams(max_tokens=8, temperature=0.0), kind="judge")
    wins = losses = ties = invalid = 0
    for it, swap, reply in zip(items, swaps, replies, strict=True):
        verdict = parse_verdict(reply.text) if reply.ok else None
        winner = {None: None, "tie": "tie", "A": "adapter" if swap else "base", "B": "base" if swap else "adapter"}[verdict]
        it["judge"] = winner
        wins += winner == "adapter"
        losses += winner == "base"
        ties += winner == "tie"
        invalid += winner is None
    judged = wins + losses + ties
    return {"teacher": getattr(teacher, "name", "judge"), "adapter_wins": wins, "base_wins": losses, "ties": ties,
            "unparsed": invalid, "win_rate": round((wins + 0.5 * ties) / judged, 4) if judged else None}


def report_markdown(report: dict[str, Any]) -> str:
    r = report["rouge_l"]
    lines = [f"# Eval: {Path(report['adapter']).name} vs its base", "",
             f"{report['n_prompts']} prompts from `{report['data']}`; greedy decoding, "
             f"max {report['settings']['max_new_tokens']} new tokens.", "",
             "| model | ROUGE-L | prompts where higher |", "|---|---:|---:|",
             f"| base | {r['base']:.4f} | {r['base_higher']} |",
             f"| base + adapter | {r['adapter']:.4f} | {r['adapter_higher']} |", "",
             f"Difference (adapter - base): {r['delta']:+.4f}, 95% bootstrap interval "
             f"[{r['delta_ci95'][0]:+.4f}, {r['delta_ci95'][1]:+.4f}]"
             + (" (excludes 0)" if r["delta_ci95"][0] > 0 or r["delta_ci95"][1] < 0 else " (includes 0: could be noise)")
             + f"; equal on {r['equal']} prompts; sign test p = {r['sign_test_p']:.3g}.", ""]
    j = report.get("judge")
    if j:
        lines += [f"Pairwise judge `{j['teacher']}`: adapter wins {j['adapter_wins']}, base wins {j['base_wins']}, "
                  f"ties {j['ties']}, unparsed {j['unparsed']}; adapter win rate "
                  + (f"{j['win_rate']:.1%}" if j["win_rate"] is not None else "n/a") + ".", ""]
    return "\n".join(lines)


def user_prompt(instruction: str, input: str = "") -> list[dict[str, str]]:
    """A single-turn prompt as chat messages (for `seed2lora generate`)."""
    return [{"role": "user", "content": user_text(instruction, input)}]
