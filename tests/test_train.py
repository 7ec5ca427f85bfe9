"""The QLoRA trainer on CPU: pure helpers, label masking, packing, and a real (2-layer) SmolLM2 trained for a few steps.

The model is the embedded SmolLM2-135M-Instruct cut to 2 of its 30 layers: same tokenizer,
chat template, tied embeddings and pad == eos, a fifteenth of the compute.
"""

import pipeline.train  # noqa: F401, I001 -- first: sets OMP_WAIT_POLICY before torch loads (2 busy cores: ~4x faster)
import dataclasses
import json
import math
import random
import re
import statistics
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipeline.config import EvalConfig, TrainConfig
from pipeline.train.data import (
    IGNORE_INDEX,
    Collator,
    has_target,
    pack,
    prompt_text,
    render_segments,
    tokenize_example,
)
from pipeline.train.dropout import LoraDropout
from pipeline.train.loss import causal_lm_loss_sum, full_logits_loss_sum
from pipeline.errors import InputError, Seed2LoraError
from pipeline.train import model as model_module
from pipeline.train.model import compute_dtype, get_peft_config, get_quantization_config, resolve_plan
from pipeline.train.trainer import same_model_path

ROWS = [{"instruction": f"What colour is item number {i}?", "input": "",
         "output": f"Item {i} is {c}."} for i, c in enumerate(["red", "blue", "green", "black"] * 3)]


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from pipeline.train.model import load_tokenizer

    return load_tokenizer(tiny_model)


def quick_config(model, out, **kw):
    """Few short steps at a high rate, so a 2-layer model's loss moves within seconds."""
    base = dict(model=model, output_dir=str(out), max_steps=8, batch_size=4, grad_accum=1, learning_rate=2e-3,
                warmup_ratio=0.0, max_seq_len=128, eval_steps=1000, save_steps=8, seed=0)
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- pure helpers


def test_defaults_are_the_qlora_recipe():
    cfg = TrainConfig()
    assert (cfg.quant, cfg.quant_type, cfg.double_quant, cfg.optim, cfg.loss_chunk_tokens) == ("auto", "nf4", True,
                                                                                                "auto", 0)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets) == (64, 16, 0.05, "all-linear")
    assert (cfg.learning_rate, cfg.lr_scheduler, cfg.warmup_ratio, cfg.max_grad_norm) == \
        (2e-4, "constant_with_warmup", 0.03, 0.3)
    assert cfg.gradient_checkpointing and not cfg.trust_remote_code and cfg.model == ""
    assert compute_dtype("auto", on="cpu") == torch.float32


def test_on_a_gpu_auto_is_qlora_with_bf16_compute_and_paged_adam(tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    plan = resolve_plan(TrainConfig(), tiny_model, on="cuda:0")
    assert (plan.quant, plan.load_dtype, plan.autocast_bf16, plan.optim, plan.loss_chunk_tokens) == \
        (True, torch.bfloat16, True, "paged_adamw_32bit", 1024)
    assert plan.describe() == "QLoRA on an NF4 base, bf16 compute on cuda:0, paged_adamw_32bit"
    assert not resolve_plan(TrainConfig(quant="none"), tiny_model, on="cuda:0").quant
    assert not plan.cheap_dropout  # CUDA keeps peft's nn.Dropout (one fused kernel there)


def test_on_cpu_auto_is_lora_on_a_bf16_base_under_bf16_autocast_with_adamw_torch(tiny_model, monkeypatch):
    monkeypatch.setattr(model_module, "cpu_has_bf16", lambda: True)
    plan = resolve_plan(TrainConfig(), tiny_model, on="cpu")
    assert (plan.quant, plan.load_dtype, plan.autocast_bf16, plan.optim, plan.loss_chunk_tokens) == \
        (False, torch.bfloat16, True, "adamw_torch", 256)
    # the 2-layer model's 4 rows of 1,024 tokens fit activation_memory_gb whole: no checkpointing, no split
    assert (plan.checkpointing, plan.micro_rows, plan.keep_attention) == (False, 4, False)
    assert plan.describe() == "LoRA on a bf16 base, bf16 autocast on CPU, adamw_torch, LoRA dropout from 16-bit " \
                              "masks, 4 row(s) a forward pass without checkpointing"
    assert "unquantized" in plan.why and "bf16 base needs" in plan.why
    # 4-bit stays selectable on CPU (the GPU recipe, tested here), and computes in fp32 there
    four = resolve_plan(TrainConfig(quant="4bit", optim="paged_adamw_32bit", activation_memory_gb=0), tiny_model,
                        on="cpu")
    assert (four.quant, four.load_dtype, four.autocast_bf16, four.optim) == (True, torch.float32, False,
                                                                              "paged_adamw_32bit")
    assert four.describe() == "QLoRA on an NF4 base, fp32 compute on CPU, paged_adamw_32bit, LoRA dropout from 16-bit " \
                              "masks, attention kept through the recompute"
    assert resolve_plan(TrainConfig(loss_chunk_tokens=64), tiny_model, on="cpu").loss_chunk_tokens == 64


def test_cpu_micro_batches_are_the_largest_divisor_of_the_batch_whose_activations_fit(tiny_model):
    per_token = model_module.activation_bytes_per_token(tiny_model, torch.bfloat16)
    assert per_token == 2 * (48 * 576 + 11 * 1536)  # 2 layers, 576 wide, 1,536 inner
    assert model_module.activation_bytes_per_token(tiny_model, torch.float32) == 2 * per_token
    row = per_token * 100  # rows of 100 tokens

    def plan(budget_rows, **kw):
        cfg = TrainConfig(batch_size=6, activation_memory_gb=budget_rows * row / 2**30, compute_dtype="bf16", **kw)
        return resolve_plan(cfg, tiny_model, on="cpu", row_tokens=100)

    assert (plan(6.5).micro_rows, plan(6.5).checkpointing) == (6, False)  # the whole batch fits
    assert [plan(n).micro_rows for n in (5.9, 4, 3, 2.5, 1)] == [3, 3, 3, 2, 1]  # divisors of 6 only
    short = plan(0.5)  # not one row fits: checkpointing, attention kept
    assert (short.micro_rows, short.checkpointing, short.keep_attention) == (0, True, True)
    assert not plan(6.5, gradient_checkpointing=False).micro_rows  # off means off: no split either
    assert not resolve_plan(TrainConfig(), tiny_model, on="cuda:0").micro_rows  # CUDA as configured
    assert resolve_plan(TrainConfig(), tiny_model, on="cuda:0").checkpointing
    assert same_model_path(plan(2).describe()) == same_model_path(short.describe())  # checkpoints resume across
    off = plan(6.5, gradient_checkpointing=False)  # the path said nothing: neither split nor recompute
    assert off.describe().endswith("masks, without gradient checkpointing (train.gradient_checkpointing=false)")
    assert resolve_plan(TrainConfig(gradient_checkpointing=False), tiny_model, on="cuda:0").describe().endswith(
        "paged_adamw_32bit, without gradient checkpointing (train.gradient_checkpointing=false)")
    assert same_model_path(off.describe()) == same_model_path(short.describe())  # and resume across


def test_micro_batches_make_the_update_the_whole_batch_makes(tiny_model, tmp_path):
    """Trainer averages the loss over all micro-batches' tokens, so the split changes no gradient: with SGD
    (the update is the gradient) and no clipping or dropout, one update on 4 rows as 1, 2 or 4 rows a pass,
    and with checkpointing, lands on the same LoRA weights."""
    from pipeline.train.trainer import fit, prepare

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    per_row, weights = 0, {}
    for name, budget in (("checkpointed", 0), ("1", 1.5), ("2", 2.5), ("4", 4.5)):
        cfg = quick_config(tiny_model, tmp_path / name, max_steps=1, max_seq_len=128, eval_fraction=0.0,
                           optim="sgd", max_grad_norm=0.0, lora_dropout=0.0, compute_dtype="fp32", learning_rate=1.0,
                           activation_memory_gb=budget * per_row / 2**30)
        prepared = prepare(data, cfg, log=lambda m: None)
        longest = max(len(r["input_ids"]) for r in prepared.trainer.train_dataset)  # what the plan sizes by
        per_row = model_module.activation_bytes_per_token(tiny_model, torch.float32) * longest
        assert prepared.trainer.args.per_device_train_batch_size * prepared.trainer.args.gradient_accumulation_steps == 4
        assert prepared.stats["training_path"].endswith(
            "attention kept through the recompute" if name == "checkpointed" else f", {name} row(s) a forward pass "
            "without checkpointing")
        fit(prepared, log=lambda m: None)
        weights[name] = {n: p.detach().clone() for n, p in prepared.trainer.model.named_parameters() if "lora_B" in n}
    assert any(w.abs().sum() > 0 for w in weights["4"].values())  # the update moved LoRA-B off zero
    for name in ("1", "2", "4"):
        for n, w in weights["checkpointed"].items():
            torch.testing.assert_close(weights[name][n], w, rtol=1e-4, atol=1e-6)


def test_without_bf16_instructions_the_cpu_trains_in_fp32(tiny_model, monkeypatch):
    monkeypatch.setattr(model_module, "cpu_has_bf16", lambda: False)
    plan = resolve_plan(TrainConfig(activation_memory_gb=0), tiny_model, on="cpu")
    assert (plan.quant, plan.load_dtype, plan.autocast_bf16) == (False, torch.float32, False)
    assert plan.describe() == "LoRA on an fp32 base, fp32 compute on CPU, adamw_torch, LoRA dropout from 16-bit masks, " \
                              "attention kept through the recompute"
    # the capability check itself: torch's private probes, and a torch without them counts as no bf16
    monkeypatch.undo()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert model_module.cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert model_module.cpu_has_bf16() is True
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert model_module.cpu_has_bf16() is False


def test_on_cpu_a_base_too_large_for_memory_is_loaded_in_4bit(tiny_model, monkeypatch):
    weights = model_module.base_weight_bytes(tiny_model)  # in fp32
    assert weights > 0 and model_module.base_weight_bytes(tiny_model, 2) == weights // 2
    monkeypatch.setattr(model_module, "cpu_has_bf16", lambda: False)  # the unquantized base would be fp32
    monkeypatch.setattr(model_module, "available_memory_bytes", lambda: int(1.5 * weights))
    plan = resolve_plan(TrainConfig(), tiny_model, on="cpu")
    assert plan.quant and not plan.autocast_bf16 and "fp32 base needs" in plan.why and "4-bit" in plan.why
    monkeypatch.setattr(model_module, "cpu_has_bf16", lambda: True)  # a bf16 base takes half: it fits
    plan = resolve_plan(TrainConfig(), tiny_model, on="cpu")
    assert not plan.quant and plan.load_dtype == torch.bfloat16 and "bf16 base needs" in plan.why
    monkeypatch.setattr(model_module, "available_memory_bytes", lambda: int(0.8 * weights))
    assert resolve_plan(TrainConfig(), tiny_model, on="cpu").quant
    monkeypatch.setattr(model_module, "available_memory_bytes", lambda: 3 * weights)
    assert not resolve_plan(TrainConfig(), tiny_model, on="cpu").quant
    assert not resolve_plan(TrainConfig(quant="none"), tiny_model, on="cpu").quant  # as asked, whatever the memory


def test_quant_written_as_a_bool_still_works(tmp_path):
    from pipeline.config import config_from_dict, current_values, load_section, parse_overrides

    assert TrainConfig(quant=False).quant == "none" and TrainConfig(quant=True).quant == "4bit"
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nquant = false\n")
    assert load_section(TrainConfig, toml, "train", {}).quant == "none"
    toml.write_text("[train]\nquant = true\n")
    assert load_section(TrainConfig, toml, "train", {}).quant == "4bit"
    assert parse_overrides(["train.quant=false"]) == {"train.quant": "none"}
    assert config_from_dict(TrainConfig, {"quant": True, "lora_r": 8}).quant == "4bit"  # a recorded summary's config
    assert current_values(TrainConfig, {"quant": False, "packing": False}) == {"quant": "none", "packing": False}
    toml.write_text("[train]\nquant = \"8bit\"\n")
    with pytest.raises(InputError, match=r"c.toml:2: \[train\] quant = \"8bit\": expected one of auto, 4bit, none"):
        load_section(TrainConfig, toml, "train", {})


def test_quantization_and_peft_configs():
    q = get_quantization_config(TrainConfig(quant="4bit"), torch.bfloat16)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert get_quantization_config(TrainConfig(quant="none"), torch.float32) is None
    with pytest.raises(ValueError, match="resolve_plan"):
        get_quantization_config(TrainConfig(), torch.float32)  # auto depends on the machine: resolved first
    lora = get_peft_config(TrainConfig())
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.target_modules) == (64, 16, 0.05, "all-linear")
    assert get_peft_config(TrainConfig(lora_targets="q_proj, v_proj")).target_modules == {"q_proj", "v_proj"}


def test_training_arguments_carry_the_defaults(tmp_path):
    from pipeline.train.trainer import training_arguments

    args = training_arguments(TrainConfig(), tmp_path, bf16=True, use_cpu=True, has_eval=True, optim="adamw_torch")
    assert (args.optim, args.lr_scheduler_type, args.max_grad_norm, args.learning_rate, args.bf16) == \
        ("adamw_torch", "constant_with_warmup", 0.3, 2e-4, True)
    assert args.get_warmup_steps(100) == 3 and args.train_sampling_strategy == "group_by_length"
    assert training_arguments(TrainConfig(packing=True), tmp_path, bf16=False, use_cpu=True, has_eval=False,
                              optim="adamw_torch").train_sampling_strategy == "random"


def test_warmup_is_rounded_down_and_leaves_an_update_at_the_full_rate():
    from pipeline.train.trainer import warmup_steps

    assert [warmup_steps(0.03, n) for n in (1, 2, 33, 34, 100)] == [0, 0, 0, 1, 3]  # Trainer's ceil: 1, 1, 1, 2, 3
    assert (warmup_steps(1.0, 10), warmup_steps(0.5, 2), warmup_steps(0.29, 100), warmup_steps(0.0, 5)) == (9, 1, 29, 0)


def test_pack_keeps_examples_whole_and_restarts_positions():
    rng = random.Random(0)
    examples = [{"input_ids": list(range(100 * k, 100 * k + n)), "labels": [IGNORE_INDEX] * 2 + list(range(n - 2))}
                for k, n in enumerate(rng.randint(3, 40) for _ in range(30))]
    rows = pack(examples, 64)
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    assert sorted(t for r in rows for t in r["input_ids"]) == sorted(t for e in examples for t in e["input_ids"])
    assert len(rows) <= -(-sum(len(e["input_ids"]) for e in examples) // 64) + 2  # nearly full rows
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        for s in starts:  # every example starts at position 0 and is never predicted from the one before it
            assert r["labels"][s] == IGNORE_INDEX and r["input_ids"][s] % 100 == 0


def test_collator_pads_plain_rows_with_a_mask_and_packed_rows_with_positions():
    plain = Collator(pad_token_id=2, pad_to_multiple_of=4)([{"input_ids": [5, 6, 2], "labels": [-100, 6, 2]},
                                                            {"input_ids": [7], "labels": [7]}])
    assert plain["input_ids"].tolist() == [[5, 6, 2, 2], [7, 2, 2, 2]]
    assert plain["labels"].tolist() == [[-100, 6, 2, -100], [7, -100, -100, -100]]  # the real EOS keeps its label
    assert plain["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]] and "position_ids" not in plain
    packed = Collator(pad_token_id=2, pad_to_multiple_of=1)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7],
                                                              "position_ids": [0, 1, 0]}, {"input_ids": [8], "labels": [8],
                                                                                           "position_ids": [0]}])
    assert packed["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]] and "attention_mask" not in packed
    assert int(packed["num_tokens"]) == 4


def test_chunked_loss_equals_full_logits_loss_with_the_same_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[:, :4] = IGNORE_INDEX
    labels[2, 7:] = IGNORE_INDEX
    chunked, n = causal_lm_loss_sum(hidden, labels, head, chunk_tokens=5, fused=False)
    (g_chunked,) = torch.autograd.grad(chunked, hidden)
    full, m = full_logits_loss_sum(head(hidden), labels)
    (g_full,) = torch.autograd.grad(full, hidden)
    assert n == m == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(g_chunked, g_full)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("head_trains", [False, True])
def test_fused_loss_equals_full_logits_loss_with_the_same_gradients(softcap, head_trains):
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight.requires_grad_(head_trains)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[:, :4] = IGNORE_INDEX  # the prompt: never a target
    labels[2, 7:] = IGNORE_INDEX
    wrt = [hidden, head.weight] if head_trains else [hidden]
    fused, n = causal_lm_loss_sum(hidden, labels, head, chunk_tokens=5, softcap=softcap)
    assert fused.grad_fn is not None and "FusedLinearCrossEntropy" in type(fused.grad_fn).__name__
    g_fused = torch.autograd.grad(0.7 * fused, wrt)
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    full, m = full_logits_loss_sum(logits, labels)
    g_full = torch.autograd.grad(0.7 * full, wrt)
    assert n == m == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(fused, full)
    for a, b in zip(g_fused, g_full, strict=True):
        torch.testing.assert_close(a, b)
    assert g_fused[0][:, :3].abs().sum() == 0  # masked prompt positions get no gradient
    assert g_fused[0][2, 6:].abs().sum() == 0  # nor do the positions after the last label


def test_the_last_chunk_reaches_the_head_padded_to_a_few_lengths_and_the_loss_is_the_same():
    """oneDNN keeps a matmul per shape: a last chunk of a new length every micro-batch grew a CPU run's RSS by
    ~10 MB a micro-batch. The head now sees whole chunks or multiples of TAIL_ROWS, and the padding rows add
    nothing to the loss or to any gradient, fused or checkpointed."""
    from pipeline.train.loss import TAIL_ROWS

    class Recording(torch.nn.Linear):  # not a plain Linear: the checkpointed path
        seen: list[int] = []

        def forward(self, x):
            self.seen.append(x.shape[0])
            return super().forward(x)

    torch.manual_seed(2)
    for length in (2, 64, 65, 130, 257, 300):
        hidden = torch.randn(1, length, 16, requires_grad=True)
        labels = torch.randint(0, 50, (1, length))
        head = Recording(16, 50, bias=False)
        plain = torch.nn.Linear(16, 50, bias=False)
        plain.weight.data.copy_(head.weight.data)
        full, n = full_logits_loss_sum(plain(hidden), labels)
        (g_full,) = torch.autograd.grad(full, hidden)
        for chunked_head, fused in ((head, False), (plain, True)):
            loss, m = causal_lm_loss_sum(hidden, labels, chunked_head, chunk_tokens=256, fused=fused)
            (g,) = torch.autograd.grad(loss, hidden)
            assert m == n == length - 1
            torch.testing.assert_close(loss, full)
            torch.testing.assert_close(g, g_full)
        assert Recording.seen and all(r == 256 or r % TAIL_ROWS == 0 for r in Recording.seen), Recording.seen
        Recording.seen.clear()


def test_a_head_with_a_bias_or_lora_takes_the_checkpointed_path():
    from pipeline.train.loss import can_fuse

    assert can_fuse(torch.nn.Linear(4, 5, bias=False)) and not can_fuse(torch.nn.Linear(4, 5))


# ---------------------------------------------------------------- templating on the real tokenizer


def test_labels_mask_the_prompt_and_keep_eos_although_pad_is_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: pad == eos == <|im_end|>
    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    ex = tokenize_example(tokenizer, msgs)
    learned = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "Blue.<|im_end|>\n"
    assert tokenizer.eos_token_id in learned
    n_prompt = ex["labels"].index(learned[0])
    assert tokenizer.decode(ex["input_ids"][:n_prompt]) == prompt_text(tokenizer, msgs[:1])
    assert all(t == IGNORE_INDEX for t in ex["labels"][:n_prompt])
    assert ex["input_ids"][n_prompt:] == learned  # everything after the prompt is learned
    # A padded batch still learns that EOS.
    batch = Collator(tokenizer.pad_token_id)([ex, tokenize_example(tokenizer, [msgs[0], {"role": "assistant",
                                                                                         "content": "A long answer."}])])
    assert (batch["labels"] == tokenizer.eos_token_id).sum() == 2


def test_every_assistant_turn_is_learned(tokenizer):
    msgs = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye."}, {"role": "assistant", "content": "Goodbye!"}]
    assert [text for text, learn in render_segments(tokenizer, msgs) if learn] == \
        ["Hello!<|im_end|>\n", "Goodbye!<|im_end|>\n"]


def test_alpaca_template_when_the_tokenizer_has_no_chat_template(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    assert prompt_text(plain, msgs[:1]) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a colour.\n\n### Response:\n")
    ex = tokenize_example(plain, msgs)
    learned = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert learned[-1] == plain.eos_token_id and plain.decode(learned[:-1]) == "Blue."
    assert not has_target({"input_ids": [1, 2], "labels": [IGNORE_INDEX, IGNORE_INDEX]})


def test_packed_examples_do_not_attend_to_each_other(tiny_model, tokenizer):
    from pipeline.train.model import load_base

    model = load_base(tiny_model, quant_config=None, dtype=torch.float32).eval()
    a, b = (tokenize_example(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": r}])
            for q, r in (("First question here?", "First answer."), ("Second?", "Second answer, longer.")))
    row = pack([a, b], 256)
    assert len(row) == 1
    batch = Collator(tokenizer.pad_token_id, pad_to_multiple_of=1)(row)
    with torch.no_grad():  # use_cache=False, as in training: transformers reads packing from position_ids only then
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([x["input_ids"]])).logits[0] for x in (a, b)]
    split = row[0]["position_ids"].index(0, 1)  # start of the second packed example
    first, second = (alone[0], alone[1]) if len(a["input_ids"]) == split else (alone[1], alone[0])
    torch.testing.assert_close(packed[:split], first, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed[split:], second, atol=1e-4, rtol=1e-4)


def test_an_inference_forward_leaves_the_4bit_base_as_loaded(tiny_model):
    """The trap: bitsandbytes used to repack weights on CPU at the first eval-mode forward (e.g. generate())."""
    import bitsandbytes as bnb

    from pipeline.train.model import get_quantization_config, load_base

    model = load_base(tiny_model, quant_config=get_quantization_config(TrainConfig(quant="4bit"), torch.float32),
                      dtype=torch.float32)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    before = [(m.weight.data.clone(), m.weight.quant_state.absmax.clone()) for m in layers]
    with torch.no_grad():
        model.eval()(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(torch.equal(w, m.weight.data) and torch.equal(a, m.weight.quant_state.absmax)
               for (w, a), m in zip(before, layers, strict=True))


# ---------------------------------------------------------------- training a real model


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    from pipeline.train.trainer import fit, prepare

    root = tmp_path_factory.mktemp("train")
    data = root / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    # The GPU default (QLoRA, paged AdamW) asked for by name: auto would not pick it on CPU
    cfg = quick_config(tiny_model, root / "adapter", eval_fraction=0.25, quant="4bit", optim="paged_adamw_32bit")
    prepared = prepare(data, cfg, log=lambda m: None)
    before = {n: p.detach().clone() for n, p in prepared.trainer.model.named_parameters() if p.requires_grad}
    summary = fit(prepared, log=lambda m: None)
    return prepared, summary, before, data


def test_qlora_loss_falls_and_lora_weights_change(trained):
    prepared, summary, before, _ = trained
    import bitsandbytes as bnb

    base = prepared.trainer.model.get_base_model()
    assert isinstance(base.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)  # really 4-bit
    losses = [v for _, v in summary["train_loss"]["points"]]
    assert len(losses) == 8 and summary["steps"] == 8
    assert min(losses[-3:]) < losses[0] - 0.5, losses
    after = dict(prepared.trainer.model.named_parameters())
    assert before and all("lora_" in n for n in before)
    changed = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
    assert len(changed) == len(before)  # every LoRA matrix moved, LoRA-B away from its zero init included
    assert all(after[n].abs().sum() > 0 for n in before if "lora_B" in n)


def test_one_update_with_the_default_warmup_trains(tiny_model, tmp_path):
    """train.max_steps=1 (or a dataset of one batch) with warmup_ratio 0.03: Trainer rounded the warmup up to the one
    update, whose learning rate a warmup starts at 0, and the adapter written was the base's."""
    from pipeline.train.trainer import fit, prepare

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    cfg = quick_config(tiny_model, tmp_path / "adapter", max_steps=1, eval_fraction=0.0, quant="none",
                       warmup_ratio=TrainConfig().warmup_ratio)
    prepared = prepare(data, cfg, log=lambda m: None)
    summary = fit(prepared, log=lambda m: None)
    assert summary["steps"] == 1 and [h["learning_rate"] for h in summary["log_history"] if "loss" in h] == [2e-3]
    lora_b = {n: p for n, p in prepared.trainer.model.named_parameters() if "lora_B" in n}
    # LoRA-B off its zero init: the adapter is no longer the base (LoRA-A's first gradient is 0, with B at 0)
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())


def test_the_cpu_default_trains_lora_on_a_bf16_base_under_bf16_autocast(tiny_model, tmp_path, monkeypatch):
    """quant, compute_dtype and optim at auto on CPU (bf16 instructions assumed, so the path runs on any CPU)."""
    from pipeline.train.model_card import model_card
    from pipeline.train.trainer import fit, prepare

    monkeypatch.setattr(model_module, "cpu_has_bf16", lambda: True)
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    lines = []
    prepared = prepare(data, quick_config(tiny_model, tmp_path / "adapter", eval_fraction=0.25), log=lines.append)
    trainer = prepared.trainer
    assert trainer.args.bf16 and trainer.args.optim == "adamw_torch" and trainer.autocast_bf16
    assert trainer.lora_inputs_as_is  # bf16 LoRA inputs, not peft's fp32 copies (tests/test_lora_dropout.py)
    assert trainer.loss_chunk_tokens == 256
    base = trainer.model.get_base_model()
    assert type(base.model.layers[0].self_attn.q_proj.base_layer) is torch.nn.Linear  # not 4-bit
    assert base.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    assert type(base.model.layers[0].self_attn.q_proj.lora_dropout["default"]) is LoraDropout  # 16-bit masks
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all(p.dtype == torch.float32 for p in before.values())  # fp32 LoRA weights, fp32 Adam
    summary = fit(prepared, log=lines.append)
    path = ("LoRA on a bf16 base, bf16 autocast on CPU, adamw_torch, LoRA dropout from 16-bit masks, "
            "4 row(s) a forward pass without checkpointing")
    assert summary["training_path"] == path and not summary["quantized"] and summary["autocast_bf16"]
    assert any(path in m for m in lines)  # said before training starts
    losses = [v for _, v in summary["train_loss"]["points"]]
    assert min(losses[-3:]) < losses[0] - 0.5, losses
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(p, after[n].detach()) for n, p in before.items())  # every LoRA matrix moved
    assert all(after[n].dtype == torch.float32 for n in before)
    saved = json.loads((prepared.out / "training_summary.json").read_text())
    assert saved["training_path"] == path and saved["optim"] == "adamw_torch"
    card = model_card(prepared.out, {"base_model": tiny_model, "run": ""}, {"architectures": ["LlamaForCausalLM"]}, {},
                      ("a.gguf", "f16"))
    assert f"training rows, {path}; loss" in card and "(a.gguf, f16) for llama.cpp" in card
    assert f"training rows, {path}; loss" in (prepared.out / "README.md").read_text()  # the folder's own card


def test_the_cpu_default_with_checkpointing_trains_on_the_bf16_base(tiny_model, tmp_path, monkeypatch):
    """Rows that fit no micro-batch (activation_memory_gb 0 here; a larger model or longer rows for real) checkpoint
    on the bf16 base with LoRA inputs kept bf16: the recompute in backward must see the same ops as the forward (it
    crashed with "_to_copy ... not found in storage" when peft's fp32 cast came back for backward)."""
    from pipeline.train.trainer import fit, prepare

    monkeypatch.setattr(model_module, "cpu_has_bf16", lambda: True)
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    prepared = prepare(data, quick_config(tiny_model, tmp_path / "adapter", max_steps=2, eval_fraction=0.0,
                                          activation_memory_gb=0), log=lambda m: None)
    trainer = prepared.trainer
    assert trainer.lora_inputs_as_is and prepared.stats["training_path"].endswith("attention kept through the recompute")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    summary = fit(prepared, log=lambda m: None)
    assert summary["steps"] == 2
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(p, after[n].detach()) for n, p in before.items())  # every LoRA matrix moved


def test_the_fused_loss_under_bf16_autocast_is_the_fp32_loss_within_bf16_rounding():
    torch.manual_seed(2)
    head = torch.nn.Linear(64, 300, bias=False)
    hidden = torch.randn(2, 40, 64, requires_grad=True)
    labels = torch.randint(0, 300, (2, 40))
    full, _ = causal_lm_loss_sum(hidden, labels, head, chunk_tokens=16)
    (g_full,) = torch.autograd.grad(full, hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = causal_lm_loss_sum(hidden, labels, head, chunk_tokens=16)
    (g_mixed,) = torch.autograd.grad(mixed, hidden)
    assert mixed.dtype == torch.float32 and g_mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, rtol=2e-2, atol=0)
    torch.testing.assert_close(g_mixed, g_full, rtol=5e-2, atol=5e-3)


def test_train_flags_quant_alone_is_4bit_and_no_quant_is_none(tmp_path, monkeypatch):
    import pipeline.train.trainer as trainer_module
    from pipeline.cli import cli

    seen = []
    monkeypatch.setattr(trainer_module, "train", lambda data, cfg, **kw: seen.append(cfg) or {
        "output_dir": "x", "steps": 0, "steps_per_s": 0.0, "tokens_per_s": 0.0, "training_path": "p"})
    data = tmp_path / "d.json"
    data.write_text(json.dumps(ROWS))
    runner = CliRunner()
    for flags, want in ((["--quant"], "4bit"), (["--no-quant"], "none"), (["--quant", "none"], "none"), ([], "auto")):
        result = runner.invoke(cli, ["train", str(data), *flags])
        assert result.exit_code == 0, result.output
        assert seen[-1].quant == want, flags
    result = runner.invoke(cli, ["train", str(data), "--no-quant", "--quant", "4bit"])
    assert result.exit_code == 2 and "contradict" in result.output


def test_outputs_adapter_tokenizer_summary_and_curve(trained):
    prepared, summary, _, _ = trained
    out = prepared.out
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_summary.json",
                 "loss_curve.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "training_summary.json").read_text())
    assert saved["quantized"] and saved["eval_loss"] is not None and saved["train_data"]["examples"] == 9
    evals = saved["eval_losses"]["points"]
    assert evals[0][0] == 0 and evals[-1][0] == 8  # the base's eval loss first, then the adapter's
    assert evals[-1][1] < evals[0][1]  # it learned something that carries over to held-out rows
    assert saved["steps_per_s"] > 0 and saved["tokens_per_s"] > 0
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "README.md").read_text()  # ours, not PEFT's blank template
    assert card.startswith("---\nlibrary_name: peft\n") and "Model Card for Model ID" not in card
    assert "a LoRA adapter made by seed2lora" in card and "rank 64, alpha 16" in card and "| dataset_sha256 |" in card
    assert f"9 training rows, {saved['training_path']}; loss" in card and "gguf" not in card.split("---")[1]
    assert "seed2lora export-adapter <this folder>" in card and "## Files" not in card


def _logits(model, tokenizer):
    msgs = [{"role": "user", "content": "What colour is item number 2?"}]
    ids = tokenizer(prompt_text(tokenizer, msgs), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids).logits


def test_saved_adapter_reloads_with_the_same_logits(trained):
    from pipeline.train.model import load_with_adapter

    prepared, _, _, _ = trained
    trained_model = prepared.trainer.model.eval()
    reloaded, tok = load_with_adapter(prepared.out)
    torch.testing.assert_close(_logits(reloaded, tok), _logits(trained_model, prepared.tokenizer), atol=1e-4, rtol=1e-4)
    with reloaded.disable_adapter():  # and the adapter does something
        assert not torch.allclose(_logits(reloaded, tok), _logits(trained_model, prepared.tokenizer), atol=1e-2)


def test_merged_model_matches_base_plus_adapter(trained, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from pipeline.train.model import load_with_adapter, merge_adapter

    prepared, _, _, _ = trained
    merged_dir = merge_adapter(prepared.out, tmp_path / "merged", dtype="fp32")
    assert not hasattr(AutoConfig.from_pretrained(merged_dir), "quantization_config")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    unquantized, tok = load_with_adapter(prepared.out, quant="none")
    torch.testing.assert_close(_logits(merged, tok), _logits(unquantized, tok), atol=1e-3, rtol=1e-3)


def test_merge_refuses_to_write_over_the_adapter_or_its_base(trained, tiny_model):
    """`seed2lora merge adapter --out adapter` wrote the merged model's config.json and 538 MB model.safetensors
    into the adapter folder, beside adapter_config.json; --out the base's folder would overwrite the base every
    adapter of it needs. Both are refused before anything is loaded or written."""
    from pipeline.train.model import merge_adapter

    prepared, _, _, _ = trained
    before = sorted(p.name for p in prepared.out.iterdir())
    base_before = sorted(p.name for p in Path(tiny_model).iterdir())
    for out, says in ((prepared.out, "the adapter folder itself"), (Path(tiny_model), "the base model's folder")):
        with pytest.raises(Seed2LoraError, match=says) as err:
            merge_adapter(prepared.out, out)
        assert "Fix: --out a new folder" in str(err.value)
    assert sorted(p.name for p in prepared.out.iterdir()) == before
    assert sorted(p.name for p in Path(tiny_model).iterdir()) == base_before


def test_training_resumes_from_the_last_checkpoint(trained, tiny_model):
    from pipeline.train.trainer import train

    prepared, _, _, data = trained
    assert (prepared.out / "checkpoints" / "checkpoint-8").is_dir()
    cfg = dataclasses.replace(prepared.cfg, max_steps=10, save_steps=100)
    summary = train(data, cfg, log=lambda m: None)
    assert summary["resumed_from"].endswith("checkpoint-8") and summary["steps"] == 10
    assert [s for s, _ in summary["train_loss"]["points"]][-2:] == [9, 10]


def test_a_checkpoint_is_saved_by_time_too_so_an_interrupt_on_cpu_loses_minutes_not_fifty_updates(
        trained, tmp_path):
    """save_steps=50 at 20-60 s an update on CPU was up to 50 minutes lost to a Ctrl-C; save_every_s saves on
    time as well, through the normal path, and the run resumes from it."""
    from pipeline.train.trainer import train

    _, _, _, data = trained
    out = tmp_path / "adapter"
    cfg = dataclasses.replace(quick_config(trained[0].cfg.model, out, quant="none"), max_steps=3, save_steps=100,
                              save_every_s=1e-9)  # any time at all: a checkpoint after every update
    train(data, cfg, log=lambda m: None)
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    summary = train(data, dataclasses.replace(cfg, max_steps=4, save_every_s=0), log=lambda m: None)
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["steps"] == 4


def test_runtime_counts_every_session_up_to_the_checkpoint_resumed_from(tiny_model, tmp_path):
    """`seed2lora cost` prices training at the summary's runtime_s, which was the last session's alone: a CPU run
    trained in four sessions (two interrupted) over about 875 s was priced at 336 s. Each checkpoint now keeps the
    training seconds up to it, and a run resumed from it adds them to its own."""
    from pipeline.train.trainer import RUNTIME_FILE, train

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    out = tmp_path / "adapter"
    cfg = quick_config(tiny_model, out, quant="none", max_steps=2, save_steps=1, eval_fraction=0.0)
    first = train(data, cfg, log=lambda m: None)
    saved = json.loads((out / "checkpoints" / "checkpoint-2" / RUNTIME_FILE).read_text())["runtime_s"]
    assert first["session_runtime_s"] == first["runtime_s"] and 0 < saved <= first["runtime_s"]
    second = train(data, dataclasses.replace(cfg, max_steps=3), log=lambda m: None)
    assert second["resumed_from"].endswith("checkpoint-2")
    assert second["runtime_s"] == round(saved + second["session_runtime_s"], 2)
    assert json.loads((out / "checkpoints" / "checkpoint-3" / RUNTIME_FILE).read_text())["runtime_s"] > saved


def test_a_resumed_trainings_last_line_says_its_rate_is_this_sessions(tiny_model, tmp_path):
    """After Ctrl-C and a resume, train's last line said "3 steps, 0.154 steps/s": the rate of the resumed session's
    steps alone, read as the whole training's. It now says how many steps were this session's and gives the whole
    training's time and rate beside them."""
    from pipeline.cli import cli

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    out = tmp_path / "adapter"
    flags = ["--model", tiny_model, "--out", str(out), "--no-quant", "--batch-size", "4", "--grad-accum", "1",
             "--set", "save_steps=1", "--set", "eval_fraction=0.0", "--set", "lora_r=8"]
    runner = CliRunner()
    first = runner.invoke(cli, ["train", str(data), "--max-steps", "2", *flags])
    assert first.exit_code == 0, first.output
    assert re.search(r"done: .*\(2 steps, [\d.]+ steps/s, \d+ tokens/s; ", first.output), first.output
    second = runner.invoke(cli, ["train", str(data), "--max-steps", "3", *flags])
    assert second.exit_code == 0, second.output
    summary = json.loads((out / "training_summary.json").read_text())
    assert (summary["steps"], summary["session_steps"]) == (3, 1) and summary["resumed_from"].endswith("checkpoint-2")
    whole = f"the whole training {summary['runtime_s']:.0f} s, {3 / summary['runtime_s']:.3f} steps/s"
    assert re.search(r"done: .*\(3 steps, 1 of them this session at [\d.]+ steps/s, \d+ tokens/s; " + re.escape(whole),
                     second.output), second.output


def test_the_same_train_command_again_on_a_finished_adapter_trains_nothing(tiny_model, tmp_path):
    """`seed2lora train DATA --max-steps 6` run a second time resumed from checkpoint-6 and trained a 7th update
    ("step 7/6", "steps: 1/0"): Trainer counts the updates only after one, so a checkpoint that holds every planned
    update still got one more, and the adapter (and the eval, merge and GGUF made from it) changed under the user.
    A finished adapter is kept, and the log says so and how to train further."""
    from pipeline.train.trainer import train

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    out = tmp_path / "adapter"
    cfg = quick_config(tiny_model, out, quant="none", max_steps=2, save_steps=1, eval_fraction=0.0)
    first = train(data, cfg, log=lambda m: None)
    weights = (out / "adapter_model.safetensors").read_bytes()
    said = []
    again = train(data, cfg, log=said.append)
    assert again["steps"] == first["steps"] == 2
    assert (out / "adapter_model.safetensors").read_bytes() == weights
    assert not (out / "checkpoints" / "checkpoint-3").exists()
    assert any("already trained" in m and "--max-steps" in m for m in said), said
    more = train(data, dataclasses.replace(cfg, max_steps=3), log=lambda m: None)  # a longer run still goes on
    assert more["steps"] == 3 and more["resumed_from"].endswith("checkpoint-2")


@pytest.mark.parametrize("command", [["eval"], ["generate", "X", "hi"], ["merge"], ["export-adapter", "--format", "gguf"],
                                     ["serve", "--dry-run"]])
def test_an_interrupted_trainings_folder_is_named_as_such_with_the_resume_command(tmp_path, command):
    """After Ctrl-C, the adapter folder holds checkpoints/ but no adapter yet; eval, generate, merge, export-adapter
    and serve said it "is not an adapter folder ... Fix: give the output folder of `seed2lora train`" -- which it
    is. They now say training stopped before the end and to run the same train command again to finish it."""
    from pipeline.cli import cli

    folder = tmp_path / "adapter"
    (folder / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    args = [str(folder) if a == "X" else a for a in command]
    args = args if "X" in command else [args[0], str(folder), *args[1:]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "training stopped before its end" in result.output and "checkpoint-4" in result.output
    assert "run the same `seed2lora train` command again" in result.output


@pytest.mark.parametrize("save_steps, says", [
    (100, "before its first checkpoint (every 100 updates or 600 s): nothing to resume from; the same command "
          "starts over"),
    (1, "the same command resumes from checkpoint-1")])
def test_ctrl_c_in_training_says_what_the_same_command_will_do(tiny_model, tmp_path, save_steps, says):
    """Ctrl-C at update 2 of 12 with save_steps 50 printed "everything written so far is kept; run the same command
    to resume", but no checkpoint had been written: the same command started over, silently. The stop now says
    which checkpoint a re-run resumes from, or that there is none yet."""
    from transformers import TrainerCallback

    from pipeline.train.trainer import fit, prepare

    class CtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    cfg = quick_config(tiny_model, tmp_path / "adapter", quant="none", max_steps=12, save_steps=save_steps,
                       eval_fraction=0.0)
    p = prepare(data, cfg, log=lambda m: None)
    p.trainer.add_callback(CtrlC())
    with pytest.raises(KeyboardInterrupt) as stop:
        fit(p, log=lambda m: None)
    assert "train: stopped at update 2 of 12" in stop.value.pending and says in stop.value.pending, stop.value.pending


def test_examples_cut_at_max_seq_len_are_said_not_only_counted(tiny_model, tmp_path):
    """--max-seq-len 256 on 64 Alpaca rows cut 2 examples (their responses' ends never learned); the summary counted
    "truncated": 2 but the training line said only "training on 57 examples". It now says how many were cut or
    dropped, and the flag that decides it."""
    from pipeline.train.trainer import prepare

    data = tmp_path / "alpaca.json"
    rows = [*ROWS, {"instruction": "Write a long story.", "input": "", "output": " ".join(["word"] * 400)}]
    data.write_text(json.dumps(rows))
    said = []
    prepare(data, quick_config(tiny_model, tmp_path / "adapter", quant="none", eval_fraction=0.0), log=said.append)
    line = next(m for m in said if m.startswith("training on"))
    assert "1 train row cut at --max-seq-len 128" in line, line


def test_training_on_a_file_says_which_rows_overlap_the_eval_set(tiny_model, tmp_path, monkeypatch):
    """`train RUN_DIR` leaves out rows overlapping the eval set, as export does; `train my_data.jsonl` checked
    nothing, so a file holding eval tasks trained on them and `eval` then scored what the adapter had copied, with
    no word said. A file is not changed (it is the user's), but the overlap is named with the fix, and counted."""
    from pipeline.train.trainer import prepare

    task = "Write a short and friendly note to a neighbour asking them to water the plants while we are away"
    uo = tmp_path / "user_oriented_instructions.jsonl"
    uo.write_text(json.dumps({"id": "user_oriented_task_7", "instruction": task,
                              "instances": [{"input": "", "output": "Hi!"}]}) + "\n")
    monkeypatch.setattr("pipeline.decontam.find_user_oriented", lambda: uo)
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*ROWS, {"instruction": task, "input": "", "output": "x"}]))
    said = []
    p = prepare(data, quick_config(tiny_model, tmp_path / "adapter", quant="none"), log=said.append)
    warning = [m for m in said if "overlap the eval set" in m]
    assert warning and "1 row(s) of" in warning[0] and "row 13" in warning[0] and "user_oriented_task_7" in warning[0]
    assert "Fix:" in warning[0] and p.stats["eval_overlap_rows"] == 1
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    said.clear()
    p = prepare(clean, quick_config(tiny_model, tmp_path / "adapter2", quant="none"), log=said.append)
    assert not [m for m in said if "overlap the eval set" in m] and p.stats["eval_overlap_rows"] == 0


def test_no_example_left_at_max_seq_len_names_the_flag_and_the_fix(tiny_model, tmp_path):
    """--max-seq-len 8 on Alpaca rows stopped with "no training example left ... (every response was cut at
    max_seq_len 8, or the data is empty)": no Fix, and an empty file got the same words. Now: the flag, how many
    rows were read, and a length that fits."""
    from pipeline.train.trainer import prepare

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    with pytest.raises(Seed2LoraError) as err:
        prepare(data, quick_config(tiny_model, tmp_path / "adapter", quant="none", max_seq_len=8, eval_fraction=0.0),
                log=lambda m: None)
    assert "every response of its 12 rows was cut away at --max-seq-len 8" in str(err.value)
    assert "Fix: --max-seq-len " in str(err.value), str(err.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(Seed2LoraError, match="holds no rows for the train split. Fix: give a file with rows"):
        prepare(empty, quick_config(tiny_model, tmp_path / "adapter", quant="none"), log=lambda m: None)


EVAL_REPORT = {"rouge_l": {"base": 0.2, "adapter": 0.3, "delta": 0.1, "delta_ci95": [0.05, 0.15], "adapter_higher": 5,
                            "base_higher": 1}, "n_prompts": 8}


def test_the_adapters_card_carries_no_eval_of_an_earlier_adapter(tiny_model, tmp_path):
    """Trained again, the adapter folder's README.md said "7 steps" under Training and, under Evaluation, the
    scores `seed2lora eval` had measured on the 6-step adapter before it: a card claiming numbers its weights never
    earned (and export-adapter --push-to-hub sends that card). An eval report older than the weights is left out,
    and the card says to run eval again."""
    from pipeline.train.trainer import train

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    out = tmp_path / "adapter"
    cfg = quick_config(tiny_model, out, quant="none", max_steps=2, save_steps=1, eval_fraction=0.0)
    train(data, cfg, log=lambda m: None)
    (out / "eval").mkdir()
    (out / "eval" / "eval_report.json").write_text(json.dumps(EVAL_REPORT))
    train(data, dataclasses.replace(cfg, max_steps=3), log=lambda m: None)
    card = (out / "README.md").read_text()
    assert "3 steps" in card and "ROUGE-L base 0.2000" not in card
    assert "older than these weights" in card and "seed2lora eval" in card


def test_training_again_names_what_was_made_from_the_adapter_before_it(tiny_model, tmp_path):
    """Trained again (more steps), the adapter changed under the merged model, the GGUF files and the eval report
    made from it, with no word: llama-cli and Ollama went on loading the old merged.q8_0.gguf. The new adapter's
    line now names each file older than it and the commands that remake them."""
    from pipeline.train.trainer import train

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    out = tmp_path / "adapter"
    cfg = quick_config(tiny_model, out, quant="none", max_steps=2, save_steps=1, eval_fraction=0.0)
    said = []
    train(data, cfg, log=said.append)
    assert not [m for m in said if "out of date" in m]
    (out / "merged").mkdir()
    (out / "eval").mkdir()
    for name in ("adapter.gguf", "merged.q8_0.gguf"):
        (out / name).write_text("made from the 2-step adapter")
    (out / "eval" / "eval_report.json").write_text(json.dumps(EVAL_REPORT))
    said.clear()
    train(data, dataclasses.replace(cfg, max_steps=3), log=said.append)
    note = [m for m in said if "out of date" in m]
    assert note, said
    for name in ("merged", "adapter.gguf", "merged.q8_0.gguf", "eval"):
        assert name in note[0]
    assert "seed2lora merge" in note[0] and "export-adapter" in note[0] and "seed2lora eval" in note[0]


def test_a_resume_does_not_measure_the_eval_loss_again_before_its_first_update(tiny_model, tmp_path):
    """eval_on_start measures the base's eval loss, the number every later one is compared with. A resume ran it
    again on the checkpoint, a whole pass over the eval split before the first update: 1.7-2.5 minutes per resume
    for the 381 eval rows of Alpaca's export on a 2-core CPU, at 15-20 s an update. The base's value is in the
    checkpoint's history, so a resume goes straight on to its first update."""
    from pipeline.train.trainer import train

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    cfg = quick_config(tiny_model, tmp_path / "adapter", quant="none", max_steps=2, save_steps=1, eval_fraction=0.25)
    first = train(data, cfg, log=lambda m: None)
    assert [s for s, _ in first["eval_losses"]["points"]] == [0, 2]
    second = train(data, dataclasses.replace(cfg, max_steps=3), log=lambda m: None)
    assert second["resumed_from"].endswith("checkpoint-2")
    assert [s for s, _ in second["eval_losses"]["points"]] == [0, 2, 3]  # it was [0, 2, 2, 3]
    assert second["eval_losses"]["first"] == first["eval_losses"]["first"]


def test_the_same_data_named_by_another_path_resumes(tiny_model, tmp_path, monkeypatch):
    """The checkpoints record the data as it was named: `train outputs/alpaca/export` then the same export by its
    absolute path (or from another directory) was refused as other data ('outputs/alpaca/export' ->
    '/work/.../outputs/alpaca/export'). The rows' sha256 is what decides; another file with other rows still does not
    resume."""
    from pipeline.errors import Seed2LoraError
    from pipeline.train.trainer import train

    (tmp_path / "alpaca.json").write_text(json.dumps(ROWS))
    monkeypatch.chdir(tmp_path)
    cfg = quick_config(tiny_model, tmp_path / "adapter", quant="none", max_steps=1, save_steps=1, eval_fraction=0.0)
    train("alpaca.json", cfg, log=lambda m: None)
    summary = train(tmp_path / "alpaca.json", dataclasses.replace(cfg, max_steps=2), log=lambda m: None)
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["steps"] == 2
    (tmp_path / "other.json").write_text(json.dumps(ROWS[1:]))
    with pytest.raises(Seed2LoraError, match="other settings or data"):
        train(tmp_path / "other.json", dataclasses.replace(cfg, max_steps=3), log=lambda m: None)


def test_resuming_with_other_settings_is_refused_and_no_resume_starts_over(trained, tmp_path):
    import shutil

    from pipeline.errors import Seed2LoraError
    from pipeline.train.trainer import train

    prepared, _, _, data = trained
    out = tmp_path / "adapter"
    shutil.copytree(prepared.out, out)  # the module's other tests keep the original
    changed = dataclasses.replace(prepared.cfg, output_dir=str(out), lora_r=8, max_steps=9)
    with pytest.raises(Seed2LoraError, match=r"lora_r 64 -> 8.*--no-resume"):
        train(data, changed, log=lambda m: None)
    lines, old = [], len(list((out / "checkpoints").glob("checkpoint-*")))
    assert old >= 1
    summary = train(data, dataclasses.replace(changed, resume=False, max_steps=2, save_steps=100), log=lines.append)
    assert summary["resumed_from"] is None and summary["steps"] == 2 and summary["config"]["lora_r"] == 8
    assert any(f"removed {old} old checkpoint" in m for m in lines)
    assert [c.name for c in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]  # only the new run's


def test_torchrun_trains_one_adapter_over_two_processes(tiny_model, tmp_path):
    """The README's multi-GPU command, run on CPU: 2 processes (gloo), the data split between them."""
    import math
    import os
    import subprocess
    import sys

    rows = [{"instruction": f"What colour is item number {i}?", "input": "", "output": f"Item {i} is {c}."}
            for i, c in enumerate(["red", "blue", "green", "black"] * 6)]
    data, out = tmp_path / "alpaca.json", tmp_path / "adapter"
    data.write_text(json.dumps(rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pipeline", "train", str(data), "--model", tiny_model, "--out", str(out), "--epochs", "1",
         "--batch-size", "2", "--grad-accum", "1", "--lr", "2e-3", "--max-seq-len", "128",
         "--set", "warmup_ratio=0", "--set", "eval_steps=1000", "--set", "save_steps=1000"],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("training on ") == 1  # only rank 0 speaks
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2
    # Each update takes 2 rows on each process: one epoch of the training rows is half the single-process steps.
    assert summary["steps"] == math.ceil(summary["rows"]["train"] / (2 * 2))
    losses = [v for _, v in summary["train_loss"]["points"]]
    assert losses[-1] < losses[0] - 0.5, losses
    assert (out / "adapter_model.safetensors").is_file() and summary["eval_loss"] is not None


# ---------------------------------------------------------------- eval and the CLI


class MockJudge:
    name = "mock-judge"

    def __init__(self, replies):
        self.replies, self.history = list(replies), []

    def generate(self, prompts, params, *, kind, progress=None):
        from pipeline.teachers import Completion

        self.history += [(kind, p) for p in prompts]
        return [Completion(text=self.replies.pop(0), finish_reason="stop") for _ in prompts]


def scored(base, adapter):
    from pipeline.train.eval import EvalItem

    return EvalItem(id="i", category="", messages=[], reference="", rouge_l_base=base, rouge_l_adapter=adapter)


def test_score_summary_gives_a_paired_interval_and_a_sign_test():
    from pipeline.train.eval import score_summary, sign_test

    assert sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 1024) and sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0
    rng = random.Random(0)
    better = [scored(b, b + 0.05 + rng.uniform(-0.01, 0.01)) for b in (rng.uniform(0, 0.5) for _ in range(40))]
    s = score_summary(better)
    assert 0.04 < s["delta_ci95"][0] <= s["delta"] <= s["delta_ci95"][1] < 0.06
    assert s["adapter_higher"] == 40 and s["sign_test_p"] < 1e-9
    noise = [scored(0.3, 0.3 + d) for d in (0.1, -0.1) * 20] + [scored(0.2, 0.2)]
    s = score_summary(noise)
    assert s["delta_ci95"][0] < 0 < s["delta_ci95"][1] and s["sign_test_p"] == 1.0 and s["equal"] == 1
    assert score_summary(noise, seed=3) == score_summary(noise, seed=3)


def test_reference_loss_reads_the_reference_and_eos_only(tiny_model, tokenizer):
    """The loss is over the reference tokens and the EOS after them, as training reads a row; never the prompt."""
    from transformers import AutoModelForCausalLM

    from pipeline.train.eval import EvalItem, reference_example, reference_losses

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompt = [{"role": "user", "content": "Name the colour of a clear daytime sky in one word."}]
    reference = "Blue, mostly."
    ids, labels = reference_example(tokenizer, prompt, reference, max_len=2048)
    learned = [t for t in labels if t != IGNORE_INDEX]
    n_prompt = len(ids) - len(learned)
    assert tokenizer.decode(ids[:n_prompt]) == prompt_text(tokenizer, prompt)  # the prompt as generation sees it
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # ... masked whole, and everything after it learned
    assert tokenizer.decode(learned).startswith(reference) and tokenizer.eos_token_id in learned
    items = [EvalItem(id="a", category="", messages=prompt, reference=reference),
             EvalItem(id="b", category="", messages=[{"role": "user", "content": "Say yes."}], reference="Yes.")]
    (got, other) = reference_losses(model, tokenizer, items, batch_size=2)  # one padded batch of two lengths
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    targets = torch.tensor(ids[1:])
    response = torch.tensor(labels[1:]) != IGNORE_INDEX
    by_token = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    assert got == pytest.approx(by_token[response].mean().item(), rel=1e-4) and math.isfinite(other)
    assert abs(got - by_token.mean().item()) > 1e-3  # counting prompt tokens too would give another number
    assert math.isnan(reference_losses(model, tokenizer, items[:1], max_len=n_prompt)[0])  # all cut


def test_loss_summary_pairs_adapter_and_base_on_the_same_prompts():
    from pipeline.train.eval import EvalItem, loss_summary

    rng = random.Random(1)
    items = []
    for i in range(60):
        base = rng.uniform(1.5, 3.5)  # prompts differ far more than the adapter's gain: only pairing shows the gain
        items.append(EvalItem(id=str(i), category="", messages=[], reference="", loss_base=base,
                              loss_adapter=base - 0.1 + rng.uniform(-0.02, 0.02)))
    items.append(EvalItem(id="unscored", category="", messages=[], reference="", loss_base=math.nan, loss_adapter=2.0))
    s = loss_summary(items)
    assert s["n"] == 60 and s["base_higher"] == 60  # the adapter lower on every scored prompt; the nan left out
    assert -0.11 < s["delta_ci95"][0] <= s["delta"] <= s["delta_ci95"][1] < -0.09
    assert s["delta"] == pytest.approx(statistics.fmean(it.loss_adapter - it.loss_base for it in items[:60]), abs=1e-4)
    assert loss_summary(items[60:]) is None


def test_a_judges_article_a_is_no_verdict_for_answer_a():
    """Read case-blind, the article in "It's a tie." or "Both are a good fit; B is better" was a verdict for A."""
    from pipeline.train.eval import parse_verdict

    said = {"It's a tie.": "tie", "A tie.": "tie", "Both are a good fit; B is better": "B", "a": "A", "**b**": "B",
            "Answer A is better": "A", "A": "A", "Better answer: B": "B", "TIE": "tie", "I cannot decide": None,
            "Neither is a clear winner": None}
    assert {text: parse_verdict(text) for text in said} == said


def test_a_capital_article_and_the_forms_judges_write_are_read_as_they_mean():
    """A capital "A" that starts a sentence ("A better answer is B.") was a vote for A; "A and B are equally good" was
    one too, and "Both are equally good" no verdict. Replies of the shapes judges give to judge_pairwise.txt in its
    8 tokens: the letter dressed up, named after a cue, named in a sentence, both named, a tie said in words."""
    from pipeline.train.eval import parse_verdict

    said = {
        "A better answer is B.": "B", "A clear winner is B": "B", "A close call, but B.": "B",
        "A more complete answer is A": "A", "**A**": "A", "**B**\n\nAnswer B covers": "B", "(B)": "B", "A.": "A",
        "`B`": "B", "B\n\nExplanation: A lacks": "B", "Answer A": "A", "Answer: B": "B", "Verdict: B": "B",
        "Verdict: tie": "tie", "Option A": "A", "The better answer is B.": "B", "I prefer B.": "B", "I'd pick A": "A",
        "A is better.": "A", "A wins": "A", "A provides more detail": "A", "A, because it": "A", "A - it cites": "A",
        "B is better than A": "B", "Answer A is better than B": "A", "Both are equally good.": "tie",
        "Both answers are correct and": "tie", "Both A and B are good": "tie", "A and B are equally good": "tie",
        "Answer A and Answer B are equally": "tie", "Equal": "tie", "They are the same.": "tie",
        "Not equal: B is better": "B", "B's answer is clearer": "B", "Neither A nor B": None, "A and": None,
        # a verb the list lacks after the letter A: with no B named, the A was the verdict
        "A directly addresses the question.": "A", "A clearly explains each step": "A",
    }
    assert {text: parse_verdict(text) for text in said} == said


def test_the_eval_line_of_a_judge_whose_every_reply_was_unreadable_says_so_not_none():
    from pipeline.train.eval import judge_words

    unread = {"adapter_wins": 0, "base_wins": 0, "ties": 0, "unparsed": 4, "judged": 0, "win_rate": None}
    assert judge_words(unread) == "judge win rate n/a (no verdict, 4 replies with no A, B or tie)"
    some = {**unread, "adapter_wins": 2, "ties": 1, "unparsed": 1, "judged": 3, "win_rate": 0.8333}
    assert judge_words(some) == "judge win rate 83.3% (3 verdicts, 1 replies with no A, B or tie)"


def test_pairwise_judge_undoes_the_ab_swap_and_counts_ties_as_half():
    from pipeline.train.eval import EvalItem, judge_pairwise, parse_verdict

    assert [parse_verdict(t) for t in (" A", "B.", "Tie", "Answer B is better", "neither")] == \
        ["A", "B", "tie", "B", None]
    items = [EvalItem(id=str(i), category="", messages=[{"role": "user", "content": f"q{i}"}], reference="r",
                      base=f"base {i}", adapter=f"tuned {i}") for i in range(4)]
    judge = MockJudge(["A", "B", "tie", "nonsense"])
    result = judge_pairwise(judge, items, random.Random(3))
    assert [kind for kind, _ in judge.history] == ["judge"] * 4
    adapter_first = [f"tuned {i}" in prompt.split("Answer B:")[0] for i, (_, prompt) in enumerate(judge.history)]
    expected = ["adapter" if adapter_first[0] else "base", "base" if adapter_first[1] else "adapter", "tie", None]
    assert [it.judge for it in items] == expected
    wins = expected.count("adapter")
    assert (result["adapter_wins"], result["ties"], result["unparsed"], result["not_sent"]) == (wins, 1, 1, 0)
    assert result["win_rate"] == round((wins + 0.5) / 3, 4)
    assert result["win_rate_ci95"][0] <= result["win_rate"] <= result["win_rate_ci95"][1]


def test_cli_export_train_eval_generate_merge(tiny_model, tmp_path, fake_openai):
    from pipeline.cache import CACHE_FILE, ResponseCache
    from pipeline.cli import cli
    from pipeline.records import Instance, Task
    from pipeline.store import RunDir, write_jsonl_atomic

    run = RunDir(tmp_path / "run").ensure()
    run.update_manifest(config={"budget": {"max_tokens_total": 0}})  # a run directory: the judge uses its cache
    write_jsonl_atomic(run.stage_file("filter"), [
        Task(id=f"t{i}", instruction=r["instruction"], instances=[Instance(output=r["output"])])
        for i, r in enumerate(ROWS)])
    held_out = tmp_path / "heldout.jsonl"
    held_out.write_text("".join(json.dumps({"id": f"u{i}", "motivation_app": "test", "instruction": r["instruction"],
                                            "instances": [{"input": "", "output": r["output"]}]}) + "\n"
                                for i, r in enumerate(ROWS[:3])))
    runner = CliRunner()
    assert runner.invoke(cli, ["export", str(run.path), "--formats", "messages"]).exit_code == 0
    result = runner.invoke(cli, ["train", str(run.path / "export"), "--model", tiny_model, "--max-steps", "2",
                                 "--batch-size", "4", "--grad-accum", "1", "--packing", "--no-quant",
                                 "--set", "eval_steps=100", "--set", "lora_r=8"])
    assert result.exit_code == 0, result.output
    adapter = run.path / "adapter"
    assert "done:" in result.output and (adapter / "adapter_model.safetensors").is_file()
    assert "train, steps: 0/2 (0%), started" in result.output  # the output is no terminal: plain progress lines
    # "done in 5s" or, on a loaded machine, "done in 1m58s" (progress.format_duration)
    assert re.search(r"^train, steps: 2/2 \(100%\), done in (\d+m)?\d+s \([\d.]+/(s|min|h)\), loss \d", result.output,
                     re.M)
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["rows"]["packed"] and not summary["quantized"] and summary["config"]["lora_r"] == 8
    fake_openai.enqueue("A")
    fake_openai.enqueue("Tie")
    result = runner.invoke(cli, ["eval", str(adapter), "--data", str(held_out), "--limit", "2",
                                 "--max-new-tokens", "4", "--judge", "openai:fake-model",
                                 "--set", f"judge.base_url={fake_openai.url}"])
    assert result.exit_code == 0, result.output
    report = json.loads((adapter / "eval" / "eval_report.json").read_text())
    assert report["n_prompts"] == 2 and set(report["rouge_l"]) >= {"base", "adapter", "delta"}
    loss = report["reference_loss"]  # base and adapter on the same 2 prompts, no generation needed
    assert loss["n"] == 2 and all(math.isfinite(it["loss_base"]) and math.isfinite(it["loss_adapter"])
                                  for it in report["items"])
    assert loss["delta"] == pytest.approx(statistics.fmean(it["loss_adapter"] - it["loss_base"] for it in report["items"]),
                                          abs=1e-4) and loss["delta_ci95"][0] <= loss["delta"] <= loss["delta_ci95"][1]
    assert set(report["answer_words"]) == {"base", "adapter", "reference"} and "reference loss" in result.output
    for step in ("reference loss, base", "reference loss, adapter", "base answers", "adapter answers",
                 "judge verdicts"):
        assert f"eval: {step}: 2/2 (100%), done in" in result.output, result.output
    assert report["judge"]["judged"] == 2 and report["judge"]["ties"] == 1 and "judge win rate" in result.output
    assert report["settings"]["judge"]["base_url"] == fake_openai.url and len(fake_openai.history) == 2
    cache = ResponseCache(run.path / CACHE_FILE)
    assert cache.usage()["judge"]["calls"] == 2  # the verdicts went to the run's cache and usage log
    cache.close()
    assert "| base + adapter |" in (adapter / "eval" / "eval_report.md").read_text()
    # 2 tasks mean little: the line, the report and its markdown say so, with the way to more
    assert report["few_tasks"].startswith("only 2 tasks: too few") and "Fix: raise --limit" in report["few_tasks"]
    assert "only 2 tasks: too few" in " ".join(result.output.split())
    assert f"**Note:** {report['few_tasks']}." in (adapter / "eval" / "eval_report.md").read_text()
    # issue 22: the settings eval used travel with the adapter, and generate answers with them
    assert json.loads((adapter / "sampling.json").read_text()) == report["sampling"] == {
        "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4, "repeat_penalty": 1.0, "stop": report["sampling"]["stop"]}
    assert report["sampling"]["stop"]  # the EOS token's text
    assert "now caps answers at 4 tokens" in " ".join(result.output.split())  # a quick eval's cap, said
    result = runner.invoke(cli, ["generate", str(adapter), "Name a colour.", "--max-new-tokens", "3"])
    assert result.exit_code == 0 and json.loads(result.stdout.splitlines()[-1])["prompt"] == "Name a colour."
    result = runner.invoke(cli, ["generate", str(adapter), "Name a colour."])  # sampling.json's 4 tokens at most
    assert result.exit_code == 0 and len(json.loads(result.stdout.splitlines()[-1])["answer"].split()) <= 4
    result = runner.invoke(cli, ["train", str(tmp_path / "nothing.json"), "--model", tiny_model])
    assert result.exit_code == 2


def test_run_goes_on_from_the_data_to_an_evaluated_adapter_and_resumes(tiny_model, tmp_path, monkeypatch):
    """stages = [..., "export", "train", "eval"] in one config file: the whole pipeline, re-runs skip finished work."""
    from pipeline.cli import cli
    from pipeline.records import Instance, Task
    from pipeline.store import RunDir, write_jsonl_atomic

    run = RunDir(tmp_path / "out" / "r").ensure()
    write_jsonl_atomic(run.stage_file("filter"), [
        Task(id=f"t{i}", instruction=r["instruction"], instances=[Instance(output=r["output"])])
        for i, r in enumerate(ROWS)])
    held_out = tmp_path / "heldout.jsonl"
    held_out.write_text("".join(json.dumps({"instruction": r["instruction"], "instances": [{"input": "",
                                            "output": r["output"]}]}) + "\n" for r in ROWS[:2]))
    config = tmp_path / "pipeline.toml"
    monkeypatch.chdir(tmp_path)  # output_dir relative: the summary still names its data whole
    config.write_text(f"""run_name = "r"
output_dir = "out"
stages = ["export", "train", "eval"]
[export]
formats = "messages"
[train]
model = "{tiny_model}"
quant = false
max_steps = 2
batch_size = 4
grad_accum = 1
lora_r = 8
eval_steps = 100
[eval]
data = "{held_out}"
max_new_tokens = 4
""")
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    adapter = run.path / "adapter"
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["lora_r"] == 8 and not summary["quantized"]
    assert summary["data"] == str(run.path / "export")  # trained on the export the run just wrote, named whole
    assert summary["source"] == str(run.path / "export" / "messages" / "train.jsonl")
    counts = json.loads((run.path / "export" / "export.json").read_text())["counts"]
    assert counts["seed_tasks"] == 175 and counts["eval_rows"] == 2  # the bundled seeds train; 2 machine rows held out
    assert summary["rows"] == {"train": counts["train_rows"], "eval": 2, "packed": False}
    report = json.loads((adapter / "eval" / "eval_report.json").read_text())
    assert report["n_prompts"] == 2 and report["data"] == str(held_out)
    assert "eval: reference loss base" in result.output and "ROUGE-L base" in result.output
    assert "train: 2 steps" in result.output
    assert json.loads((run.path / "manifest.json").read_text())["status"] == "done"
    stamps = {f: f.stat().st_mtime_ns for f in (adapter / "adapter_model.safetensors", adapter / "eval" / "eval_report.json")}
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "already trained with these settings" in result.output and "is up to date" in result.output
    assert stamps == {f: f.stat().st_mtime_ns for f in stamps}
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--set", "eval.limit=1"])
    assert result.exit_code == 0 and "already trained" in result.output and "on 1 prompts" in result.output
    # New data under the same settings (a filter that kept one task more): trained again, from scratch.
    write_jsonl_atomic(run.stage_file("filter"), [
        *run.read_stage("filter"), Task(id="t_new", instruction="Name a colour.", instances=[Instance(output="Blue.")])])
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "was trained with other data; training again" in result.output and "train: 2 steps" in result.output
    assert json.loads((adapter / "training_summary.json").read_text())["data_sha256"] != summary["data_sha256"]


def test_eval_config_defaults():
    cfg = EvalConfig()
    assert cfg.limit == 0 and cfg.quant == "auto" and cfg.judge.spec == "" and cfg.repetition_penalty == 1.0


def test_a_retrain_on_new_data_starts_over_once_and_then_resumes(tmp_path, monkeypatch):
    """The run's train step: new data trains from scratch; interrupted, the next run resumes that training."""
    import dataclasses

    import pipeline.train.trainer as trainer
    from pipeline.config import load_config
    from pipeline.records import Instance, Task
    from pipeline.runner import Session
    from pipeline.store import RunDir, write_jsonl_atomic
    from pipeline.train.data import load_rows, rows_fingerprint
    from pipeline.train.steps import train_step

    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r"})
    run = RunDir(cfg.run_dir).ensure()
    write_jsonl_atomic(run.stage_file("filter"), [Task(id="t", instruction="Name a colour.", instances=[Instance(output="Blue.")])])
    session = Session(cfg)
    adapter = session.adapter_dir
    adapter.mkdir(parents=True)
    done = {"config": dataclasses.asdict(dataclasses.replace(cfg.train, output_dir=str(adapter))), "data_sha256": "old rows"}
    (adapter / "training_summary.json").write_text(json.dumps(done))
    resumes = []

    def interrupted(data, train_cfg, log, progress=None, export=None, rows=None):
        resumes.append(train_cfg.resume)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            train_step(Session(cfg).ctx, None)
    assert resumes == [False, True]  # from scratch once (the old data's checkpoints), then resumed
    assert rows_fingerprint(load_rows(run.path)) != "old rows"


def test_the_train_step_refuses_an_export_older_than_the_runs_records_and_trains_a_fresh_one(tmp_path, monkeypatch):
    """run.run() kept more tasks after run.export(); run.train() (the run's train step) then trained on the old
    export and said "already trained with these settings and data". Now it says the export is stale and how to
    renew it; a filter re-run that writes the same records leaves the export fresh."""
    import pipeline.train.trainer as trainer
    from pipeline.config import load_config
    from pipeline.errors import Refused
    from pipeline.records import Instance, Task
    from pipeline.runner import Session
    from pipeline.stages.export import export
    from pipeline.store import RunDir, write_jsonl_atomic
    from pipeline.train.steps import train_step

    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r"})
    run = RunDir(cfg.run_dir).ensure()
    tasks = [Task(id=f"t{i}", instruction=f"Name a colour number {i}.", instances=[Instance(output="Blue.")])
             for i in range(3)]
    write_jsonl_atomic(run.stage_file("filter"), tasks[:2])
    export(run, cfg.export)
    trained = []
    monkeypatch.setattr(trainer, "train", lambda data, train_cfg, log, progress=None, export=None, rows=None: trained.append(data) or
                        {"steps": 1, "eval_losses": {"first": 1.0, "last": 0.5}})
    write_jsonl_atomic(run.stage_file("filter"), tasks[:2])  # a re-run of filter: the same bytes
    train_step(Session(cfg).ctx, None)
    assert trained == [run.export_dir]
    write_jsonl_atomic(run.stage_file("filter"), tasks)  # the run kept one more task
    with pytest.raises(Refused, match=r"export was written before filter.jsonl changed.*Fix: export again"):
        train_step(Session(cfg).ctx, None)
    write_jsonl_atomic(run.stage_file("evolve"), [])  # an evolve.jsonl made since is news too
    with pytest.raises(Refused, match="filter.jsonl changed and evolve.jsonl was made"):
        train_step(Session(cfg).ctx, None)
    export(run, cfg.export)
    train_step(Session(cfg).ctx, None)
    assert len(trained) == 2


def finished_adapter(tmp_path):
    """A run with one filtered task and a finished adapter's summary for today's settings and that data:
    (the run's config keys, its config, the adapter folder, the summary)."""
    import dataclasses

    from pipeline.config import load_config
    from pipeline.records import Instance, Task
    from pipeline.runner import Session
    from pipeline.store import RunDir, write_jsonl_atomic
    from pipeline.train.data import load_rows, rows_fingerprint

    where = {"output_dir": str(tmp_path), "run_name": "r"}
    cfg = load_config(None, where)
    run = RunDir(cfg.run_dir).ensure()
    write_jsonl_atomic(run.stage_file("filter"), [Task(id="t", instruction="Name a colour.", instances=[Instance(output="Blue.")])])
    adapter = Session(cfg).adapter_dir
    adapter.mkdir(parents=True)
    done = {"config": dataclasses.asdict(dataclasses.replace(cfg.train, output_dir=str(adapter))),
            "data_sha256": rows_fingerprint(load_rows(run.path))}
    return where, cfg, adapter, done


def test_a_finished_adapter_is_kept_when_only_a_resource_setting_changed(tmp_path, monkeypatch):
    """The train step compared the whole [train] table with the adapter's summary: a new activation_memory_gb or
    save_steps trained it again from scratch. Only settings that change the adapter count, and are named."""
    import pipeline.train.trainer as trainer
    from pipeline.config import load_config
    from pipeline.runner import Session
    from pipeline.train.steps import train_step

    where, cfg, adapter, done = finished_adapter(tmp_path)
    (adapter / "training_summary.json").write_text(json.dumps(done))
    trained = []
    monkeypatch.setattr(trainer, "train", lambda data, train_cfg, log, progress=None, export=None, rows=None: trained.append(train_cfg)
                        or {"steps": 1, "eval_losses": {"first": None, "last": None}})
    resources = {"train.activation_memory_gb": 0.5, "train.save_steps": 7, "train.eval_steps": 3,
                 "train.gradient_checkpointing": False, "train.resume": False, "train.logging_steps": 5}
    result = train_step(Session(load_config(None, where)).ctx, None)
    assert "already trained with these settings and data" in result.message and not trained
    result = train_step(Session(load_config(None, {**where, **resources})).ctx, None)
    # Not "these settings": they differ, and the message names those it ignored (resume is the step's own)
    assert "already trained with these settings" not in result.message and not trained
    assert "ignored, as they change no weight: " in result.message and "resume" not in result.message
    for key, value in resources.items():
        name = key.removeprefix("train.")
        if name != "resume":
            assert f"{name} {getattr(cfg.train, name)!r} -> {value!r}" in result.message, name
    lines = []
    ctx = Session(load_config(None, {**where, **resources, "train.lora_r": 16}), log=lines.append).ctx
    train_step(ctx, None)
    assert len(trained) == 1 and trained[0].lora_r == 16
    assert f"train: {adapter} was trained with other settings: lora_r 64 -> 16; training again" in lines
    (adapter / "training_summary.json").write_text(json.dumps({**done, "data_sha256": "old rows"}))
    train_step(ctx, None)
    assert f"train: {adapter} was trained with other data and settings: lora_r 64 -> 16; training again" in lines


def test_a_retrain_for_new_settings_starts_over_but_a_longer_run_goes_on(tmp_path, monkeypatch):
    """A finished adapter trained again for a setting that changes it (lora_r): its checkpoints are another
    model's, so the training starts over, where resuming from them stopped with exit 2 asking for --no-resume.
    Only more (or fewer) epochs or steps go on from them."""
    import pipeline.train.trainer as trainer
    from pipeline.config import load_config
    from pipeline.runner import Session
    from pipeline.train.steps import train_step

    where, cfg, adapter, done = finished_adapter(tmp_path)
    summary = adapter / "training_summary.json"
    resumes = []

    def interrupted(data, train_cfg, log, progress=None, export=None, rows=None):
        resumes.append(train_cfg.resume)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    for changed in ({"train.epochs": cfg.train.epochs + 1}, {"train.lora_r": 16}):
        summary.write_text(json.dumps(done))
        resumes.clear()
        for _ in range(2):
            with pytest.raises(KeyboardInterrupt):
                train_step(Session(load_config(None, {**where, **changed})).ctx, None)
        # epochs: resumed from the finished run's checkpoints; lora_r: from scratch once, then resumed
        assert resumes == ([True, True] if "train.epochs" in changed else [False, True]), changed


def test_train_progress_counts_steps_with_the_loss_and_gives_eval_its_own_count():
    """The callback on a fake trainer state: steps (a resumed run counts those it has left), the last losses as
    a note, evaluation's batches apart, and everything closed when train() raises."""
    from types import SimpleNamespace

    from pipeline.train.trainer import TrainProgress

    events = []

    class Recorder:
        def __init__(self, desc, total):
            self.desc, self.total = desc, total

        def __enter__(self):
            events.append(("open", self.desc, self.total))
            advance = lambda n: events.append(("advance", self.desc, n))  # noqa: E731
            advance.note = lambda text: events.append(("note", self.desc, text))
            return advance

        def __exit__(self, *exc):
            events.append(("close", self.desc, exc[0].__name__ if exc[0] else None))

    state = SimpleNamespace(is_world_process_zero=True, global_step=40, max_steps=100)
    cb = TrainProgress(Recorder)
    cb.on_train_begin(None, state, None)
    state.global_step = 42
    cb.on_step_end(None, state, None)
    cb.on_log(None, state, None, logs={"loss": 1.23456, "learning_rate": 1e-4})
    for _ in range(2):
        cb.on_prediction_step(None, state, None, eval_dataloader=[0, 1, 2])
    cb.on_evaluate(None, state, None)
    cb.on_log(None, state, None, logs={"eval_loss": 2.5})
    state.global_step = 43
    cb.on_step_end(None, state, None)
    cb.on_prediction_step(None, state, None, eval_dataloader=[0, 1, 2])
    cb.close((KeyboardInterrupt, KeyboardInterrupt(), None))
    train, ev = "train (resumed at step 40), steps", "train: eval loss, batches"
    assert events == [("open", train, 60), ("advance", train, 2), ("note", train, "loss 1.2346"),
                      ("open", ev, 3), ("advance", ev, 1), ("advance", ev, 1), ("close", ev, None),
                      ("note", train, "loss 1.2346, eval loss 2.5000"), ("advance", train, 1),
                      ("open", ev, 3), ("advance", ev, 1), ("close", ev, "KeyboardInterrupt"),
                      ("close", train, "KeyboardInterrupt")]
    cb.on_train_end(None, state, None)  # already closed: nothing more
    assert len(events) == 13

    quiet = TrainProgress(Recorder)  # another rank: no lines
    quiet.on_train_begin(None, SimpleNamespace(is_world_process_zero=False, global_step=0, max_steps=5), None)
    assert len(events) == 13


def test_checkpoints_resume_with_less_activation_memory_or_checkpointing_back_on(tmp_path):
    """The knob a user turns after running out of memory (a lower activation_memory_gb, or checkpointing on) resumes:
    micro-batches and checkpointing train the same update. Checkpoints saved with the keys recorded resume too."""
    from pipeline.errors import Seed2LoraError
    from pipeline.train.model import MICRO_BATCH_NOTE
    from pipeline.train.trainer import CHECKPOINT_SETTINGS, RESUMABLE, check_resumable

    assert {"activation_memory_gb", "gradient_checkpointing"} <= RESUMABLE  # checkpoint_settings leaves them out
    path = "LoRA on a bf16 base, bf16 autocast on CPU, adamw_torch"
    saved = {"lora_r": 8, "activation_memory_gb": 1.5, "gradient_checkpointing": False,
             "training_path": path + MICRO_BATCH_NOTE.format(rows=2)}
    (tmp_path / CHECKPOINT_SETTINGS).write_text(json.dumps(saved))
    check_resumable(tmp_path, {"lora_r": 8, "training_path": path + MICRO_BATCH_NOTE.format(rows=1)})
    check_resumable(tmp_path, {"lora_r": 8, "training_path": path})
    with pytest.raises(Seed2LoraError, match="lora_r 8 -> 16"):
        check_resumable(tmp_path, {"lora_r": 16, "training_path": path})


def test_checkpoints_resume_across_the_16_bit_dropout_masks_but_not_another_path(tmp_path):
    """A CPU checkpoint saved with peft's nn.Dropout resumes under the 16-bit masks (and back), with attention
    kept through the recompute, and on today's micro-batched bf16 base: the same fp32 LoRA weights and Adam states.
    Any other change of path still refuses."""
    from pipeline.errors import Seed2LoraError
    from pipeline.train.model import CHEAP_DROPOUT_NOTE, KEEP_ATTENTION_NOTE, MICRO_BATCH_NOTE
    from pipeline.train.trainer import CHECKPOINT_SETTINGS, check_resumable

    path = "LoRA on an fp32 base, bf16 autocast on CPU, adamw_torch"  # as main wrote it before either note
    (tmp_path / CHECKPOINT_SETTINGS).write_text(json.dumps({"lora_r": 8, "training_path": path}))
    check_resumable(tmp_path, {"lora_r": 8, "training_path": path + CHEAP_DROPOUT_NOTE})
    (tmp_path / CHECKPOINT_SETTINGS).write_text(json.dumps({"lora_r": 8, "training_path": path + CHEAP_DROPOUT_NOTE}))
    check_resumable(tmp_path, {"lora_r": 8, "training_path": path})
    check_resumable(tmp_path, {"lora_r": 8, "training_path": path + CHEAP_DROPOUT_NOTE + KEEP_ATTENTION_NOTE})
    # today's CPU default, micro-batches on a bf16 base: the same fp32 LoRA weights and Adam states
    check_resumable(tmp_path, {"lora_r": 8, "training_path": path.replace("an fp32", "a bf16") + CHEAP_DROPOUT_NOTE
                               + MICRO_BATCH_NOTE.format(rows=2)})
    with pytest.raises(Seed2LoraError, match="training_path"):
        check_resumable(tmp_path, {"lora_r": 8, "training_path": path.replace("bf16 autocast", "fp32 compute")})
    with pytest.raises(Seed2LoraError, match="training_path"):
        check_resumable(tmp_path, {"lora_r": 8, "training_path": "QLoRA on an NF4 base, fp32 compute on CPU, "
                                                                  "adamw_torch" + CHEAP_DROPOUT_NOTE})


def test_a_retrain_in_the_runs_train_step_loads_the_runs_rows_once(tiny_model, tmp_path, monkeypatch):
    """The train step read the run's rows for the fingerprint it compares with the finished adapter's, and training
    read them again (a run of 50,000 rows, decontaminated, read twice). Now once: the same rows fingerprinted and
    trained on."""
    import pipeline.train.data as data
    import pipeline.train.trainer as trainer
    from pipeline.config import load_config
    from pipeline.records import Instance, Task
    from pipeline.runner import Session
    from pipeline.store import RunDir, write_jsonl_atomic
    from pipeline.train.steps import train_step

    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "train.model": str(tiny_model),
                             "train.max_steps": 1})
    run = RunDir(cfg.run_dir).ensure()
    write_jsonl_atomic(run.stage_file("filter"), [Task(id=f"t{i}", instruction=f"Name colour number {i}.",
                                                       instances=[Instance(output="Blue.")]) for i in range(4)])
    session = Session(cfg)
    session.adapter_dir.mkdir(parents=True)
    summary = {"config": dataclasses.asdict(dataclasses.replace(cfg.train, output_dir=str(session.adapter_dir))),
               "data_sha256": "old rows"}
    (session.adapter_dir / "training_summary.json").write_text(json.dumps(summary))
    loads, prepared = [], []

    def counted(*args, **kwargs):
        loads.append(args[0])
        return load_rows(*args, **kwargs)

    load_rows = data.load_rows
    monkeypatch.setattr(data, "load_rows", counted)
    monkeypatch.setattr(trainer, "load_rows", counted)
    monkeypatch.setattr(trainer, "fit", lambda p, log: prepared.append(p) or {"steps": 0, "eval_losses": {
        "first": None, "last": None}})
    train_step(session.ctx, None)
    assert len(loads) == 1, loads
    rows = load_rows(run.path, cfg.export)
    assert (prepared[0].rows.train, prepared[0].stats["data_sha256"]) == (rows.train, data.rows_fingerprint(rows))


def test_the_eval_bar_opens_before_its_first_batch_so_its_time_and_rate_are_the_evals(tiny_model, tmp_path,
                                                                                       monkeypatch):
    """Seen on a tour: the bar opened at the end of eval's first batch (TrainerCallback has no hook before it), so
    a one-batch eval of 8 rows said 'train: eval loss, batches: 1/1 (100%), done in 0s (1004/s)'."""
    from pipeline.train.trainer import LoraTrainer, fit, prepare

    events = []

    class Recorder:
        def __init__(self, desc, total):
            self.desc = desc

        def __enter__(self):
            events.append(("open", self.desc))
            advance = lambda n: events.append(("advance", self.desc))  # noqa: E731
            advance.note = advance.set_total = lambda *a: None
            return advance

        def __exit__(self, *exc):
            events.append(("close", self.desc))

    real = LoraTrainer.prediction_step
    monkeypatch.setattr(LoraTrainer, "prediction_step",
                        lambda self, *a, **k: events.append(("batch", None)) or real(self, *a, **k))
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(ROWS))
    cfg = quick_config(tiny_model, tmp_path / "adapter", max_steps=1, eval_fraction=0.25, quant="none")
    fit(prepare(data, cfg, log=lambda line: None, progress=Recorder), log=lambda line: None)
    ev = "train: eval loss, batches"
    first_batch = events.index(("batch", None))
    assert ("open", ev) in events[:first_batch], events  # eval on start: the base's loss, timed whole
    assert events.count(("open", ev)) == events.count(("close", ev)) == 2, events  # and after the last update


def test_the_training_line_says_which_split_its_cut_and_dropped_rows_are_in():
    """Seen on a tour: 'training on 233 examples (62 rows, packed), 8 eval (3 cut at --max-seq-len 512: ...; 1
    dropped, no response token left)' read as 3 of the 8 eval rows cut and one dropped; all 4 were train rows
    (training_summary.json: train_data truncated 3, dropped 1; eval_data 0, 0)."""
    from pipeline.train.data import cut_note

    train, clean = {"truncated": 3, "dropped": 1}, {"truncated": 0, "dropped": 0}
    assert cut_note(train, clean, 512) == ("; 3 train rows cut at --max-seq-len 512 (their responses' ends are not "
                                           "learned), 1 of them dropped (no response token left)")
    assert cut_note(clean, {"truncated": 1, "dropped": 0}, 128) == \
        "; 1 eval row cut at --max-seq-len 128 (their responses' ends are not learned)"
    assert cut_note({"truncated": 2, "dropped": 2}, {"truncated": 1, "dropped": 1}, 64) == (
        "; 2 train rows and 1 eval row cut at --max-seq-len 64 (their responses' ends are not learned), 2 train rows "
        "and 1 eval row of them dropped (no response token left)")
    assert cut_note(clean, clean, 512) == ""


def test_the_summary_line_and_eval_report_md_round_answer_words_alike():
    """The measured bug: the summary line said "reference 56" where eval_report.md said 56.5 (":.0f" against the
    report's one decimal). Both say each mean as one helper writes it."""
    from pipeline.train.eval import report_markdown, summary_line

    rouge = {"base": 0.2, "adapter": 0.3, "delta": 0.1, "delta_ci95": [0.05, 0.15], "adapter_higher": 3,
             "base_higher": 1, "equal": 0, "sign_test_p": 0.6}
    report = {"adapter": "a/adapter", "data": "d.jsonl", "n_prompts": 4, "settings": {"max_new_tokens": 256},
              "rouge_l": rouge, "reference_loss": None, "judge": None,
              "answer_words": {"base": 40.5, "adapter": 31.0, "reference": 56.5}}
    line, md = summary_line(report), report_markdown(report)
    assert "answers 40.5 / 31 words (reference 56.5)" in line, line
    assert "The references average 56.5 words" in md and "| 40.5 |" in md and "| 31 |" in md, md
