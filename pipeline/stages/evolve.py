"""Evol-Instruct (WizardLM): rewrite a pool of instructions, round after round, into harder and rarer ones.

Each round, every instruction draws one operation (weights in evolve.weights), each a
prompt file prompts/evol_<operation>.txt. In depth, where a rewrite may add only
min_added_words to max_added_words words:
  constraints       add one more constraint or requirement
  deepen            ask more widely and deeply about the topic
  concretize        replace general concepts with specific ones
  reasoning         ask for several explicit steps of reasoning
  complicate_input  add structured data to work on (a table, JSON, XML, code)
In breadth:
  breadth           a new, rarer instruction in the same domain, of similar length and difficulty

The text evolved is the instruction, followed on a new line by its first instance's input
when it has one, so an evolved instruction carries its own input; the teacher's answer to
it becomes its single instance, with input "".

An evolution is eliminated, into rejected.jsonl with stage "evolve", by WizardLM's rules:
  elimination_no_gain      1. no information gain over its parent: the same text, or the teacher judges them equal
  elimination_sorry        2. the answer contains "sorry" and has fewer than sorry_max_words words
  elimination_stopwords    3. the answer is only punctuation and stop words
  elimination_prompt_copy  4. the instruction copies words of the evolving prompt (evolve.prompt_markers)
and by the project's instruction filter: length and keyword rules, and ROUGE-L novelty
against the pool and every kept evolution (its own ancestors excepted: an in-depth
rewrite contains its parent by design).

Rounds: the pool is a row of slots. Round 1 evolves every input instruction. In round r+1
a slot holds its round-r evolution if one was kept, else the same instruction again: a
failed evolution's parent re-enters the pool and draws a new operation. evolve.jsonl gets
the kept evolutions; with the pool they make the Evol-Instruct dataset. Every record keeps
parent_id, round, meta["operation"] and meta["lineage"] (its ancestors, root first).

Resume: any round's generation is rebuilt from the pool and evolve.jsonl. A round skips
instructions whose evolution in it is already in evolve.jsonl or rejected.jsonl, and
manifest state "evolve_rounds_done" marks finished rounds, which are never redone. The
operation comes from random.Random(f"{seed}:evolve:{round}:{task id}"), so a resumed run
draws the same ones.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from ..config import EvolveConfig, EvolveWeights, RunConfig
from ..errors import Seed2LoraError
from ..prompts import Prompts
from ..records import Instance, Task, task_id
from ..store import JsonlWriter, RunDir, reason_kind
from ..teachers import GenParams, Teacher
from .common import ProgressFn, _chunk_size
from .filter import InstructionFilter
from .parse import parse_answer, parse_equal, parse_evolved_instruction

OPERATIONS = ("constraints", "deepen", "concretize", "reasoning", "complicate_input", "breadth")
IN_DEPTH = OPERATIONS[:5]

# Rule 3's stop words: a common English list (as in NLTK), shipped here because spaCy and
# NLTK are not dependencies. An answer made only of these words says nothing. Tokens are
# runs of letters and digits, so contractions arrive in pieces ("don", "t").
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing don down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just ll m me more most my myself no nor not now
o of off on once only or other our ours ourselves out over own re s same she should so some such t than that
the their theirs them themselves then there these they this those through to too under until up ve very was we
were what when where which while who whom why will with would y you your yours yourself yourselves
""".split())

ProgressFactory = Callable[[str, int | None], AbstractContextManager[ProgressFn]]


@contextmanager
def _no_progress(desc: str, total: int | None) -> Iterator[ProgressFn]:
    yield lambda n: None


@dataclass
class EvolveResult:
    rounds_done: int  # rounds finished in this run directory
    kept: int = 0  # evolutions kept by this call
    rejected: Counter = field(default_factory=Counter)  # by rule, this call
    errors: int = 0  # teacher calls that failed after retries; their parents re-enter the next round
    total: int = 0  # evolutions in evolve.jsonl


def pick_operation(rng: random.Random, weights: EvolveWeights) -> str:
    return rng.choices(OPERATIONS, [getattr(weights, op) for op in OPERATIONS])[0]


def operation_rng(seed: int, round_: int, tid: str) -> random.Random:
    return random.Random(f"{seed}:evolve:{round_}:{tid}")


def evolvable_text(task: Task) -> str:
    """The instruction, with its first instance's input on a new line when it has one."""
    inp = task.instances[0].input.strip() if task.instances else ""
    return f"{task.instruction.strip()}\n{inp}" if inp else task.instruction.strip()


def evolution_prompt(prompts: Prompts, op: str, text: str, e: EvolveConfig) -> tuple[str, str]:
    """(template name, rendered prompt) of one operation."""
    name = f"evol_{op}.txt"
    if op in IN_DEPTH:
        return name, prompts.render(name, instruction=text, min_added_words=e.min_added_words,
                                    max_added_words=e.max_added_words)
    return name, prompts.render(name, instruction=text)


def judge_prompt(prompts: Prompts, parent: Task, child: Task) -> str:
    return prompts.render("evol_equal.txt", first=evolvable_text(parent), second=child.instruction)


def answer_prompt(prompts: Prompts, child: Task) -> str:
    return prompts.render("evol_answer.txt", instruction=child.instruction)


def prompt_copy_reason(instruction: str, markers: Iterable[str]) -> str | None:
    """Rule 4: the evolved instruction copies words of the evolving prompt."""
    low = instruction.lower()
    for marker in markers:
        if marker.lower() in low:
            return f"elimination_prompt_copy: {marker!r}"
    return None


def answer_reject_reason(answer: str, e: EvolveConfig) -> str | None:
    """Rules 2 and 3 on the teacher's answer to an evolved instruction."""
    n_words = len(answer.split())
    if re.search(r"\bsorry\b", answer, re.IGNORECASE) and n_words < e.sorry_max_words:
        return f"elimination_sorry: 'sorry' in a {n_words}-word answer"
    if all(w in STOP_WORDS for w in re.findall(r"[^\W_]+", answer.lower())):
        return f"elimination_stopwords: {answer[:60]!r}"
    return None


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def generation(pool: list[Task], evolved: list[Task], round_: int) -> list[Task]:
    """The instructions round `round_` evolves: per slot, the last kept evolution or the input instruction."""
    current = list(pool)
    by_parent = {(t.parent_id, t.round): t for t in evolved}
    for r in range(1, round_):
        current = [by_parent.get((t.id, r), t) for t in current]
    return current


def validate(e: EvolveConfig) -> None:
    weights = [getattr(e.weights, op) for op in OPERATIONS]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise Seed2LoraError(f"evolve.weights must be >= 0 with a positive sum, not {dataclasses.asdict(e.weights)}. "
                             "Fix: e.g. --weights constraints=1,deepen=1,breadth=2")
    if not 0 <= e.min_added_words <= e.max_added_words:
        raise Seed2LoraError(f"evolve.min_added_words ({e.min_added_words}) must be between 0 and "
                             f"max_added_words ({e.max_added_words})")
    if e.rounds < 0:
        raise Seed2LoraError(f"evolve.rounds must be 0 or more, not {e.rounds}")


class _Evolver:
    """One run of the stage: the filter index, known texts and call settings shared by every chunk."""

    def __init__(self, teacher: Teacher, cfg: RunConfig, prompts: Prompts, pool: list[Task], evolved: list[Task],
                 seeds: Iterable[str]):
        self.teacher, self.cfg, self.e, self.prompts = teacher, cfg, cfg.evolve, prompts
        e = self.e
        self.texts = {t.id: t.instruction for t in [*pool, *evolved]}
        self.filter = InstructionFilter(dataclasses.replace(cfg.filter, max_words=e.max_words),
                                        pool=[t.instruction for t in [*pool, *evolved]], seeds=seeds)
        # A completion model that starts another example writes "Instruction:" / "Request:" next.
        self.evolve_params = GenParams(max_tokens=e.max_tokens, temperature=e.temperature, top_p=e.top_p,
                                       stop=("\nInstruction:",))
        self.judge_params = GenParams(max_tokens=e.judge_max_tokens, temperature=0.0)  # a judgement: greedy
        self.answer_params = GenParams(max_tokens=e.answer_max_tokens, temperature=e.answer_temperature,
                                       top_p=e.answer_top_p, stop=("\nRequest:",))

    def child(self, parent: Task, op: str, template: str, round_: int, instruction: str) -> Task:
        evolved = parent.origin == "evolved"
        lineage = [*parent.meta.get("lineage", []),
                   {"id": parent.id, "operation": parent.meta.get("operation") if evolved else None,
                    "round": parent.round if evolved else 0}]
        return Task(id=task_id("evolved", f"{parent.id}\n{round_}\n{instruction}"), instruction=instruction,
                    origin="evolved", parent_id=parent.id, round=round_, stage="evolve", teacher=self.teacher.name,
                    prompt=template, meta={"operation": op, "lineage": lineage,
                                           "parent_instruction": evolvable_text(parent)})

    def ancestors(self, child: Task) -> set[str]:
        return {self.texts[a["id"]] for a in child.meta["lineage"] if a["id"] in self.texts}

    def early_reason(self, parent: Task, child: Task) -> str | None:
        """Rules that need no teacher call: 4, identical text (1), then the instruction filter."""
        reason = prompt_copy_reason(child.instruction, self.e.prompt_markers)
        if reason:
            return reason
        if any(_same_text(child.instruction, t) for t in (evolvable_text(parent), *self.ancestors(child))):
            return "elimination_no_gain: same text as an ancestor"
        return self.filter.check(child, ignore=self.ancestors(child))

    def chunk(self, parents: list[Task], round_: int) -> tuple[list[Task], list[Task], int]:
        """Evolve, judge, answer and filter one chunk: (kept, rejected, teacher errors)."""
        plans = []
        for p in parents:
            op = pick_operation(operation_rng(self.cfg.seed, round_, p.id), self.e.weights)
            plans.append((p, op, *evolution_prompt(self.prompts, op, evolvable_text(p), self.e)))
        # The salt keeps a parent that re-enters the pool from getting its cached reply again.
        salts = [f"{self.cfg.seed}:evolve:{round_}:{p.id}" for p, *_ in plans]
        replies = self.teacher.generate([prompt for *_, prompt in plans], self.evolve_params, kind="evolve",
                                        salts=salts)
        rejected: list[Task] = []
        errors = 0
        candidates = []
        for (p, op, template, _), reply in zip(plans, replies, strict=True):
            if not reply.ok:
                errors += 1
                continue
            child = self.child(p, op, template, round_, parse_evolved_instruction(reply.text))
            reason = self.early_reason(p, child)
            if reason:
                rejected.append(child.rejected(reason, "evolve"))
            else:
                candidates.append((p, child))

        judged = self.teacher.generate([judge_prompt(self.prompts, p, c) for p, c in candidates],
                                       self.judge_params, kind="evolve_judge")
        survivors = []
        for (_, c), reply in zip(candidates, judged, strict=True):
            if not reply.ok:
                errors += 1
                continue
            equal = parse_equal(reply.text)
            c.meta["judge"] = {True: "equal", False: "not equal", None: "unclear"}[equal]
            if equal is None:  # kept: only a clear "equal" eliminates
                c.meta["judge_reply"] = reply.text
            if equal:
                rejected.append(c.rejected("elimination_no_gain: judged equal to its parent", "evolve"))
            else:
                survivors.append(c)

        answers = self.teacher.generate([answer_prompt(self.prompts, c) for c in survivors],
                                        self.answer_params, kind="evolve_answer", salts=[c.id for c in survivors])
        kept = []
        for c, reply in zip(survivors, answers, strict=True):
            if not reply.ok:
                errors += 1
                continue
            c.instances = [Instance("", parse_answer(reply.text))]
            if reply.finish_reason == "length":
                c.meta["answer_truncated"] = True
            # Checked again in order, so two near-identical evolutions of one chunk are not both kept.
            reason = answer_reject_reason(c.instances[0].output, self.e) or \
                self.filter.check(c, ignore=self.ancestors(c))
            if reason:
                rejected.append(c.rejected(reason, "evolve"))
                continue
            self.filter.add(c.instruction)
            self.texts[c.id] = c.instruction
            kept.append(c)
        return kept, rejected, errors


def run_evolve(teacher: Teacher, pool: list[Task], cfg: RunConfig, run: RunDir, prompts: Prompts, *,
               source: str, seeds: Iterable[str] = (), progress: ProgressFactory | None = None,
               on_round: Callable[[int], None] | None = None) -> EvolveResult:
    """Run rounds done+1 .. evolve.rounds over `pool` (read from `source`, recorded for resume)."""
    e = cfg.evolve
    validate(e)
    if not pool:
        raise Seed2LoraError(f"no instructions to evolve in {source}")
    progress = progress or _no_progress
    state = run.manifest().get("state", {})
    evolved = run.read_stage("evolve")
    if evolved and state.get("evolve_input", source) != source:
        raise Seed2LoraError(f"{run.stage_file('evolve')} was evolved from {state['evolve_input']}, not {source}. "
                             "Fix: use another --run-name for another input, or delete evolve.jsonl to start over")
    result = EvolveResult(rounds_done=int(state.get("evolve_rounds_done", 0)))
    outcomes = {(t.parent_id, t.round) for t in [*evolved, *run.read_rejected()] if t.stage == "evolve"}
    evolver = _Evolver(teacher, cfg, prompts, pool, evolved, seeds)
    size = _chunk_size(teacher)
    with JsonlWriter(run.stage_file("evolve")) as kept_out, JsonlWriter(run.rejected_file) as rejected_out:
        for round_ in range(result.rounds_done + 1, e.rounds + 1):
            pending = [t for t in generation(pool, evolved, round_) if (t.id, round_) not in outcomes]
            with progress(f"evolve round {round_}/{e.rounds}", len(pending)) as advance:
                for start in range(0, len(pending), size):
                    kept, rejected, errors = evolver.chunk(pending[start:start + size], round_)
                    for t in kept:
                        kept_out.write(t)
                    for t in rejected:
                        rejected_out.write(t)
                    evolved += kept
                    result.kept += len(kept)
                    result.rejected.update(reason_kind(t.reject_reason) for t in rejected)
                    result.errors += errors
                    advance(len(pending[start:start + size]))
            result.rounds_done = round_
            run.update_manifest(state={"evolve_rounds_done": round_, "evolve_input": source})
            if on_round:
                on_round(round_)
    result.total = len(evolved)
    return result
