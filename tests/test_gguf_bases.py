"""GGUF export for bases beyond the embedded Llama: Gemma 2, Gemma 3 and Phi-3 (and a tiny Llama beside them).

Each base is a tiny random-weight model of transformers' own class (tests/gguf_bases.py). llama.cpp
(llama-cpp-python) is the judge: the base GGUF, the base + our GGUF adapter, and our merged GGUF must answer
as transformers (+ PEFT) does, greedy and teacher-forced, while the wrong files (no adapter; Gemma's norms
without the + 1) must not.
"""

import pipeline.train  # noqa: F401, I001 -- first: sets OMP_WAIT_POLICY before torch loads
import json

import numpy as np
import pytest

from gguf_bases import base_gguf, hf_greedy, llama_cpp_agreement, random_adapter, tiny_model
from helpers import llama_cpp_unusable
from pipeline.errors import Seed2LoraError
from pipeline.train.gguf_adapter import write_adapter_gguf
from pipeline.train.gguf_header import read_header
from pipeline.train.gguf_merged import converted, hf_weights, write_merged_gguf
from pipeline.train.gguf_tensors import ARCHITECTURES, arch_of, lora_pairs

gguf = pytest.importorskip("gguf")
needs_llama_cpp = pytest.mark.skipif(llama_cpp_unusable() is not None, reason=str(llama_cpp_unusable()))
BASES = ["gemma2", "gemma3", "phi3", "llama"]


@pytest.fixture(scope="module", params=BASES)
def base(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf = tiny_model(request.param, root / "hf")
    adapter = random_adapter(hf, root / "adapter")
    return {"arch": request.param, "hf": hf, "adapter": adapter, "gguf": base_gguf(hf, root / "base.gguf"),
            "root": root}


def test_fused_phi3_layers_map_to_llama_cpps_fused_tensors(base):
    """Phi-3's LoRA on qkv_proj and gate_up_proj is a pair on llama.cpp's attn_qkv and ffn_up, rows as they are;
    every pair names a tensor of the base GGUF with the shape of B @ A."""
    from safetensors.numpy import load_file

    config = json.loads((base["hf"] / "config.json").read_text())
    lora = json.loads((base["adapter"] / "adapter_config.json").read_text())
    state = load_file(str(base["adapter"] / "adapter_model.safetensors"))
    pairs = {p.name: p for p in lora_pairs(state, config, lora)}
    shapes = read_header(base["gguf"])[1]
    assert all(shapes[n] == (p.b.shape[0], p.a.shape[1]) for n, p in pairs.items())
    assert any(p.reordered for p in pairs.values()) is (base["arch"] == "llama")  # NeoX rotary: nothing moves
    if base["arch"] == "phi3":
        assert {n.split(".", 2)[2] for n in pairs} == {"attn_qkv.weight", "attn_output.weight", "ffn_up.weight",
                                                       "ffn_down.weight"}
        qkv = pairs["blk.1.attn_qkv.weight"]
        np.testing.assert_array_equal(qkv.b, state["base_model.model.model.layers.1.self_attn.qkv_proj.lora_B.weight"])
        assert qkv.b.shape[0] == 64 + 2 * 32  # q (4 heads) + k + v (2 heads each) of 16 rows
        with pytest.raises(Seed2LoraError, match="qkv_proj, o_proj, gate_up_proj, down_proj"):
            lora_pairs({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 64)),
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((64, 4))},
                       config, lora)


def test_gemma_norms_are_stored_as_w_plus_one(base):
    config = json.loads((base["hf"] / "config.json").read_text())
    sources = hf_weights(base["hf"], config)
    from safetensors.numpy import load_file

    hf = load_file(str(base["hf"] / "model.safetensors"))
    for name in ("blk.0.attn_norm.weight", "output_norm.weight", "blk.0.attn_q_norm.weight", "blk.1.post_ffw_norm.weight"):
        if name not in sources:
            continue
        want = hf[sources[name].key] + (1.0 if base["arch"].startswith("gemma") else 0.0)
        np.testing.assert_array_equal(converted(sources[name]), want)
    assert arch_of(config).norm_shift == (1.0 if base["arch"].startswith("gemma") else 0.0)


def test_an_unsupported_base_is_refused_naming_the_supported_ones(tmp_path):
    state = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 8), np.float32),
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((8, 4), np.float32)}
    for name in ("GPT2LMHeadModel", "Gemma3ForConditionalGeneration", "Phi3VForCausalLM"):
        with pytest.raises(Seed2LoraError) as err:
            lora_pairs(state, {"architectures": [name], "num_hidden_layers": 1}, {"r": 4, "lora_alpha": 8})
        assert name in str(err.value) and all(a in str(err.value) for a in ARCHITECTURES)
    assert {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"} <= set(ARCHITECTURES)


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_answers_as_transformers_and_peft_do(base, capsys):
    adapter = write_adapter_gguf(base["adapter"], base["root"] / "adapter.gguf", outtype="f32",
                                 base_gguf=base["gguf"])["path"]
    merged = write_merged_gguf(base["adapter"], base["root"] / "merged.gguf", outtype="f16",
                               base_gguf=base["gguf"])["path"]
    plain, tuned = hf_greedy(base["hf"], None), hf_greedy(base["hf"], base["adapter"])
    runs = {"base GGUF vs transformers": llama_cpp_agreement(base["gguf"], None, plain),
            "base + GGUF adapter vs PEFT": llama_cpp_agreement(base["gguf"], adapter, tuned),
            "merged f16 vs PEFT": llama_cpp_agreement(merged, None, tuned),
            "base alone vs PEFT (must differ)": llama_cpp_agreement(base["gguf"], None, tuned)}
    if base["arch"].startswith("gemma"):  # the same file without Gemma's + 1 on the norms
        wrong = base_gguf(base["hf"], base["root"] / "unshifted.gguf", norm_shift=False)
        runs["norms without + 1 vs transformers (must differ)"] = llama_cpp_agreement(wrong, None, plain)
    with capsys.disabled():
        for name, r in runs.items():
            print(f"\n{base['arch']} {name}: {r['same']}/{r['of']} same answers, top-1 {r['top1']:.3f}, "
                  f"max logit diff {r['rel_logit_diff']:.4f} x the logits' std")
    # f32 weights and an f32 KV cache: the same arithmetic up to the order of float sums (measured 4e-5 to 4e-3 of
    # the logits' spread, Gemma 2's soft-caps the most; the wrong files below are off by 4 and more)
    for name in ("base GGUF vs transformers", "base + GGUF adapter vs PEFT"):
        r = runs[name]
        assert r["same"] == r["of"] and r["top1"] == 1.0 and r["rel_logit_diff"] < 0.02, name
    r = runs["merged f16 vs PEFT"]  # f16 weights: every weight rounded, amplified by random layers and a large LoRA
    assert r["top1"] >= 0.9 and r["rel_logit_diff"] < 0.5, r
    for name in (n for n in runs if "must differ" in n):
        assert runs[name]["top1"] < 0.5 and runs[name]["rel_logit_diff"] > 2, name
