"""Stage 3: generate up to 5 instances (input, output) per task.

Output-first for classification tasks (a label, then an input that has it: this keeps
the labels balanced instead of all one class) and input-first for the others, as in the
Self-Instruct paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import RunConfig
from ..prompts import Prompts
from ..records import Task
from ..store import RunDir
from ..teachers import Completion, GenParams, Teacher
from .common import ProgressFn, map_pending
from .parse import parse_input_first, parse_output_first


def instance_prompt(task: Task, prompts: Prompts) -> tuple[str, str]:
    name = "instances_clf.txt" if task.is_classification else "instances_gen.txt"
    return name, prompts.render(name, instruction=task.instruction.strip())


def parse_instance_reply(task: Task, prompt_text: str, reply: Completion, continues: bool):
    # A completion model continues the prompt's last line ("Input:" or "Class label:").
    prefix = prompt_text.rsplit("\n", 1)[-1] if continues else ""
    truncated = reply.finish_reason == "length"
    parser = parse_output_first if task.is_classification else parse_input_first
    return parser(reply.text, prefix, truncated)


def run_instances(teacher: Teacher, tasks: Sequence[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
                  progress: ProgressFn | None = None) -> int:
    c = cfg.instances
    params = GenParams(max_tokens=c.max_tokens, temperature=c.temperature, top_p=c.top_p,
                       presence_penalty=c.presence_penalty, frequency_penalty=c.frequency_penalty,
                       stop=(f"Example {c.max_instances + 1}", "Task:"))
    continues = getattr(teacher, "api", "chat") == "completions"

    def call(chunk: list[Task]) -> list[Task | None]:
        todo = [t for t in chunk if not t.instances]
        rendered = {t.id: instance_prompt(t, prompts) for t in todo}
        replies = dict(zip((t.id for t in todo), teacher.generate(
            [rendered[t.id][1] for t in todo], params, kind="instances")))
        out: list[Task | None] = []
        for t in chunk:
            reply = replies.get(t.id)
            if reply is None:  # already has instances (seed, Alpaca mode)
                out.append(dataclasses.replace(t, stage="instances"))
            elif not reply.ok:
                out.append(None)
            else:
                name, text = rendered[t.id]
                instances = parse_instance_reply(t, text, reply, continues)[: c.max_instances]
                meta = t.meta if instances else {**t.meta, "instances_reply": reply.text}
                out.append(dataclasses.replace(t, stage="instances", instances=instances, meta=meta,
                                               prompt=f"{t.prompt},{name}" if t.prompt else name))
        return out

    return map_pending(tasks, run, "instances", teacher, call, progress)
