"""`seed2lora run --dry-run`: the calls, tokens and dollars that every stage in `stages` would still spend.

No teacher is loaded and nothing is sent. Prompt tokens come from rendering real prompts
(characters / CHARS_PER_TOKEN); completion tokens are the max_tokens upper bound. Each stage is
priced at the model that will run it: score at its judge ([score.teacher]) when it names one,
every other stage at the run's teacher; through the Batch API (teacher.batch) at the batch price
(model@batch: budget.batch_price_factor of the model's). Work already in the run's files is not counted again,
nor the requests that wait in open Batch API waves (the run awaits them; `open batches` prices them).

Prompt tokens that a hosted prefix cache can serve are counted too (`prefix_cached_tokens`): each stage's
prompt is rendered for two different tasks, and the part the two share from the start, when it is at least
PREFIX_CACHE_MIN tokens (rounded down to PREFIX_CACHE_STEP), is what every call after the first may get at the
model's cached-input rate (`cost_with_prefix_cache_usd`, else the same replies; `max_cost_usd` assumes no hit).

A teacher that classifies by log-probability (classify.method logprobs, or auto with an in-process teacher) first
fits its threshold on the labelled seed tasks (stages/calibrate.py): one one-token call per labelled seed, once per
run, its own row `classify_calibration` until classify_calibration.json is written. With the embedded teacher those
175 calls were 69,279 of the quickstart's 86,245 prompt tokens; its classify calls then ask for one token each.

Counts a stage cannot know before the stages ahead of it have run are upper bounds of the plan:
bootstrap the yield of the prompts answered so far in this run (else bootstrap.expected_yield), or where it falls
as the pool fills (more of each reply a near-copy of the pool), the line of that fall carried on (bootstrap_plan);
classify and instances
one call per instruction asked for that they have no outcome for yet (a record, or a rejection: a resume asks
neither again); evolve every instruction of its pool, each round three calls
(the evolution, the equality judgement, the answer); score one call per row, a task keeping at
most filter.max_instances rows and an evolution one.
"""

from __future__ import annotations

import itertools
import math
import os.path
import random
from collections import Counter
from typing import Any

from .budget import BATCH_SUFFIX, CHARS_PER_TOKEN, judge_config, price_for, stage_models, usd_of
from .config import RunConfig
from .datasets_io import Fields, load_pool
from .prompts import Prompts
from .records import Instance, Task
from .rows import SOURCES, generated_include, include_list
from .stages.bootstrap import build_prompt
from .stages.calibrate import CALIBRATION_FILE, CLASSIFY_TEMPLATE, MIN_PER_CLASS
from .stages.classify import classify_params
from .stages.common import outcomes
from .stages.evolve import OPERATIONS, answer_prompt, evolution_prompt, judge_prompt, lineages_left
from .stages.instances import instance_prompt
from .stages.score import rubric
from .store import STAGES, RunDir

IN_PROCESS = ("embedded", "hf")  # teacher kinds that score by log-probability under score.method = auto
# OpenAI caches a prompt prefix from 1,024 tokens on, hits growing in steps of 128 (its prompt caching guide)
PREFIX_CACHE_MIN, PREFIX_CACHE_STEP = 1024, 128
TREND_MIN = 4  # answered prompts before a line is fitted to bootstrap's yield: fewer give a slope of noise
TREND_FLOOR = 0.01  # the least yield the line is carried on at when yield_stop is 0 (no stop): calls stay finite


def tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def cacheable(shared_tokens: int) -> int:
    """Of a prefix that requests share, the tokens OpenAI's prefix cache serves: none under PREFIX_CACHE_MIN, else
    the prefix rounded down to PREFIX_CACHE_STEP."""
    return 0 if shared_tokens < PREFIX_CACHE_MIN else shared_tokens // PREFIX_CACHE_STEP * PREFIX_CACHE_STEP


def shared_prefix(a: str, b: str) -> str:
    """The start two texts have in common."""
    return os.path.commonprefix([a, b])


def row(model: str, calls: int, prompt_text: str, max_tokens: int, twin: str = "") -> dict[str, Any]:
    """A stage's figures; `twin` is its prompt for another task, whose shared start a prefix cache may serve."""
    per_call = cacheable(len(shared_prefix(prompt_text, twin)) // CHARS_PER_TOKEN) if twin else 0
    return {"model": model, "calls": calls, "prompt_tokens": calls * tokens(prompt_text),
            "max_completion_tokens": calls * max_tokens, "prefix_cached_tokens": max(0, calls - 1) * per_call}


def less_calls(r: dict[str, Any], n: int) -> dict[str, Any]:
    """A stage's row (see row) less `n` of its calls, each call's figures as before."""
    calls = r["calls"]
    left = max(0, calls - n)
    if left == calls:
        return r
    prefix_per_call = r["prefix_cached_tokens"] // (calls - 1) if calls > 1 else 0
    return {**r, "calls": left, "prompt_tokens": left * (r["prompt_tokens"] // calls),
            "max_completion_tokens": left * (r["max_completion_tokens"] // calls),
            "prefix_cached_tokens": max(0, left - 1) * prefix_per_call}


def classifies_by_logprobs(cfg: RunConfig) -> bool:
    """classify.method as the run resolves it (stages/classify.uses_logprobs): auto = logprobs for in-process teachers."""
    method = cfg.classify.method
    return method == "logprobs" or (method == "auto" and cfg.teacher.spec.partition(":")[0] in IN_PROCESS)


def teacher_api(cfg: RunConfig, run: RunDir) -> str:
    """The api the run's teacher will send with: teacher.api as given. Auto is completions in process (teachers/hf.py),
    chat with structured replies on or a batch_dir (no server to probe), else what the preflight of this run's last
    session chose (the manifest's teacher entry, if it is the same teacher and server): a run that never reached
    the server is counted at chat, the larger bound (it counted a llama.cpp run's classify 8x too high every time)."""
    t = cfg.teacher
    if t.api != "auto":
        return t.api
    if t.spec.partition(":")[0] in IN_PROCESS:
        return "completions"
    if t.structured == "on" or (t.batch and t.batch_dir):
        return "chat"
    recorded = run.manifest().get("teacher") or {}
    same = recorded.get("name") == t.spec.strip() and (not t.base_url or recorded.get("base_url") == t.base_url)
    return (recorded.get("api") or "chat") if same else "chat"


def calibration_row(cfg: RunConfig, prompts: Prompts, seeds: list[Task], run: RunDir, model: str) -> dict[str, Any] | None:
    """The seeds' calibration calls of classify (stages/calibrate.seed_threshold): one per labelled seed, each prompt
    rendered as it will be sent, one completion token each; None when the run makes none."""
    if not (cfg.classify.calibrate and classifies_by_logprobs(cfg)) or (run.path / CALIBRATION_FILE).is_file():
        return None
    labelled = [s for s in seeds if s.is_classification is not None]
    positives = sum(1 for s in labelled if s.is_classification)
    if min(positives, len(labelled) - positives) < MIN_PER_CLASS:
        return None  # too few labels to place a threshold: calibrate asks nothing
    texts = [prompts.render(CLASSIFY_TEMPLATE, instruction=s.instruction) for s in labelled]
    out = row(model, len(texts), texts[0], 1, texts[-1])
    out["prompt_tokens"] = sum(tokens(t) for t in texts)
    return out


def evolve_todo(cfg: RunConfig, seeds: list[Task], run: RunDir) -> int:
    """Slot-rounds of evolve without an outcome: its pool's (as far as it exists yet), plus every round of the
    instructions a stage ahead of it in this run may still add to the pool."""
    e, source = cfg.evolve, cfg.evolve.source
    if source == "seeds":
        pool = seeds
    elif source in STAGES:
        pool = run.read_stage(source)
    else:
        pool = load_pool(source, Fields(e.instruction_field, e.input_field, e.output_field))
    done: dict[str, int] = {}
    for t in [*run.read_stage("evolve"), *run.read_rejected()]:
        if t.stage == "evolve" and t.parent_id:
            done[t.parent_id] = max(done.get(t.parent_id, 0), t.round)
    todo = sum(e.rounds + 1 - x.round for x in lineages_left(pool, run.read_stage("evolve"), done, e.rounds))
    planned = cfg.bootstrap.num_instructions if source in STAGES and source in cfg.stages else 0
    return todo + max(0, planned - len(pool)) * e.rounds


def score_rows_left(cfg: RunConfig, seeds: list[Task], run: RunDir) -> int:
    """Rows score would still rate: those of the kept files (or, for a stage of this run, its plan if larger),
    less those already rated or rejected by score."""
    rows = 0
    for name in generated_include(cfg.export.include):
        stage = SOURCES[name]
        have = sum(len(t.instances) for t in run.read_stage(stage))
        if stage == "filter" and stage in cfg.stages:
            have = max(have, cfg.bootstrap.num_instructions * cfg.filter.max_instances)
        elif stage == "evolve" and stage in cfg.stages:
            have = max(have, len(run.read_stage("evolve")) + evolve_todo(cfg, seeds, run))
        rows += have
    done = len(run.read_stage("score")) + sum(1 for t in run.read_rejected() if t.stage == "score")
    return max(0, rows - done)


def kept_per_prompt(run: RunDir, log: Any) -> list[int]:
    """The instructions each answered bootstrap prompt kept, in the order the prompts were made: a kept task's round
    is its prompt's number (stages/bootstrap). A prompt in flight at a stop, or in an open batch, has kept none yet
    and is left out."""
    if log is None:
        return []
    sent, unfinished = log.requests("bootstrap")
    open_ = {n for n, _ in unfinished}
    kept = Counter(t.round for t in run.read_stage("bootstrap"))
    return [kept.get(n, 0) for n in range(sent) if n not in open_]


def falling_line(kept_per: list[int]) -> tuple[float, float] | None:
    """(a, b) of the least-squares line yield = a + b * pool size through each answered prompt's kept count against
    the instructions kept before it; None with under TREND_MIN prompts, or when the yield does not fall."""
    if len(kept_per) < TREND_MIN:
        return None
    pools = [0, *itertools.accumulate(kept_per)][:-1]  # the pool's size as each prompt was made
    mean_p, mean_y = sum(pools) / len(pools), sum(kept_per) / len(kept_per)
    spread = sum((p - mean_p) ** 2 for p in pools)
    if not spread:
        return None
    slope = sum((p - mean_p) * (y - mean_y) for p, y in zip(pools, kept_per, strict=True)) / spread
    return (mean_y - slope * mean_p, slope) if slope < 0 else None


def bootstrap_plan(cfg: RunConfig, kept_per: list[int], kept: int) -> dict[str, Any]:
    """Bootstrap's prompts still to send, honest where the yield falls as the pool fills (each reply more often a
    near-copy of what the pool holds): at 22 of 40 kept, the yield so far said 6 prompts where the embedded teacher
    needed 9. `calls` is the most of three readings, the table's "at most": at the yield of every prompt answered so
    far (`so_far`), at that of the last half of them, up to yield_window (`recent`), and along the line of its fall
    against the pool's size carried on to the target (`trend`, falling_line). Where that line drops under
    bootstrap.yield_stop before the target, the run is likely to stop there (exit 6): `stops_at` the kept count.
    Replayed at every point of an embedded-teacher run (27 prompts to 60 kept, 1 to 7 a prompt; targets 20 to 60), the
    yield so far fell short of the prompts still needed in 54 of 72 cases, this in 17, at 1.56x them on average (the
    noisy early readings; the line gives the range)."""
    b = cfg.bootstrap
    missing, answered = max(0, b.num_instructions - kept), len(kept_per)
    observed = bool(answered and kept)
    so_far = kept / answered if observed else b.expected_yield
    window = min(b.yield_window, answered // 2)
    recent = sum(kept_per[-window:]) / window if observed and window else so_far
    cap = b.max_requests or 20 * b.num_instructions  # a session sends no more prompts than this
    plan: dict[str, Any] = {"so_far": so_far, "observed": observed, "recent": recent, "window": window,
                            "calls_so_far": min(cap, math.ceil(missing / so_far)), "trend": None, "stops_at": None}
    plan["calls_recent"] = min(cap, math.ceil(missing / recent)) if recent > 0 or not missing else cap
    if missing and recent < b.yield_stop:  # kept nothing of late: the yield watch stops the run (exit 6)
        plan["stops_at"] = kept
    line = falling_line(kept_per) if observed and missing else None
    if line is not None:
        a, slope = line
        have, calls = float(kept), 0
        while have < b.num_instructions and calls < cap:
            rate = a + slope * have
            if rate < b.yield_stop:
                plan["stops_at"] = int(have)
                break
            have, calls = have + max(rate, TREND_FLOOR), calls + 1
        plan["trend"] = calls
    plan["calls"] = max(plan["calls_so_far"], plan["calls_recent"], plan["trend"] or 0)
    return plan


def yield_line(plan: dict[str, Any]) -> str:
    """The dry run's line on bootstrap's yield: the one reading when it holds steady, the range where it falls."""
    if not plan["observed"]:
        return f"bootstrap keeps about {plan['so_far']:.2f} instructions per prompt (assumed; no history yet)"
    if plan["calls"] == plan["calls_so_far"]:
        return f"bootstrap keeps about {plan['so_far']:.2f} instructions per prompt (observed in this run)"
    trend = f", {plan['trend']} if it goes on falling as the pool fills" if plan["trend"] is not None else ""
    stops = f"; the run is likely to stop at about {plan['stops_at']} kept (under bootstrap.yield_stop: exit 6)" \
        if plan["stops_at"] is not None else ""
    return (f"bootstrap's yield is {'falling' if plan['trend'] is not None else 'lower of late'}: "
            f"{plan['so_far']:.2f} instructions kept per prompt so far, {plan['recent']:.2f} over the last "
            f"{plan['window']} prompts; prompts to go: {plan['calls_so_far']} at the first, {plan['calls_recent']} at "
            f"the second{trend}{stops}. The table counts {plan['calls']}")


def estimate_run(cfg: RunConfig, prompts: Prompts, seeds: list[Task], run: RunDir, log: Any) -> dict[str, Any]:
    """Per stage in cfg.stages that calls a teacher: model, calls, prompt tokens, completion tokens at most and
    dollars at most; and their total (its dollars None when a model with tokens to spend has no price)."""
    models = stage_models(cfg, cfg.stages)  # each stage at the model the run prices it at (and checks a price of)
    kept = len(run.read_stage("bootstrap"))
    plan = bootstrap_plan(cfg, kept_per_prompt(run, log), kept)
    # Requests in Batch API waves a stop left open: a re-run awaits them, sending none again; their cost is the
    # "open batches" line's, and counted here as well they were paid twice over (classify's 15 after a kill -9)
    awaited = Counter(kind for w in (log.open_waves() if log is not None else [])
                      for _, kind, _, state in log.wave_lines(w["file_id"]) if state == "sent")
    example = Task(id="x", instruction=seeds[0].instruction if seeds else "An example task.",
                   instances=[Instance("", "An example answer.")])
    other = Task(id="z", instruction=seeds[-1].instruction if len(seeds) > 1 else "Another task, not the first.",
                 instances=[Instance("", "Another answer.")])
    n_tasks = cfg.bootstrap.num_instructions
    rows: dict[str, dict[str, Any]] = {}
    if "bootstrap" in cfg.stages:
        rng = random.Random(cfg.seed)
        _, text, _ = build_prompt(prompts, cfg, rng, seeds, [])
        max_out = cfg.bootstrap.alpaca_max_tokens if cfg.bootstrap.mode == "alpaca" else cfg.bootstrap.max_tokens
        rows["bootstrap"] = row(models["bootstrap"], plan["calls"], text, max_out,
                                build_prompt(prompts, cfg, rng, seeds, [])[1])
    if "classify" in cfg.stages:
        if calibration := calibration_row(cfg, prompts, seeds, run, models["classify"]):
            rows["classify_calibration"] = calibration
        # by log-probability one token; a chat reply has room for a sentence (classify.chat_max_tokens); a completion, 3
        max_out = classify_params(cfg.classify, teacher_api(cfg, run), classifies_by_logprobs(cfg)).max_tokens
        rows["classify"] = row(models["classify"], max(0, n_tasks - len(outcomes(run, "classify"))),
                               prompts.render(CLASSIFY_TEMPLATE, instruction=example.instruction), max_out,
                               prompts.render(CLASSIFY_TEMPLATE, instruction=other.instruction))
    if "instances" in cfg.stages:
        # a task classify rejected never reaches instances; one instances rejected is not asked again
        classify_rejected = outcomes(run, "classify") - {t.id for t in run.read_stage("classify")}
        rows["instances"] = row(models["instances"],
                                max(0, n_tasks - len(classify_rejected) - len(outcomes(run, "instances"))),
                                instance_prompt(example, prompts)[1], cfg.instances.max_tokens,
                                instance_prompt(other, prompts)[1])
    if "evolve" in cfg.stages:
        e, todo = cfg.evolve, evolve_todo(cfg, seeds, run)
        evolutions = [evolution_prompt(prompts, op, example.instruction, e)[1] for op in OPERATIONS]
        longest = max(evolutions, key=len)  # an operation drawn at random: the longest prompt bounds them
        op = OPERATIONS[evolutions.index(longest)]
        child = Task(id="y", instruction=example.instruction)
        rows["evolve"] = row(models["evolve"], todo, longest, e.max_tokens,
                             evolution_prompt(prompts, op, other.instruction, e)[1])
        rows["evolve_judge"] = row(models["evolve"], todo, judge_prompt(prompts, example, child), e.judge_max_tokens,
                                   judge_prompt(prompts, other, other))
        rows["evolve_answer"] = row(models["evolve"], todo, answer_prompt(prompts, child), e.answer_max_tokens,
                                    answer_prompt(prompts, other))
    if "score" in cfg.stages:
        include_list(cfg.export.include)  # a bad include fails here as it would in the run
        judge = judge_config(cfg)
        by_logprobs = cfg.score.method == "logprobs" or (cfg.score.method == "auto"
                                                         and judge.spec.partition(":")[0] in IN_PROCESS)
        text, twin = (prompts.render(rubric(by_logprobs), instruction=t.instruction, input="(none)", output=t.instances[0].output)
                      for t in (example, other))
        rows["score"] = row(models["score"], score_rows_left(cfg, seeds, run), text,
                            1 if by_logprobs else cfg.score.max_tokens, twin)
    rows = {name: less_calls(r, awaited.get(name, 0)) for name, r in rows.items()}
    for r in rows.values():
        price = price_for(cfg.budget, r["model"])
        r["max_cost_usd"] = None if price is None else usd_of(price, r["prompt_tokens"], r["max_completion_tokens"])
        r["cost_with_prefix_cache_usd"] = None if price is None else \
            usd_of(price, r["prompt_tokens"], r["max_completion_tokens"], r["prefix_cached_tokens"])
    total = {k: sum(r[k] for r in rows.values())
             for k in ("calls", "prompt_tokens", "max_completion_tokens", "prefix_cached_tokens")}
    unpriced = sorted({r["model"] for r in rows.values() if r["max_cost_usd"] is None and r["calls"]})
    cost = None if unpriced else sum(r["max_cost_usd"] or 0.0 for r in rows.values())
    best = None if unpriced else sum(r["cost_with_prefix_cache_usd"] or 0.0 for r in rows.values())
    return {"stages": rows, "total": total, "max_cost_usd": cost, "cost_with_prefix_cache_usd": best, "unpriced": unpriced,
            "bootstrap_yield_per_call": round(plan["so_far"], 2), "yield_observed": plan["observed"],
            "bootstrap_yield": yield_line(plan),
            "models": sorted({r["model"] for r in rows.values()}),
            "batch_price_factor": cfg.budget.batch_price_factor if any(m.endswith(BATCH_SUFFIX) for m in
                                                                       (r["model"] for r in rows.values())) else None}
