"""Gradient checkpointing that keeps attention's outputs through the recompute, on CPU.

Checkpointing stores each decoder layer's input only and runs the layer's forward again during backward. On CPU,
SDPA's flash kernel was about a fifth of a training step (RESULTS.md, issue 21), and a third of that was its second
forward in the recompute. Here that forward is not repeated: torch's selective checkpointing (`context_fn`) keeps
the outputs of the attention op (the output and its log-sum-exp, 2.3 MB a layer at 4 x 512 tokens of a 576-wide
model) and recomputes everything else as before. Same numbers (the kept tensors are what the recompute would have
made, and the dropout masks are drawn again from the restored RNG), about 5% fewer CPU seconds a step (2.5-8% in
three side-by-side runs) for 0.1-0.16 GB more peak memory on the embedded model. Keeping the frozen gate/up
projections' outputs too saved 9% more but peaked at 3.03 GB, every projection's at 3.4 GB, over the 3 GB target,
so they stay recomputed (RESULTS.md, "attention kept through the recompute").
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# The attention ops whose outputs are kept: SDPA's kernels as the dispatcher sees them (CPU flash; the CUDA ones
# too, should a CUDA plan ever use this). An op a torch build does not have is left out.
ATTENTION_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")


def attention_ops() -> frozenset:
    aten = torch.ops.aten
    return frozenset(getattr(aten, name).default for name in ATTENTION_OPS if hasattr(aten, name))


def keep_attention_policy(kept: frozenset) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        return CheckpointPolicy.MUST_SAVE if op in kept else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def checkpoint_kwargs(keep_attention: bool) -> dict[str, Any]:
    """torch.utils.checkpoint's keyword arguments for the model's gradient checkpointing: non-reentrant (it needs no
    input gradients, so frozen embeddings are fine), keeping attention's outputs when asked."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if keep_attention:
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts,
                                                 keep_attention_policy(attention_ops()))
    return kwargs
