"""The Teacher protocol: a batch of prompts in, one Completion per prompt out.

Stages never know which teacher they talk to. Each prompt is plain text; the teacher's
`api` setting decides whether it is sent as a raw completion prompt or as the user turn
of a chat. Stop sequences are applied here on the client side too, because servers cap
their number (OpenAI takes 4) and in-process generation stops a little late.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # why a prompt got no usable reply (after retries)

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error"


@dataclass
class Usage:
    """Calls and tokens per call kind (bootstrap, classify, instances, ...)."""

    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, kind: str, c: Completion) -> None:
        u = self.by_kind.setdefault(kind, {"calls": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0})
        u["calls"] += 1
        u["errors"] += 0 if c.ok else 1
        u["prompt_tokens"] += c.prompt_tokens
        u["completion_tokens"] += c.completion_tokens

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.by_kind.items()}


ProgressFn = Callable[[int], None]


class Teacher(Protocol):
    name: str  # spec as the user wrote it, e.g. "openai:gpt-4o-mini"; recorded in every record
    usage: Usage

    def generate(self, prompts: Sequence[str], params: GenParams, *, kind: str,
                 progress: ProgressFn | None = None) -> list[Completion]: ...

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this teacher. Never a secret."""
        ...


class BaseTeacher:
    """Shared bookkeeping: usage per kind, client-side stop sequences, progress."""

    name = "teacher"

    def __init__(self) -> None:
        self.usage = Usage()

    def generate(self, prompts: Sequence[str], params: GenParams, *, kind: str,
                 progress: ProgressFn | None = None) -> list[Completion]:
        if not prompts:
            return []
        out = self._generate(list(prompts), params, progress or (lambda n: None))
        for c in out:
            c.text, hit = apply_stop(c.text, params.stop)
            if hit and c.finish_reason == "length":
                c.finish_reason = "stop"
            self.usage.add(kind, c)
        return out

    def _generate(self, prompts: list[str], params: GenParams, progress: ProgressFn) -> list[Completion]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut text at the earliest stop sequence; return (text, whether one was found)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
