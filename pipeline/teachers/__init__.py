"""Teachers and the one function that builds one from a spec string.

Specs: "embedded" (default), "openai:MODEL" (OpenAI or any compatible server with
base_url), "hf:PATH_OR_ID" (in-process transformers; a .gguf path works too).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from ..config import TeacherConfig
from ..errors import TeacherError
from .base import BaseTeacher, Completion, GenParams, Teacher, Usage, apply_stop
from .origin import RUN_TEACHER, SCORE_JUDGE, Origin, origin_of

__all__ = ["BaseTeacher", "Completion", "GenParams", "Origin", "RUN_TEACHER", "SCORE_JUDGE", "Teacher", "Usage",
           "apply_stop", "check_spec", "make_teacher", "origin_of"]


def check_spec(cfg: TeacherConfig, origin: Origin = RUN_TEACHER) -> None:
    """Stop on a spec that names no teacher (an empty model, an unknown kind, a missing GGUF file or model folder,
    --batch on an in-process model), as make_teacher does, without building one: `run --dry-run` checks it here (it
    priced a model called "hf:")."""
    spec = cfg.spec.strip()
    kind, _, ref = spec.partition(":")
    o = origin
    if cfg.batch and kind != "openai":
        raise TeacherError(f"{o.flag('batch', 'true')} needs a server with the Batch API, and {spec!r} is in-process. "
                           f"Fix: {o.give('spec', 'openai:MODEL')} (with {o.flag('base_url', 'URL')} for a compatible "
                           f"server), or drop {o.flag('batch', 'true')}")
    if kind == "openai" and not ref:
        raise TeacherError(f"{o.give('spec', 'openai')} needs a model name. Fix: {o.give('spec', 'openai:gpt-4o-mini')}")
    if kind == "hf" and not ref:
        raise TeacherError(f"{o.give('spec', 'hf')} needs a model. Fix: {o.give('spec', 'hf:/path/to/model')} "
                           "or hf:org/name")
    if kind == "hf" and ref.endswith(".gguf") and not Path(ref).is_file():
        raise TeacherError(f"{ref}: no such GGUF file. Fix: give the path of an existing .gguf file")
    if kind == "hf" and not ref.endswith(".gguf"):
        from .hf import check_model_folder

        check_model_folder(ref, o)
    if kind not in ("openai", "hf", "embedded"):
        near = difflib.get_close_matches(kind.lower(), ["openai", "hf", "embedded"], n=1, cutoff=0.6)
        meant = f"{near[0]}:{ref}" if near and ref else (near[0] if near else "")
        raise TeacherError(f"unknown teacher {spec!r}. Fix: " + (f"did you mean {meant!r}? Use" if meant else "use")
                           + " embedded, openai:MODEL or hf:PATH_OR_ID")


def make_teacher(cfg: TeacherConfig, seed: int = 0, origin: Origin = RUN_TEACHER) -> Teacher:
    """The teacher `cfg.spec` names, built from `cfg` itself: each teacher reads its settings there. `origin`: the
    table cfg is and the flags of the command that built it, which the teacher's messages name."""
    check_spec(cfg, origin)
    spec = cfg.spec.strip()
    kind, _, ref = spec.partition(":")
    if kind == "openai":
        from .openai_compat import OpenAITeacher

        if cfg.batch:  # the files and batches endpoints, in waves (docs/batch.md)
            from .batch import BatchTeacher

            return BatchTeacher(ref, cfg, spec=spec, seed=seed, origin=origin)
        return OpenAITeacher(ref, cfg, spec=spec, seed=seed, origin=origin)
    from .hf import HFTeacher

    gguf_file = None
    if kind == "embedded":
        from .embedded import embedded_model_dir, other_than_embedded

        model = str(embedded_model_dir(other_than_embedded(origin)))
    else:
        model = ref
        if ref.endswith(".gguf"):
            model, gguf_file = str(Path(ref).parent), Path(ref).name
    return HFTeacher(model, cfg, gguf_file=gguf_file, spec=spec, seed=seed, origin=origin)
