"""Spend: tokens and dollars across a run (earlier sessions included), and the limits on them.

The teacher asks `exhausted()` before it sends each new request, so a run stops cleanly:
requests already in flight finish and are written, nothing half-done is left, and the
same command with a higher limit goes on from there.
"""

from __future__ import annotations

from typing import Any

from .config import BudgetConfig
from .errors import Seed2LoraError
from .teachers.base import Usage


class BudgetReached(Seed2LoraError):
    """The run stopped at its token or cost limit; everything written so far is consistent."""

    exit_code = 3


def usage_totals(usage: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) over all call kinds."""
    return (sum(u.get("prompt_tokens", 0) for u in usage.values()),
            sum(u.get("completion_tokens", 0) for u in usage.values()))


def price_for(cfg: BudgetConfig, model: str) -> tuple[float, float] | None:
    """$ per 1M (input, output) tokens: an exact model name, else the longest matching prefix."""
    if model in cfg.prices:
        return tuple(cfg.prices[model])  # type: ignore[return-value]
    matches = [k for k in cfg.prices if model.startswith(k)]
    return tuple(cfg.prices[max(matches, key=len)]) if matches else None  # type: ignore[return-value]


def cost_usd(cfg: BudgetConfig, model: str, usage: dict[str, dict[str, int]]) -> float | None:
    price = price_for(cfg, model)
    if price is None:
        return None
    prompt, completion = usage_totals(usage)
    return (prompt * price[0] + completion * price[1]) / 1e6


class Budget:
    def __init__(self, cfg: BudgetConfig, model: str, spent_before: dict[str, dict[str, int]]):
        self.cfg, self.model, self.before = cfg, model, spent_before
        if cfg.max_cost and price_for(cfg, model) is None:
            raise Seed2LoraError(f"max_cost is set but there is no price for model {model!r}. Fix: add "
                                 f'[budget] prices = {{ "{model}" = [input_usd_per_1M, output_usd_per_1M] }}')
        self.reached = False

    def merged(self, usage: Usage) -> dict[str, dict[str, int]]:
        total = {k: dict(v) for k, v in self.before.items()}
        for kind, u in usage.to_dict().items():
            base = total.setdefault(kind, {})
            for key, value in u.items():
                base[key] = base.get(key, 0) + value
        return total

    def exhausted(self, usage: Usage) -> bool:
        merged = self.merged(usage)
        tokens = sum(usage_totals(merged))
        over = bool(self.cfg.max_tokens_total and tokens >= self.cfg.max_tokens_total)
        cost = cost_usd(self.cfg, self.model, merged)
        over = over or bool(self.cfg.max_cost and cost is not None and cost >= self.cfg.max_cost)
        self.reached = self.reached or over
        return over

    def spend(self, usage: Usage) -> dict[str, Any]:
        merged = self.merged(usage)
        prompt, completion = usage_totals(merged)
        cost = cost_usd(self.cfg, self.model, merged)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "cost_usd": None if cost is None else round(cost, 6),
                "max_tokens_total": self.cfg.max_tokens_total or None, "max_cost": self.cfg.max_cost or None}


def attach_run(teacher: Any, cache: Any, session: str, cfg: BudgetConfig) -> Any:
    """Give a teacher a run's response cache, its own session in the run's usage log, and a
    budget that counts every earlier session's spend (the one place that does this)."""
    teacher.cache, teacher.session = cache, session
    model = teacher.describe().get("model", teacher.name)
    teacher.budget = Budget(cfg, str(model), cache.usage(exclude_session=session))
    return teacher


CHARS_PER_TOKEN = 4  # the usual rule of thumb for English with BPE vocabularies; a dry run is an estimate
ASSUMED_YIELD = 2.0  # kept instructions per bootstrap prompt when the run has no history yet


def estimate_run(cfg: Any, prompts: Any, seeds: list, run: Any, log: Any) -> dict[str, Any]:
    """Calls and tokens the enabled stages would still spend; no teacher is loaded, nothing is sent.

    Prompt tokens come from rendering real prompts (characters / 4); completion tokens are
    the max_tokens upper bound. Bootstrap calls assume the yield seen so far in this run.
    """
    import math
    import random

    from .records import Task
    from .stages.bootstrap import build_prompt
    from .stages.instances import instance_prompt

    def tokens(text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    kept = len(run.read_stage("bootstrap"))
    sent = log.requests("bootstrap")[0] if log is not None else 0
    yield_per_call = kept / sent if sent and kept else ASSUMED_YIELD
    remaining = max(0, cfg.bootstrap.num_instructions - kept)
    example = Task(id="x", instruction=seeds[0].instruction if seeds else "An example task.")
    rows: dict[str, dict[str, Any]] = {}
    if "bootstrap" in cfg.stages:
        _, text, _ = build_prompt(prompts, cfg, random.Random(cfg.seed), seeds, [])
        max_out = cfg.bootstrap.alpaca_max_tokens if cfg.bootstrap.mode == "alpaca" else cfg.bootstrap.max_tokens
        calls = math.ceil(remaining / yield_per_call)
        rows["bootstrap"] = {"calls": calls, "prompt_tokens": calls * tokens(text), "max_completion_tokens": calls * max_out}
    n_tasks = cfg.bootstrap.num_instructions
    if "classify" in cfg.stages:
        calls = max(0, n_tasks - len(run.read_stage("classify")))
        text = prompts.render("classify.txt", instruction=example.instruction)
        rows["classify"] = {"calls": calls, "prompt_tokens": calls * tokens(text),
                            "max_completion_tokens": calls * cfg.classify.max_tokens}
    if "instances" in cfg.stages:
        calls = max(0, n_tasks - len(run.read_stage("instances")))
        _, text = instance_prompt(example, prompts)
        rows["instances"] = {"calls": calls, "prompt_tokens": calls * tokens(text),
                             "max_completion_tokens": calls * cfg.instances.max_tokens}
    model = cfg.teacher.spec.partition(":")[2] or cfg.teacher.spec
    total = {k: sum(r[k] for r in rows.values()) for k in ("calls", "prompt_tokens", "max_completion_tokens")}
    price = price_for(cfg.budget, model)
    cost = None if price is None else (total["prompt_tokens"] * price[0] + total["max_completion_tokens"] * price[1]) / 1e6
    return {"stages": rows, "total": total, "max_cost_usd": cost, "bootstrap_yield_per_call": round(yield_per_call, 2),
            "yield_observed": bool(sent and kept), "model": model}
