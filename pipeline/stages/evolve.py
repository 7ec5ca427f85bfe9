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

Every round of every slot goes through one teacher stream, with no barrier: a slot's
evolution, judgement and answer are sent as soon as the reply before them is back, and its
next round starts the moment this one has an outcome (a slot's round depends only on its
own last outcome, not on the other slots). So the teacher's slots stay full from the first
call to the last, and outcomes are written the moment they are known. At most
WINDOW x the teacher's concurrency (or batch size) slots are under way at once, in pool
order; a slot leaves when its last round has an outcome (or a teacher error stops it) and
the next one takes its place, so the first outcomes come within a few replies however large
the pool. Among the slots under way, the call whose slot has the most calls left goes first:
they advance together, and the stage ends with no long chain running alone while the
teacher's other slots sit idle.

Done is read from the outputs only: a slot of round r is done when evolve.jsonl or
rejected.jsonl holds its outcome for (parent_id, r). A teacher error (after the teacher's
own retries) or a spent budget leaves the slot pending at that round, with no record, and
it goes no further; round r counts as done once every slot has its outcome for r. A
re-run sends exactly the pending slots' calls again, with the same salts, so replies
already in the run's cache are not paid twice. Outcomes are written a tenth of a second
at a time (store.RECORD_HOLD_S): after a kill -9 a resume makes the last ones again from
the cache, and a rejection is never on disk while the evolution kept before it is not. An empty evolution or answer is asked for
again with a new salt, up to teacher.max_retries times, then rejected as
"unparseable_reply". The operation comes from random.Random(f"{seed}:evolve:{round}:{task
id}"), so a resumed run draws the same ones.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import EvolveConfig, EvolveWeights, RunConfig
from ..context import Records, RunContext, StepResult
from ..datasets_io import Fields, load_pool
from ..errors import Refused, Seed2LoraError
from ..progress import no_progress
from ..prompts import Prompts
from ..records import Instance, Task, task_id
from ..store import (
    RECORD_HOLD_S,
    SELF_INSTRUCT_INPUTS,
    STAGES,
    JsonlWriter,
    RunDir,
    evolve_mixed,
    read_tasks,
    reason_kind,
    rows_from,
    seeds_used,
)
from ..teachers import Completion, GenParams, Teacher
from ..teachers.base import WAIT, Request
from .common import ProgressFn, batch_meta, no_novelty_note, reply_meta, resent_note, retry_params
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


@dataclass
class EvolveResult:
    rounds_done: int  # rounds whose every slot has an outcome in this run directory
    kept: int = 0  # evolutions kept by this call
    rejected: Counter = field(default_factory=Counter)  # by rule, this call
    errors: int = 0  # teacher calls that failed after retries; their slots stay pending
    resent: int = 0  # failed calls of this call's replies sent again (common.resent_note: `show`'s retries)
    total: int = 0  # evolutions in evolve.jsonl
    pending: int = 0  # slots left with rounds to go (budget spent, teacher errors)
    source: str = ""  # the pool's name, for the runner to record: a run directory evolves one input


@dataclass
class _Lineage:
    """A slot of the pool: one input instruction and the line of its kept evolutions."""

    current: Task  # what its next round evolves: the last kept evolution, else the input instruction
    round: int  # its next round; rounds + 1 once every round has an outcome


@dataclass
class _Slot:
    """One lineage's round on its way to an outcome: evolve, judge, answer."""

    lineage: _Lineage
    parent: Task
    round: int
    op: str
    template: str
    prompt: str
    salt: str
    child: Task | None = None
    tries: int = 0  # empty replies asked for again at the current call


def pick_operation(rng: random.Random, weights: EvolveWeights) -> str:
    return rng.choices(OPERATIONS, [getattr(weights, op) for op in OPERATIONS])[0]


def operation_rng(seed: int, round_: int, tid: str) -> random.Random:
    return random.Random(f"{seed}:evolve:{round_}:{tid}")


def evolvable_text(task: Task) -> str:
    """The instruction, with its first instance's input on a new line when it has one."""
    inp = task.instances[0].input.strip() if task.instances else ""
    return f"{task.instruction.strip()}\n{inp}" if inp else task.instruction.strip()


JUDGE_TEMPLATE, ANSWER_TEMPLATE = "evol_equal.txt", "evol_answer.txt"  # the elimination's judge; the answer


def operation_template(op: str) -> str:
    return f"evol_{op}.txt"


def evolution_prompt(prompts: Prompts, op: str, text: str, e: EvolveConfig) -> tuple[str, str]:
    """(template name, rendered prompt) of one operation."""
    name = operation_template(op)
    if op in IN_DEPTH:
        return name, prompts.render(name, instruction=text, min_added_words=e.min_added_words,
                                    max_added_words=e.max_added_words)
    return name, prompts.render(name, instruction=text)


def judge_prompt(prompts: Prompts, parent: Task, child: Task) -> str:
    return prompts.render(JUDGE_TEMPLATE, first=evolvable_text(parent), second=child.instruction)


def answer_prompt(prompts: Prompts, child: Task) -> str:
    return prompts.render(ANSWER_TEMPLATE, instruction=child.instruction)


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
        self.resent = 0  # the failed calls sent again of the replies read (Completion.resent)

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

    def slot(self, lineage: _Lineage) -> _Slot:
        parent, round_ = lineage.current, lineage.round
        op = pick_operation(operation_rng(self.cfg.seed, round_, parent.id), self.e.weights)
        template, prompt = evolution_prompt(self.prompts, op, evolvable_text(parent), self.e)
        # The salt keeps a parent that re-enters the pool from getting its cached reply again.
        return _Slot(lineage, parent, round_, op, template, prompt, salt=f"{self.cfg.seed}:evolve:{round_}:{parent.id}")

    # -- a request's key is (what reads its reply, the slot); a retry's salt names the retry,
    #    so a bad cached reply is not served again
    def evolution_request(self, s: _Slot) -> Request:
        return Request((self.evolved, s), s.prompt, salt=_retry_salt(s.salt, s.tries),
                       params=_retry(self.evolve_params, s.tries), kind="evolve")

    def judge_request(self, s: _Slot) -> Request:
        assert s.child is not None
        return Request((self.judged, s), judge_prompt(self.prompts, s.parent, s.child), params=self.judge_params,
                       kind="evolve_judge")

    def answer_request(self, s: _Slot) -> Request:
        assert s.child is not None
        return Request((self.answered, s), answer_prompt(self.prompts, s.child), salt=_retry_salt(s.child.id, s.tries),
                       params=_retry(self.answer_params, s.tries), kind="evolve_answer")

    # -- each reply gives the slot's next request or its outcome (kept, or with a reject_reason)
    def evolved(self, s: _Slot, reply: Completion) -> Request | Task:
        s.child = self.child(s.parent, s.op, s.template, s.round, parse_evolved_instruction(reply.text))
        if reply.batch:  # the evolution's reply was paid in a batch: the child says which
            s.child.meta["evolve_reply"] = batch_meta(reply)
        if not s.child.instruction:
            return self.retry_or_reject(s, reply, "evolution", self.evolution_request)
        s.tries = 0
        reason = self.early_reason(s.parent, s.child)
        return s.child.rejected(reason, "evolve") if reason else self.judge_request(s)

    def judged(self, s: _Slot, reply: Completion) -> Request | Task:
        assert s.child is not None
        equal = parse_equal(reply.text)
        s.child.meta["judge"] = {True: "equal", False: "not equal", None: "unclear"}[equal]
        if reply.batch:  # as the evolution's reply: which batch and wave paid the judgement
            s.child.meta["evolve_judge_reply"] = batch_meta(reply)
        if equal is None:  # kept: only a clear "equal" eliminates
            s.child.meta["judge_reply"] = reply.text
        if equal:
            return s.child.rejected("elimination_no_gain: judged equal to its parent", "evolve")
        return self.answer_request(s)

    def answered(self, s: _Slot, reply: Completion) -> Request | Task:
        c = s.child
        assert c is not None
        answer = parse_answer(reply.text)
        if reply.batch:
            c.meta["evolve_answer_reply"] = batch_meta(reply)
        if not answer:
            return self.retry_or_reject(s, reply, "answer", self.answer_request)
        c.instances = [Instance("", answer)]
        if reply.finish_reason == "length":
            c.meta["answer_truncated"] = True
        # Checked again as replies arrive, so two near-identical evolutions of one round are not both kept.
        reason = answer_reject_reason(answer, self.e) or self.filter.check(c, ignore=self.ancestors(c))
        if reason:
            return c.rejected(reason, "evolve")
        self.filter.add(c.instruction)
        self.texts[c.id] = c.instruction
        return c

    def retry_or_reject(self, s: _Slot, reply: Completion, what: str,
                        request: Callable[[_Slot], Request]) -> Request | Task:
        assert s.child is not None
        if s.tries < self.cfg.teacher.max_retries:
            s.tries += 1
            return request(s)
        s.child.meta.update(evolve_reply=reply_meta(reply), tries=s.tries + 1)
        return s.child.rejected(f"unparseable_reply: empty {what} after {s.tries} retries", "evolve")

    def run(self, lineages: list[_Lineage], emit: Callable[[Task], None], advance: ProgressFn,
            window: int) -> int:
        """Stream every call of the lineages' remaining rounds through the teacher, at most `window`
        lineages under way at once; emit each slot's outcome the moment it is known, then start
        that lineage's next round. `advance` counts calls: 3 per slot-round, those an early outcome
        makes unnecessary included; a failed call is counted failed and its lineage's calls after it not sent
        (advance.fail, advance.skip). Returns the teacher errors: each leaves its lineage pending
        where it was."""
        rounds = self.e.rounds
        waiting = deque(x for x in lineages if x.round <= rounds)
        under_way = 0
        ready: list[tuple[int, int, Request]] = []  # a heap of (-calls its lineage has left, order, request)
        order = itertools.count()
        in_flight = errors = 0

        def push(req: Request, s: _Slot) -> None:
            left = 3 * (rounds - s.round) + CALLS_LEFT[req.kind or "evolve"]
            heapq.heappush(ready, (-left, next(order), req))

        def start(lineage: _Lineage) -> None:
            s = self.slot(lineage)
            push(self.evolution_request(s), s)

        def admit() -> None:
            nonlocal under_way
            while waiting and under_way < window:
                start(waiting.popleft())
                under_way += 1

        def requests() -> Iterator[Request | None]:
            nonlocal in_flight
            while True:
                if ready:
                    req = heapq.heappop(ready)[2]
                elif in_flight:
                    yield WAIT  # the next calls need replies still in flight
                    continue
                else:
                    return
                in_flight += 1
                yield req

        # The loop's bar has them: the failed call, and the slot's calls after it (not sent), stay pending, not done
        fail, skip = getattr(advance, "fail", None), getattr(advance, "skip", None)
        admit()
        for req, reply in self.teacher.stream(requests(), self.evolve_params, kind="evolve"):
            in_flight -= 1
            read_reply, s = req.key
            self.resent += reply.resent
            if not reply.ok:  # this lineage stops here, pending; another takes its place
                errors += 1
                if fail is not None and skip is not None:
                    fail(1)
                    skip(3 * (rounds - s.round) + CALLS_LEFT[req.kind or "evolve"] - 1)
                under_way -= 1
                admit()
                continue
            outcome = read_reply(s, reply)
            if isinstance(outcome, Request):
                if outcome.kind != req.kind:  # a retry asks for the same call again
                    advance(1)
                push(outcome, s)
                continue
            advance(CALLS_LEFT[req.kind or "evolve"])  # this call, and those the outcome spares
            emit(outcome)
            lineage = s.lineage
            if not outcome.reject_reason:
                lineage.current = outcome
            lineage.round += 1  # a failed evolution's parent re-enters the next round
            if lineage.round <= rounds:
                start(lineage)
            else:
                under_way -= 1
                admit()
        return errors


# Calls a slot still needs in its round, the one about to be sent included.
CALLS_LEFT = {"evolve": 3, "evolve_judge": 2, "evolve_answer": 1}
# Slots under way at once, per request the teacher keeps in flight. A simulation of 3-call rounds at fixed
# latency (C = 8 and 256; pools of C+ to 20C; 1 to 4 rounds) put 4C within 0.01 of no limit at all in every
# case but one (0.987 against 0.998) with the first outcome after about 9 replies' time, where with no limit
# it came only after every round-1 evolution of the pool had been sent (2N calls); 1C lost up to 0.3.
WINDOW = 4


def _retry_salt(salt: str, tries: int) -> str:
    return f"{salt}:retry{tries}" if tries else salt


def _retry(params: GenParams, tries: int) -> GenParams:
    return retry_params(params) if tries else params


def check_source(run: RunDir, source: str, manifest: dict[str, Any] | None = None) -> None:
    """A run directory evolves one input: refuse another while evolve.jsonl has evolutions of
    the one the manifest names (state "evolve_input", recorded by the runner), or of a stage's tasks that a later
    --input replaced in that stage's file (store.evolve_replaced): the two would be mixed in evolve.jsonl.
    manifest: the run's as evolve will find it (manifest_at_turn), else the one on disk."""
    m = run.manifest() if manifest is None else manifest
    previous = m.get("state", {}).get("evolve_input", source)
    if previous != source and run.read_stage("evolve"):
        raise Refused(f"{run.stage_file('evolve')} was evolved from {previous}, not {source}. "
                      "Fix: use another --run-name for another input, or delete evolve.jsonl to start over")
    if mixed := evolve_mixed(run, m):  # the same source (else refused above): its tasks replaced since
        raise Refused(f"{mixed}. Fix: delete evolve.jsonl to evolve the tasks {source}.jsonl holds now, or "
                      "use another --run-name")


def lineages_left(pool: list[Task], evolved: list[Task], done: dict[str, int], rounds: int) -> list[_Lineage]:
    """Each pool slot where the outputs leave it: its current instruction and next round.

    `done` is the last round with an outcome per parent id. Older versions marked a round done
    past a failed slot, whose instruction then re-entered the next round: an outcome there
    covers the earlier round too."""
    kept = {(t.parent_id, t.round): t for t in evolved}
    out = []
    for task in pool:
        lineage = _Lineage(task, 1)
        while lineage.round <= rounds and done.get(lineage.current.id, 0) >= lineage.round:
            lineage.current = kept.get((lineage.current.id, lineage.round), lineage.current)
            lineage.round += 1
        out.append(lineage)
    return out


def plan(run: RunDir, pool: list[Task], rounds: int) -> tuple[list[Task], list[_Lineage]]:
    """(evolutions kept so far, each pool slot's lineage where the outputs leave it)."""
    evolved = run.read_stage("evolve")
    done: dict[str, int] = {}
    for t in [*evolved, *run.read_rejected()]:
        if t.stage == "evolve" and t.parent_id:
            done[t.parent_id] = max(done.get(t.parent_id, 0), t.round)
    return evolved, lineages_left(pool, evolved, done, rounds)


def bar_of(lineages: list[_Lineage], rounds: int) -> tuple[str, int]:
    """The progress bar's description and the slot-rounds without an outcome (three calls each at most)."""
    todo = sum(rounds + 1 - x.round for x in lineages)
    if not todo:
        return "evolve", 0
    first = min(x.round for x in lineages)
    return (f"evolve round {first}/{rounds}" if first == rounds else f"evolve rounds {first}-{rounds}") + ", calls", todo


def run_evolve(teacher: Teacher, pool: list[Task], cfg: RunConfig, run: RunDir, prompts: Prompts, *,
               source: str, seeds: Iterable[str] = (), progress: ProgressFactory | None = None) -> EvolveResult:
    """Run rounds 1 .. evolve.rounds over `pool` (read from `source`), skipping every slot-round
    that has an outcome. Writes no manifest: the runner records `source` and the rounds done."""
    e = cfg.evolve
    validate(e)
    if not pool:
        raise Seed2LoraError(f"no instructions to evolve in {source}")
    progress = progress or no_progress
    check_source(run, source)
    evolved, lineages = plan(run, pool, e.rounds)
    result = EvolveResult(rounds_done=0, source=source)
    desc, todo = bar_of(lineages, e.rounds)
    if todo:
        evolver = _Evolver(teacher, cfg, prompts, pool, evolved, seeds)
        # Held (store.RECORD_HOLD_S): an outcome is its own done-mark, made from replies already in the cache. The
        # kept go to disk first: a round's rejection is never there while the evolution kept before it is not.
        with JsonlWriter(run.stage_file("evolve"), hold_s=RECORD_HOLD_S) as kept_out, \
                JsonlWriter(run.rejected_file, hold_s=RECORD_HOLD_S, after=kept_out) as rejected_out, \
                progress(desc, 3 * todo) as advance:

            def emit(t: Task) -> None:
                if t.reject_reason:
                    rejected_out.write(t)
                    result.rejected[reason_kind(t.reject_reason)] += 1
                else:
                    kept_out.write(t)
                    evolved.append(t)
                    result.kept += 1

            # The teacher's requests in flight: concurrency for servers, batch size in process.
            width = max(cfg.teacher.concurrency, cfg.teacher.batch_size, 1)
            result.errors = evolver.run(lineages, emit, advance, window=WINDOW * width)
            result.resent = evolver.resent
    result.pending = sum(x.round <= e.rounds for x in lineages)
    result.rounds_done = min((x.round - 1 for x in lineages), default=e.rounds)
    result.total = len(evolved)
    return result


def read(ctx: RunContext, check_only: bool = False) -> Records:
    """The pool to evolve, named by its source: --input, else evolve.source (a stage of this run, seeds, a path).

    check_only: validate the source without reading it (a stage this command runs before evolve writes it then; a
    stage of cfg.stages that it does not run, the `evolve` command's default filter, passed unread and failed at
    its step, with the teacher probed and the run's folder made).
    """
    e = ctx.cfg.evolve
    source = str(ctx.input_path) if ctx.input_path else e.source
    if source == "seeds":
        return Records(ctx.seeds, f"seeds:{ctx.cfg.seed_tasks or 'bundled'}")
    if source in STAGES and source != "evolve":
        f = ctx.run.stage_file(source)
        if check_only and source in ctx.steps:
            return Records((), source)
        if not f.exists():
            raise Seed2LoraError(f"{f} does not exist. Fix: run `seed2lora {source}` for this run first, "
                                 "pass --input FILE, or set evolve.source = \"seeds\"")
        return Records(read_tasks(f), source)
    pool = load_pool(source, Fields(e.instruction_field, e.input_field, e.output_field))
    return Records(pool, str(Path(source).resolve()), pool.note(Path(source).name))


def manifest_at_turn(ctx: RunContext) -> dict[str, Any]:
    """The manifest as evolve's step will find it: each stage of the Self-Instruct chain this command runs before
    evolve records its --input anew by then, and a re-run without one clears it. Judged on the manifest of before,
    a `run` whose filter puts the bootstrapped rows back was refused as mixing them with a user's file's."""
    m = ctx.run.manifest()
    earlier = ctx.steps[:ctx.steps.index("evolve")] if "evolve" in ctx.steps else []
    anew = {name: {"input_file": ctx.input_provenance()} if name in ctx.importing else {}
            for name in SELF_INSTRUCT_INPUTS if name in earlier}
    return {**m, "stages": {**(m.get("stages") or {}), **anew}}


def check(ctx: RunContext) -> None:
    # another input, or its tasks replaced by the time it runs: before any write
    check_source(ctx.run, read(ctx, check_only=True).source, manifest_at_turn(ctx))
    # Every template the stage will render is there: Prompts.check reads those a folder has, and a copy without
    # evol_answer.txt died at the first answer, its evolutions and judgements paid.
    weights = ctx.cfg.evolve.weights
    for name in [operation_template(op) for op in OPERATIONS if getattr(weights, op) > 0] + [JUDGE_TEMPLATE,
                                                                                           ANSWER_TEMPLATE]:
        ctx.prompts.path(name)


def progress(ctx: RunContext, records: Records | None) -> tuple[str, int, int] | None:
    desc, todo = bar_of(plan(ctx.run, list(records or ()), ctx.cfg.evolve.rounds)[1], ctx.cfg.evolve.rounds)
    return (desc, 3 * todo, 0) if todo else None


def left(ctx: RunContext) -> int:
    """The pool's slots with rounds to go, from the files: what a stopped run has pending here (Step.left)."""
    rounds = ctx.cfg.evolve.rounds
    return sum(x.round <= rounds for x in plan(ctx.run, list(read(ctx)), rounds)[1])


def step(ctx: RunContext, records: Records | None) -> StepResult:
    """Evolve the pool `records` round after round; write evolve.jsonl."""
    pool = records if records is not None else read(ctx)
    source = pool.source
    check_source(ctx.run, source)  # one input per run: checked before this input is recorded
    # Where a stage's tasks came from is recorded with it: a later `filter --input` that replaces them is seen
    rows = rows_from(ctx.run.manifest(), source) if source in STAGES else None
    m = ctx.record(state={"evolve_input": source, "evolve_rows_from": rows})
    # The seed tasks are in the novelty index when the run's records came from them (store.seeds_used, the rule of
    # export's seed rows, reading the source just recorded and the runner's ctx.importing): a user's file evolved on
    # its own never used them, and they rejected evolutions as near-copies of tasks the user never gave; in a run
    # that bootstrapped, the export holds them beside the evolutions.
    seeds = [s.instruction for s in ctx.seeds] if seeds_used(m, importing=ctx.importing) else []
    no_novelty_note(ctx, seeds, "the evolutions")
    result = run_evolve(ctx.teacher, list(pool), ctx.cfg, ctx.run, ctx.prompts, source=source, seeds=seeds,
                        progress=lambda desc, total: nullcontext(ctx.advance))
    rejected = ", ".join(f"{k} {n}" for k, n in result.rejected.most_common()) or "none"
    e, batch = ctx.cfg.evolve, ctx.cfg.teacher.batch
    message = (f"evolve: {result.rounds_done} of {e.rounds} rounds done over {len(pool)} instructions; "
               f"{result.kept} evolutions kept ({result.total} in evolve.jsonl), {sum(result.rejected.values())} "
               f"rejected ({rejected}), {result.errors} teacher errors{resent_note(result.resent, batch)}")
    return StepResult(message, result.pending, {"kept": result.kept, "rejected": sum(result.rejected.values()),
                                                "rounds_done": result.rounds_done})
