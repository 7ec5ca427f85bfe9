"""Errors that the CLI turns into a clear message and a non-zero exit, without a traceback.

Exit codes (the README's table lists them): 0 done, 1 a bug (traceback), 2 bad input or
config, 3 budget reached, 4 teacher unreachable or failing, 5 incomplete (work pending;
a re-run retries it), 6 yield too low, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import functools
import os
import re
import signal
from pathlib import Path
from typing import Any


def counted(n: Any, one: str, many: str | None = None) -> str:
    """'1 round', '2 rounds', '? rounds': a count and its noun, singular at 1 (messages, show, cards, plots)."""
    return f"{n} {one if n == 1 else many or one + 's'}"


class Seed2LoraError(Exception):
    """A problem the user can fix; the message says how."""

    # What a run that stopped left to do ("pending: bootstrap 88 of 100 instructions to go, ..."): the runner sets
    # it on whatever stopped a run (a KeyboardInterrupt too), and the CLI prints it after the message.
    pending = ""


class InputError(Seed2LoraError):
    """Bad input: names the file, the line and the fix."""

    def __init__(self, path: str | Path | None, line: int | None, problem: str, fix: str):
        self.path, self.line, self.problem, self.fix = path, line, problem, fix
        where = str(path) if path is not None else "input"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {problem}. Fix: {fix}.")


class Refused(Seed2LoraError):
    """A stage refuses the run's files as they stand (evolve.jsonl of tasks a later --input replaced, another input,
    a stale select.jsonl): the same command refuses again until the fix is made, so a run it stops says no work is
    pending (a "pending: evolve 3 slots" line after it read as if a re-run would do them)."""


class TeacherError(Seed2LoraError):
    """The teacher cannot be used (bad key, unknown model, missing weights)."""


class TeacherUnavailable(TeacherError):
    """No endpoint answers, or the circuit breaker tripped: the message names the URL and the last error. `role`:
    whose servers ("teacher", "judge", "eval judge": the teacher's Origin), which the CLI's label names."""

    exit_code = 4

    def __init__(self, message: str, role: str = "teacher"):
        super().__init__(message)
        self.role = role


class Incomplete(Seed2LoraError):
    """A stage ended with work pending (teacher failures); everything written is kept and a re-run retries it."""

    exit_code = 5


class LowYield(Seed2LoraError):
    """The accept rate fell below the stop floor: the teacher is burning calls on rejects."""

    exit_code = 6


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`) turned into the same clean stop as Ctrl-C."""

    exit_code = 143


# The exit codes of the stop signals the CLI's handler took (Ctrl-C 130, SIGTERM 143) and the loop has not acted on.
# Python drops an exception raised inside a finalizer with an "Exception ignored" line: a Ctrl-C that landed in
# llvmlite's ObjectRef.__del__ (numba compiling, in filter) was lost, and the run went on to status done, exit 0.
STOP_SIGNALS: list[int] = []


def on_stop_signal(signum: int, frame: Any) -> None:
    """The CLI's handler of SIGINT and SIGTERM (a scheduler, `timeout`): the same clean stop, noted in case it is
    dropped."""
    STOP_SIGNALS.append(143 if signum == signal.SIGTERM else 130)
    raise Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()


def take_stop_signal() -> int | None:
    """The exit code of a stop signal not yet acted on (None: none), which it clears."""
    code = STOP_SIGNALS[-1] if STOP_SIGNALS else None
    STOP_SIGNALS.clear()
    return code


def is_stop(e: BaseException) -> bool:
    """Whether `e` is the stop of a Ctrl-C or SIGTERM; the loop that asks acts on it, so its note is cleared: left
    in STOP_SIGNALS, the next run in the same process (main called again, the Python API after it) stopped at once."""
    if isinstance(e, KeyboardInterrupt):
        STOP_SIGNALS.clear()
        return True
    return False


def raise_dropped_stop() -> None:
    """Between steps: a stop signal whose exception never reached the loop (dropped in a finalizer) stops it now."""
    if (code := take_stop_signal()) is not None:
        raise Interrupted() if code == 143 else KeyboardInterrupt()


MASK = "***"
# A name whose last word is one of these holds a secret: api_key, --api-key, HF_TOKEN, client_secret, password.
# The last word only, so api_key_env (a variable's name) and max_tokens (a count) stay readable.
SECRET_WORDS = ("key", "apikey", "token", "secret", "password", "passwd")
_NAME = r"(?:[\w.-]*[_.-])?(?:api)?(?:key|token|secret|password|passwd)"  # the same names, inside text
_SECRET_TEXT = [  # (pattern, replacement): values that are secrets whatever they are called
    (re.compile(r"\b(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{8,}"), rf"\1{MASK}"),  # OpenAI-style keys keep 4 characters
    (re.compile(r"\b(hf_|gh[pousr]_|xox[bp]-)[A-Za-z0-9_\-]{12,}"), rf"\1{MASK}"),  # Hugging Face, GitHub, Slack tokens
    (re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9._~+/=\-]{6,}"), rf"\1{MASK}"),  # an Authorization header
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), rf"\1{MASK}@"),  # a password inside a URL
    (re.compile(rf'(?i)("{_NAME}"\s*:\s*")[^"]+(")'), rf"\1{MASK}\2"),  # "api_key": "..." in JSON
    (re.compile(rf"(?i)(?<![\w.-])({_NAME}\s*[=:]\s*[\"']?)(?![\s*\"']|(?:sk-)?\.\.\.|(?-i:VALUE)\b)[^\s,;&'\"]+"),
     rf"\1{MASK}"),  # api_key=VALUE (a --set, TOML, a log line); not the placeholders sk-... and VALUE of a Fix: hint
    (re.compile(rf"(?i)(?<![\w-])(--{_NAME}\s+)(?!-)\S+"), rf"\1{MASK}"),  # --api-key VALUE
]


@functools.lru_cache(maxsize=4096)  # asked for every config key and environment variable at each manifest refresh
def is_secret_name(name: str) -> bool:
    """Whether a setting, flag or variable of this name holds a secret (see SECRET_WORDS)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return bool(words) and words[-1] in SECRET_WORDS


def env_secrets() -> list[str]:
    """The values of the environment's secret-named variables (8 characters or more)."""
    return [value for name, value in os.environ.items() if len(value) >= 8 and is_secret_name(name)]


def mask_secrets(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret replaced by ***: values of key/token/secret/password names, values that
    look like API keys (sk-..., hf_..., Bearer ...), and the values of such environment variables (`secrets`:
    env_secrets(), read once by a caller masking many strings)."""
    for value in env_secrets() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def masked_argv(argv: list[str]) -> list[str]:
    """A command line with its secrets masked, one argument at a time: `--api-key VALUE`, `--api-key=VALUE`,
    `--set teacher.api_key=VALUE`, and anything mask_secrets catches."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        before = argv[i - 1] if i else ""
        setting = arg.removeprefix("--set=")
        name, eq, _ = setting.partition("=")
        if before.startswith("-") and "=" not in before and is_secret_name(before):  # --api-key VALUE
            out.append(MASK)
        elif eq and is_secret_name(name):  # --api-key=VALUE, --set teacher.api_key=VALUE, --set=teacher.api_key=VALUE
            out.append(f"{arg[:len(arg) - len(setting)]}{name}={MASK}")
        else:
            out.append(mask_secrets(arg))
    return out


def mask_dict(data: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a config (dicts, lists, strings) with secret-named values set to *** and the rest masked as text.
    The environment is read once per call, not once per string (a manifest refresh masks ~110 strings)."""
    secrets = env_secrets() if secrets is None else secrets
    if isinstance(data, dict):
        return {k: MASK if is_secret_name(str(k)) and data[k] not in ("", None) else mask_dict(v, secrets)
                for k, v in data.items()}
    if isinstance(data, list):
        return [mask_dict(v, secrets) for v in data]
    return mask_secrets(data, secrets) if isinstance(data, str) else data
