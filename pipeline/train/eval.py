"""Evaluation: base model versus base + adapter on held-out tasks.

First, without generating: the reference loss, each side's mean per-token negative
log-likelihood of the task's reference output given its prompt, read exactly as training
reads a row (train.data.tokenize_example: the same template, the response tokens only, EOS
included). It needs no judge and does not reward short answers, as ROUGE-L does when the
references are short; lower is better. Then both answer every prompt greedily with the same
settings, rendered with the same template the adapter was trained on. Each answer is scored
by ROUGE-L F against the reference output, as the Self-Instruct paper scored SuperNI
(pipeline.similarity.rouge_l: rouge-score's tokenizer, no stemming), and its length in words
is reported beside it. Every difference gets a paired bootstrap 95% interval over the prompts. Optionally a judge compares the two answers
pairwise; A/B order is drawn per item from random.Random(seed) so position bias cancels
out, and the win rate counts a tie as half a win (a bootstrap interval over the judged prompts). The judge is a teacher like any other
([eval.judge] takes [teacher]'s keys, built by teachers.make_teacher); when the adapter
belongs to a run directory, the judge uses that run's response cache, usage log and
budget, as the run's own teacher does, so a repeated eval pays for no verdict twice.

Input: JSONL of tasks {instruction, instances: [{input, output}], ...} (the Self-Instruct
user-oriented set, or any run's tasks), or Alpaca / chat rows.
Output: eval_report.json (scores, settings, every answer) and eval_report.md (a table).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import BudgetConfig, EvalConfig, ExportConfig, TeacherConfig, config_from_dict
from ..context import RunContext, build_teacher, preflight
from ..datasets_io import read_records
from ..errors import Seed2LoraError, mask_dict
from ..evalsets import LICENSE, USER_ORIENTED_NAME, find_user_oriented, user_oriented, where_to_get
from ..progress import no_progress
from ..prompts import Prompts
from ..records import row_messages, user_text
from ..similarity import rouge_l
from ..store import RunDir, eval_dir_of, write_text_atomic
from ..teachers import origin_of
from .data import check_rows, load_rows, prompt_text, tokenize_example, train_eval_rows
from .loss import mean_losses
from .model import SAMPLING, adapter_info, eval_sampling, load_with_adapter
from .summary import read_summary, summary_path, trained_from

Log = Callable[[str], None]
Advance = Callable[[int], None]
Progress = Callable[[str, int | None], Any]  # (description, total or None) -> context manager yielding advance(n)


@dataclass
class EvalItem:
    """One held-out prompt: what is asked, the reference answer, and what each side answered and scored."""

    id: str
    category: str  # the user-oriented set's motivation_app (Grammarly, Gmail, ...); "" for other data
    messages: list[dict[str, str]]  # the conversation up to the answer to write: the prompt both sides get
    reference: str  # the held-out answer both sides are scored against
    base: str = ""
    adapter: str = ""
    rouge_l_base: float = 0.0
    rouge_l_adapter: float = 0.0
    loss_base: float | None = None  # mean negative log-likelihood per reference token given the prompt
    loss_adapter: float | None = None
    judge: str | None = None  # adapter | base | tie; None = not judged, or the judge gave no verdict
    group: int = 0  # the task it came from (its instances are one group; --limit samples groups)

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]

    def to_report(self) -> dict[str, Any]:
        """The item as eval_report.json lists it: the last user turn as `prompt`, not the whole conversation."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("messages", "group")} | {"prompt": self.prompt}


def default_eval_data(adapter_dir: str | Path, data: str = "") -> tuple[str, str]:
    """(what to evaluate on, why it is that) for eval.data: a file as it is; "user-oriented" = the Self-Instruct
    user-oriented set, downloaded into the cache on first use (pipeline.evalsets); "" = that set if it is on this
    machine, else the adapter's held-out split ("heldout:" + its training data), with the reason."""
    if data == USER_ORIENTED_NAME:
        path = user_oriented(download=True)
        return str(path), f"the Self-Instruct user-oriented set ({LICENSE})"
    if data:
        return data, ""
    found = find_user_oriented()
    if found is not None:
        return str(found), f"the Self-Instruct user-oriented set ({LICENSE})"
    summary = read_summary(adapter_dir)
    if summary.get("data"):
        found = summary_path(adapter_dir, summary, summary["data"], "data")
        if found.path is None:
            raise Seed2LoraError(f"no eval data: the user-oriented set is not on this machine, and the adapter's "
                                 f"held-out split cannot be read: {found.note}. Fix: pass --data FILE.jsonl (its "
                                 f"training data, or an eval set), or {where_to_get()}")
        return ("heldout:" + str(found.path), "the adapter's held-out split, because the user-oriented set is not on "
                f"this machine: {where_to_get()}" + (f" ({found.note})" if found.note else ""))
    raise Seed2LoraError("no eval data: the user-oriented set is not on this machine and the adapter has no training "
                         f"summary. Fix: pass --data FILE.jsonl, or {where_to_get()}")


# Fewer eval tasks than this and eval says the comparison means little: an adapter's win rate over n tasks is
# uncertain by about ±1.96·√(0.25/n), ±22 points at 20 tasks (±69 at 2), so below it only a sweeping difference
# between base and adapter could show. The tasks, not the prompts, are the independent draws (a task's instances
# share its instruction).
FEW_EVAL_TASKS = 20


def few_tasks_note(data: str, n_tasks: int, limit: int) -> str:
    """What to say when too few tasks were evaluated to mean much, with the way to more; "" when there are enough."""
    if n_tasks >= FEW_EVAL_TASKS:
        return ""
    if limit and limit <= n_tasks:
        more = "raise --limit"
    elif data.startswith("heldout:"):
        more = ("pass --data user-oriented (the Self-Instruct paper's 252 tasks), or hold out more "
                "(train.eval_fraction, export --eval-fraction) of a larger run")
    else:
        more = "pass --data with more tasks, or --data user-oriented (the Self-Instruct paper's 252 tasks)"
    return (f"only {n_tasks} tasks: too few for the comparison to mean much (a win rate over {n_tasks} tasks is "
            f"uncertain by about ±{196 * math.sqrt(0.25 / max(n_tasks, 1)):.0f} points; {FEW_EVAL_TASKS} tasks "
            f"at least). Fix: {more}")


def eval_message(data: str, why: str, n_items: int, n_tasks: int, limit: int) -> str:
    """The line that says what was evaluated: how many prompts of how many tasks, from where, and why there; and
    whether they are too few to mean much."""
    short = f"; --limit {limit} asked for more tasks than the {n_tasks} there are" if limit > n_tasks else ""
    few = f"; {note}" if (note := few_tasks_note(data, n_tasks, limit)) else ""
    return f"eval: {n_items} prompts ({n_tasks} tasks) from {data}" + (f": {why}" if why else "") + few + short


def load_eval_items(data: str, limit: int = 0, seed: int = 0, train_seed: int = 42,
                    eval_fraction: float = 0.1, export: ExportConfig | None = None) -> list[EvalItem]:
    """The eval items of `data` (a file, or "heldout:" + training data); `limit` tasks drawn with random.Random(seed).
    `export`: how a run directory trained on was read (the training summary's), so its held-out split is the one
    the adapter was trained without."""
    if data.startswith("heldout:"):  # the eval split the adapter was trained without
        rows = train_eval_rows(load_rows(data.removeprefix("heldout:"), export), eval_fraction, train_seed)[1]
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
    for g, group in enumerate(groups):
        for r in group:
            msgs = row_messages(r)
            items.append(EvalItem(id=str(r.get("id")), category=str(r.get("category") or ""), messages=msgs[:-1],
                                  reference=msgs[-1]["content"], group=g))
    if not items:
        raise Seed2LoraError(f"no eval items in {data}")
    return items


def _group(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> list[list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return list(groups.values())


def stop_tokens(tokenizer: Any) -> list[str]:
    """The tokens an answer ends at (EOS and padding), as sampling.json records them for llama.cpp and Ollama."""
    ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(ids)))


def generate(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], *, max_new_tokens: int,
             batch_size: int = 8, repetition_penalty: float = 1.0, temperature: float = 0.0, top_p: float = 1.0,
             stop: list[str] | None = None, seed: int = 0, advance: Advance | None = None) -> list[str]:
    """Answers, batched by length with left padding (new tokens must follow each prompt): greedy at
    temperature 0 (eval's), else sampled with torch seeded by `seed`. An answer ends at EOS, padding or a
    `stop` token (a stop string that is no single token ends it too). `advance(n)` counts the prompts answered."""
    import torch

    texts = [prompt_text(tokenizer, m) for m in prompts]
    tokenizer.padding_side = "left"
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers = [""] * len(texts)
    dev = next(model.parameters()).device
    vocab = tokenizer.get_vocab()
    stop_ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id, *(vocab[s] for s in stop or [] if s in vocab)}
                      - {None})
    stop_strings = [s for s in stop or [] if s not in vocab]
    sampled = temperature > 0
    if sampled:
        torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sampled,
                                 temperature=temperature if sampled else None, top_p=top_p if sampled else None,
                                 top_k=None, repetition_penalty=repetition_penalty, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id,
                                 **({"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}))
        for i, row in zip(idx, out[:, enc["input_ids"].shape[1]:], strict=True):
            answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        if advance:
            advance(len(idx))
    tokenizer.padding_side = "right"
    return answers


def reference_example(tokenizer: Any, messages: list[dict[str, str]], reference: str,
                      max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of the prompt followed by the reference answer, as training tokenizes a row:
    labels on the reference tokens and the EOS after them, -100 on the prompt."""
    ex = tokenize_example(tokenizer, [*messages, {"role": "assistant", "content": reference}])
    return ex["input_ids"][:max_len], ex["labels"][:max_len]


def reference_losses(model: Any, tokenizer: Any, items: list[EvalItem], *, batch_size: int = 8,
                     max_len: int = 2048, advance: Advance | None = None) -> list[float]:
    """Each item's mean negative log-likelihood per reference token given its prompt (nan: nothing left to score);
    `advance(n)` counts the items scored."""
    pairs = [reference_example(tokenizer, it.messages, it.reference, max_len) for it in items]
    order = sorted(range(len(items)), key=lambda i: len(pairs[i][0]))  # similar lengths together: little padding
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = [math.nan] * len(items)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        for i, (loss, _) in zip(idx, mean_losses(model, [pairs[i] for i in idx], pad), strict=True):
            out[i] = loss
        if advance:
            advance(len(idx))
    return out


def evaluate(adapter_dir: str | Path, cfg: EvalConfig, *, model: str = "", out_dir: str | Path | None = None,
             teacher: Any = None, run_dir: str | Path | None = None, log: Log = print,
             progress: Progress | None = None, flags: dict[str, str] | None = None,
             python: bool = False) -> dict[str, Any]:
    """Score base and adapter answers; write eval_report.json and .md into out_dir (default <adapter>/eval).

    teacher: a judge to use as it is (tests); else cfg.judge builds one, attached to the
    response cache and budget of `run_dir` (default: the run the adapter belongs to, if any).
    progress: pipeline/progress.py's (a bar or plain lines with an ETA), or any of its protocol; None: silent.
    flags: the command's flags by the setting each sets ({"eval.judge.spec": "--judge"}), which the judge's
    messages name; None: only --set reaches [eval.judge] (`run`).
    python: the Python API called it (run.eval()): its notes name what a Run sets, not the CLI's flags.
    """
    progress = progress or no_progress
    start = time.perf_counter()
    info = adapter_info(adapter_dir)
    train_cfg = info["config"]
    data, why = default_eval_data(adapter_dir, cfg.data)
    items = load_eval_items(data, cfg.limit, cfg.seed, train_seed=train_cfg.get("seed", 42),
                            eval_fraction=train_cfg.get("eval_fraction", 0.1),
                            export=config_from_dict(ExportConfig, info["export"]) if info.get("export") else None)
    n_tasks = len({it.group for it in items})
    log(eval_message(data, why, len(items), n_tasks, cfg.limit))
    run = Path(run_dir) if run_dir else find_run_dir(adapter_dir)
    # The judge is built (and its server asked for one token) first: a wrong URL fails before minutes of generating.
    given = nullcontext((teacher, RunContext.of_run(run).prompts if run else Prompts()))
    built = judge_context(cfg.judge, run, seed=cfg.seed, log=log, flags=flags) if teacher is None else given
    with built as (judge, prompts_lib):
        peft_model, tokenizer = load_with_adapter(adapter_dir, model=model, quant=cfg.quant)
        loss_kw = dict(batch_size=cfg.batch_size, max_len=cfg.reference_max_tokens)
        with peft_model.disable_adapter(), progress("eval: reference loss, base", len(items)) as advance:
            base_losses = reference_losses(peft_model, tokenizer, items, **loss_kw, advance=advance)
        with progress("eval: reference loss, adapter", len(items)) as advance:
            adapter_losses = reference_losses(peft_model, tokenizer, items, **loss_kw, advance=advance)
        for it, b, a in zip(items, base_losses, adapter_losses, strict=True):
            it.loss_base, it.loss_adapter = b, a
        log("eval: reference losses done")
        prompts = [it.messages for it in items]
        kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                  repetition_penalty=cfg.repetition_penalty)
        with peft_model.disable_adapter(), progress("eval: base answers", len(items)) as advance:
            base_answers = generate(peft_model, tokenizer, prompts, **kw, advance=advance)
        log("eval: base answers done")
        with progress("eval: adapter answers", len(items)) as advance:
            adapter_answers = generate(peft_model, tokenizer, prompts, **kw, advance=advance)
        log("eval: adapter answers done")
        for it, b, a in zip(items, base_answers, adapter_answers, strict=True):
            it.base, it.adapter = b, a
            it.rouge_l_base, it.rouge_l_adapter = rouge_l(b, it.reference), rouge_l(a, it.reference)
        sampling = eval_sampling(cfg, stop_tokens(tokenizer))
        report = {
            "adapter": str(adapter_dir), "base_model": model or info["base"], "data": data, "data_asked": cfg.data, "data_why": why,
            "n_tasks": n_tasks, "limit": cfg.limit, "few_tasks": few_tasks_note(data, n_tasks, cfg.limit) or None,
            "settings": report_settings(cfg), "sampling": sampling,
            "n_prompts": len(items),
            "reference_loss": loss_summary(items, seed=cfg.seed),
            "rouge_l": score_summary(items, seed=cfg.seed),
            "answer_words": answer_words(items),
            "judge": None,
        }
        if judge is not None:
            with progress("eval: judge verdicts", len(items)) as advance:
                report["judge"] = judge_pairwise(judge, items, random.Random(cfg.seed), ci_seed=cfg.seed,
                                                 advance=advance, prompts=prompts_lib)
            check_judge_budget(judge, report["judge"], run)
    report["runtime_s"] = round(time.perf_counter() - start, 1)
    report["items"] = [it.to_report() for it in items]
    out = Path(out_dir) if out_dir else eval_dir_of(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "eval_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "eval_report.md", report_markdown(report))
    # The settings travel with the adapter: serve, the Ollama Modelfile and generate answer as this eval scored.
    write_text_atomic(Path(adapter_dir) / SAMPLING, json.dumps(sampling, indent=2) + "\n")
    if note := short_cap_note(Path(adapter_dir) / SAMPLING, cfg.max_new_tokens, python):
        log(note)
    report["report_dir"] = str(out)
    return report


def short_cap_note(sampling: Path, cap: int, python: bool = False) -> str:
    """A quick eval's short cap would cut every served answer: what sampling.json now says, and how to lift it, in
    the words of the CLI (--max-new-tokens) or of the Python API (a Run's eval.max_new_tokens); "" at the default."""
    default = EvalConfig().max_new_tokens
    if cap >= default:
        return ""
    again = (f"set run.config.eval.max_new_tokens = {default} (the default) or more and call run.eval() again"
             if python else f"run eval again with --max-new-tokens {default} (the default) or more")
    return (f"note: {sampling} now caps answers at {cap} tokens (this eval's max_new_tokens), and serve, the Ollama "
            f"Modelfile and generate answer with it. Fix: before serving, {again}")


def report_settings(cfg: EvalConfig) -> dict[str, Any]:
    """The settings eval_report.json records (all but the data, which it names apart), secrets masked.

    A report whose settings equal these was made with the same settings (a run's eval step
    compares them to skip an evaluation that is up to date).
    """
    return {k: v for k, v in mask_dict(dataclasses.asdict(cfg)).items() if k != "data"}


def bootstrap_ci95(values: Any, seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` over `resamples` resamplings (with replacement)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    low, high = np.percentile(values[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def paired_summary(base: list[float], adapter: list[float], seed: int = 0, resamples: int = 2000,
                   digits: int = 4) -> dict[str, Any]:
    """Mean of each side on the same prompts, the paired difference with a bootstrap 95% interval, and a sign test.

    A few dozen prompts give a noisy mean: the interval (percentiles of the mean paired
    difference over `resamples` resamplings of the prompts) says whether the difference
    could be noise; the sign test asks the same of the per-prompt wins, ignoring margins.
    """
    import numpy as np

    diff = np.asarray(adapter, dtype=float) - np.asarray(base, dtype=float)
    low, high = bootstrap_ci95(diff, seed, resamples)
    up, down = int((diff > 0).sum()), int((diff < 0).sum())
    return {"base": round(statistics.fmean(base), digits), "adapter": round(statistics.fmean(adapter), digits),
            "delta": round(float(diff.mean()), digits), "delta_ci95": [round(low, digits), round(high, digits)],
            "adapter_higher": up, "base_higher": down, "equal": len(diff) - up - down,
            "sign_test_p": round(sign_test(up, down), 4)}


def score_summary(items: list[EvalItem], seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """ROUGE-L of both sides: paired_summary (higher is better)."""
    return paired_summary([it.rouge_l_base for it in items], [it.rouge_l_adapter for it in items], seed, resamples)


def loss_summary(items: list[EvalItem], seed: int = 0, resamples: int = 2000) -> dict[str, Any] | None:
    """Reference loss of both sides: paired_summary over the items both scored (lower is better); None if none."""
    both = [(it.loss_base, it.loss_adapter) for it in items if it.loss_base is not None and it.loss_adapter is not None
            and math.isfinite(it.loss_base) and math.isfinite(it.loss_adapter)]
    if not both:
        return None
    out = paired_summary([b for b, _ in both], [a for _, a in both], seed, resamples)
    return {**out, "n": len(both)}


def answer_words(items: list[EvalItem]) -> dict[str, float]:
    """Mean length in words of each side's answers and of the references: ROUGE-L F favours lengths near the reference's."""
    def mean(texts: list[str]) -> float:
        return round(statistics.fmean(len(t.split()) for t in texts), 1) if texts else 0.0

    return {"base": mean([it.base for it in items]), "adapter": mean([it.adapter for it in items]),
            "reference": mean([it.reference for it in items])}


def words_text(mean: float) -> str:
    """A mean answer length as the summary line and eval_report.md both say it: one decimal, none when whole (56.5,
    56): the line's ":.0f" said "reference 56" where the report said 56.5."""
    return f"{round(mean, 1):g}"


def summary_line(report: dict[str, Any]) -> str:
    """The report in one line: both means, the difference with its interval, per-prompt counts, the judge."""
    r, loss = report["rouge_l"], report.get("reference_loss")
    return ((f"reference loss base {loss['base']:.4f}, adapter {loss['adapter']:.4f} ({loss['delta']:+.4f}, 95% "
             f"interval {loss['delta_ci95'][0]:+.4f} to {loss['delta_ci95'][1]:+.4f}; adapter lower on "
             f"{loss['base_higher']}); " if loss else "")
            + f"ROUGE-L base {r['base']:.4f}, adapter {r['adapter']:.4f} ({r['delta']:+.4f}, 95% interval "
            f"{r['delta_ci95'][0]:+.4f} to {r['delta_ci95'][1]:+.4f}; adapter higher on {r['adapter_higher']}, "
            f"base on {r['base_higher']}) on {report['n_prompts']} prompts"
            + (f"; answers {words_text(report['answer_words']['base'])} / "
               f"{words_text(report['answer_words']['adapter'])} words "
               f"(reference {words_text(report['answer_words']['reference'])})" if report.get("answer_words") else "")
            + (f"; {judge_words(report['judge'])}" if report.get("judge") else ""))


def judge_words(j: dict[str, Any]) -> str:
    """The judge in summary_line: its win rate over the verdicts read, and those it could not read ("judge win rate
    None" was all a judge whose every reply was unreadable got)."""
    unread = f", {j['unparsed']} replies with no A, B or tie" if j.get("unparsed") else ""
    if j.get("win_rate") is None:
        return f"judge win rate n/a (no verdict{unread})"
    return f"judge win rate {j['win_rate']:.1%} ({j['judged']} verdicts{unread})"


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if each side wins half the time."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


# ---------------------------------------------------------------- the judge


def find_run_dir(adapter_dir: str | Path) -> Path | None:
    """The run directory an adapter belongs to (store.RunDir.of_adapter): the folder holding it (RUN/adapter),
    else the run its training data came from (RUN or RUN/export). None when there is none."""
    summary = read_summary(adapter_dir)
    data: Path | None = Path(summary["data"]) if summary.get("data") else None
    if data is not None and not data.is_absolute():  # an older summary's: from where train ran, when it says
        base = trained_from(adapter_dir, summary)  # (a run guessed from the current directory could be another's)
        data = base / data if base is not None else None
    run = RunDir.of_adapter(adapter_dir, data)
    return run.path if run is not None else None


def run_budget(run_dir: str | Path) -> BudgetConfig:
    """The run's [budget] as its manifest records it (the config of its latest command); defaults where it has none."""
    return config_from_dict(BudgetConfig, (RunDir(run_dir).manifest().get("config") or {}).get("budget"))


@contextmanager
def judge_context(cfg: TeacherConfig, run_dir: str | Path | None, *, seed: int = 0, log: Log = print,
                  flags: dict[str, str] | None = None) -> Iterator[tuple[Any, Prompts]]:
    """(the judge cfg describes or None when cfg.spec is "", the prompts it is asked with).

    The judge is built as the run's teacher is (pipeline.context): from its config, asked for
    one token first. Inside a run directory it gets the run's context: the run's response cache,
    a usage-log session of its own, the run's budget counting every earlier session's spend, and
    the run's prompts_dir. The cache is closed on the way out. Its messages name [eval.judge]'s settings and,
    of `flags` (setting -> flag), the command's flags for them.
    """
    origin = origin_of("eval.judge", flags)
    if run_dir is None:
        judge = None
        if cfg.spec.strip():
            judge_prompts(Prompts())
            judge = build_teacher(cfg, seed, log, origin)
            preflight(judge)  # a wrong port or a dead server fails here, in seconds, naming the URL
        yield judge, Prompts()
        return
    ctx = RunContext.of_run(run_dir, log=log, session_tag="eval-")
    if not cfg.spec.strip():
        yield None, ctx.prompts
        return
    judge_prompts(ctx.prompts)
    judge = build_teacher(cfg, seed, log, origin)
    preflight(judge)
    try:
        yield ctx.attach(judge), ctx.prompts
    finally:
        ctx.close()


JUDGE_TEMPLATE = "judge_pairwise.txt"  # the one template the eval judge renders


def judge_prompts(prompts: Prompts) -> None:
    """The eval judge's template is in prompts_dir before the judge is asked anything: a copy without
    judge_pairwise.txt died after the base and adapter answers were generated, at the first verdict."""
    prompts.path(JUDGE_TEMPLATE)


@contextmanager
def judge_teacher(cfg: TeacherConfig, run_dir: str | Path | None, *, seed: int = 0, log: Log = print,
                  flags: dict[str, str] | None = None) -> Iterator[Any]:
    """The judge of judge_context alone."""
    with judge_context(cfg, run_dir, seed=seed, log=log, flags=flags) as (judge, _):
        yield judge


def check_judge_budget(teacher: Any, result: dict[str, Any], run_dir: Path | None) -> None:
    """Stop (exit 3) when the run's budget left verdicts unasked: a report judged in part would look complete."""
    if result.get("not_sent"):
        from ..budget import BudgetReached

        spend = teacher.budget.spend() if getattr(teacher, "budget", None) is not None else {}
        asked = result["judged"] + result["unparsed"] + result["not_sent"]
        raise BudgetReached(f"budget reached while judging: {result['not_sent']} of {asked} verdicts not asked "
                            f"({spend.get('total_tokens', '?')} tokens spent in {run_dir}). Fix: "
                            "raise the run's [budget] max_tokens_total / max_cost and evaluate again; the verdicts "
                            "so far are cached and cost nothing twice")


# A reply read word by word; the first verdict in it wins. A letter is a verdict unless it is one of two named
# together ("A and B are equally good", "Both A and B", "Neither A nor B"), or a capital A that is the article: one
# followed by a lower-case word ("A better answer is B.", "A tie.") is, unless that word says what A does ("A is
# better", "A wins"). A lower-case "a" is always the article ("It's a tie."): only a reply of it alone is A.
VERDICT_WORDS = re.compile(r"[A-Za-z']+|[^\sA-Za-z*_`#]")  # words and punctuation; markdown (**A**) dropped
TIE_WORDS = frozenset({"tie", "equal", "equally", "same"})  # "Verdict: tie", "Both are equally good", "the same"
NOT_WORDS = frozenset({"not", "no", "isn't", "aren't", "neither"})  # "Not equal: B is better" says no tie
TOGETHER = frozenset({"and", "or", "nor", "&", "vs", "versus", "than", "both", "neither", "between"})
CUES = frozenset({"answer", "answers", "response", "option"})  # "Answer A and Answer B": the words before a letter
# What a judge writes after the letter A it chose; after the article A comes a noun or its adjective.
AFTER_LETTER_A = frozenset({"is", "was", "wins", "won", "seems", "appears", "has", "provides", "gives", "offers",
                            "does", "answers", "addresses", "follows", "because", "since", "as"})


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply (the first verdict wins); None if there is none. A reply that
    names no letter as a verdict but begins "Both" ("Both are correct") found no better one: a tie."""
    if (bare := text.strip().strip("*_.:`'\" ").lower()) in ("a", "b"):  # a reply of the letter alone, "a." too
        return bare.upper()
    words = VERDICT_WORDS.findall(text)
    low = [w.lower() for w in words]
    article = False  # a capital A read as the article: the verdict after all when the reply names no B
    for i, word in enumerate(words):
        word = word.removesuffix("'s")  # "B's answer is clearer"
        if low[i] in TIE_WORDS and not NOT_WORDS & set(low[max(i - 2, 0):i]):
            return "tie"
        if word not in ("A", "B"):
            continue
        after = low[i + 1] if i + 1 < len(words) else ""
        j = i - 1
        while j >= 0 and low[j] in CUES:
            j -= 1
        if after in TOGETHER or (j >= 0 and low[j] in TOGETHER):
            continue
        if word == "A" and after.isalpha() and words[i + 1].islower() and after not in AFTER_LETTER_A:
            article = True  # the article, or a verb the list lacks ("A directly addresses it"): B decides
            continue
        return word
    if article and not any(w.removesuffix("'s") == "B" for w in words):
        return "A"
    return "tie" if low[:1] == ["both"] else None


def judge_pairwise(teacher: Any, items: list[EvalItem], rng: random.Random, ci_seed: int = 0,
                   advance: Advance | None = None, prompts: Prompts | None = None) -> dict[str, Any]:
    """Ask the judge which answer is better (each item's `judge` is set); adapter's win rate with ties as half a win,
    with a bootstrap 95% interval over the judged prompts (0.5 inside it: no side preferred beyond noise)."""
    from ..teachers import GenParams

    prompts_lib = prompts or Prompts()  # the run's prompts_dir when the eval is a run's
    swaps = [rng.random() < 0.5 for _ in items]  # True: the adapter's answer is shown as A
    prompts = []
    for it, swap in zip(items, swaps, strict=True):
        a, b = (it.adapter, it.base) if swap else (it.base, it.adapter)
        prompts.append(prompts_lib.render(JUDGE_TEMPLATE, request=it.prompt, reference=it.reference,
                                          answer_a=a or "(empty)", answer_b=b or "(empty)"))
    replies = teacher.generate(prompts, GenParams(max_tokens=8, temperature=0.0), kind="judge", progress=advance)
    wins = losses = ties = invalid = not_sent = cached = 0
    for it, swap, reply in zip(items, swaps, replies, strict=True):
        verdict = parse_verdict(reply.text) if reply.ok else None
        winner = {None: None, "tie": "tie", "A": "adapter" if swap else "base", "B": "base" if swap else "adapter"}[verdict]
        it.judge = winner
        wins += winner == "adapter"
        losses += winner == "base"
        ties += winner == "tie"
        unsent = not reply.ok and (reply.error or "").startswith("not sent")  # the budget was spent before it
        not_sent += unsent
        invalid += winner is None and not unsent
        cached += bool(getattr(reply, "cached", False))
    judged = wins + losses + ties
    points = [{"adapter": 1.0, "tie": 0.5, "base": 0.0}[it.judge] for it in items if it.judge is not None]
    ci = [round(x, 4) for x in bootstrap_ci95(points, ci_seed)] if points else None
    return {"teacher": getattr(teacher, "name", "judge"), "adapter_wins": wins, "base_wins": losses, "ties": ties,
            "unparsed": invalid, "not_sent": not_sent, "judged": judged, "cached": cached,
            "win_rate": round((wins + 0.5 * ties) / judged, 4) if judged else None, "win_rate_ci95": ci}


def report_markdown(report: dict[str, Any]) -> str:
    r, loss, words = report["rouge_l"], report.get("reference_loss"), report.get("answer_words")

    def difference(s: dict[str, Any]) -> str:
        return (f"{s['delta']:+.4f}, 95% bootstrap interval [{s['delta_ci95'][0]:+.4f}, {s['delta_ci95'][1]:+.4f}]"
                + (" (excludes 0)" if s["delta_ci95"][0] > 0 or s["delta_ci95"][1] < 0 else " (includes 0: could be noise)"))

    def row(name: str, side: str, higher: str) -> str:
        return (f"| {name} | {f'{loss[side]:.4f}' if loss else '-'} | {r[side]:.4f} | {r[higher]} | "
                f"{words_text(words[side]) if words else '-'} |")

    lines = [f"# Eval: {Path(report['adapter']).name} vs its base", "",
             f"{report['n_prompts']} prompts from `{report['data']}`; greedy decoding, "
             f"max {report['settings']['max_new_tokens']} new tokens.", "",
             *([f"**Note:** {report['few_tasks']}.", ""] if report.get("few_tasks") else []),
             "| model | reference loss (lower is better) | ROUGE-L | prompts where ROUGE-L higher | answer words |",
             "|---|---:|---:|---:|---:|", row("base", "base", "base_higher"),
             row("base + adapter", "adapter", "adapter_higher"), ""]
    if words:
        lines += [f"The references average {words_text(words['reference'])} words; ROUGE-L F rewards answers near that length.", ""]
    if loss:
        lines += [f"Reference loss (adapter - base), the mean negative log-likelihood per reference token given the "
                  f"prompt: {difference(loss)}; adapter lower on {loss['base_higher']} of {loss['n']} prompts.", ""]
    lines += [f"ROUGE-L difference (adapter - base): {difference(r)}; equal on {r['equal']} prompts; "
              f"sign test p = {r['sign_test_p']:.3g}.", ""]
    j = report.get("judge")
    if j:
        lines += [f"Pairwise judge `{j['teacher']}`: adapter wins {j['adapter_wins']}, base wins {j['base_wins']}, "
                  f"ties {j['ties']}, unparsed {j['unparsed']}; adapter win rate "
                  + (f"{j['win_rate']:.1%}" if j["win_rate"] is not None else "n/a")
                  + (f" (95% bootstrap interval {j['win_rate_ci95'][0]:.1%} to {j['win_rate_ci95'][1]:.1%})"
                     if j.get("win_rate_ci95") else "") + ".", ""]
    return "\n".join(lines)


def user_prompt(instruction: str, input: str = "") -> list[dict[str, str]]:
    """A single-turn prompt as chat messages (for `seed2lora generate`)."""
    return [{"role": "user", "content": user_text(instruction, input)}]
