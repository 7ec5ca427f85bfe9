"""LoRA's input dropout, cheaper on CPU: the same distribution as nn.Dropout, a third less work.

peft puts an nn.Dropout before every LoRA-A (7 per decoder layer on a Llama), drawn again in each
checkpointed recompute: about a sixth of a CPU training step (RESULTS.md, issue 21), two thirds of it
`bernoulli_` drawing one double per element. Here the mask comes from 16 random bits per element
(`random_` over the whole int64 range, viewed as int16) compared with a threshold; backward draws the
same mask again from the generator's saved state (RedrawnDropout: no mask is stored) and is one `where`
and one multiply. The bits come from torch's generator, so gradient checkpointing, which restores that
generator's state before recomputing, draws the same masks again. The output keeps the input's dtype
(bf16 on the CPU default's bf16 base; on an fp32 base, dropping on a bf16 copy measured no faster,
benchmarks/lora_dropout_cpu.py).

Only the modules change, after get_peft_model; nothing is saved with the adapter (no parameters, no
buffers, adapter_config.json untouched), so the adapter is plain peft's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

BITS = 16  # bits of randomness per element: the drop probability is p rounded to 1/65536 (0.05 -> 0.0500031)
LEVELS = 1 << BITS


def keep_threshold(p: float) -> int:
    """The int16 value at and above which an element is kept: P(dropped) = round(p * 65536) / 65536."""
    return -(LEVELS // 2) + round(p * LEVELS)


def effective_p(p: float) -> float:
    """The drop probability actually drawn for p (p rounded to 1/65536)."""
    return round(p * LEVELS) / LEVELS


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, True with probability 1 - effective_p(p), from torch's default generator."""
    n = math.prod(shape)
    bits = torch.empty(math.ceil(n / 4), dtype=torch.int64, device=device).random_(-(2 ** 63), None)
    return bits.view(torch.int16)[:n].view(shape) >= keep_threshold(p)


class MaskedScale(torch.autograd.Function):
    """y = where(keep, x, 0) * scale; saves only the bool mask, so backward is a where and a multiply."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


class RedrawnDropout(torch.autograd.Function):
    """y = where(keep_mask(p), x, 0) * scale, saving no tensor: backward draws the same mask again from the state
    torch's CPU generator had before the forward's draw (restoring the generator afterwards, so no later draw
    moves). Without checkpointing's recompute, the masks were a tenth of the stored activations (1 byte an
    element, 7 per layer: 145 MB for 2 x 512 tokens of the embedded model); drawing them twice costs what the
    recompute's second draw did. CPU tensors only (the CUDA generator's state is not this one)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float, scale: float) -> torch.Tensor:
        ctx.state, ctx.p, ctx.scale, ctx.shape = torch.get_rng_state(), p, scale, x.shape
        return torch.where(keep_mask(x.shape, p, x.device), x, 0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.state)
            keep = keep_mask(ctx.shape, ctx.p, grad.device)
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


class LoraDropout(nn.Module):
    """nn.Dropout(p) for LoRA's input: identity in eval mode; in training each element dropped with probability
    effective_p(p) and the survivors scaled by 1 / (1 - effective_p(p)), so the expectation is x exactly."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 < p < 1:
            raise ValueError(f"LoraDropout needs 0 < p < 1, not {p} (p 0 is no dropout module at all)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.device.type != "cpu":  # RedrawnDropout replays the CPU generator only
            return MaskedScale.apply(x, keep_mask(x.shape, self.p, x.device), 1.0 / (1.0 - effective_p(self.p)))
        return RedrawnDropout.apply(x, self.p, 1.0 / (1.0 - effective_p(self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_cheap_lora_dropout(model: nn.Module) -> int:
    """Replace every nn.Dropout that peft put before a LoRA-A with LoraDropout of the same p, in place; returns how
    many. peft uses nn.Identity for p 0, which stays."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is nn.Dropout and dropout.p > 0:
                replacement = LoraDropout(dropout.p)
                replacement.train(dropout.training)
                dropouts[name] = replacement
                replaced += 1
    return replaced
