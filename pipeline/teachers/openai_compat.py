"""Teacher over the OpenAI API or any server that speaks it (vLLM, Ollama, llama.cpp, TGI).

Requests run on a thread pool: up to `concurrency` in flight, a new one starting as soon
as any finishes, so one slow reply never idles the rest. One retry policy (tenacity) for
every call: 429 waits for Retry-After, 5xx/timeouts/connection errors back off
exponentially with jitter, 400/401/403/404 fail at once, and a context-length error
halves max_tokens (as Self-Instruct did). A prompt that still fails is returned as an
error Completion, counted, and skipped by the stage.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import openai
import tenacity

from ..errors import TeacherError
from .base import BaseTeacher, Completion, GenParams, Request

MAX_SERVER_STOPS = 4  # OpenAI rejects more than 4 stop sequences; the rest are applied client-side
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


class ContextTooLong(Exception):
    pass


class OpenAITeacher(BaseTeacher):
    def __init__(self, model: str, *, base_url: str = "", api: str = "chat", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 6, system_prompt: str = "",
                 spec: str | None = None, max_wait_s: float = 60.0, api_key: str = ""):
        super().__init__()
        if api not in ("chat", "completions"):
            raise TeacherError(f"teacher api must be 'chat' or 'completions', not {api!r}")
        self.model = model
        self.name = spec or f"openai:{model}"
        self.api = api
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL", "") or "https://api.openai.com/v1"
        # Several servers ("url1,url2"): each request goes to the one with the fewest in flight.
        self.base_urls = [u.strip() for u in self.base_url.split(",") if u.strip()]
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.system_prompt = system_prompt
        self.max_wait_s = max_wait_s
        key = api_key or os.environ.get(api_key_env, "")
        self._secret = key  # only for masking error text
        if not key and any("api.openai.com" in u for u in self.base_urls):
            raise TeacherError(f"${api_key_env} is not set. Fix: export {api_key_env}=sk-... "
                               "or pass --base-url for a local OpenAI-compatible server")
        # max_retries=0: the SDK's own retries would hide failures from our one policy.
        self._clients = [openai.OpenAI(api_key=key or "not-needed", base_url=u, timeout=timeout_s, max_retries=0)
                         for u in self.base_urls]
        self._in_flight = [0] * len(self._clients)
        self._fatal: BaseException | None = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "openai", "model": self.model, "api": self.api,
                "base_url": self.base_url, "concurrency": self.concurrency}

    def _stream(self, requests: Iterator[Request], params: GenParams) -> Iterator[tuple[Request, Completion]]:
        """Keep up to `concurrency` requests in flight; refill as each one finishes (no batch barrier)."""
        self._fatal = None
        finished: queue.SimpleQueue[tuple[Request, Future]] = queue.SimpleQueue()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            in_flight = 0
            exhausted = False
            while True:
                while not exhausted and self._fatal is None and in_flight < self.concurrency:
                    req = self._pull(requests)
                    if req is False or (req is None and in_flight == 0):  # the end, or WAIT with nothing to wait for
                        exhausted = True
                        break
                    if req is None:  # WAIT: the source needs a reply first
                        break
                    fut = pool.submit(self._answer, req, req.params or params)
                    # A done-callback queue costs O(1) per reply; wait() on all futures would cost O(in flight).
                    fut.add_done_callback(lambda f, r=req: finished.put((r, f)))
                    in_flight += 1
                if in_flight == 0:
                    break
                req, fut = finished.get()
                in_flight -= 1
                yield req, fut.result()
        if self._fatal is not None:
            raise TeacherError(f"{self.name} at {self.base_url}: {_describe_error(self._fatal, self._secret)}") from None

    def _answer(self, req: Request, params: GenParams) -> Completion:
        cached = self._lookup(req, params)
        if cached is not None:
            return cached
        if self._fatal is not None:
            return Completion("", "error", error="not sent: the server refused an earlier request")
        with self._lock:
            i = min(range(len(self._clients)), key=self._in_flight.__getitem__)
            self._in_flight[i] += 1
        try:
            return self._call_with_retries(self._clients[i], req.prompt, params)
        finally:
            with self._lock:
                self._in_flight[i] -= 1

    def _call_with_retries(self, client: openai.OpenAI, prompt: str, params: GenParams) -> Completion:
        max_tokens = params.max_tokens
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=_wait_for(self.max_wait_s),
            retry=tenacity.retry_if_exception(_is_transient),
            reraise=True,
        )
        for _ in range(4):  # context-length shrinking: at most 4 halvings
            try:
                return retrying(self._call_once, client, prompt, params, max_tokens)
            except ContextTooLong:
                max_tokens //= 2
                if max_tokens < 16:
                    return Completion("", "error", error="prompt longer than the model's context")
            except FATAL as e:
                with self._lock:
                    self._fatal = e
                return Completion("", "error", error=_describe_error(e, self._secret))
            except (openai.APIError, ValueError) as e:  # exhausted retries, 400, malformed reply
                return Completion("", "error", error=_describe_error(e, self._secret))
        return Completion("", "error", error="prompt longer than the model's context")

    def _call_once(self, client: openai.OpenAI, prompt: str, params: GenParams, max_tokens: int) -> Completion:
        common: dict[str, Any] = dict(
            model=self.model, max_tokens=max_tokens, temperature=params.temperature,
            # top_p=0 is Self-Instruct's way to say greedy; vLLM rejects it, and at temperature 0 it means nothing.
            top_p=params.top_p if params.top_p > 0 else 1.0,
            presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
        )
        if params.stop:
            common["stop"] = list(params.stop[:MAX_SERVER_STOPS])
        try:
            if self.api == "chat":
                messages = [{"role": "user", "content": prompt}]
                if self.system_prompt:
                    messages.insert(0, {"role": "system", "content": self.system_prompt})
                resp = client.chat.completions.create(messages=messages, **common)
                texts = [(c.message.content if c.message else None, c.finish_reason) for c in resp.choices or []]
            else:
                resp = client.completions.create(prompt=prompt, **common)
                texts = [(c.text, c.finish_reason) for c in resp.choices or []]
        except openai.BadRequestError as e:
            if _is_context_error(e):
                raise ContextTooLong() from e
            raise
        if not texts or texts[0][0] is None:
            return Completion("", "error", error="empty reply (no choices)")
        usage = getattr(resp, "usage", None)
        return Completion(
            text=texts[0][0], finish_reason=texts[0][1] or "stop",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                      openai.InternalServerError)):
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


def _wait_for(max_wait_s: float):
    backoff = tenacity.wait_random_exponential(multiplier=min(1.0, max_wait_s), max=max_wait_s)

    def wait(state: tenacity.RetryCallState) -> float:
        e = state.outcome.exception() if state.outcome else None
        retry_after = _retry_after(e)
        return min(retry_after, max_wait_s) if retry_after is not None else backoff(state)

    return wait


def _retry_after(e: BaseException | None) -> float | None:
    response = getattr(e, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _is_context_error(e: openai.BadRequestError) -> bool:
    text = str(e).lower()
    return "context length" in text or "context_length" in text or "maximum context" in text


def _describe_error(e: BaseException, secret: str = "") -> str:
    status = getattr(e, "status_code", None)
    hint = {
        401: "the API key was refused; check the key's variable (teacher.api_key_env)",
        403: "the key may not use this model",
        404: "unknown model or wrong base URL; check --teacher openai:MODEL and --base-url",
    }.get(status or 0, "")
    detail = str(getattr(e, "message", "") or e).strip().splitlines()[0][:300] if str(e).strip() else ""
    msg = (f"HTTP {status} " if status else "") + type(e).__name__ + (f": {detail}" if detail else "")
    text = f"{msg} ({hint})" if hint else msg
    return mask_secrets(text.replace(secret, "***") if secret else text)


def mask_secrets(text: str) -> str:
    """Remove anything that looks like an API key or equals one in the environment."""
    for name, value in os.environ.items():
        if value and len(value) >= 8 and ("KEY" in name or "TOKEN" in name) and value in text:
            text = text.replace(value, "***")
    return re.sub(r"\b(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{8,}", r"\1***", text)
