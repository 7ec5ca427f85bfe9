"""A merged GGUF in the precision a user runs: f16 and q8_0 written directly, k-quants by llama.cpp's own quantizer.

Q4_K_M and Q5_K_M mix block types per tensor (llama.cpp keeps some tensors at higher
precision, and falls back where a row length is not a multiple of 256); only llama.cpp's
quantizer knows that recipe, so seed2lora writes the merged model in f16 and hands it to
`llama_model_quantize` (llama-cpp-python), as `llama-quantize merged.f16.gguf out.gguf Q4_K_M` would.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..errors import Seed2LoraError
from .gguf_merged import MERGED_OUTTYPES, write_merged_gguf

LLAMA_QUANTS = ("q4_k_m", "q5_k_m")  # through llama.cpp's quantizer: its per-tensor recipe is not ours to copy
MERGED_CHOICES = (*MERGED_OUTTYPES, *LLAMA_QUANTS)


def quantize_gguf(src: Path, dst: Path, kind: str, n_threads: int | None = None) -> Path:
    """llama.cpp's quantizer: `src` (an f16/f32 GGUF model) to `dst` in `kind` (q4_k_m, q5_k_m, q8_0, ...)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise Seed2LoraError(f"a {kind} GGUF is made by llama.cpp's quantizer, and llama-cpp-python is not installed. "
                             'Fix: pip install "llama-cpp-python[server]", or --merged f16 / q8_0')
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}", None)
    if ftype is None:
        raise Seed2LoraError(f"llama.cpp has no quantization {kind!r}. Fix: one of {', '.join(MERGED_CHOICES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads or os.cpu_count() or 1
    tmp = dst.with_name(f".{dst.name}.part")  # renamed over dst only when llama.cpp says it finished
    try:
        code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if code != 0:
            raise Seed2LoraError(f"llama.cpp could not quantize {src} to {kind} (code {code}); its log above says why")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def write_merged(adapter_dir: str | Path, out: str | Path | None = None, *, outtype: str = "f16",
                 base_gguf: str | Path | None = None, model: str = "", n_threads: int | None = None) -> dict[str, Any]:
    """Base + adapter as one GGUF model in `outtype` (MERGED_CHOICES): write_merged_gguf's answer, for k-quants
    the merged f16 quantized by llama.cpp (the f16 file is a temporary one, removed after)."""
    if outtype not in MERGED_CHOICES:
        raise Seed2LoraError(f"merged outtype must be one of {', '.join(MERGED_CHOICES)}, not {outtype!r}")
    target = Path(out) if out else Path(adapter_dir) / f"merged.{outtype}.gguf"
    if outtype in MERGED_OUTTYPES:
        return write_merged_gguf(adapter_dir, target, outtype=outtype, base_gguf=base_gguf, model=model)
    if importlib.util.find_spec("llama_cpp") is None:  # before minutes of merging, not after
        quantize_gguf(target, target, outtype)
    f16 = target.with_name(f".{target.name}.f16.gguf")
    try:
        done = write_merged_gguf(adapter_dir, f16, outtype="f16", base_gguf=base_gguf, model=model)
        quantize_gguf(f16, target, outtype, n_threads)
    finally:
        if f16.exists():
            f16.unlink()
    return {**done, "path": target, "outtype": outtype}
