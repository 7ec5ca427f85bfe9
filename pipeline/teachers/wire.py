"""What goes over the wire to an OpenAI-compatible server, and what comes back: the request body, one thin HTTP
client per connection pool, and the reading of a reply into a Completion.

The hot path does not use the openai SDK's request machinery or its response models: they cost about 0.8 ms of
CPU per request on top of httpx (1.3 against 0.5 ms per call, measured one call at a time against
benchmarks/_latency_server.py at zero latency), which at 64 requests in flight is most of the client's
time (benchmarks/RESULTS.md, client CPU). The SDK's error semantics are kept: a reply that is not 2xx raises the
exception the SDK raises for its status, with the SDK's message and body (`status_error`), a timeout raises
openai.APITimeoutError and a failed connection openai.APIConnectionError, so the one retry policy
(retries.py) decides as it did. The SDK clients are still used where speed does not matter: GET /models and
the Batch API's files and batches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from ..errors import mask_secrets
from .base import Completion, GenParams, logprob_reply

MAX_SERVER_STOPS = 4  # OpenAI rejects more than 4 stop sequences; the rest are applied client-side
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
PATHS = {"chat": "/chat/completions", "completions": "/completions"}
# Connections one client keeps: the SDK's defaults (openai._constants.DEFAULT_CONNECTION_LIMITS).
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


class ContextTooLong(Exception):
    pass


class Malformed(Exception):
    """A 200 reply with no usable text (no choices, no content, a broken body): worth another try."""


@dataclass
class Sending:
    """What a request carries besides the prompt and its sampling: the teacher's settings and what the server
    was found to take."""

    model: str
    system_prompt: str = ""
    seed: int | None = None  # the run seed: each request's `seed` derives from it and the request's salt
    send_seed: bool = True  # dropped if a server rejects the field
    send_json: bool = True  # response_format, likewise
    send_logprobs: bool = True  # likewise: the reply's text is then the generated text
    schema_form: str = ""  # the response_format form the server honours ("json_schema", "json_object"), or ""


def request_body(s: Sending, api: str, prompt: str, params: GenParams, salt: str | None,
                 max_tokens: int | None = None, schema_form: str = "") -> dict[str, Any]:
    """The JSON body of one chat or completions request (a Batch API line's body is the same)."""
    body: dict[str, Any] = {"model": s.model}
    if api == "chat":
        body["messages"] = ([{"role": "system", "content": s.system_prompt}] if s.system_prompt else []) + [
            {"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body.update(
        max_tokens=max_tokens or params.max_tokens, temperature=params.temperature,
        # top_p=0 is Self-Instruct's way to say greedy; vLLM rejects it, and at temperature 0 it means nothing.
        top_p=params.top_p if params.top_p > 0 else 1.0,
        presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
    )
    if params.stop:
        body["stop"] = list(params.stop[:MAX_SERVER_STOPS])
    if salt is not None and s.seed is not None and s.send_seed:
        # Reproducible sampling where the server honours it: the run seed and this request's RNG state.
        body["seed"] = int.from_bytes(hashlib.sha256(f"{s.seed}|{salt}".encode()).digest()[:4], "little")
    if params.json_mode and api == "chat" and s.send_json:
        body["response_format"] = {"type": "json_object"}
    form = schema_form or s.schema_form
    if params.schema and api == "chat" and form and s.send_json:
        body["response_format"] = response_format(form, params.schema_name, json.loads(params.schema))
    if params.logprobs and s.send_logprobs:
        body.update({"logprobs": True, "top_logprobs": params.logprobs} if api == "chat"
                    else {"logprobs": params.logprobs})
    return body


def response_format(form: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema in the form a server takes: OpenAI's (vLLM, Ollama, llama.cpp's llama-server take it
    too), or json_object with the schema beside it (llama-cpp-python's server, which refuses the first)."""
    if form == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema}


def read_reply(api: str, reply: Any, logprobs_asked: bool) -> Completion:
    """A Completion from a chat or completions reply body (decoded JSON), as the SDK's models would give it:
    Malformed when it has no usable text."""
    if not isinstance(reply, dict):
        raise Malformed(f"malformed reply: a JSON {type(reply).__name__}, not an object")
    choices = reply.get("choices") or []
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if first is None:
        raise Malformed("empty reply (no choices)")
    if api == "chat":
        message = first.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if text is None and isinstance(message, dict) and message.get("refusal"):
            raise Malformed(f"empty reply (the model refused: {str(message['refusal'])[:200]})")
    else:
        text = first.get("text")
    if not isinstance(text, str):
        raise Malformed("empty reply (no choices)")
    top = top_logprobs(first) if logprobs_asked else None
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    return Completion(
        text=text if top is None else logprob_reply(top), finish_reason=first.get("finish_reason") or "stop",
        prompt_tokens=_count(usage.get("prompt_tokens")), completion_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        # Asked for log-probabilities and sent none: the server may be reconfigured or replaced, so
        # this reply is not kept in the cache to be served for the same request again.
        cacheable=top is not None or not logprobs_asked,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def top_logprobs(choice: dict[str, Any]) -> dict[str, float] | None:
    """The first generated token's alternatives {token: logprob}, from a chat or a completions choice; None if absent."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")  # chat: content[0].top_logprobs = [{token, logprob}]
    if content:
        return {t["token"]: float(t["logprob"]) for t in (content[0].get("top_logprobs") or [])} or None
    tops = lp.get("top_logprobs")  # completions: top_logprobs[0] = {token: logprob}
    if tops and isinstance(tops[0], dict):
        return {str(k): float(v) for k, v in tops[0].items()} or None
    return None


class Client:
    """POST JSON to one server through one connection pool; the SDK's exceptions for what goes wrong."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float, sdk: openai.OpenAI | None = None):
        """`sdk`: an SDK client of the same server, whose organization and project headers (OPENAI_ORG_ID,
        OPENAI_PROJECT_ID) are sent too, as it would send them."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                        "Content-Type": "application/json"}
        for header, value in (("OpenAI-Organization", getattr(sdk, "organization", None)),
                              ("OpenAI-Project", getattr(sdk, "project", None))):
            if value:
                self.headers[header] = value
        self._client = httpx.Client(timeout=timeout_s, limits=LIMITS)

    def post(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        """The decoded JSON of a 2xx reply; else the exception the openai SDK raises for it."""
        url = self.base_url + path
        try:
            response = self._client.post(url, content=json.dumps(body).encode(), headers=self.headers,
                                         timeout=timeout_s or self.timeout_s)
        except httpx.TimeoutException as e:
            raise openai.APITimeoutError(request=e.request) from e
        except httpx.RequestError as e:  # refused, reset, DNS, TLS: a failed connection
            raise openai.APIConnectionError(request=e.request) from e
        if not response.is_success:
            raise status_error(response)
        try:
            return json.loads(response.content)
        except ValueError as e:  # a body that is not JSON
            raise Malformed(f"malformed reply: {e}") from e

    def close(self) -> None:
        self._client.close()


def status_error(response: httpx.Response) -> openai.APIStatusError:
    """The exception the openai SDK raises for a reply that is not 2xx, with its message and body
    (openai._base_client._make_status_error_from_response and OpenAI._make_status_error)."""
    message, text = f"Error code: {response.status_code}", response.text.strip()
    body: Any = text
    try:
        body = json.loads(text)
    except ValueError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
    data = body.get("error", body) if isinstance(body, dict) else body
    kind = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
            404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
            429: openai.RateLimitError}.get(response.status_code)
    if kind is None:
        kind = openai.InternalServerError if response.status_code >= 500 else openai.APIStatusError
    return kind(message, response=response, body=data)


# -- what an error means ------------------------------------------------------------------
def refused(e: BaseException | None) -> bool:
    """A connection that failed or dropped (refused, reset, DNS, TLS), not a timeout: the endpoint is gone for now."""
    return isinstance(e, openai.APIConnectionError) and not isinstance(e, openai.APITimeoutError)


def is_transient(e: BaseException) -> bool:
    if isinstance(e, (Malformed, httpx.TransportError)):
        return True
    if isinstance(e, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                      openai.InternalServerError)):
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


def retry_after(e: BaseException | None) -> float | None:
    response = getattr(e, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def is_context_error(e: openai.BadRequestError) -> bool:
    text = str(e).lower()
    return "context length" in text or "context_length" in text or "maximum context" in text


def describe_error(e: BaseException, secret: str = "") -> str:
    status = getattr(e, "status_code", None)
    hint = {
        401: "the API key was refused; check the key's variable (teacher.api_key_env)",
        403: "the key may not use this model",
        404: "unknown model or wrong base URL; check --teacher openai:MODEL and --base-url",
    }.get(status or 0, "")
    detail = str(getattr(e, "message", "") or e).strip().splitlines()[0][:300].rstrip(".") if str(e).strip() else ""
    cause = e.__cause__ or e.__context__
    if isinstance(e, openai.APIConnectionError) and cause is not None and str(cause).strip():
        detail += f": {str(cause).strip().splitlines()[0][:200]}"  # "Connection refused", a DNS or TLS error
    msg = (f"HTTP {status} " if status else "") + type(e).__name__ + (f": {detail}" if detail else "")
    text = f"{msg} ({hint})" if hint else msg
    return mask_secrets(text.replace(secret, "***") if secret else text)
