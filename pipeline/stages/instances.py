"""Stage 3: generate up to 5 instances (input, output) per task.

Output-first for classification tasks (a label, then an input that has it: this keeps
the labels balanced instead of all one class) and input-first for the others, as in the
Self-Instruct paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import RunConfig
from ..context import Records, RunContext, StepResult
from ..prompts import Prompts
from ..records import Task
from ..store import RunDir
from ..teachers import Completion, GenParams, Teacher
from .common import MapResult, ProgressFn, TaskMap, map_pending, map_progress, map_result
from .parse import parse_input_first, parse_output_first, parse_structured_instances
from .schemas import schema_params

TEMPLATES = {True: "instances_clf.txt", False: "instances_gen.txt"}  # by is_classification: output-first or input-first


def instance_prompt(task: Task, prompts: Prompts) -> tuple[str, str]:
    name = TEMPLATES[bool(task.is_classification)]
    return name, prompts.render(name, instruction=task.instruction.strip())


def instance_stops(max_instances: int, continues: bool) -> tuple[str, ...]:
    """The paper's stops for a completion, which runs on into the next example and task.
    A chat reply ends by itself; there "Task:" would cut a reply that opens by echoing the
    task, and "Example 6" would leave half of a "**Example 6:**" heading in the fifth
    output, so none is sent (the filter keeps the first max_instances and records the rest)."""
    return (f"Example {max_instances + 1}", "Task:") if continues else ()


def parse_instance_reply(task: Task, prompt_text: str, reply: Completion, continues: bool):
    # A completion model continues the prompt's last line ("Input:" or "Class label:").
    prefix = prompt_text.rsplit("\n", 1)[-1] if continues else ""
    truncated = reply.finish_reason == "length"
    structured = parse_structured_instances(reply.text, bool(task.is_classification))
    if structured is not None:  # a JSON reply (teacher.structured); a cut one keeps its whole examples
        return structured
    parser = parse_output_first if task.is_classification else parse_input_first
    return parser(reply.text, prefix, truncated)


def run_instances(teacher: Teacher, tasks: Sequence[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
                  progress: ProgressFn | None = None) -> MapResult:
    return map_pending(tasks, teacher, instances_map(teacher, cfg, run, prompts, progress))


def instances_map(teacher: Teacher, cfg: RunConfig, run: RunDir, prompts: Prompts,
                  progress: ProgressFn | None = None) -> TaskMap:
    """The instances call of each task (common.TaskMap): output-first for classification tasks."""
    c = cfg.instances
    continues = getattr(teacher, "api", "chat") == "completions"
    params = GenParams(max_tokens=c.max_tokens, temperature=c.temperature, top_p=c.top_p,
                       presence_penalty=c.presence_penalty, frequency_penalty=c.frequency_penalty,
                       stop=instance_stops(c.max_instances, continues))
    rendered: dict[str, tuple[str, str]] = {}
    # teacher.structured: each reply bound to its kind's schema, which no stop may cut
    by_kind = {clf: dataclasses.replace(params, stop=(), **schema_params("labelled_examples" if clf else "examples"))
               for clf in (False, True)} if getattr(teacher, "structured", False) else None

    def prompt_for(t: Task) -> str | None:
        if t.instances:  # already has instances (seed, Alpaca mode): no call
            return None
        rendered[t.id] = instance_prompt(t, prompts)
        return rendered[t.id][1]

    def finish(t: Task, reply: Completion | None, last_try: bool) -> Task | str:
        if reply is None:
            return dataclasses.replace(t, stage="instances")
        name, text = rendered[t.id]
        instances = parse_instance_reply(t, text, reply, continues)  # all: extras go to rejected.jsonl at the filter
        if not instances:
            return f"unparseable_reply: no instance in {reply.text[:60]!r}"
        return dataclasses.replace(t, stage="instances", instances=instances,
                                   prompt=f"{t.prompt},{name}" if t.prompt else name)

    return TaskMap(run, "instances", params, prompt_for=prompt_for, finish=finish, max_retries=cfg.teacher.max_retries,
                   progress=progress, params_for=(lambda t: by_kind[bool(t.is_classification)]) if by_kind else None)


def progress(ctx: RunContext, records: Records | None) -> tuple[str, int, int]:
    """One tick per task; records None: they flow in from classify (stages/flow.py), up to bootstrap's target."""
    return map_progress(ctx, "instances", records)


def check(ctx: RunContext) -> None:
    """Both instance templates are there before the run pays for the stages before this one."""
    for name in TEMPLATES.values():
        ctx.prompts.path(name)


def step(ctx: RunContext, records: Records | None) -> StepResult:
    """Write instances for each task of `records` (classify.jsonl or --input) into instances.jsonl."""
    tasks = records or Records()
    return map_result(ctx, "instances", run_instances(ctx.teacher, tasks, ctx.cfg, ctx.run, ctx.prompts,
                                                      progress=ctx.advance), len(tasks))
