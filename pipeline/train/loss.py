"""Causal-LM cross-entropy without the full logits tensor.

A model's own loss builds logits for every position (batch x seq x vocab) and upcasts
them to fp32: 4 x 1024 x 152k x 4 bytes = 2.5 GB for a Qwen2 batch, most of it spent on
prompt and padding positions whose labels are -100. Here only positions with a label
are projected, a chunk at a time, so at most one chunk of fp32 logits exists at once.

Two ways to get the gradient, the same numbers (tests/test_train.py):
- fused (a plain bias-free lm_head, the usual case): each chunk's gradient with respect to
  the hidden states (softmax - one-hot, times the head) is computed in the forward pass and
  kept (positions x hidden, a few MB); backward only scales it. Two matmuls per chunk.
- checkpointed (any other head, e.g. one with LoRA on it): the chunk is recomputed in the
  backward pass by autograd. Three matmuls per chunk.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data import IGNORE_INDEX

# A chunk shorter than the chunk size (the last one) is projected with zero rows added up to a multiple of this,
# labelled IGNORE_INDEX. On CPU, oneDNN keeps a matmul primitive (and its buffers) per shape: a last chunk of a new
# length every micro-batch grew a packed CPU run's RSS by about 10 MB a micro-batch (2.7 to 3.9 GB over 45 updates),
# where these few lengths hold it (benchmarks/RESULTS.md). At most 63 rows more a micro-batch.
TAIL_ROWS = 64


def tail_padded(h: torch.Tensor, y: torch.Tensor, chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's rows and labels, a short one (the last) padded with zero rows labelled IGNORE_INDEX up to a
    multiple of TAIL_ROWS; a whole chunk as it is."""
    extra = -y.numel() % TAIL_ROWS if y.numel() < chunk_tokens else 0
    if not extra:
        return h, y
    return torch.cat([h, h.new_zeros(extra, h.shape[1])]), torch.cat([y, y.new_full((extra,), IGNORE_INDEX)])


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module,
                softcap: float | None) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if softcap:  # Gemma-2 style final-logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


class FusedLinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(h @ weight.T, y), its gradients made chunk by chunk in forward."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, chunk_tokens: int,
                softcap: float | None) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[1] else None
        for s in range(0, y.numel(), chunk_tokens):
            yc = y[s:s + chunk_tokens]
            m = yc.numel()  # the chunk's real rows; the last chunk's padding follows them
            hc = tail_padded(h[s:s + chunk_tokens], yc, chunk_tokens)[0]
            logits = (hc @ weight.t()).float()  # bf16 matmul under autocast, fp32 softmax either way
            capped = None
            if softcap:  # Gemma-2 style final-logit soft-capping: logits = c * tanh(z / c)
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            lse = torch.logsumexp(logits, dim=-1)
            rows = torch.arange(m, device=h.device)
            total += (lse[:m] - logits[rows, yc]).sum()
            grad = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place: one chunk of logits in memory
            grad[rows, yc] -= 1.0
            grad[m:] = 0.0  # padding rows: no gradient, to the hidden states or to the head
            if capped is not None:
                grad.mul_(1.0 - capped * capped)
            grad_h[s:s + m] = (grad.to(weight.dtype) @ weight)[:m].float()
            if grad_w is not None:
                grad_w += grad.t() @ hc.float()
        ctx.grads = (grad_h.to(h.dtype), grad_w.to(weight.dtype) if grad_w is not None else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        grad_h, grad_w = ctx.grads
        del ctx.grads
        return grad_h * grad_out.to(grad_h.dtype), None if grad_w is None else grad_w * grad_out.to(grad_w.dtype), \
            None, None, None


def can_fuse(lm_head: torch.nn.Module) -> bool:
    """A plain bias-free Linear: the fused path knows its gradient; anything else (LoRA on the head) is checkpointed."""
    return type(lm_head) is torch.nn.Linear and lm_head.bias is None


def causal_lm_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module, *,
                       chunk_tokens: int = 1024, softcap: float | None = None,
                       fused: bool = True) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of label tokens); position t predicts labels[t + 1].
    fused: the fused gradient where the head allows it (can_fuse), else the checkpointed chunks."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    h = hidden[:, :-1][keep]
    y = targets[keep]
    if fused and can_fuse(lm_head) and torch.is_grad_enabled():
        return FusedLinearCrossEntropy.apply(h, lm_head.weight, y, chunk_tokens, softcap), int(y.numel())
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, y.numel(), chunk_tokens):
        args = (*tail_padded(h[start:start + chunk_tokens], y[start:start + chunk_tokens], chunk_tokens), lm_head,
                softcap)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, *args, use_reentrant=False)
        else:
            total = total + _chunk_loss(*args)
    return total, int(y.numel())


def full_logits_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The same sum from full logits (the reference; used when chunked_loss is off)."""
    targets = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets,
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def mean_losses(model: Any, batch: list[tuple[list[int], list[int]]], pad_id: int, *,
                chunk_tokens: int = 1024) -> list[tuple[float, int]]:
    """(mean cross-entropy over label tokens, label tokens) per sequence; one forward pass, right padding.

    For scoring, not training (no gradient): IFD's two losses and eval's reference loss. Only label positions
    are projected to the vocabulary, chunk_tokens at a time (1024 x 49k fp32 = 0.2 GB).
    """
    dev = next(model.parameters()).device
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (i, lab) in enumerate(batch):
        ids[r, :len(i)], labels[r, :len(lab)], mask[r, :len(i)] = torch.tensor(i), torch.tensor(lab), 1
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        targets = labels[:, 1:].to(dev)
        keep = targets != IGNORE_INDEX
        h, y = hidden[:, :-1][keep], targets[keep]
        owner = torch.arange(len(batch), device=dev).unsqueeze(1).expand_as(targets)[keep]
        sums = torch.zeros(len(batch), dtype=torch.float64, device=dev)
        head = model.get_output_embeddings()
        softcap = getattr(model.config, "final_logit_softcapping", None)
        for s in range(0, y.numel(), chunk_tokens):
            hc, yc = tail_padded(h[s:s + chunk_tokens], y[s:s + chunk_tokens], chunk_tokens)
            logits = head(hc).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            loss = F.cross_entropy(logits, yc, reduction="none")  # 0 for the padding rows (IGNORE_INDEX)
            who = owner[s:s + chunk_tokens]
            sums.index_add_(0, who, loss[:who.numel()].double())
        counts = torch.bincount(owner, minlength=len(batch))
    return [(float(sums[r] / counts[r]) if counts[r] else float("nan"), int(counts[r])) for r in range(len(batch))]
