"""Score: a judge rates each kept instance 1-5 on a written rubric (prompts/score.txt), with a one-line reason.

AlpaGasus (Chen et al. 2024) kept the 9K of Alpaca's 52K rows that a ChatGPT judge rated
highest and beat the full set. The judge is any teacher: [score.teacher], by default the
run's own [teacher]; a stronger one than the generator is the point.

Input: the run's kept records, as export takes them (export.include: filter.jsonl and
evolve.jsonl). The unit is the instance, the unit of a fine-tuning row: the judge sees one
instruction, one input and one output.
Output: score.jsonl, one Task record per instance, with id "<task id>-<k>" (the row id
that records.task_rows gives the k-th instance), that one instance, meta["row_of"] = the
task's id and meta["score"] = {"rating": 1..5, "reason": "..."}. A reply with no usable
rating is asked again with a new salt (teacher.max_retries times, stages/common.py), then
the instance goes to rejected.jsonl (stage "score") with the parser's reason; the select
step ranks it below every rated row.

Replies: a JSON object where the server supports structured output (score.json_mode sends
OpenAI's response_format to chat servers), else whatever the judge writes, read by
parse.parse_rating (a bare number, "Rating: 4/5", prose with one number).

score.method logprobs (auto: for in-process judges) asks instead whether the example is good
(prompts/score_yesno.txt) and reads one token's log-probabilities: with p = P(Yes) / (P(Yes) +
P(No)), the rating is 1 + 4p on the same 1-5 scale, a real number, so rows rank finely;
meta["score"] also holds p_yes and the margin log P(Yes) - log P(No). This is how a judge too
small to write a rating still ranks rows, as G-Eval weights ratings by their probabilities.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from ..config import RunConfig
from ..context import Records, RunContext, StepResult, judge_config
from ..errors import Seed2LoraError
from ..prompts import Prompts
from ..records import Task
from ..store import RunDir, write_jsonl_atomic
from ..teachers import Completion, GenParams, Teacher
from ..teachers.base import read_logprobs
from .calibrate import yes_no_margin
from .classify import uses_logprobs
from .common import MapResult, ProgressFn, TaskMap, map_pending, outcomes
from .parse import parse_rating

STAGE = "score"


def instance_records(tasks: Sequence[Task], stage: str) -> list[Task]:
    """One record per instance, id "<task id>-<k>" as records.task_rows names rows; meta["row_of"] = the task id."""
    return [dataclasses.replace(t, id=f"{t.id}-{k}", instances=[inst], stage=stage,
                                meta={**t.meta, "row_of": t.id})
            for t in tasks for k, inst in enumerate(t.instances)]


def judge_of(t: Task) -> str | None:
    """Who rated (or failed to rate) a score record: "<judge> (<method>)"; None for records from before this was kept."""
    if "score_judge" in t.meta:
        return t.meta["score_judge"]
    score = t.meta.get("score")
    return f"{t.meta['score_teacher']} ({score.get('method', 'text')})" if score and "score_teacher" in t.meta else None


def check_same_judge(run: RunDir, judge: str) -> None:
    """Ratings of two judges (or of one judge two ways) do not rank together: refuse to add to another's."""
    others = {j for t in [*run.read_stage(STAGE), *(r for r in run.read_rejected() if r.stage == STAGE)]
              if (j := judge_of(t)) not in (None, judge)}
    if others:
        raise Seed2LoraError(f"{run.stage_file(STAGE)} holds ratings by {', '.join(sorted(others))}; this judge is "
                             f"{judge}, and the two do not rank together. Fix: `seed2lora score {run.path} --rescore` "
                             "to rate every row again with this judge, or score with the earlier judge's settings")


def judge_label(teacher: Teacher, method: str) -> str:
    """How score records name who rated them: "<judge> (<method>)"."""
    return f"{teacher.name} ({'logprobs' if uses_logprobs(teacher, method) else 'text'})"


def template_of(teacher: Teacher, method: str) -> str:
    """The rubric the judge is asked with: Yes/No by log-probabilities, or the 1-5 text rating."""
    return rubric(uses_logprobs(teacher, method))


def rubric(by_logprobs: bool) -> str:
    """The template of a judge that rates by log-probabilities (or not): the run's and the dry run's one choice."""
    return "score_yesno.txt" if by_logprobs else "score.txt"


def check(ctx: RunContext) -> None:
    """Before the manifest is written or a request sent: the judge's template is in prompts_dir (a copy without
    score.txt died at the first row to rate, the judge preflighted and the manifest written), and another judge's
    ratings stop this one (a refused `score --judge OTHER` recorded OTHER first, and every later bare `score`, which
    takes the manifest's config, stopped the same way). --rescore sets them aside, so it goes on."""
    ctx.prompts.path(template_of(ctx.bare_judge, ctx.cfg.score.method))
    if not ctx.rescore:
        check_same_judge(ctx.run, judge_label(ctx.bare_judge, ctx.cfg.score.method))


def run_score(teacher: Teacher, tasks: Sequence[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
              progress: ProgressFn | None = None) -> MapResult:
    """Rate every instance of `tasks` not yet in score.jsonl (nor rejected by this stage)."""
    c = cfg.score
    by_logprobs = uses_logprobs(teacher, c.method)
    judge = judge_label(teacher, c.method)
    check_same_judge(run, judge)
    params = (GenParams(max_tokens=1, logprobs=c.top_logprobs) if by_logprobs else
              GenParams(max_tokens=c.max_tokens, temperature=c.temperature, json_mode=c.json_mode))
    template = template_of(teacher, c.method)

    def prompt_for(t: Task) -> str:
        inst = t.instances[0]
        return prompts.render(template, instruction=t.instruction.strip(), input=inst.input.strip() or "(none)",
                              output=inst.output.strip() or "(empty)")

    def finish(t: Task, reply: Completion | None, last_try: bool) -> Task | str:
        text = reply.text if reply is not None else ""
        if by_logprobs:
            if read_logprobs(text) is None:  # plain text: the server ignored the request for log-probabilities
                raise Seed2LoraError(f"the judge {teacher.name} returned no log-probabilities (score.method = "
                                     f"{c.method}); its reply: {text[:60]!r}. Fix: --set score.method=text, or a "
                                     "server that returns logprobs")
            score = logprob_score(text)
            if score is None:
                return "unparseable_rating: neither Yes nor No among the likeliest next tokens"
        else:
            rating, reason = parse_rating(text)
            if rating is None:
                return f"unparseable_rating: {reason}"
            score = {"rating": rating, "reason": reason}
        return dataclasses.replace(t, meta={**t.meta, "score": score, "score_teacher": teacher.name})

    records = [dataclasses.replace(t, meta={**t.meta, "score_judge": judge}) for t in instance_records(tasks, STAGE)]
    # Log-probabilities are read in one forward pass, the same every time: asking again would not change them.
    return map_pending(records, teacher, TaskMap(run, STAGE, params, prompt_for=prompt_for, finish=finish,
                                                 max_retries=0 if by_logprobs else judge_config(cfg).max_retries,
                                                 progress=progress))


def logprob_score(text: str) -> dict[str, object] | None:
    """The rating 1 + 4 P(Yes) from a logprobs reply's Yes/No alternatives; None when it has neither."""
    top = read_logprobs(text)
    margin = yes_no_margin(top) if top else None
    if margin is None:
        return None
    p = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, margin))))
    return {"rating": round(1 + 4 * p, 4), "reason": f"P(Yes) = {p:.3f} by log-probability", "p_yes": round(p, 4),
            "margin": round(margin, 4), "method": "logprobs"}


def read(ctx: RunContext) -> Records:
    """The kept records export would take (export.include), as score rates them."""
    from ..rows import generated_include, kept_files

    files = kept_files(ctx.run, generated_include(ctx.cfg.export.include))
    return Records([t for f in files for t in ctx.run.read_stage(f.stem)], ",".join(f.stem for f in files))


def progress(ctx: RunContext, records: Records | None) -> tuple[str, int, int]:
    """One tick per row; a resumed score counts on from the rows rated (or rejected) before, --rescore from none."""
    rows = [f"{t.id}-{k}" for t in records or () for k in range(len(t.instances))]
    done = set() if ctx.rescore else outcomes(ctx.run, STAGE)
    return "score: instances judged", len(rows), sum(r in done for r in rows)  # rated, or unusable (bar.reject)


def left(ctx: RunContext) -> int:
    """The rows with no outcome yet (no rating, no score rejection), from the files: what a stopped run has pending
    here (Step.left)."""
    done = outcomes(ctx.run, STAGE)
    return sum(f"{t.id}-{k}" not in done for t in read(ctx) for k in range(len(t.instances)))


def set_aside(ctx: RunContext) -> None:
    """--rescore: the earlier ratings and score rejections go to score_replaced.jsonl (not deleted: a failed
    rescore loses nothing), and the score step starts from nothing."""
    run = ctx.run
    old = [*run.read_stage(STAGE), *(t for t in run.read_rejected() if t.stage == STAGE)]
    aside = run.path / "score_replaced.jsonl"
    if old:  # a rescore that failed before rating anything leaves the earlier set-aside file as it is
        write_jsonl_atomic(aside, old)
    run.stage_file(STAGE).unlink(missing_ok=True)
    run.replace_rejected(STAGE, [])
    ctx.log(f"score: --rescore: {len(old)} earlier ratings and score rejections moved to {aside}")


def step(ctx: RunContext, records: Records | None) -> StepResult:
    """Rate every instance of `records` with the judge; write score.jsonl."""
    tasks = list(records or ())
    judge = ctx.judge
    ctx.record(judge=judge.describe())
    if ctx.rescore:
        set_aside(ctx)
    n = sum(len(t.instances) for t in tasks)
    r = run_score(judge, tasks, ctx.cfg, ctx.run, ctx.prompts, progress=ctx.advance)
    ratings = [int(round(t.meta["score"]["rating"])) for t in ctx.run.read_stage(STAGE)]
    spread = ", ".join(f"{k}: {ratings.count(k)}" for k in range(1, 6))
    message = (f"score: {r.written} instances rated by {judge.name} ({len(ratings)} in score.jsonl; {spread}); "
               f"{r.replies_note(judge_config(ctx.cfg).max_retries, 'instance', judge_config(ctx.cfg).batch)}")
    if not r.written and not r.rejected and not r.pending and n:
        message += (f"; every row already had its outcome (see score.jsonl and rejected.jsonl): "
                    f"`seed2lora score {ctx.run.path} --rescore` rates them all again")
    return StepResult(message + r.failed_note("judge"), r.pending, r.counts(n))
