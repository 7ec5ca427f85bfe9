"""The Teacher protocol: prompts in, one Completion per prompt out.

Stages never know which teacher they talk to. Each prompt is plain text; the teacher's
`api` setting decides whether it is sent as a raw completion prompt or as the user turn
of a chat. Stop sequences are applied here on the client side too, because servers cap
their number (OpenAI takes 4) and in-process generation stops a little late.

Two ways to call a teacher:
- `generate(prompts)`: a list in, a list out, in order.
- `stream(requests)`: an iterator in, (request, completion) pairs out as they finish. The
  teacher pulls the next request only when it has room, so a caller can build each prompt
  from the latest state (bootstrap samples its in-context tasks from the current pool).

Both check the response cache first (when one is attached), wait for the requests in flight while
the budget would be spent with them counted, and stop pulling new requests once it is spent
(Budget.exhausted); those in flight still finish and are kept.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..errors import raise_dropped_stop
from .origin import RUN_TEACHER


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_mode: bool = False  # ask a chat server for a JSON object (OpenAI response_format); others ignore it
    logprobs: int = 0  # > 0: the reply's text is a JSON object of the first token's top log-probabilities (logprob_reply)
    # A JSON schema the reply must follow, where the teacher sends one (teacher.structured); JSON text, so that
    # the params stay hashable and go into the cache key as they are. Else "".
    schema_name: str = ""
    schema: str = ""


# Fields added after runs were cached: left out of the cache key while at their default, so old replies still match.
_NEW_PARAMS = {"json_mode": False, "logprobs": 0, "schema_name": "", "schema": ""}


def params_key(params: GenParams) -> dict[str, Any]:
    """The sampling parameters as the cache key sees them."""
    return {k: v for k, v in asdict(params).items() if _NEW_PARAMS.get(k, object()) != v}


@functools.lru_cache(maxsize=256)
def params_json(params: GenParams) -> str:
    """params_key as JSON, once per GenParams (a stream has a few): dataclasses.asdict per request was most of the
    cache key's cost, a tenth of the client's CPU per request (benchmarks/client_cpu.py)."""
    return json.dumps(params_key(params), sort_keys=True, ensure_ascii=False)


LOGPROB_REPLY_START = '{"top_logprobs"'  # how logprob_reply's text begins: JSON, not a reply's words (cost.py)


def logprob_reply(top: dict[str, float], greedy: str | None = None) -> str:
    """The text of a logprobs reply: {"top_logprobs": {token: logprob}} (and, in-process, the token greedy
    decoding would pick first); read back with read_logprobs."""
    return json.dumps({"top_logprobs": top, **({"greedy": greedy} if greedy is not None else {})}, ensure_ascii=False)


def read_logprobs(text: str) -> dict[str, float] | None:
    """The first token's top log-probabilities from a logprobs reply; None for plain text (no logprobs served)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    top = obj.get("top_logprobs") if isinstance(obj, dict) else None
    return {str(k): float(v) for k, v in top.items()} if isinstance(top, dict) else None


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # why a prompt got no usable reply (after retries)
    cached: bool = False  # served from the response cache: no call was made, nothing was spent
    retries: int = 0  # transient failures retried before this reply (429, 5xx, timeouts, refused connections)
    timeouts: int = 0  # of those, timeouts
    cacheable: bool = True  # False: paid and counted, but not kept in the response cache
    # Of prompt_tokens, those the server's prefix cache served (usage.prompt_tokens_details.cached_tokens), billed
    # at the model's cached-input price; 0 where the server reports none
    cached_tokens: int = 0
    # The Batch API batch whose line this reply answered (its wave: retries + 1, the failed waves before it), from
    # the wave or read back from the cache; None: a direct call
    batch: str | None = None

    @property
    def resent(self) -> int:
        """The failed calls sent again for this reply that this session paid: its retries, none for a reply from
        the cache (they were paid before). The one count of retries: the usage log's "retries" (`show`'s column)
        and each stage's line ("N retries of failed calls") both read it."""
        return 0 if self.cached else self.retries

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error"


@dataclass(frozen=True)
class Request:
    key: Any  # the caller's handle: a task id, a request number
    prompt: str
    salt: str = ""  # tells apart two samples of the same prompt in the cache (the caller's RNG state)
    params: GenParams | None = None  # this request's sampling, when one stream mixes kinds (evolve); else the stream's
    kind: str | None = None  # this request's call kind for usage counts; else the stream's
    # Sent for the first time, its prompt and salt new to the run (bootstrap's next request number), so no reply of
    # it can be in the run's cache: the stream asks the cache nothing (a query each request on the event loop's
    # thread, about 0.03 ms of its CPU, measured)
    fresh: bool = False


# A request source may yield WAIT instead of a Request: "nothing to send until a reply
# arrives" (its next prompts depend on replies still in flight). The teacher then stops
# pulling until it has handed back a reply; with nothing in flight, WAIT ends the stream.
WAIT = None


@dataclass
class Usage:
    """Calls and tokens per call kind (bootstrap, classify, instances, ...). Cache hits cost nothing. Counted on
    the teacher's request threads (OpenAITeacher.stream), hence the lock."""

    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # Replies counted so far, calls and cache hits alike: a stream's requests sent less those counted are the ones
    # the budget has still to see (Budget.exhausted)
    replies: int = field(default=0, compare=False)

    def add(self, kind: str, c: Completion) -> dict[str, int]:
        """Count one reply; returns its own counts (what the usage log stores for it)."""
        one = usage_of(c)
        with self.lock:
            self.replies += 1
            u = self.by_kind.setdefault(kind, dict.fromkeys(one, 0))
            for key, value in one.items():
                u[key] = u.get(key, 0) + value
        return one

    def to_dict(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {k: dict(v) for k, v in self.by_kind.items()}


def usage_of(c: Completion) -> dict[str, int]:
    if c.cached:
        return {"calls": 0, "errors": 0, "cached": 1, "prompt_tokens": 0, "completion_tokens": 0, "retries": 0,
                "timeouts": 0, "cached_tokens": 0}
    return {"calls": 1, "errors": 0 if c.ok else 1, "cached": 0, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "retries": c.resent, "timeouts": c.timeouts,
            "cached_tokens": min(c.cached_tokens, c.prompt_tokens)}


ProgressFn = Callable[[int], None]


class Teacher(Protocol):
    name: str  # spec as the user wrote it, e.g. "openai:gpt-4o-mini"; recorded in every record
    api: str  # "chat" or "completions": whether replies continue the prompt text
    structured: bool  # replies follow the JSON schema a request carries (GenParams.schema)
    usage: Usage

    def generate(self, prompts: Sequence[str], params: GenParams, *, kind: str,
                 progress: ProgressFn | None = None, salts: Sequence[str] | None = None) -> list[Completion]: ...

    def stream(self, requests: Iterable[Request], params: GenParams, *,
               kind: str) -> Iterator[tuple[Request, Completion]]: ...

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this teacher. Never a secret."""
        ...

    def cached(self, req: Request, params: GenParams) -> bool:
        """Whether the reply to this request is already paid for (in the run's cache)."""
        ...


class BaseTeacher:
    """Shared machinery: cache, budget, usage per kind, client-side stop sequences."""

    name = "teacher"
    api = "chat"
    structured = False  # replies follow the JSON schema a request carries (GenParams.schema); servers only
    sort_by_length = False  # in-process batching wastes less on padding when lengths are close
    origin = RUN_TEACHER  # its config table and the command's flags for it: what its messages name (origin.py)
    system_prompt = ""  # sent before each prompt by the teachers that have one: a part of what a request costs

    def __init__(self) -> None:
        self.usage = Usage()
        self.cache: Any = None  # a pipeline.cache.ResponseCache, attached by the run
        self.session = ""  # this process's id in the run's usage log, set with the cache
        self.usage_model = ""  # the model its usage-log rows name, each call priced at it; set with the cache
        self.budget: Any = None  # a pipeline.budget.Budget, attached by the run

    # -- subclasses implement one of these ---------------------------------------------
    def _stream(self, requests: Iterator[Request], params: GenParams) -> Iterator[tuple[Request, Completion]]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def cache_identity(self) -> dict[str, Any]:
        """What, besides prompt and sampling, decides a reply (model, endpoint style...)."""
        return {k: v for k, v in self.describe().items() if k not in ("concurrency", "batch_size", "base_url")}

    # -- the public calls --------------------------------------------------------------
    def stream(self, requests: Iterable[Request | None], params: GenParams, *,
               kind: str) -> Iterator[tuple[Request, Completion]]:
        for req, c in self._stream(iter(requests), params):
            yield req, self._finish(req, c, req.params or params, req.kind or kind)
            raise_dropped_stop()  # a Ctrl-C Python dropped in a finalizer (errors.STOP_SIGNALS), once this reply is in

    def generate(self, prompts: Sequence[str], params: GenParams, *, kind: str,
                 progress: ProgressFn | None = None, salts: Sequence[str] | None = None) -> list[Completion]:
        if not prompts:
            return []
        salts = list(salts) if salts is not None else [""] * len(prompts)
        requests = [Request(i, p, s) for i, (p, s) in enumerate(zip(prompts, salts, strict=True))]
        if self.sort_by_length:
            requests.sort(key=lambda r: len(r.prompt))
        out: list[Completion | None] = [None] * len(prompts)
        for req, c in self.stream(requests, params, kind=kind):
            out[req.key] = c
            if progress:
                progress(1)
        # Prompts never sent (budget spent) come back as errors, so callers skip them.
        return [c or Completion("", "error", error="not sent: budget reached") for c in out]

    # -- for subclasses and their streams (fastpath.LoopStream) -------------------------
    def pull(self, requests: Iterator[Request | None], in_flight: int = 0,
             params: GenParams | None = None) -> Request | None | bool:
        """The next request to send; WAIT (None) when the source has nothing until a reply
        arrives, or when the budget would be spent with the requests in flight (`in_flight`: sent,
        their replies not yet counted; Budget.exhausted); False when there is none left or the
        budget is spent. `params`: the stream's, whose max_tokens bounds a request's reply until
        the model's first reply is counted."""
        budget = self.budget
        if budget is None:
            return next(requests, False)
        model = self.usage_model or None
        if budget.exhausted(in_flight, model):  # with requests in flight, a projection: their replies may say less
            return WAIT if in_flight else False
        req = next(requests, False)
        if req and model is not None and (p := req.params or params) is not None:
            budget.note_sent(model, self.system_prompt + req.prompt, p.max_tokens)
        return req

    def cached(self, req: Request, params: GenParams) -> bool:
        """Whether this request's reply is in the run's cache: paid for already, free to read again."""
        return self.lookup(req, params) is not None

    def lookup(self, req: Request, params: GenParams, key: str | None = None, alone: bool = False) -> Completion | None:
        """`alone`: the caller is the one thread that asks (the event loop, fastpath.py): no hand-off to share a
        query with other threads' lookups (ResponseCache.get_alone)."""
        if self.cache is None:
            return None
        key = key or self.cache_key(req, params)
        return self.cache.get_alone(key) if alone else self.cache.get(key)

    def cache_key(self, req: Request, params: GenParams) -> str:
        """sha256 of json.dumps({"teacher", "prompt", "params", "salt"}, sort_keys=True, ensure_ascii=False), the
        key every cached reply was stored under; spelled out in key order so that the params' part is made once."""
        identity, memo = self.cache_identity(), getattr(self, "_identity_json", None)
        if memo is None or memo[0] != identity:  # its JSON made once while it stays the same (api may change)
            memo = self._identity_json = (identity, json.dumps(identity, sort_keys=True, ensure_ascii=False))
        blob = (f'{{"params": {params_json(params)}, "prompt": {json.dumps(req.prompt, ensure_ascii=False)}, '
                f'"salt": {json.dumps(req.salt, ensure_ascii=False)}, "teacher": {memo[1]}}}')
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _finish(self, req: Request, c: Completion, params: GenParams, kind: str, key: str | None = None) -> Completion:
        """Stop sequences, usage, and the reply and its usage row committed to the run's cache. `key`: the
        request's cache key when the caller has it already (it is the same for the lookup and the reply)."""
        row = self.settle(req, c, params, kind, key)
        if row is not None:  # reply and usage durable in one commit, before any record is built from them
            self.cache.record(*row)
        return c

    def settle(self, req: Request, c: Completion, params: GenParams, kind: str,
               key: str | None = None) -> tuple | None:
        """_finish but the commit: stop sequences and usage, and the reply's row for the run's cache (the arguments
        of ResponseCache.record), for a caller that commits several replies at once; None without a cache."""
        if not c.cached:
            c.text, hit = apply_stop(c.text, params.stop)
            if hit and c.finish_reason == "length":
                c.finish_reason = "stop"
        counts = self.usage.add(kind, c)
        if self.cache is None:
            return None
        key = (key or self.cache_key(req, params)) if c.ok and not c.cached and c.cacheable else None
        return key, c, self.session, kind, counts, self.usage_model or None


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut text at the earliest stop sequence; return (text, whether one was found)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
