"""Errors that the CLI turns into a clear message and a non-zero exit, without a traceback.

Exit codes (the README's table lists them): 0 done, 1 a bug (traceback), 2 bad input or
config, 3 budget reached, 4 teacher unreachable or failing, 5 incomplete (work pending;
a re-run retries it), 6 yield too low, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


class Seed2LoraError(Exception):
    """A problem the user can fix; the message says how."""


class InputError(Seed2LoraError):
    """Bad input: names the file, the line and the fix."""

    def __init__(self, path: str | Path | None, line: int | None, problem: str, fix: str):
        self.path, self.line, self.problem, self.fix = path, line, problem, fix
        where = str(path) if path is not None else "input"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {problem}. Fix: {fix}.")


class TeacherError(Seed2LoraError):
    """The teacher cannot be used (bad key, unknown model, missing weights)."""


class TeacherUnavailable(TeacherError):
    """No endpoint answers, or the circuit breaker tripped: the message names the URL and the last error."""

    exit_code = 4


class Incomplete(Seed2LoraError):
    """A stage ended with work pending (teacher failures); everything written is kept and a re-run retries it."""

    exit_code = 5


class LowYield(Seed2LoraError):
    """The accept rate fell below the stop floor: the teacher is burning calls on rejects."""

    exit_code = 6


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`) turned into the same clean stop as Ctrl-C."""

    exit_code = 143


def mask_secrets(text: str) -> str:
    """Remove anything that looks like an API key or equals one in the environment."""
    for name, value in os.environ.items():
        if value and len(value) >= 8 and ("KEY" in name or "TOKEN" in name) and value in text:
            text = text.replace(value, "***")
    return re.sub(r"\b(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{8,}", r"\1***", text)
