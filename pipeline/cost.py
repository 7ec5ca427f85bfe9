"""What a dataset costs: tokens and dollars per stage and teacher, per 1,000 kept instructions and
training rows, and the calls after which training pays for itself against putting text in the context.

The break-even model: a call to the adapted model sends `call_tokens`; without the adapter the
same call also carries `context_tokens` of examples or instructions. At a price p per token,
each call with the adapter saves context_tokens * p, so the investment (the dataset's teacher
spend plus the training) is back after investment / (context_tokens * p) calls. The classic
example: 1,000 context tokens at $0.002 per 1K tokens save $0.002 a call, and $100 of
training is back after 50,000 calls. A dearer fine-tuned model (finetuned_usd_per_1k_tokens)
takes call_tokens * (its price - p) off each saving.

Tokens come from the run itself: the usage log in cache.sqlite (every session, cached
calls free, each call priced at the model that answered it), and the run's rows measured in the teacher's own tokens, at the characters
per token of the replies it sent (the cache holds each reply and its completion tokens).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from pathlib import Path
from typing import Any

from .budget import BATCH_SUFFIX, CHARS_PER_TOKEN, ByModel, attribute_unlogged, price_for, usd_of
from .cache import CACHE_FILE, ResponseCache, usage_log
from .config import BudgetConfig, CostConfig, ExportConfig, config_from_dict
from .errors import Refused, Seed2LoraError
from .records import row_messages
from .rows import run_rows
from .store import RunDir, read_export_info
from .teachers.base import LOGPROB_REPLY_START

TRAINING_SUMMARY = "training_summary.json"  # written by `seed2lora train` into the adapter folder


def run_usage(run: RunDir) -> tuple[ByModel, str]:
    """(usage per model and call kind, where it came from): the durable usage log, else the manifest's copy.
    Rows that name no model (logged before models were, or the manifest's) go to the run's recorded teacher,
    score's to its judge (budget.attribute_unlogged)."""
    manifest = run.manifest()
    if usage := usage_log(run.path, by_model=True):
        return attribute_unlogged(usage, manifest), f"{CACHE_FILE} usage log"
    return attribute_unlogged({None: dict(manifest.get("usage") or {})}, manifest), "manifest.json"


def open_batches(run: RunDir) -> dict[str, Any] | None:
    """The Batch API waves submitted and not read yet (a run stopped while they ran): their batch ids, requests
    and cost at their most (as --max-cost counts them); None when there are none."""
    db = run.path / CACHE_FILE
    if not db.is_file():
        return None
    cache = ResponseCache(db)
    try:
        waves, lines = cache.open_waves(), cache.open_lines()
    finally:
        cache.close()
    if not waves:
        return None
    return {"batches": [w["batch_id"] or w["file_id"] for w in waves], "requests": len(lines),
            "est_usd": sum(w["est_usd"] for w in waves), "est_tokens": sum(w["est_tokens"] for w in waves)}


def open_batches_line(ob: dict[str, Any]) -> str:
    n = len(ob["batches"])
    price = f", {money(ob['est_usd'])} at the batch price" if ob["est_usd"] else " (unpriced model)"
    return (f"open batches: {n} batch{'es' if n != 1 else ''} ({', '.join(ob['batches'][:3])}"
            f"{', ...' if n > 3 else ''}) {'holds' if n == 1 else 'hold'} {ob['requests']:,} requests submitted and "
            f"not read yet, {ob['est_tokens']:,} tokens at most{price}; run the same command to read them "
            "(docs/batch.md)")


def chars_per_token(run: RunDir) -> tuple[float, str]:
    """Characters per completion token of the run's own replies; the usual 4 when none were counted."""
    db = run.path / CACHE_FILE
    if db.is_file():
        # A plain connection, closed at once: the last one to close folds the WAL in and removes -wal and -shm,
        # which a read-only connection cannot do (it left them behind after `show`).
        con = sqlite3.connect(db)
        try:
            # Not the log-probability replies: their text is JSON, ~590 characters for 1 token (63 a token
            # measured on the quickstart run, whose text replies had 4.2).
            chars, tokens = con.execute("SELECT SUM(LENGTH(text)), SUM(completion_tokens) FROM responses "
                                        "WHERE completion_tokens > 0 AND substr(text, 1, ?) != ?",
                                        (len(LOGPROB_REPLY_START), LOGPROB_REPLY_START)).fetchone()
        finally:
            con.close()
        if tokens:
            return chars / tokens, "measured on the teacher's replies"
    return float(CHARS_PER_TOKEN), "assumed (no counted replies)"


def run_budget(manifest: dict[str, Any], configured: dict[str, list[float]] | None = None) -> BudgetConfig:
    """Prices for a run: the defaults, then the run's own [budget.prices] (its manifest), then prices given now."""
    budget = (manifest.get("config") or {}).get("budget") or {}
    prices = {**BudgetConfig().prices, **(budget.get("prices") or {}), **(configured or {})}
    return BudgetConfig(prices=prices, batch_price_factor=budget.get("batch_price_factor",
                                                                     BudgetConfig().batch_price_factor))


def stage_costs(usage: ByModel, budget: BudgetConfig) -> list[dict[str, Any]]:
    """One line per call kind and model: calls, cached calls, tokens (and of the prompt tokens, those the server's
    prefix cache served), dollars at that model's price (None without)."""
    lines = []
    for model, kinds in usage.items():
        price = price_for(budget, model)
        for kind, u in kinds.items():
            prompt, completion = int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
            prefix = int(u.get("cached_tokens", 0))
            lines.append({"stage": kind, "model": model, "calls": int(u.get("calls", 0)),
                          "cached": int(u.get("cached", 0)), "prompt_tokens": prompt, "completion_tokens": completion,
                          "cached_tokens": prefix, "usd": None if price is None else usd_of(price, prompt, completion, prefix),
                          "price_per_1m": list(price) if price else None})
    return lines


def training_cost(adapter: Path | None, cost: CostConfig) -> dict[str, Any]:
    """The configured training cost, else the adapter's training time at the configured hourly price."""
    if cost.train_usd:
        return {"usd": cost.train_usd, "source": "configured ([cost] train_usd)"}
    if adapter is None or not (adapter / TRAINING_SUMMARY).is_file():
        return {"usd": None, "source": "unknown: no adapter with a training summary; set [cost] train_usd"}
    summary = json.loads((adapter / TRAINING_SUMMARY).read_text(encoding="utf-8"))
    seconds = float(summary.get("runtime_s") or 0.0)
    on_gpu = str(summary.get("device", "")).startswith("cuda")
    hourly = cost.gpu_usd_per_hour if on_gpu else cost.cpu_usd_per_hour
    devices = int(summary.get("world_size") or 1)
    usd = seconds / 3600 * hourly * devices
    return {"usd": usd, "seconds": seconds, "device": summary.get("device"), "devices": devices,
            "usd_per_hour": hourly, "source": f"measured: {seconds:.0f} s on {devices} x {summary.get('device')} "
                                              f"at ${hourly:g}/h ({adapter})"}


def row_tokens(rows: list[dict[str, Any]], chars_per_tok: float) -> dict[str, float]:
    """Mean tokens of a training row's request (user turns) and answer (assistant turns)."""
    if not rows:
        return {"request": 0.0, "answer": 0.0}
    request, answer = [], []
    for r in rows:
        msgs = row_messages(r)
        request.append(sum(len(m["content"]) for m in msgs if m["role"] != "assistant") / chars_per_tok)
        answer.append(sum(len(m["content"]) for m in msgs if m["role"] == "assistant") / chars_per_tok)
    return {"request": statistics.fmean(request), "answer": statistics.fmean(answer)}


def break_even(investment: float | None, call_tokens: float, context_tokens: float, cost: CostConfig) -> dict[str, Any]:
    """Calls after which the adapter's saving per call has paid back the investment (None: never or unknown)."""
    price = cost.serve_usd_per_1k_tokens / 1000
    finetuned = (cost.finetuned_usd_per_1k_tokens or cost.serve_usd_per_1k_tokens) / 1000
    saved = (call_tokens + context_tokens) * price - call_tokens * finetuned
    calls = investment / saved if investment is not None and saved > 0 else None
    return {"call_tokens": call_tokens, "context_tokens": context_tokens, "usd_per_1k_tokens": cost.serve_usd_per_1k_tokens,
            "finetuned_usd_per_1k_tokens": finetuned * 1000, "saved_per_call_usd": saved, "investment_usd": investment,
            "calls": calls}


def kept_and_rows(run: RunDir) -> tuple[int, int, str]:
    """(kept instructions, training rows, where the rows were counted): the export's train split when the run has
    one, else every row `seed2lora train RUN` would read (seed rows included, before the eval split)."""
    try:
        data = run_rows(run, ExportConfig())
    except Refused as e:  # the run's files mix (evolutions of tasks a filter --input replaced): the cause, not "none"
        return 0, 0, f"not counted: {str(e).split('. Fix:')[0]}"
    except Seed2LoraError:
        return 0, 0, "no kept records"
    counts = read_export_info(run.export_dir).get("counts") or {}
    if "train_rows" in counts:
        return len(data.tasks), int(counts["train_rows"]), "export train split"
    return len(data.tasks), len(data.rows), "all rows of the run (no export yet)"


def run_cost(run_path: str | Path, budget: BudgetConfig | None = None, cost: CostConfig | None = None,
             adapter: str | Path | None = None) -> dict[str, Any]:
    """Every figure of `seed2lora cost` for one run directory; prices and [cost] default to the run's own."""
    run = RunDir(run_path)
    if not run.manifest_file.is_file():
        raise Seed2LoraError(f"{run.path} has no manifest.json. Fix: give a run directory made by seed2lora run, "
                             "or an adapter folder made by seed2lora train")
    manifest = run.manifest()
    budget = budget or run_budget(manifest)
    if cost is None:
        recorded = (manifest.get("config") or {}).get("cost") or {}
        cost = config_from_dict(CostConfig, recorded)
    usage, usage_source = run_usage(run)
    stages = stage_costs(usage, budget)
    priced = [s["usd"] for s in stages if s["usd"] is not None]
    unpriced = sorted({s["model"] for s in stages if s["usd"] is None and s["prompt_tokens"] + s["completion_tokens"]})
    dataset_usd = sum(priced) if priced or not unpriced else None
    models: dict[str, dict[str, Any]] = {}  # spend per model: each at its own price
    for s in stages:
        t = models.setdefault(s["model"], {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "usd": 0.0})
        t["prompt_tokens"] += s["prompt_tokens"]
        t["cached_tokens"] += s["cached_tokens"]
        t["completion_tokens"] += s["completion_tokens"]
        t["usd"] = None if t["usd"] is None or s["usd"] is None else t["usd"] + s["usd"]
    kept, n_rows, rows_source = kept_and_rows(run)
    adapter_dir = run.adapter_dir(adapter or cost.adapter)
    training = training_cost(adapter_dir if adapter_dir.is_dir() else None, cost)
    cpt, cpt_source = chars_per_token(run)
    try:
        rows = run_rows(run, ExportConfig()).rows
    except Seed2LoraError:
        rows = []
    measured = row_tokens(rows, cpt)
    call_tokens = cost.call_tokens or (measured["request"] + measured["answer"])
    context_tokens = cost.context_tokens or cost.context_examples * (measured["request"] + measured["answer"])
    parts = {k: v for k, v in (("dataset", dataset_usd), ("training", training["usd"])) if v is not None}
    investment = sum(parts.values()) if parts else None

    def per_1k(n: int) -> float | None:
        return dataset_usd / n * 1000 if dataset_usd is not None and n else None

    return {
        "run": str(run.path), "usage_source": usage_source, "stages": stages, "models": models,
        "batch_price_factor": budget.batch_price_factor if any(m.endswith(BATCH_SUFFIX) for m in models) else None,
        "open_batches": open_batches(run),
        "unpriced": unpriced, "dataset_usd": dataset_usd, "kept": kept, "train_rows": n_rows, "rows_source": rows_source,
        "usd_per_1k_kept": per_1k(kept), "usd_per_1k_rows": per_1k(n_rows), "training": training,
        "chars_per_token": cpt, "chars_per_token_source": cpt_source, "row_tokens": measured,
        "break_even": {**break_even(investment, call_tokens, context_tokens, cost),
                       "call_tokens_source": "configured" if cost.call_tokens else "measured: mean training row",
                       "context_tokens_source": "configured" if cost.context_tokens else
                       f"measured: {cost.context_examples} training rows in the prompt",
                       "investment_parts": list(parts)},
    }


def adapter_cost(adapter_path: str | Path, cost: CostConfig | None = None) -> dict[str, Any]:
    """`seed2lora cost ADAPTER` for an adapter trained on a user's own file (`seed2lora train my_data.jsonl`): no run
    directory, so no teacher spend to price; the training time and the break-even against it still are. Row tokens
    come from the summary's own count (the base's tokenizer, whole templated rows), not from characters."""
    adapter, cost = Path(adapter_path), cost or CostConfig()
    if not (adapter / TRAINING_SUMMARY).is_file():
        raise Seed2LoraError(f"{adapter} is neither a run directory (no manifest.json) nor an adapter folder with a "
                             f"{TRAINING_SUMMARY}. Fix: give a run directory made by `seed2lora run`, or the folder "
                             "`seed2lora train` wrote (its --out)")
    summary = json.loads((adapter / TRAINING_SUMMARY).read_text(encoding="utf-8"))
    training = training_cost(adapter, cost)
    data = (summary.get("train_data") or {})
    mean = float(data.get("mean_tokens") or 0.0)
    call_tokens = cost.call_tokens or mean
    context_tokens = cost.context_tokens or cost.context_examples * mean
    investment = training["usd"]
    missing = [f"dataset: not priced: {adapter} was trained on {summary.get('data') or 'a file'}, not on a run "
               "directory, so no teacher calls were logged to price (the break-even counts the training only; to count "
               "the data too, set [cost] train_usd to the training plus what the data cost)"]
    if not mean and not (cost.call_tokens and cost.context_tokens):
        missing.append(f"row tokens: not measured ({TRAINING_SUMMARY} has no train_data.mean_tokens); set [cost] "
                       "call_tokens and context_tokens")
    rows = int((summary.get("rows") or {}).get("train") or 0)
    return {
        "run": str(adapter), "usage_source": "none: an adapter folder, not a run directory", "stages": [], "models": {},
        "batch_price_factor": None, "open_batches": None, "unpriced": [], "dataset_usd": None, "kept": None,
        "train_rows": rows, "rows_source": f"{TRAINING_SUMMARY} train rows", "usd_per_1k_kept": None,
        "usd_per_1k_rows": None, "training": training, "chars_per_token": None, "chars_per_token_source": None,
        "row_tokens": {"mean": mean}, "not_priced": missing,
        "break_even": {**break_even(investment, call_tokens, context_tokens, cost),
                       "call_tokens_source": "configured" if cost.call_tokens else
                       f"measured: mean training row in the base's tokens ({TRAINING_SUMMARY})",
                       "context_tokens_source": "configured" if cost.context_tokens else
                       f"measured: {cost.context_examples} training rows in the prompt",
                       "investment_parts": ["training"] if investment is not None else []},
    }


def cost_of(path: str | Path, cost: CostConfig, prices: dict[str, list[float]] | None = None,
            adapter: str | Path | None = None) -> dict[str, Any]:
    """`seed2lora cost PATH`: a run directory's figures; an adapter folder's, through the run it was trained from
    when there is one (RUN/adapter, or trained on RUN or RUN/export), else its training alone (adapter_cost)."""
    if Path(path).is_file():  # `seed2lora cost my_data.jsonl --adapter A`: the adapter trained on it is priced
        if not adapter:
            raise Seed2LoraError(f"{path} is a file: cost prices a run directory or an adapter folder. Fix: "
                                 f"seed2lora cost ADAPTER (the folder `seed2lora train {path}` wrote), or add --adapter "
                                 "ADAPTER")
        return cost_of(adapter, cost, prices)
    run = RunDir(path)
    if not run.manifest_file.is_file() and (Path(path) / TRAINING_SUMMARY).is_file():
        data = json.loads((Path(path) / TRAINING_SUMMARY).read_text(encoding="utf-8")).get("data")
        found = RunDir.of_adapter(path, data)
        if found is None:
            return adapter_cost(path, cost)
        run, adapter = found, adapter or path
    return run_cost(run.path, run_budget(run.manifest(), prices), cost, adapter)


def money(usd: float | None, digits: int = 4) -> str:
    return "-" if usd is None else f"${usd:,.{digits}f}"


def summary_lines(c: dict[str, Any]) -> list[str]:
    """The figures after the per-stage table, as plain sentences (`cost`, `show` and the report use them)."""
    be = c["break_even"]
    if c.get("not_priced"):  # an adapter folder: no dataset spend, the training and break-even alone
        return [*c["not_priced"], f"training: {money(c['training']['usd'])} ({c['training']['source']}; "
                f"{c['train_rows']} training rows)", break_even_line(be)]
    per_model = ", ".join(f"{m} {money(t['usd'])}" for m, t in c["models"].items())
    lines = [f"dataset: {money(c['dataset_usd'])} of teacher calls" + (f", each model at its price: {per_model}"
                                                                       if per_model else "")
             + (f" (no price for model {', '.join(c['unpriced'])}: add [budget.prices] "
                f"\"{c['unpriced'][0].removesuffix(BATCH_SUFFIX)}\" = [input, output] $ per 1M tokens)"
                if c["unpriced"] else ""),
             f"per 1,000 kept instructions: {money(c['usd_per_1k_kept'])} ({c['kept']} kept); per 1,000 training rows: "
             f"{money(c['usd_per_1k_rows'])} ({c['train_rows']} rows, {c['rows_source']})",
             f"training: {money(c['training']['usd'])} ({c['training']['source']})"]
    prefix = sum(t.get("cached_tokens", 0) for t in c["models"].values())
    if prefix:
        prompt = sum(t["prompt_tokens"] for t in c["models"].values())
        lines.insert(1, f"prefix cache: {prefix:,} of {prompt:,} prompt tokens were served from the server's prefix "
                        "cache, priced at the model's cached-input rate (the third of its [budget.prices], else input)")
    if c.get("batch_price_factor") is not None:
        lines.insert(1, f"batch discount: calls of a model marked {BATCH_SUFFIX} went through the Batch API, priced at "
                        f"{c['batch_price_factor']:g} x the model's price (budget.batch_price_factor)")
    if c.get("open_batches"):
        lines.insert(1, open_batches_line(c["open_batches"]))
    lines.append(break_even_line(be))
    return lines


def whole_calls(calls: float) -> int:
    """The calls a break-even takes, whole: paid back *after* them, so rounded up ("0 calls" was said of 0.3; a float
    a hair over a whole number, 50000.00000000001, stays 50,000)."""
    import math

    return max(1, math.ceil(round(calls, 6)))


def break_even_line(be: dict[str, Any]) -> str:
    if be["calls"] is None:
        why = "the adapter saves nothing per call at these prices" if be["saved_per_call_usd"] <= 0 else \
            "neither the dataset's nor the training's cost is known"
        return f"break-even: none ({why})"
    calls = whole_calls(be["calls"])
    return (f"break-even: {calls:,} call{'s' * (calls != 1)}: {money(be['investment_usd'])} invested"
            + f" ({' + '.join(be['investment_parts'])}{'' if len(be['investment_parts']) == 2 else ' only'})"
            + f" / {money(be['saved_per_call_usd'], 6)} saved per call ({be['context_tokens']:,.0f} context "
            f"tokens not sent with each {be['call_tokens']:,.0f}-token call at ${be['usd_per_1k_tokens']:g} per 1K)")


def print_cost(out: Any, c: dict[str, Any]) -> None:
    """The cost table and sentences of one run on a rich Console (`seed2lora cost` and `show`)."""
    from rich.table import Column, Table

    # Labels fold on a narrow terminal rather than end in "…" (two cut labels could not be told apart); off a
    # terminal the console is wide enough for the whole table (show.stdout_console).
    table = Table(Column("stage", overflow="fold"), Column("model", overflow="fold"), "calls", "cached (free)",
                  "prompt tokens", "of them prefix-cached", "completion tokens", "$",
                  title=f"Cost of {c['run']} (usage from {c['usage_source']})")
    for s in c["stages"]:
        table.add_row(s["stage"], s["model"], f"{s['calls']:,}", f"{s['cached']:,}", f"{s['prompt_tokens']:,}",
                      f"{s.get('cached_tokens', 0):,}", f"{s['completion_tokens']:,}", money(s["usd"]))
    for name, t in c["models"].items():
        table.add_row("total", name, "", "", f"{t['prompt_tokens']:,}", f"{t.get('cached_tokens', 0):,}",
                      f"{t['completion_tokens']:,}", money(t["usd"]))
    if c["stages"] or not c.get("not_priced"):  # an adapter folder has no teacher calls to list
        out.print(table)
    else:
        out.print(f"Cost of {c['run']} (an adapter folder: its training, not the data's making)", highlight=False,
                  markup=False, soft_wrap=True)
    for line in summary_lines(c):
        out.print(line, highlight=False, markup=False, soft_wrap=True)  # whole lines in logs and pipes
