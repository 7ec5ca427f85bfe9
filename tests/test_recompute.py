"""Gradient checkpointing that keeps attention's outputs through the recompute on CPU (pipeline/train/recompute.py):
the attention op is actually kept on this torch, and the loss and every LoRA gradient equal plain checkpointing's
and no checkpointing's."""

import pipeline.train  # noqa: F401, I001 -- first: sets OMP_WAIT_POLICY before torch loads
import dataclasses

import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.train import recompute
from pipeline.train.model import load_for_training, resolve_plan


def lora_model(tiny_model, keep_attention, **cfg_kw):
    cfg = TrainConfig(model=tiny_model, **{"activation_memory_gb": 0, **cfg_kw})
    plan = dataclasses.replace(resolve_plan(cfg, tiny_model, on="cpu"), keep_attention=keep_attention)
    torch.manual_seed(3)  # the same LoRA init in every load
    model = load_for_training(tiny_model, cfg, plan)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # nonzero, so that every LoRA gradient depends on the layers' outputs
            param.data = torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05
    return model.train()


def loss_and_grads(model):
    torch.manual_seed(11)  # the dropout masks
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_cpu_plans_keep_attention_when_checkpointing_and_say_so(tiny_model):
    plan = resolve_plan(TrainConfig(model=tiny_model, activation_memory_gb=0), tiny_model, on="cpu")
    assert plan.keep_attention and plan.describe().endswith(", attention kept through the recompute")
    assert not resolve_plan(TrainConfig(model=tiny_model, gradient_checkpointing=False), tiny_model,
                            on="cpu").keep_attention
    assert not resolve_plan(TrainConfig(model=tiny_model), tiny_model, on="cuda").keep_attention


def test_the_attention_op_is_kept_and_gradients_equal_plain_checkpointing(tiny_model, monkeypatch):
    kept = []
    policy = recompute.keep_attention_policy

    def counting(ops):
        inner = policy(ops)

        def decide(ctx, op, *args, **kwargs):
            out = inner(ctx, op, *args, **kwargs)
            if op in ops:
                kept.append(str(op))
            return out

        return decide

    monkeypatch.setattr(recompute, "keep_attention_policy", counting)
    keeping = lora_model(tiny_model, keep_attention=True)
    plain = lora_model(tiny_model, keep_attention=False)
    none = lora_model(tiny_model, keep_attention=False, gradient_checkpointing=False)
    (l1, g1), (l2, g2), (l3, g3) = loss_and_grads(keeping), loss_and_grads(plain), loss_and_grads(none)
    assert kept, "no attention op was kept: SDPA's op on this torch is not in recompute.ATTENTION_OPS"
    assert l1 == pytest.approx(l2, abs=1e-6) and l1 == pytest.approx(l3, abs=1e-6)
    assert g1.keys() == g2.keys() == g3.keys() and len(g1) == 2 * 7 * 2
    for name, grad in g1.items():
        torch.testing.assert_close(grad, g2[name], rtol=1e-3, atol=1e-5, msg=name)
        torch.testing.assert_close(grad, g3[name], rtol=1e-3, atol=1e-5, msg=name)
