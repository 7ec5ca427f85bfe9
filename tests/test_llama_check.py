"""scripts/llama_cpp_check.py: a llama-cpp-python build that dies on this CPU is a reason to skip (and, in .ci/run,
to rebuild), never the end of the test run."""

import importlib.util
import runpy
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def check(monkeypatch, returncode, installed=True):
    names = runpy.run_path(str(ROOT / "scripts" / "llama_cpp_check.py"))
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (find("json") if installed else None) if name == "llama_cpp" else find(name))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=returncode, stderr="boom\n"))
    return names["unusable"]()


def test_a_build_that_dies_with_sigill_is_named_with_the_rebuild(monkeypatch):
    why = check(monkeypatch, -signal.SIGILL)
    assert "dies with SIGILL on this CPU" in why and "-DGGML_AVX512=OFF" in why and "--force-reinstall" in why


def test_a_build_that_runs_is_usable_and_a_missing_one_says_so(monkeypatch):
    assert check(monkeypatch, 0) is None
    assert check(monkeypatch, 0, installed=False).startswith("llama-cpp-python is not installed")
    assert check(monkeypatch, 1) == "llama-cpp-python failed (exit 1): boom"
