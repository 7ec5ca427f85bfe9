"""Causal-LM cross-entropy without the full logits tensor.

A model's own loss builds logits for every position (batch x seq x vocab) and upcasts
them to fp32: 4 x 1024 x 152k x 4 bytes = 2.5 GB for a Qwen2 batch, most of it spent on
prompt and padding positions whose labels are -100. Here only positions with a label
are projected, a chunk at a time, and each chunk is recomputed in the backward pass
(activation checkpointing), so at most one chunk of fp32 logits exists at once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data import IGNORE_INDEX


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module,
                softcap: float | None) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if softcap:  # Gemma-2 style final-logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def causal_lm_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module, *,
                       chunk_tokens: int = 1024, softcap: float | None = None) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of label tokens); position t predicts labels[t + 1]."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    h = hidden[:, :-1][keep]
    y = targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, y.numel(), chunk_tokens):
        args = (h[start:start + chunk_tokens], y[start:start + chunk_tokens], lm_head, softcap)
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
            logits = head(h[s:s + chunk_tokens]).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            loss = F.cross_entropy(logits, y[s:s + chunk_tokens], reduction="none")
            sums.index_add_(0, owner[s:s + chunk_tokens], loss.double())
        counts = torch.bincount(owner, minlength=len(batch))
    return [(float(sums[r] / counts[r]) if counts[r] else float("nan"), int(counts[r])) for r in range(len(batch))]
