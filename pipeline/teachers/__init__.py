"""Teachers and the one function that builds one from a spec string.

Specs: "embedded" (default), "openai:MODEL" (OpenAI or any compatible server with
base_url), "hf:PATH_OR_ID" (in-process transformers; a .gguf path works too).
"""

from __future__ import annotations

from pathlib import Path

from ..config import TeacherConfig
from ..errors import TeacherError
from .base import BaseTeacher, Completion, GenParams, Teacher, Usage, apply_stop

__all__ = ["BaseTeacher", "Completion", "GenParams", "Teacher", "Usage", "apply_stop", "make_teacher"]


def make_teacher(cfg: TeacherConfig, seed: int = 0) -> Teacher:
    """The teacher `cfg.spec` names, built from `cfg` itself: each teacher reads its settings there."""
    spec = cfg.spec.strip()
    kind, _, ref = spec.partition(":")
    if cfg.batch and kind != "openai":
        raise TeacherError(f"--batch needs a server with the Batch API, and {spec!r} is in-process. Fix: --teacher "
                           "openai:MODEL (with --base-url for a compatible server), or drop --batch")
    if kind == "openai":
        if not ref:
            raise TeacherError("--teacher openai needs a model name. Fix: --teacher openai:gpt-4o-mini")
        from .openai_compat import OpenAITeacher

        if cfg.batch:  # the files and batches endpoints, in waves (docs/batch.md)
            from .batch import BatchTeacher

            return BatchTeacher(ref, cfg, spec=spec, seed=seed)
        return OpenAITeacher(ref, cfg, spec=spec, seed=seed)
    if kind in ("hf", "embedded"):
        from .hf import HFTeacher

        gguf_file = None
        if kind == "embedded":
            from .embedded import embedded_model_dir

            model = str(embedded_model_dir())
        else:
            if not ref:
                raise TeacherError("--teacher hf needs a model. Fix: --teacher hf:/path/to/model or hf:org/name")
            model = ref
            if ref.endswith(".gguf"):
                p = Path(ref)
                if not p.is_file():
                    raise TeacherError(f"{ref}: no such GGUF file. Fix: give the path of an existing .gguf file")
                model, gguf_file = str(p.parent), p.name
        return HFTeacher(model, cfg, gguf_file=gguf_file, spec=spec, seed=seed)
    raise TeacherError(f"unknown teacher {spec!r}. Fix: use embedded, openai:MODEL or hf:PATH_OR_ID")
