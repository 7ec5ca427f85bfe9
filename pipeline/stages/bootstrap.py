"""Stage 1: bootstrap new instructions from the seed pool (Self-Instruct, or Alpaca mode).

Self-Instruct mode: each prompt lists 8 tasks (6 human, 2 machine; fewer machine ones
while the pool has fewer) and asks the teacher to continue the numbered list up to 16.
New instructions pass the filter online, against seeds and every kept instruction, so
the pool grows to its target with novel tasks only.

Alpaca mode: 3 seed tasks with input and output per prompt, a list of 20 asked for, the
instruction, input and output of each parsed from the one reply.

Randomness comes from random.Random(f"{seed}:bootstrap:{request}"); prompts are logged
before they are sent and replies cached as they arrive, so a resumed run pays for no
reply twice.
"""

from __future__ import annotations

import functools
import math
import random
import re
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..cache import ResponseCache
from ..config import RunConfig
from ..context import Records, RunContext, StepResult
from ..errors import LowYield, Seed2LoraError
from ..prompts import Prompts
from ..records import Task, task_id
from ..store import JsonlWriter, RunDir, reason_kind
from ..teachers import Completion, GenParams, Teacher
from ..teachers.base import WAIT, Request
from .common import batch_meta, reply_meta, resent_note
from .filter import InstructionFilter
from .filter_worker import ForkedFilter, can_fork, fill
from .parse import NOINPUT, parse_alpaca, parse_numbered_list, parse_structured_tasks
from .schemas import schema_params


@dataclass
class BootstrapResult:
    kept: int  # machine instructions in the pool now (this run and earlier ones)
    new: int  # kept by this call
    rejected: int  # rejected by this call
    requests: int  # prompts sent so far in this run directory
    pending: int = 0  # instructions short of the target when the prompts ran out (max_requests)
    replies: int = 0  # replies handled by this call
    resent: int = 0  # failed calls of this call's replies sent again (common.resent_note: `show`'s retries)
    batch: bool = False  # the teacher sends through the Batch API (a failed wave is among the causes named)


def sample_prompt_tasks(rng: random.Random, seeds: list[str], machine: list[str], n: int, n_machine: int) -> list[str]:
    """n in-context instructions: up to n_machine machine ones, the rest human, shuffled."""
    chosen = rng.sample(machine, min(n_machine, len(machine)))
    chosen += rng.sample(seeds, min(n - len(chosen), len(seeds)))
    rng.shuffle(chosen)
    return chosen


@functools.lru_cache(maxsize=1 << 16)
def one_line(text: str) -> str:
    """The text on one line, runs of white space one space. Kept per text: a prompt lists 8 instructions of the
    pool, each listed again and again."""
    return _SPACES.sub(" ", text).strip()


_SPACES = re.compile(r"\s+")


def template_name(cfg: RunConfig) -> str:
    """The template bootstrap's prompts render: Alpaca's, or Self-Instruct's (its classification-seeds form)."""
    b = cfg.bootstrap
    return "alpaca.txt" if b.mode == "alpaca" else "bootstrap_clf.txt" if b.use_clf_seed_tasks_only else "bootstrap.txt"


def build_prompt(prompts: Prompts, cfg: RunConfig, rng: random.Random, seeds: list[Task],
                 machine: list[str], seed_texts: list[str] | None = None) -> tuple[str, str, int]:
    """(template name, rendered prompt, number of the first new item). `seed_texts`: the seeds' instructions, from a
    caller that keeps them (Bootstrap: a prompt each made the list again)."""
    b, name = cfg.bootstrap, template_name(cfg)
    if b.mode == "alpaca":
        examples = rng.sample(seeds, min(b.alpaca_num_prompt_instructions, len(seeds)))
        blocks = []
        for i, t in enumerate(examples, 1):
            inst = rng.choice(t.instances) if t.instances else None
            inp = (inst.input.strip() if inst else "") or NOINPUT
            blocks.append(f"###\n{i}. Instruction: {one_line(t.instruction)}\n{i}. Input:\n{inp}\n"
                          f"{i}. Output:\n{inst.output.strip() if inst else ''}")
        nxt = len(examples) + 1
        text = prompts.render(name, tasks="\n".join(blocks), next_number=nxt, num_tasks=b.alpaca_num_tasks)
        return name, text, nxt
    listed = sample_prompt_tasks(rng, seed_texts or [t.instruction for t in seeds], machine,
                                 b.num_prompt_instructions, b.num_machine_instructions)
    tasks = "\n".join(f"{i}. {one_line(t).rstrip(':')}" for i, t in enumerate(listed, 1))
    nxt = len(listed) + 1
    return name, prompts.render(name, tasks=tasks, next_number=nxt, max_number=b.max_list_number), nxt


def free_places(cfg: RunConfig) -> int:
    """The most new tasks one prompt can give: the places its list has left after the tasks it shows, up to the
    number its stop sequence cuts at (Self-Instruct: 8 shown, stop at "16.", so 9 to 15)."""
    b = cfg.bootstrap
    if b.mode == "alpaca":
        return max(1, b.alpaca_num_tasks - b.alpaca_num_prompt_instructions - 1)
    return max(1, b.max_list_number - b.num_prompt_instructions - 1)


def gen_params(cfg: RunConfig, continues: bool = True, structured: bool = False) -> GenParams:
    """Sampling for one bootstrap prompt. `continues`: the teacher continues the prompt text
    (completions API), so a blank line ends the list; a chat reply often has blank lines
    after its preamble, so then only the number after the last allowed one stops it.
    `structured`: the reply is JSON bound to the tasks schema, which no stop may cut."""
    b = cfg.bootstrap
    if structured and b.mode == "self-instruct":
        return GenParams(max_tokens=b.max_tokens, temperature=b.temperature, top_p=b.top_p,
                         presence_penalty=b.presence_penalty, frequency_penalty=b.frequency_penalty,
                         **schema_params("tasks"))
    if b.mode == "alpaca":
        n = b.alpaca_num_tasks
        return GenParams(max_tokens=b.alpaca_max_tokens, temperature=b.alpaca_temperature, top_p=b.alpaca_top_p,
                         stop=(f"\n{n}.", f"\n{n} .", f"{n}. Instruction"))
    n = b.max_list_number
    return GenParams(max_tokens=b.max_tokens, temperature=b.temperature, top_p=b.top_p,
                     presence_penalty=b.presence_penalty, frequency_penalty=b.frequency_penalty,
                     stop=(("\n\n",) if continues else ()) + (f"\n{n}.", f"\n{n} .", f"Task {n}:"))


class _Pool:
    """The machine pool as bootstrap grows it: every parsed line ends kept or rejected (it was paid for), and a
    resumed run recognises what it wrote before by (id, request)."""

    def __init__(self, run: RunDir, cfg: RunConfig, seeds: list[Task], *, concurrency: int = 1, flowing: bool = False,
                 say: Callable[[str], None] = lambda message: None):
        existing = run.read_stage("bootstrap")
        self.target = cfg.bootstrap.num_instructions
        self.machine = [t.instruction for t in existing]
        self.kept_ids = {t.id: t.instruction for t in existing}
        self.over: dict[str, str] = {}  # lines past the target this session: later ones are checked against them
        # How many records each (id, request) already has: a replayed reply skips exactly those.
        self.written = Counter((t.id, t.round)
                               for t in [*existing, *(r for r in run.read_rejected() if r.stage == "bootstrap")])
        self.filter: InstructionFilter | ForkedFilter = InstructionFilter(cfg.filter, pool=self.machine,
                                                                          seeds=[s.instruction for s in seeds])
        self.forks, self.say = forks(cfg, concurrency, flowing), say
        self.new = self.rejected = 0
        self.answered = self.novel = 0  # replies with text; their lines that passed the filter (kept or over target)
        self.reasons: Counter[str] = Counter()

    @property
    def full(self) -> bool:
        return len(self.machine) >= self.target

    def reject(self, out: JsonlWriter, task: Task, reason: str) -> None:
        out.write(task.rejected(reason, "bootstrap"))
        self.rejected += 1
        self.reasons[reason_kind(reason)] += 1

    def submit(self, tasks: list[Task], request: int) -> tuple[list[Task], list[Task]]:
        """A reply's lines to take (a replayed reply's lines its request wrote before an interruption skipped) and
        those of them sent to the filter now (InstructionFilter.send): all but the empty ones and those whose
        instruction the pool already holds. The filter passes no id twice, so a line repeating one passed in a
        reply submitted before it, not yet taken, comes back as a duplicate (None)."""
        if self.written:
            tasks = self.unwritten(tasks, request)
        asked = [t for t in tasks if t.instruction and t.id not in self.kept_ids and t.id not in self.over]
        self.filter.send([(t.id, t.instruction) for t in asked])
        return tasks, asked

    def take(self, tasks: list[Task], asked: list[Task], request: int, kept_out: JsonlWriter,
             rejected_out: JsonlWriter, on_kept: Callable[[int], None] | None) -> list[Task]:
        """Keep or reject each line of one submitted reply, in the order replies were submitted; the tasks kept.
        The filter gave its verdicts on the reply's lines in one call (in its own process, ForkedFilter), each
        passing line added before the next was checked, as Self-Instruct's online filter did."""
        self.answered += 1
        verdict_of = {id(t): v for t, v in zip(asked, self.filter.receive(), strict=True)}  # ids repeat: by object
        kept_here: list[Task] = []
        for task in tasks:
            verdict = verdict_of.get(id(task))
            if not task.instruction:
                self.reject(rejected_out, task, unread_reason(task.meta.get("bootstrap_reply", {}).get("reply", "")))
            elif task.id in self.kept_ids:
                self.reject(rejected_out, task, f"duplicate: the same instruction as {task.id}, already kept")
            elif task.id in self.over:
                self.reject(rejected_out, task, f"duplicate: the same instruction as {task.id}, over the target")
            elif isinstance(verdict, str):
                self.reject(rejected_out, task, verdict)
            elif self.full:  # passed (and added to the filter's pool: the lines past the target are checked
                self.novel += 1  # against each other too)
                fill(self.filter, task, verdict)
                self.over[task.id] = task.instruction
                self.reject(rejected_out, task, f"over_target: passed the filter, but the pool already held the "
                                                f"{self.target} instructions asked for (bootstrap.num_instructions)")
            else:
                self.novel += 1
                fill(self.filter, task, verdict)
                self.machine.append(task.instruction)
                self.kept_ids[task.id] = task.instruction
                kept_out.write(task)
                self.new += 1
                kept_here.append(task)
                if on_kept:
                    on_kept(1)
        return kept_here

    def unwritten(self, tasks: list[Task], request: int) -> list[Task]:
        """The lines of a replayed reply past those its request wrote before an interruption (by id, in order)."""
        seen: Counter[str] = Counter()
        out = []
        for task in tasks:
            seen[task.id] += 1
            if seen[task.id] > self.written[(task.id, request)]:
                out.append(task)
        return out

    def start(self) -> None:
        """The filter's process forked, where bootstrap.filter_process asks for it (Bootstrap.__enter__: its exit
        ends the child)."""
        if self.forks and not isinstance(self.filter, ForkedFilter):
            try:
                self.filter = ForkedFilter(self.filter, self.say)
            except OSError as e:  # no process to be had (EAGAIN, ENOMEM): slower, nothing else changes
                self.say(f"bootstrap: the filter's process could not start ({e}); it filters in this process")

    def close(self) -> None:
        if isinstance(self.filter, ForkedFilter):
            self.filter.close()


def forks(cfg: RunConfig, concurrency: int, flowing: bool = False) -> bool:
    """Whether bootstrap's filter runs in a forked process (bootstrap.filter_process). Auto: bootstrap streamed
    alone at 16 or more in flight (below, the replies come too slowly for the filter's CPU to hold the teacher
    back); not in a flow (`run`), which reads each reply whole before its next prompt, so the child's work is never
    overlapped: measured a little slower there, 0.51-0.54 of the ideal against 0.54-0.56 (stop 34)."""
    setting = cfg.bootstrap.filter_process
    if setting == "on" and not can_fork():
        raise Seed2LoraError(f"bootstrap.filter_process = 'on' needs Linux (fork); this is {sys.platform}. "
                             "Fix: --set bootstrap.filter_process=auto")
    return setting == "on" or (setting == "auto" and not flowing and concurrency >= 16 and can_fork())


class _YieldWatch:
    """The accept rate over the last `yield_window` prompts: a line per window, a warning below yield_warn, and
    a stop (exit 6) below yield_stop naming the main reject reasons."""

    def __init__(self, cfg: RunConfig, teacher: Teacher, run: RunDir, say: Callable[[str], None]):
        self.b, self.teacher, self.run, self.say = cfg.bootstrap, teacher, run, say
        self.recent: deque[int] = deque(maxlen=max(1, self.b.yield_window))
        self.warned = False

    def after(self, kept_here: int, done: int, pool: _Pool) -> None:
        b, recent = self.b, self.recent
        recent.append(kept_here)
        if len(recent) < recent.maxlen or pool.full:
            return
        rate = sum(recent) / len(recent)
        line_due, stop, warn = done % recent.maxlen == 0, rate < b.yield_stop, rate < b.yield_warn and not self.warned
        if not (line_due or stop or warn):  # most replies: no line to say, so no reasons to sum up (issue 20)
            return
        top = ", ".join(f"{k} {n}" for k, n in pool.reasons.most_common(3)) or "none"
        if line_due:  # the accept rate as the run goes, one line a window
            u = self.teacher.usage.by_kind.get("bootstrap", {})
            tokens = u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
            per_1k = f", {1000 * pool.new / tokens:.2f} per 1K tokens" if tokens else ""
            self.say(f"bootstrap: {len(pool.machine)} of {b.num_instructions} kept; {rate:.2f} kept per prompt over "
                     f"the last {len(recent)} prompts{per_1k}; main reject reasons: {top}")
        if stop:
            raise LowYield(f"bootstrap kept {rate:.2f} instructions per prompt over the last {len(recent)} "
                           f"prompts (bootstrap.yield_stop is {b.yield_stop}); main reject reasons: {top}. "
                           f"{len(pool.machine)} kept so far are saved. Fix: a stronger teacher, "
                           "teacher.api = completions (--api completions) for a small local model, or looser "
                           "[filter] settings; see "
                           f"{self.run.rejected_file}")
        if warn:
            self.warned = True
            self.say(f"bootstrap: warning: only {rate:.2f} instructions kept per prompt over the last "
                     f"{len(recent)} prompts; main reject reasons: {top}")


class Bootstrap:
    """Bootstrap as pieces a stream can drive: `requests()` (each prompt built when the teacher has room for it,
    or WAIT), `read(req, reply)` (the tasks it kept) and `result()`. run_bootstrap streams it alone;
    stages/flow.py streams it with classify and instances, each kept task going on at once.

    Each prompt is built from the pool as it is then, and logged (`log`) before it is sent. A resumed
    run first re-sends the logged prompts that never finished, word for word, so their replies come
    from the cache, then goes on with new request numbers; either way no prompt is sent once the pool
    is full. Every parsed instruction ends kept or in rejected.jsonl (duplicates and replies that parse
    to nothing included); a resumed run recognises what it wrote by (id, request). The accept rate
    over the last `yield_window` prompts is watched: below yield_warn a warning, below yield_stop the
    run stops (exit 6) naming the main reject reasons. Requests carry their params and kind, so a
    stream shared with other stages caches and counts them as bootstrap alone would.
    """

    def __init__(self, teacher: Teacher, seeds: list[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
                 log: ResponseCache, *, on_kept: Callable[[int], None] | None = None,
                 on_progress: Callable[[int], None] | None = None, say: Callable[[str], None] | None = None,
                 flowing: bool = False):
        b = self.b = cfg.bootstrap
        if b.mode not in ("self-instruct", "alpaca"):
            raise Seed2LoraError(f"bootstrap.mode must be 'self-instruct' or 'alpaca', not {b.mode!r}")
        self.pool_seeds = [s for s in seeds if s.is_classification] if b.use_clf_seed_tasks_only else seeds
        if not self.pool_seeds:
            raise Seed2LoraError("no seed tasks to sample from (use_clf_seed_tasks_only needs seeds with "
                                 "is_classification true)")
        self.teacher, self.cfg, self.run, self.prompts, self.log = teacher, cfg, run, prompts, log
        self.on_kept, self.on_progress = on_kept, on_progress
        self.seed_texts = [s.instruction for s in self.pool_seeds]
        self.pool = _Pool(run, cfg, seeds, concurrency=getattr(teacher, "concurrency", 1) or 1, flowing=flowing,
                          say=say or (lambda message: print(message, file=sys.stderr)))
        self.watch = _YieldWatch(cfg, teacher, run, say or (lambda message: None))
        self.sent, self.unfinished = log.requests("bootstrap")
        self.max_requests = self.sent + (b.max_requests or 20 * b.num_instructions)
        self.continues = getattr(teacher, "api", "chat") == "completions"
        self.params = gen_params(cfg, self.continues, getattr(teacher, "structured", False))
        self.plans: dict[int, dict] = {}  # the prompts in flight, by request number
        self.next, self.done = self.sent, 0
        self.resent = 0  # the failed calls sent again of the replies read (Completion.resent)
        self.failed, self.last_error = 0, ""  # prompts that got no reply, after their retries, and the last why
        # Requests read and recorded, whose done marks go into the commit that logs the next prompt: a mark only
        # spares a resume re-reading that reply from the cache, where its records are found as written. Without a
        # prompt to log (WAIT, the prompts over) they are marked at once, so a resume re-reads a reply or two at
        # most, as before, and its yield watch never sees a run of them.
        self.marks: deque[int] = deque()
        self.ended = False  # requests() has logged its last prompt
        self.pending: deque[tuple[Request, Completion, list[Task], list[Task]]] = deque()  # submitted, not written
        # A reply's records go to each file in one write, before its request is marked done (read).
        self.kept_out = JsonlWriter(run.stage_file("bootstrap"), hold_s=math.inf)
        self.rejected_out = JsonlWriter(run.rejected_file, hold_s=math.inf)

    def __enter__(self) -> Bootstrap:
        self.pool.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.finish()  # a reply still with the filter is written (after an error it is read again on resume)
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.kept_out.close()
            self.rejected_out.close()
        finally:
            try:
                self.mark_taken()
            finally:
                self.pool.close()

    def taken_marks(self) -> list[int]:
        """The done marks waiting, taken (the reader of a flow adds them on a thread of its own)."""
        marks = self.marks
        return [marks.popleft() for _ in range(len(marks))]

    def mark_taken(self) -> None:
        """The done marks waiting, written now, in one commit."""
        if marks := self.taken_marks():
            self.log.mark_done("bootstrap", *marks)

    def gap_covered(self) -> bool:
        """The prompts in flight should fill the pool at the yield seen so far: wait for them, not send more
        (16 prompts in flight for the last 2 places were money for nothing). Before the first reply, each
        prompt is counted as filling its list: a strong teacher does, and one round trip more costs less than
        paying for lines past the target."""
        pool = self.pool
        if not self.plans:
            return False
        per_prompt = pool.novel / pool.answered if pool.answered else free_places(self.cfg)
        return len(pool.machine) + len(self.plans) * per_prompt >= self.b.num_instructions

    def request(self, n: int, fresh: bool = False) -> Request:
        """Prompt n as a request; `fresh`: logged just now, never sent before (a resumed run's logged prompts are
        not: their replies may be in the cache)."""
        body = self.plans[n]
        return Request(n, body["prompt"], salt=body["salt"], params=self.params, kind="bootstrap", fresh=fresh)

    def requests(self) -> Iterator[Request | None]:
        """The prompts to send, or WAIT while those in flight should fill the pool; ends when it is full."""
        pool = self.pool
        for n, body in self.unfinished:
            self.plans[n] = body
            if pool.full and not self.teacher.cached(self.request(n), self.params):  # full: an unpaid prompt waits
                self.plans.pop(n)
                continue
            yield self.request(n)  # a paid reply is read from the cache, its lines recorded
        while not pool.full and self.next < self.max_requests:
            if self.gap_covered():
                if self.pending:  # the replies read so far, written first: they may fill the gap
                    self.finish()
                    continue
                self.mark_taken()  # no prompt to log them with: the replies read so far are marked now
                yield WAIT
                continue
            n, self.next = self.next, self.next + 1
            salt = f"{self.cfg.seed}:bootstrap:{n}"
            template, text, nxt = build_prompt(self.prompts, self.cfg, random.Random(salt), self.pool_seeds,
                                               pool.machine, self.seed_texts)
            self.plans[n] = {"prompt": text, "template": template, "next_number": nxt, "salt": salt}
            self.log.log_request("bootstrap", n, self.plans[n], done=self.taken_marks())
            yield self.request(n, fresh=True)
        self.ended = True  # no prompt is logged from here on: a reply read is marked at once
        self.finish()
        self.mark_taken()

    def read(self, req: Request, reply: Completion, *, overlap: int = 0) -> list[Task]:
        """One reply: its lines kept or rejected and written, the request to be marked done (with the next
        prompt's log, at the next WAIT, or now once the prompts are over); the tasks kept. A failed call stays open
        in the log and is re-sent on resume. `overlap`: the replies, newest first, whose lines go to the filter
        now but are written at a later read (`finish`), so a forked filter works on them meanwhile."""
        self.submit(req, reply)
        return self.finish(overlap)

    def submit(self, req: Request, reply: Completion) -> None:
        """A reply's lines parsed and sent to the filter, in the order the replies are read."""
        plan = self.plans[req.key]
        tasks: list[Task] = []
        asked: list[Task] = []
        if reply.ok:
            tasks = _tasks_from_reply(reply.text, plan["template"], plan["next_number"],
                                      reply.finish_reason == "length", self.continues, req.key, self.teacher.name)
            if not tasks:
                tasks = [Task(id=task_id("reply", plan["salt"]), instruction="", origin="machine", round=req.key,
                              stage="bootstrap", teacher=self.teacher.name, prompt=plan["template"],
                              meta={"bootstrap_reply": reply_meta(reply)})]
            elif reply.batch:  # each task says which batch paid its reply; a direct reply's carry nothing more
                for t in tasks:
                    t.meta = {**t.meta, "bootstrap_reply": batch_meta(reply)}
            tasks, asked = self.pool.submit(tasks, req.key)
        self.pending.append((req, reply, tasks, asked))

    def finish(self, leave: int = 0) -> list[Task]:
        """The replies submitted, all but the `leave` newest, written in order; the tasks they kept."""
        kept: list[Task] = []
        while len(self.pending) > leave:
            req, reply, tasks, asked = self.pending.popleft()
            self.plans.pop(req.key)
            self.done += 1
            self.resent += reply.resent
            if not reply.ok:
                self.failed += 1
                self.last_error = reply.error or self.last_error
                if self.on_progress:
                    self.on_progress(self.done)
                continue
            here = self.pool.take(tasks, asked, req.key, self.kept_out, self.rejected_out, self.on_kept)
            self.kept_out.flush()  # on disk before the mark: a resume skips exactly the records written
            self.rejected_out.flush()
            self.marks.append(req.key)
            if self.ended:
                self.mark_taken()
            if self.on_progress:
                self.on_progress(self.done)
            self.watch.after(len(here), self.done, self.pool)
            kept += here
        return kept

    def result(self) -> BootstrapResult:
        pool = self.pool
        requests_sent = self.log.requests("bootstrap")[0]
        if not pool.machine:
            # Every prompt refused (a prompt over a small server's context: a 400 each) read as the filter's doing
            if self.failed and not pool.rejected:
                longer = (" (a server with a longer context, e.g. llama.cpp's -c, or fewer tasks a prompt: "
                          "bootstrap.num_prompt_instructions)"
                          if "context" in self.last_error else "")
                raise Seed2LoraError(f"the teacher gave no usable instruction in {requests_sent} prompts: {self.failed} "
                                     f"got no reply (the last: {self.last_error}). Fix: what that error says{longer}")
            failed = f"; {self.failed} got no reply, the last: {self.last_error}" if self.failed else ""
            raise Seed2LoraError(f"the teacher gave no usable instruction in {requests_sent} prompts "
                                 f"({pool.rejected} rejected; see {self.run.rejected_file}{failed}). Try another "
                                 "teacher, or loosen [filter] settings")
        return BootstrapResult(kept=len(pool.machine), new=pool.new, rejected=pool.rejected, requests=requests_sent,
                               pending=max(0, self.b.num_instructions - len(pool.machine)), replies=self.done,
                               resent=self.resent, batch=self.cfg.teacher.batch)


def run_bootstrap(teacher: Teacher, seeds: list[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
                  log: ResponseCache, *, on_kept: Callable[[int], None] | None = None,
                  on_progress: Callable[[int], None] | None = None,
                  say: Callable[[str], None] | None = None) -> BootstrapResult:
    """Grow the machine pool to `num_instructions`, streaming prompts through the teacher (Bootstrap, alone)."""
    with Bootstrap(teacher, seeds, cfg, run, prompts, log, on_kept=on_kept, on_progress=on_progress, say=say) as b:
        # With the filter in its own process, a reply is written at the next one's read: the filter works on its
        # lines while this thread writes the one before and builds the next prompts (issue 20)
        overlap = int(isinstance(b.pool.filter, ForkedFilter))
        for req, reply in teacher.stream(b.requests(), b.params, kind="bootstrap"):
            b.read(req, reply, overlap=overlap)
    return b.result()


def unread_reason(text: str) -> str:
    """Why a reply gave no task, as it is: a structured reply's empty list ({"tasks": []}, which a small model
    bound to the schema sends often) is not a reply with "no numbered task", and an empty reply is neither."""
    if not text.strip():
        return "unparseable_reply: the reply is empty"
    if parse_structured_tasks(text) is not None:
        return "unparseable_reply: the reply's JSON list of tasks holds no task"
    return "unparseable_reply: no numbered task in the reply"


def _tasks_from_reply(text: str, template: str, nxt: int, truncated: bool, prefix_continues: bool,
                      request: int, teacher_name: str) -> list[Task]:
    common = dict(origin="machine", round=request, stage="bootstrap", teacher=teacher_name, prompt=template)
    if template == "alpaca.txt":
        prefix = f"{nxt}. Instruction:" if prefix_continues else ""
        return [Task(id=task_id("machine", instr), instruction=instr, instances=[inst], **common)
                for instr, inst in parse_alpaca(text, prefix, truncated) if instr]
    structured = parse_structured_tasks(text)  # a JSON reply (teacher.structured); a cut one keeps its whole items
    prefix = f"{nxt}." if prefix_continues else ""
    instructions = structured if structured is not None else parse_numbered_list(text, prefix, truncated)
    return [Task(id=task_id("machine", instr), instruction=instr, **common) for instr in instructions]


def progress(ctx: RunContext, records: Records | None) -> tuple[str, int, int]:
    """The bar counts instructions kept, toward the target; a resumed run starts at those it has."""
    return "bootstrap: instructions kept", ctx.cfg.bootstrap.num_instructions, len(ctx.run.read_stage("bootstrap"))


def check(ctx: RunContext) -> None:
    """The template bootstrap renders is there before the run folder is made."""
    ctx.prompts.path(template_name(ctx.cfg))


def step(ctx: RunContext, records: Records | None) -> StepResult:
    """Grow the run's machine pool from its seeds to bootstrap.num_instructions; write bootstrap.jsonl."""
    r = run_bootstrap(ctx.teacher, ctx.seeds, ctx.cfg, ctx.run, ctx.prompts, ctx.cache,
                      on_kept=ctx.advance, on_progress=ctx.every(), say=ctx.log)
    return step_result(r)


def step_result(r: BootstrapResult) -> StepResult:
    """Bootstrap's line and counts, for the runner."""
    message = (f"bootstrap: {r.new} new instruction{'s' * (r.new != 1)} kept ({r.kept} in the pool), {r.rejected} "
               f"rejected, {r.requests} prompt{'s' * (r.requests != 1)} sent so far{resent_note(r.resent, r.batch)}")
    if r.pending:
        message += "; stopped at bootstrap.max_requests short of the target"  # by how much: the pending line
    # generated: the instructions this session's replies gave; each ended kept or rejected (InstructionPool)
    return StepResult(message, r.pending, {"replies": r.replies, "generated": r.new + r.rejected, "kept": r.new,
                                           "rejected": r.rejected})
