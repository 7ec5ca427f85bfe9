"""Spend: tokens and dollars across a run (earlier sessions included), and the limits on them.

Every call is priced at its own model: the usage log names the model of each call, so a run
whose cheap teacher wrote the data and whose dear judge scores it counts each at its price.

The teacher asks `exhausted()` before it sends each new request, counting the requests in flight
at the mean cost of their model's calls so far (at their most before its first reply), and waits
for their replies while they would reach the limit; so a run stops cleanly near its limit:
requests already in flight finish and are written, nothing half-done is left, and the same
command with a higher limit goes on from there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .cache import model_of
from .config import BudgetConfig, RunConfig, TeacherConfig
from .errors import Seed2LoraError
from .teachers.base import Usage


class BudgetReached(Seed2LoraError):
    """The run stopped at its token or cost limit; everything written so far is consistent."""

    exit_code = 3


# Spend per model, then per call kind: {"gpt-4o-mini": {"bootstrap": {"calls": 4, "prompt_tokens": ...}}}
ByModel = dict[str, dict[str, dict[str, int]]]


def usage_totals(usage: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) over all call kinds."""
    return (sum(u.get("prompt_tokens", 0) for u in usage.values()),
            sum(u.get("completion_tokens", 0) for u in usage.values()))


def cached_total(usage: dict[str, dict[str, int]]) -> int:
    """Prompt tokens over all call kinds that the server's prefix cache served (a part of the prompt tokens)."""
    return sum(u.get("cached_tokens", 0) for u in usage.values())


# The usage log names a Batch API call's model with this suffix ("gpt-4o-mini@batch"), so that every figure made
# from the log (budget, cost, show) prices it at the batch price without a second column.
BATCH_SUFFIX = "@batch"


Price = tuple[float, float, float]  # $ per 1M tokens: (input, output, cached input)


def price_for(cfg: BudgetConfig, model: str) -> Price | None:
    """$ per 1M (input, output, cached input) tokens: an exact model name, else the longest matching prefix; a price
    of two gives cached input tokens the input price. A batch call's model (BATCH_SUFFIX) has its own price where
    one is given, else its model's times budget.batch_price_factor, every rate of it: OpenAI's Batch API halves
    cached input tokens too (docs/batch.md)."""
    if model in cfg.prices:
        return _three(cfg.prices[model])
    if model.endswith(BATCH_SUFFIX):
        base = price_for(cfg, model[:-len(BATCH_SUFFIX)])
        return None if base is None else (base[0] * cfg.batch_price_factor, base[1] * cfg.batch_price_factor,
                                          base[2] * cfg.batch_price_factor)
    matches = [k for k in cfg.prices if model.startswith(k)]
    return _three(cfg.prices[max(matches, key=len)]) if matches else None


def _three(price: list[float]) -> Price:
    return float(price[0]), float(price[1]), float(price[2] if len(price) > 2 else price[0])


def usd_of(price: Price, prompt: int, completion: int, cached: int = 0) -> float:
    """Dollars of tokens at a price: the prompt tokens the server's prefix cache served (`cached`, a part of
    `prompt`) at the cached-input rate, the rest at the input rate."""
    cached = min(cached, prompt)
    return ((prompt - cached) * price[0] + cached * price[2] + completion * price[1]) / 1e6


def priced_model(teacher: TeacherConfig) -> str:
    """The model a teacher's calls are priced at, as attach_run logs them: BATCH_SUFFIX through the Batch API."""
    return model_of(teacher.spec) + (BATCH_SUFFIX if teacher.batch else "")


def judge_config(cfg: RunConfig) -> TeacherConfig:
    """The score judge's teacher settings: [score.teacher] when it names a spec, else the run's [teacher]."""
    return cfg.score.teacher if cfg.score.teacher.spec else cfg.teacher


GENERATION_STAGES = ("bootstrap", "classify", "instances", "evolve")  # the stages that call the run's [teacher]


def stage_models(cfg: RunConfig, stages: Iterable[str]) -> dict[str, str]:
    """The priced model (priced_model) of each stage in `stages` that calls a teacher, in pipeline order: the run's
    [teacher] for the generation stages, score's judge, and eval's [eval.judge] when it names one."""
    models = {name: priced_model(cfg.teacher) for name in GENERATION_STAGES if name in stages}
    if "score" in stages:
        models["score"] = priced_model(judge_config(cfg))
    if "eval" in stages and cfg.eval.judge.spec.strip():
        models["eval"] = priced_model(cfg.eval.judge)
    return models


def no_price(model: str, stages: Iterable[str] = ()) -> Seed2LoraError:
    """max_cost is set and `model` has no price: the error naming it, the stages that call it, and the fix."""
    listed = model.removesuffix(BATCH_SUFFIX)  # a batch call is priced at its model's price times the factor
    calls = f" (called by {', '.join(stages)}); nothing was sent" if stages else ""
    return Seed2LoraError(f"max_cost is set but there is no price for model {listed!r}{calls}. Fix: add "
                          f'[budget] prices = {{ "{listed}" = [input_usd_per_1M, output_usd_per_1M] }}, '
                          "or run without --max-cost")


def check_prices(cfg: RunConfig, stages: Iterable[str]) -> None:
    """With max_cost set, every model that a stage in `stages` calls needs a price: checked before the first call
    and before anything is written, so a run cannot pay for its generation and then stop at an unpriced judge."""
    if not cfg.budget.max_cost:
        return
    by_model: dict[str, list[str]] = {}
    for stage, model in stage_models(cfg, stages).items():
        by_model.setdefault(model, []).append(stage)
    for model, callers in by_model.items():
        if price_for(cfg.budget, model) is None:
            raise no_price(model, callers)


def cost_usd(cfg: BudgetConfig, model: str, usage: dict[str, dict[str, int]]) -> float | None:
    """Dollars of one model's usage at its own price; None without a price."""
    price = price_for(cfg, model)
    if price is None:
        return None
    return usd_of(price, *usage_totals(usage), cached_total(usage))


def unlogged_models(manifest: dict[str, Any]) -> tuple[str, str]:
    """(teacher model, score judge model) that usage rows logged before the usage log named models are priced at.

    The run's teacher as its manifest recorded it (the last teacher that made calls), else its config;
    score's calls at the judge the manifest recorded, else [score.teacher], else the teacher. This is how
    `seed2lora cost` priced every row before models were logged, so an old run's figures do not move.
    An old eval judge's rows (kind "judge") cannot be told apart and go to the teacher.
    """
    config = manifest.get("config") or {}
    teacher = (manifest.get("teacher") or {}).get("name") or (config.get("teacher") or {}).get("spec") or "unknown"
    judge = (manifest.get("judge") or {}).get("name") or ((config.get("score") or {}).get("teacher") or {}).get("spec")
    return model_of(str(teacher)), model_of(str(judge or teacher))


def attribute_unlogged(usage: dict[str | None, dict[str, dict[str, int]]], manifest: dict[str, Any]) -> ByModel:
    """The usage log's totals per model with its rows of no model (None) given to their model (unlogged_models)."""
    teacher, judge = unlogged_models(manifest)
    out: ByModel = {}
    for model, kinds in usage.items():
        for kind, u in kinds.items():
            name = model if model is not None else judge if kind.startswith("score") else teacher
            _add(out.setdefault(name, {}).setdefault(kind, {}), u)
    return out


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0) + value


class Budget:
    """The run's limits over every call of the run, each call priced at its own model.

    One per session, shared by the teachers it attaches (the run's teacher, score's judge):
    what earlier sessions spent (the usage log, per model) plus what each attached teacher
    has spent since. With max_cost set, every model that spent tokens needs a price.
    """

    def __init__(self, cfg: BudgetConfig, spent_before: ByModel):
        self.cfg, self.before = cfg, spent_before
        self.live: list[tuple[str, Usage]] = []  # (model, that teacher's usage) of each teacher attached
        self.reached = False
        # Per model: (requests sent, their dollars and tokens at most, Budget.estimate). Until a model's first reply
        # is counted there is no mean of its calls, and a first wave of 64 went out on no projection at all.
        self.sent: dict[str, tuple[int, float, int]] = {}
        self._memo: tuple[tuple[int, ...], ByModel, dict[str, Any]] | None = None  # _totals
        for model, kinds in spent_before.items():
            if sum(usage_totals(kinds)):
                self._check_price(model)

    def _check_price(self, model: str) -> None:
        if self.cfg.max_cost and price_for(self.cfg, model) is None:
            raise no_price(model)

    def track(self, model: str, usage: Usage) -> None:
        """Count a teacher's calls from now on, at `model`'s price."""
        self._check_price(model)
        self.live.append((model, usage))

    def by_model(self) -> ByModel:
        """Every call of the run so far: the earlier sessions' and this session's, per model and call kind."""
        total: ByModel = {m: {k: dict(u) for k, u in kinds.items()} for m, kinds in self.before.items()}
        for model, usage in self.live:
            for kind, u in usage.to_dict().items():
                _add(total.setdefault(model, {}).setdefault(kind, {}), u)
        return total

    def spend(self, by_model: ByModel | None = None) -> dict[str, Any]:
        """Tokens and dollars of the whole run, and per model (of `by_model`, where the caller has it already);
        `unpriced` names the models with tokens and no price (with max_cost set there are none: they are refused)."""
        models = {}
        for model, kinds in (self.by_model() if by_model is None else by_model).items():
            prompt, completion = usage_totals(kinds)
            cost = cost_usd(self.cfg, model, kinds)
            models[model] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "cached_tokens": cached_total(kinds), "cost_usd": None if cost is None else round(cost, 6)}
        prompt = sum(m["prompt_tokens"] for m in models.values())
        completion = sum(m["completion_tokens"] for m in models.values())
        priced = [v["cost_usd"] for v in models.values() if v["cost_usd"] is not None]
        unpriced = [m for m, v in models.items() if v["cost_usd"] is None and v["prompt_tokens"] + v["completion_tokens"]]
        cost = round(sum(priced), 6) if priced or not unpriced else None  # the priced models', as `seed2lora cost`
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "cost_usd": cost, "by_model": models, "unpriced": unpriced,
                "max_tokens_total": self.cfg.max_tokens_total or None, "max_cost": self.cfg.max_cost or None}

    def room(self) -> tuple[float | None, int | None]:
        """(dollars, tokens) still to spend before a limit; None for no limit. The Batch API teacher sizes a wave
        by it, since a submitted wave is paid whatever happens to the run."""
        spend = self.spend()
        usd = self.cfg.max_cost - (spend["cost_usd"] or 0.0) if self.cfg.max_cost else None
        return usd, (self.cfg.max_tokens_total - spend["total_tokens"] if self.cfg.max_tokens_total else None)

    def estimate(self, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
        """(dollars, tokens) that one request costs at most: its prompt at a token per UTF-8 byte, plus the chat
        template's (TEMPLATE_TOKENS), and a reply of max_tokens. The rule of thumb, CHARS_PER_TOKEN, is no bound:
        a script with fewer characters a token let a wave pass --max-cost."""
        tokens = len(prompt.encode("utf-8")) + TEMPLATE_TOKENS
        price = price_for(self.cfg, model) or (0.0, 0.0, 0.0)
        return usd_of(price, tokens, max_tokens), tokens + max_tokens  # at most: no prefix-cache hit assumed

    def limited(self) -> bool:
        return bool(self.cfg.max_tokens_total or self.cfg.max_cost)

    def note_sent(self, model: str, prompt: str, max_tokens: int) -> None:
        """A request of `model` goes out: counted at its most (estimate), for the projection before that model's
        first reply is counted (exhausted)."""
        if self.limited():
            usd, tokens = self.estimate(model, prompt, max_tokens)
            n, usd_sum, token_sum = self.sent.get(model, (0, 0.0, 0))
            self.sent[model] = (n + 1, usd_sum + usd, token_sum + tokens)

    def exhausted(self, in_flight: int = 0, model: str | None = None) -> bool:
        """Whether a new request (of `model`) must not go out: the spend so far, plus the `in_flight` requests sent
        and not yet answered, reaches a limit. Each request in flight counts at the mean of `model`'s calls so far;
        before its first reply, at the mean of its requests sent at their most (Budget.estimate: a dear judge after
        a cheap teacher is not projected at the teacher's mean, nor a first wave at nothing); without a model, at
        the mean of all the run's calls. Without the requests in flight, 8 of them finishing after the limit spent
        twice a $3 --max-cost (a llama.cpp teacher priced at $1,000 per 1M tokens); with them, the run stops about
        where a call's spread around that mean puts it."""
        if not self.limited():  # no limit: no need to add up the spend per request
            return False
        by_model, spend = self._totals()
        usd_each, tokens_each = self._per_request(by_model, spend, model) if in_flight else (0.0, 0.0)
        tokens, usd = spend["total_tokens"], spend["cost_usd"]
        over = bool(self.cfg.max_tokens_total and tokens + in_flight * tokens_each >= self.cfg.max_tokens_total)
        over = over or bool(self.cfg.max_cost and usd is not None and usd + in_flight * usd_each >= self.cfg.max_cost)
        self.reached = self.reached or (over and not in_flight)  # in flight: the teacher waits for them first
        return over

    def _totals(self) -> tuple[ByModel, dict[str, Any]]:
        """(by_model, spend), added up again only when a reply was counted since the last time: a wave's requests
        are pulled one after another with no reply between them."""
        key = tuple(usage.replies for _, usage in self.live)
        if self._memo is None or self._memo[0] != key:
            by_model = self.by_model()
            self._memo = (key, by_model, self.spend(by_model))
        return self._memo[1], self._memo[2]

    def _per_request(self, by_model: ByModel, spend: dict[str, Any], model: str | None) -> tuple[float, float]:
        """(dollars, tokens) a request in flight is projected at (exhausted)."""
        def calls(kinds: dict[str, dict[str, int]]) -> int:
            return sum(u.get("calls", 0) for u in kinds.values())

        if model is not None:
            if n := calls(by_model.get(model, {})):
                own = spend["by_model"][model]
                return (own["cost_usd"] or 0.0) / n, (own["prompt_tokens"] + own["completion_tokens"]) / n
            if model in self.sent:
                n, usd_sum, token_sum = self.sent[model]
                return usd_sum / n, token_sum / n
        n = sum(calls(kinds) for kinds in by_model.values())
        return ((spend["cost_usd"] or 0.0) / n, spend["total_tokens"] / n) if n else (0.0, 0.0)


def session_budget(cfg: BudgetConfig, cache: Any, session: str, manifest: dict[str, Any]) -> Budget:
    """A session's budget: every earlier session's spend from the run's usage log, each at its own model."""
    return Budget(cfg, attribute_unlogged(cache.usage_by_model(exclude_session=session), manifest))


def attach_run(teacher: Any, cache: Any, session: str, budget: Budget) -> Any:
    """Give a teacher a run's response cache, its own rows in the run's usage log (this session's, under its
    model), and the session's budget, which from now on counts its calls at its model's price (the one place
    that does this)."""
    teacher.cache, teacher.session = cache, session
    teacher.usage_model = model_of(teacher.name) + (BATCH_SUFFIX if getattr(teacher, "batch", False) else "")
    budget.track(teacher.usage_model, teacher.usage)
    teacher.budget = budget
    return teacher


CHARS_PER_TOKEN = 4  # the usual rule of thumb for English with BPE vocabularies; a dry run is an estimate
# A request's prompt tokens at most, for a Batch API wave paid before it is read: a byte-level BPE token (GPT's,
# Llama 3's, Qwen's) or a SentencePiece one holds at least one byte of UTF-8, so the bytes bound the text; a chat
# template adds a few tokens a message (role markers, BOS), at most this many in all for a request's messages.
TEMPLATE_TOKENS = 32
