"""Errors that the CLI turns into a clear message and a non-zero exit, without a traceback."""

from __future__ import annotations

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
    """The teacher cannot be used (bad key, unknown model, unreachable server, missing weights)."""
