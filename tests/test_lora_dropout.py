"""LoRA's cheap dropout (pipeline/train/dropout.py): nn.Dropout's distribution, torch's RNG (so checkpointing's
recompute draws the same masks), a bool mask for backward, and nothing of it in the saved adapter."""

import pipeline.train  # noqa: F401, I001 -- first: sets OMP_WAIT_POLICY before torch loads
import json
import math

import pytest
import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.train.dropout import LoraDropout, MaskedScale, effective_p, keep_mask, use_cheap_lora_dropout
from pipeline.train.model import load_for_training, resolve_plan


def bound(p: float, n: int) -> float:
    return 6 * math.sqrt(p * (1 - p) / n)  # six standard deviations of a drop rate over n elements


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_is_p_and_survivors_are_scaled_by_one_over_one_minus_p(p):
    torch.manual_seed(0)
    x = torch.full((1000, 1003), 2.0)  # not a multiple of 4 elements: the last int64's spare lanes are cut
    y = LoraDropout(p).train()(x)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < bound(p, x.numel()), dropped
    assert abs(effective_p(p) - p) <= 0.5 / 65536
    survivors = y[y != 0]
    assert torch.all(survivors == torch.tensor(2.0 / (1 - effective_p(p))))
    # every one of the four int16 lanes of each int64 draws the same rate (random_ without its full range would
    # leave the top lane 15 bits: never below zero, so never dropped at p <= 0.5)
    flat = (y == 0).flatten()[: x.numel() // 4 * 4].view(-1, 4).double().mean(0)
    assert all(abs(rate - p) < bound(p, x.numel() // 4) for rate in flat.tolist()), flat


def test_masks_come_from_torchs_generator_and_differ_call_to_call():
    torch.manual_seed(7)
    first, second = keep_mask(torch.Size([64, 64]), 0.3, torch.device("cpu")), keep_mask(torch.Size([64, 64]), 0.3,
                                                                                         torch.device("cpu"))
    torch.manual_seed(7)
    assert torch.equal(first, keep_mask(torch.Size([64, 64]), 0.3, torch.device("cpu")))
    assert not torch.equal(first, second) and first.dtype == torch.bool


def test_eval_mode_is_the_identity_and_p_zero_is_refused():
    x = torch.randn(3, 5)
    assert LoraDropout(0.05).eval()(x) is x
    for p in (0.0, 1.0):
        with pytest.raises(ValueError, match="0 < p < 1"):
            LoraDropout(p)


def test_backward_redraws_the_forwards_mask_saves_no_tensor_and_leaves_the_generator_alone():
    torch.manual_seed(1)
    x = torch.randn(40, 30).add_(5).requires_grad_()  # no zero inputs: a zero output is a dropped element
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = LoraDropout(0.2).train()(x)
    assert saved == []  # no mask kept: backward draws it again
    kept = y != 0
    torch.randn(17)  # the generator moves on between forward and backward, as the rest of a model's forward does
    after = torch.get_rng_state()
    g = torch.randn_like(y)
    state = torch.get_rng_state()
    y.backward(g)
    assert torch.equal(x.grad, torch.where(kept, g * (1 / (1 - effective_p(0.2))), 0))
    assert torch.equal(torch.get_rng_state(), state) and not torch.equal(after, state)  # backward's redraw restored it
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        MaskedScale.apply(x, keep_mask(x.shape, 0.2, x.device), 1.25)  # an explicit mask (non-CPU tensors) is kept
    assert [t.dtype for t in saved] == [torch.bool]


def lora_model(tiny_model, **cfg_kw):
    cfg = TrainConfig(model=tiny_model, **{"activation_memory_gb": 0, "compute_dtype": "fp32", **cfg_kw})
    torch.manual_seed(3)  # the same LoRA init in every load
    model = load_for_training(tiny_model, cfg, resolve_plan(cfg, tiny_model, on="cpu"))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # LoRA-B starts at zero, which would leave LoRA-A's gradient zero whatever the mask
            param.data = torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05
    return model.train()


def lora_grads(model, seed):
    torch.manual_seed(seed)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_checkpointing_recomputes_the_same_masks_so_gradients_equal_those_without_it(tiny_model):
    """Checkpointing restores torch's RNG state before recomputing a layer; the masks must come from that RNG."""
    on, off = lora_model(tiny_model), lora_model(tiny_model, gradient_checkpointing=False)
    assert on.get_base_model().model.layers[0].gradient_checkpointing
    assert not off.get_base_model().model.layers[0].gradient_checkpointing
    assert sum(isinstance(m, LoraDropout) for m in on.modules()) == 2 * 7  # 2 layers x 7 LoRA layers, every one
    with_ckpt, without = lora_grads(on, seed=11), lora_grads(off, seed=11)
    assert with_ckpt.keys() == without.keys() and len(with_ckpt) == 2 * 7 * 2
    for name, grad in with_ckpt.items():
        torch.testing.assert_close(grad, without[name], rtol=1e-5, atol=1e-7, msg=name)
    other = lora_grads(lora_model(tiny_model, gradient_checkpointing=False), seed=12)  # the dropout does matter
    assert any(not torch.allclose(other[n], g, rtol=1e-3, atol=1e-6) for n, g in without.items())


def test_on_a_bf16_base_lora_inputs_skip_pefts_fp32_round_trip_with_the_same_numbers(tiny_model):
    """trainer.LoraTrainer(lora_inputs_as_is): peft's cast of each LoRA input to fp32 and autocast's back to bf16 are
    skipped; the loss and every LoRA gradient stay bit for bit, the dropout included."""
    from peft.helpers import disable_input_dtype_casting

    model = lora_model(tiny_model, compute_dtype="bf16", gradient_checkpointing=False)
    seen = []
    hook = model.get_base_model().model.layers[0].mlp.down_proj.lora_dropout["default"].register_forward_hook(
        lambda module, args, out: seen.append(args[0].dtype))
    results = []
    for as_is in (False, True):
        model.zero_grad()
        with disable_input_dtype_casting(model, active=as_is), torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(lora_grads(model, seed=11))
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]  # the dropout ran on fp32 copies, then on the bf16 input itself
    cast, as_is = results
    assert cast.keys() == as_is.keys() and len(cast) == 2 * 7 * 2
    assert all(torch.equal(cast[n], as_is[n]) for n in cast)


def test_p_zero_keeps_peft_identity_and_the_saved_adapter_is_plain_peft(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert sum(isinstance(m, LoraDropout) for m in lora_model(tiny_model, lora_dropout=0.0).modules()) == 0
    model = lora_model(tiny_model)
    assert use_cheap_lora_dropout(model) == 0  # already replaced: nothing is nn.Dropout any more
    model.save_pretrained(tmp_path / "cheap")
    plain = lora_model(tiny_model)
    for module in plain.modules():  # back to peft's own modules, as a GPU run would have them
        if isinstance(getattr(module, "lora_dropout", None), nn.ModuleDict):
            for key in list(module.lora_dropout.keys()):
                module.lora_dropout[key] = nn.Dropout(0.05)
    plain.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "cheap" / "adapter_config.json").read_text()) == \
        json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    from safetensors.torch import load_file

    cheap_state = load_file(tmp_path / "cheap" / "adapter_model.safetensors")
    assert cheap_state.keys() == load_file(tmp_path / "plain" / "adapter_model.safetensors").keys()
    assert all("lora_A" in k or "lora_B" in k for k in cheap_state)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "cheap"))
    assert not any(isinstance(m, LoraDropout) for m in loaded.modules())
    assert any(type(m) is nn.Dropout and m.p == 0.05 for m in loaded.modules())
    trained = dict(model.named_parameters())
    for name, param in loaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, trained[name]), name
