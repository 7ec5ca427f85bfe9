"""Teacher over the Batch API: OpenAITeacher's requests, sent in waves through the files and batches endpoints
of any OpenAI-compatible server that has them, at the batch price (budget.batch_price_factor).

A wave is what the request source yields before it says WAIT or runs out, at most teacher.batch_wave_max
requests: bootstrap and evolve size theirs to the remaining gap at the observed yield, the per-task stages
send all their tasks at once. The wave is written as JSONL (one line per request: custom_id = the request's
cache key, body = what the direct call would send), uploaded and submitted as one batch. Every open batch is
polled each teacher.batch_poll_s, with a progress line from its request_counts and an ETA.

Nothing is sent twice. The wave's file id and lines go into cache.sqlite right after the upload, its batch id
right after the create, before anything else happens. A re-run (after kill -9 or Ctrl-C) awaits every request
whose line is still open, polling that same batch; a wave uploaded but never created (killed between the two
calls) is found among the server's batches by its input file, else created from that same file.

Replies go through the direct teacher's own parsing (wire.read_reply, over the line's body) into the response cache
and the usage log, the wave line marked done in the same commit, whoever asked for them: a line of another
stage's wave is kept for that stage. A failed or expired line goes into the next wave, up to
teacher.max_retries times; a line refused with a 4xx is an error at once, as a direct 400 is.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai

from ..config import TeacherConfig
from ..errors import TeacherError
from .base import Completion, GenParams, Request
from .batch_api import (
    ENDED,
    Calls,
    FolderClient,
    check_batch_api,
    ended_line,
    progress_line,
    read_line,
    read_results,
    resumed_line,
    stop_if_refused,
    submitted_line,
)
from .openai_compat import OpenAITeacher
from .origin import RUN_TEACHER, Origin

ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class BatchTeacher(OpenAITeacher):
    batch = True  # budget.attach_run prices its calls at the batch price

    def __init__(self, model: str, cfg: TeacherConfig | None = None, *, spec: str | None = None,
                 seed: int | None = None, origin: Origin = RUN_TEACHER, **settings: Any):
        """The batch settings come from `cfg` (teacher.batch_wave_max, batch_poll_s, batch_window, batch_dir),
        with any field given as a keyword over it, as for OpenAITeacher; `origin` too."""
        cfg = dataclasses.replace(cfg or TeacherConfig(), **settings)
        folder = str(Path(cfg.batch_dir).expanduser().absolute()) if cfg.batch_dir else ""  # as load_config records it
        if folder:  # no server is asked anything: no key is needed, nothing to probe
            cfg = dataclasses.replace(cfg, api_key=cfg.api_key or "not-needed",
                                      api="chat" if cfg.api == "auto" else cfg.api,
                                      structured="off" if cfg.structured == "auto" else cfg.structured)
        super().__init__(model, cfg, spec=spec, seed=seed, origin=origin)
        self.wave_max, self.poll_s, self.window = max(1, cfg.batch_wave_max), cfg.batch_poll_s, cfg.batch_window
        self.folder = folder
        if folder:
            self.structured = cfg.structured == "on"  # vLLM binds OpenAI's json_schema form
            self.sending.schema_form = "json_schema" if self.structured else ""
            self.api_choice = f"{self.api} ({origin.key('batch_dir')}: no server to probe)"
            self.structured_choice = f"{cfg.structured} ({origin.key('batch_dir')})"
        self._kind = "teacher"
        self._recorded: set[int] = set()  # ids of replies already in the cache and usage log (recorded on import)
        self._waves: dict[str, dict[str, Any]] = {}  # file_id -> open wave (cache.open_waves)
        self._open: dict[str, str] = {}  # custom_id -> file_id of every line sent and not answered
        self._seen: dict[str, tuple[float, int]] = {}  # file_id -> (when, completed) first seen running: the ETA
        self._call = Calls(self.base_urls[0], self.outage_wait_s, self._event, self.failover, self._secret)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "batch": True, "batch_wave_max": self.wave_max, "batch_poll_s": self.poll_s,
                **({"batch_dir": self.folder} if self.folder else {})}

    def preflight(self) -> None:
        if self.folder:
            return  # waves go to a folder: there is no server to reach
        super().preflight()
        check_batch_api(self._clients[0].with_options(timeout=min(self.timeout_s, 30.0)), self.base_urls[0],
                        self._secret, self.origin)

    def cached(self, req: Request, params: GenParams) -> bool:
        """Paid for: in the cache, or sent in a wave whose reply is still to come."""
        return super().cached(req, params) or (
            self.cache is not None and self.cache_key(req, params) in self.cache.open_lines())

    def stream(self, requests: Any, params: GenParams, *, kind: str) -> Iterator[tuple[Request, Completion]]:
        self._kind = kind
        for req, c in self._stream(iter(requests), params):
            if id(c) in self._recorded:  # in the cache and the usage log already, with its wave line
                self._recorded.discard(id(c))
                yield req, c
            else:
                yield req, self._finish(req, c, req.params or params, req.kind or kind)

    # -- the stream ------------------------------------------------------------------------
    def _stream(self, requests: Iterator[Request | None], params: GenParams) -> Iterator[tuple[Request, Completion]]:
        if self.cache is None:
            raise TeacherError("batch mode records its batches in the run's cache.sqlite, and none is attached. "
                               "Fix: run it through seed2lora run or a stage command")
        client: Any = FolderClient(self.folder, self.model, self.origin) if self.folder else self._clients[0]
        self.failover.stop = threading.Event()  # this stream's: set, it wakes the poll's sleep
        self._waves = {w["file_id"]: w for w in self.cache.open_waves()}
        self._open = self.cache.open_lines()
        for wave in self._waves.values():
            if wave["batch_id"] is None:  # uploaded, and killed before or during the create
                self._create(client, wave, resumed=True)
            elif wave["file_id"] not in self._seen:  # an earlier session's batch, not polled here yet
                self._event(resumed_line(self.cache, wave, self.folder, self.poll_s, self.origin))
        waiting: dict[str, list[tuple[Request, GenParams]]] = {}  # custom_id -> the requests awaiting its reply
        ready: deque[tuple[Request, Completion]] = deque()
        retry: dict[str, tuple[Request, GenParams]] = {}  # failed lines for the next wave
        exhausted = False
        while True:
            wave: dict[str, tuple[Request, GenParams]] = dict(list(retry.items())[:self.wave_max])
            for key in wave:
                del retry[key]
            full = False
            while not exhausted:
                if len(wave) >= self.wave_max:
                    full = True
                    break
                req = self.pull(requests)
                if req is False or (req is None and not (waiting or wave or ready or retry)):
                    exhausted = True  # the end, or WAIT with nothing to wait for
                    break
                if req is None:  # WAIT: the source needs replies first; this wave is complete
                    break
                p = req.params or params
                hit = self.lookup(req, p)
                if hit is not None:
                    ready.append((req, hit))
                    continue
                key = self.cache_key(req, p)
                waiting.setdefault(key, []).append((req, p))
                if len(waiting[key]) == 1 and key not in self._open:  # else already sent: awaited, never resent
                    wave[key] = (req, p)
            if wave:
                sent = self._submit(client, wave)
                for key in [k for k in wave if k not in sent]:  # over the budget: never sent
                    del waiting[key]
                if len(sent) < len(wave):
                    exhausted = True
                    if self.budget is not None:
                        self.budget.reached = True
                if full and not exhausted:
                    continue  # the source has more: the next wave now
            if ready:
                while ready:
                    yield ready.popleft()
                continue  # the source may have more now
            if not waiting:
                break
            self._await(client, waiting, ready, retry)

    def _body(self, req: Request, params: GenParams) -> dict[str, Any]:
        """The body the direct call would send for this request."""
        return self.body_of(self.api, req.prompt, params, req.salt)

    def _submit(self, client: openai.OpenAI, wave: dict[str, tuple[Request, GenParams]]) -> set[str]:
        """Upload the wave and create its batch; returns the custom_ids sent: all, or those the budget still
        covers (a wave is paid whatever happens next, so it is counted at its most: max_tokens per reply)."""
        endpoint = ENDPOINTS[self.api]
        usd_room, token_room = self.budget.room() if self.budget is not None else (None, None)
        if usd_room is not None:
            usd_room -= sum(w["est_usd"] for w in self._waves.values())
        if token_room is not None:
            token_room -= sum(w["est_tokens"] for w in self._waves.values())
        text, lines, usd, tokens = [], [], 0.0, 0
        for key, (req, p) in wave.items():
            body = self._body(req, p)
            one_usd, one_tokens = (self.budget.estimate(self.usage_model, self.system_prompt + req.prompt,
                                                        p.max_tokens) if self.budget is not None else (0.0, 0))
            if (usd_room is not None and usd + one_usd > usd_room) or \
                    (token_room is not None and tokens + one_tokens > token_room):
                self._event(f"batch budget: {len(lines)} of a wave's {len(wave)} requests fit the budget at their "
                            "most (max_tokens each); the rest are not sent")
                break
            usd, tokens = usd + one_usd, tokens + one_tokens
            text.append(json.dumps({"custom_id": key, "method": "POST", "url": endpoint, "body": body},
                                   ensure_ascii=False))
            reading = {"stop": list(p.stop), "logprobs": p.logprobs if "logprobs" in body else 0}
            lines.append((key, req.kind or self._kind, json.dumps(reading)))
        if not lines:
            return set()
        data = ("\n".join(text) + "\n").encode("utf-8")
        f = self._call(lambda: client.files.create(file=(f"seed2lora-{self._kind}.jsonl", data), purpose="batch"),
                       "upload a wave")
        self.cache.log_wave(f.id, endpoint, lines, usd, tokens)  # durable first: the file and every line
        wave_row = {"file_id": f.id, "batch_id": None, "endpoint": endpoint, "est_usd": usd, "est_tokens": tokens,
                    "status": "uploaded"}
        self._waves[f.id] = wave_row
        self._open.update({key: f.id for key, _, _ in lines})
        self._create(client, wave_row)
        self._event(submitted_line(self._kind, len(lines), wave_row["batch_id"], f.id, self.folder, self.poll_s,
                                   self.origin))
        return {key for key, _, _ in lines}

    def _create(self, client: openai.OpenAI, wave: dict[str, Any], resumed: bool = False) -> None:
        """Create the batch of an uploaded wave, and record its id at once. Resumed, one already created from the
        same file (a kill between the create and the record) is found by its input file instead."""
        found = None
        if resumed:
            for b in self._call(lambda: client.batches.list(limit=100), "list batches").data:
                if b.input_file_id == wave["file_id"]:
                    found = b
                    break
        b = found or self._call(lambda: client.batches.create(
            input_file_id=wave["file_id"], endpoint=wave["endpoint"], completion_window=self.window,  # type: ignore[arg-type]
            metadata={"seed2lora": self._kind}), "create a batch")
        self.cache.update_wave(wave["file_id"], batch_id=b.id, status=b.status)
        wave["batch_id"], wave["status"] = b.id, b.status

    # -- waiting for replies -------------------------------------------------------------
    def _await(self, client: openai.OpenAI, waiting: dict[str, list[tuple[Request, GenParams]]],
               ready: deque[tuple[Request, Completion]], retry: dict[str, tuple[Request, GenParams]]) -> None:
        """Poll every open batch until one that holds an awaited request has ended, and read it."""
        while any(key in self._open for key in waiting):
            for wave in list(self._waves.values()):
                b = self._call(lambda w=wave: client.batches.retrieve(w["batch_id"]), "poll a batch")
                if b.status != wave["status"]:
                    self.cache.update_wave(wave["file_id"], status=b.status)
                    wave["status"] = b.status
                if b.status in ENDED:
                    self._read(client, wave, b, waiting, ready, retry)
                else:
                    self._event(progress_line(self._kind, wave, b, self._seen))
            if ready or retry:
                return
            self.failover.stop.wait(self.poll_s)

    def _read(self, client: openai.OpenAI, wave: dict[str, Any], b: Any,
              waiting: dict[str, list[tuple[Request, GenParams]]], ready: deque[tuple[Request, Completion]],
              retry: dict[str, tuple[Request, GenParams]]) -> None:
        """An ended batch: each open line's reply into the cache and usage log (the line marked done in the same
        commit), to the requests awaiting it; each failed or missing line into the next wave, or an error."""
        out: dict[str, dict[str, Any]] = {}
        for file_id in (b.error_file_id, b.output_file_id):  # an output line wins over an error line
            if file_id:
                text = self._call(lambda f=file_id: client.files.content(f).text, "download a batch's results")
                read_results(text, out, lambda what: self._event(f"{self._kind} batch {b.id}: {what}"))
        if b.status == "failed" and not out:
            errors = "; ".join(getattr(e, "message", "") or str(e) for e in (getattr(b.errors, "data", None) or []))
            for key, _, _, state in self.cache.wave_lines(wave["file_id"]):
                if state == "sent":
                    self.cache.fail_line(wave["file_id"], key)
                    self._open.pop(key, None)
            self._close(wave, b.status)
            raise TeacherError(f"batch {b.id} failed: {errors or 'no reason given'}. Fix: check the model and the "
                               "server's Batch API; a re-run sends its requests again")
        api = "chat" if wave["endpoint"].endswith("/chat/completions") else "completions"
        answered = failed = 0
        refused: list[str] = []  # why each awaited line that goes into no next wave failed
        lines = [(key, kind, reading) for key, kind, reading, state in self.cache.wave_lines(wave["file_id"])
                 if state == "sent"]
        tries = self.cache.line_failures([key for key, _, _ in lines])  # failed waves before this one
        for key, kind, reading in lines:
            self._open.pop(key, None)
            c, why = read_line(api, out.get(key), reading, b.status)
            awaiting = waiting.get(key, [])
            if c is not None:
                c.batch, c.retries = b.id, tries.get(key, 0)  # where it was paid, and the waves it failed in
                counts = self.usage.add(kind, c)
                self.cache.record(key if c.cacheable else None, c, self.session, kind, counts, self.usage_model or None,
                                  batch_line=(wave["file_id"], key))
                answered += 1
                if awaiting:
                    del waiting[key]
                    self._recorded.add(id(c))
                    ready.append((awaiting[0][0], c))
                    ready.extend((req, Completion(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens,
                                                  cached=True, batch=c.batch, retries=c.retries))
                                 for req, _ in awaiting[1:])
                continue
            failed += 1
            n = self.cache.fail_line(wave["file_id"], key)
            if not awaiting or b.status == "cancelled":
                continue  # a later stream that asks for it sends it again; a cancel is its owner's: not resent now
            if why.startswith("HTTP 4") or n > self.max_retries:
                del waiting[key]
                refused.append(why)
                ready.extend((req, Completion("", "error", error=why, retries=n - 1)) for req, _ in awaiting)
            else:
                retry[key] = awaiting[0]
        self._close(wave, b.status)
        self._event(ended_line(self._kind, b, answered, failed - len(refused), refused, self.origin))
        stop_if_refused(b, refused, failed, self.origin)

    def _close(self, wave: dict[str, Any], status: str) -> None:
        self.cache.update_wave(wave["file_id"], status=status, done=True)
        self._waves.pop(wave["file_id"], None)
        self._seen.pop(wave["file_id"], None)
