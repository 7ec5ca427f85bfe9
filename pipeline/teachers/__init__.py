"""Teachers and the one function that builds one from a spec string.

Specs: "embedded" (default), "openai:MODEL" (OpenAI or any compatible server with
base_url), "hf:PATH_OR_ID" (in-process transformers; a .gguf path works too).
"""

from __future__ import annotations

from pathlib import Path

from ..config import TeacherConfig
from ..errors import TeacherError
from .base import BaseTeacher, Completion, GenParams, Teacher, Usage, apply_stop
from .origin import RUN_TEACHER, SCORE_JUDGE, Origin, origin_of

__all__ = ["BaseTeacher", "Completion", "GenParams", "Origin", "RUN_TEACHER", "SCORE_JUDGE", "Teacher", "Usage",
           "apply_stop", "make_teacher", "origin_of"]


def make_teacher(cfg: TeacherConfig, seed: int = 0, origin: Origin = RUN_TEACHER) -> Teacher:
    """The teacher `cfg.spec` names, built from `cfg` itself: each teacher reads its settings there. `origin`: the
    table cfg is and the flags of the command that built it, which the teacher's messages name."""
    spec = cfg.spec.strip()
    kind, _, ref = spec.partition(":")
    o = origin
    if cfg.batch and kind != "openai":
        raise TeacherError(f"{o.flag('batch', 'true')} needs a server with the Batch API, and {spec!r} is in-process. "
                           f"Fix: {o.give('spec', 'openai:MODEL')} (with {o.flag('base_url', 'URL')} for a compatible "
                           f"server), or drop {o.flag('batch', 'true')}")
    if kind == "openai":
        if not ref:
            raise TeacherError(f"{o.give('spec', 'openai')} needs a model name. Fix: "
                               f"{o.give('spec', 'openai:gpt-4o-mini')}")
        from .openai_compat import OpenAITeacher

        if cfg.batch:  # the files and batches endpoints, in waves (docs/batch.md)
            from .batch import BatchTeacher

            return BatchTeacher(ref, cfg, spec=spec, seed=seed, origin=origin)
        return OpenAITeacher(ref, cfg, spec=spec, seed=seed, origin=origin)
    if kind in ("hf", "embedded"):
        from .hf import HFTeacher

        gguf_file = None
        if kind == "embedded":
            from .embedded import embedded_model_dir, other_than_embedded

            model = str(embedded_model_dir(other_than_embedded(o)))
        else:
            if not ref:
                raise TeacherError(f"{o.give('spec', 'hf')} needs a model. Fix: {o.give('spec', 'hf:/path/to/model')} "
                                   "or hf:org/name")
            model = ref
            if ref.endswith(".gguf"):
                p = Path(ref)
                if not p.is_file():
                    raise TeacherError(f"{ref}: no such GGUF file. Fix: give the path of an existing .gguf file")
                model, gguf_file = str(p.parent), p.name
        return HFTeacher(model, cfg, gguf_file=gguf_file, spec=spec, seed=seed, origin=origin)
    raise TeacherError(f"unknown teacher {spec!r}. Fix: use embedded, openai:MODEL or hf:PATH_OR_ID")
