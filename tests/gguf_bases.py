"""Tiny random-weight models of each GGUF base (Gemma 2, Gemma 3, Phi-3, Llama) for tests/test_gguf_bases.py.

For each: an HF folder (transformers' own config and model class, random weights, random norms so that
Gemma's w + 1 matters), a PEFT LoRA on every linear layer with random A and B (so the adapter moves every
answer), and a base GGUF of the HF folder that llama.cpp loads. The base GGUF is written here, with the keys
llama.cpp's convert_hf_to_gguf.py writes for the architecture and a small SentencePiece vocabulary of our own
(byte tokens and fillers: the tests feed token ids, no text), and the tensors as seed2lora's merged writer
converts them (gguf_merged.converted). llama.cpp itself is the judge: its logits on that file are compared
with transformers' on the HF folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 320  # <unk>, <s>, </s>, 256 byte tokens, 5 chat tokens, fillers: enough for llama.cpp's SentencePiece loader
HEAD_DIM = 16
SLIDING_WINDOW = 8  # shorter than the test sequences, so the sliding-window layers differ from the global ones


def hf_config(arch: str) -> Any:
    """A transformers config of a tiny model of `arch` (gemma2, gemma3, phi3, llama), eager attention."""
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, Phi3Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0, initializer_range=0.1)
    if arch == "gemma2":  # layers alternate sliding and global (llama.cpp: swa pattern 2); both soft-caps on
        cfg = Gemma2Config(**common, num_hidden_layers=2, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM,
                           sliding_window=SLIDING_WINDOW, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
    elif arch == "gemma3":  # five sliding layers then a global one (llama.cpp: swa pattern 6), q/k norms
        cfg = Gemma3TextConfig(**common, num_hidden_layers=6, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM,
                               sliding_window=SLIDING_WINDOW, final_logit_softcapping=None)
        cfg.architectures = ["Gemma3ForCausalLM"]
    elif arch == "phi3":  # fused qkv_proj and gate_up_proj; llama.cpp turns Phi-3's sliding window off
        cfg = Phi3Config(**common, num_hidden_layers=2, sliding_window=None, original_max_position_embeddings=256,
                         tie_word_embeddings=False)
    elif arch == "llama":
        cfg = LlamaConfig(**common, num_hidden_layers=2, tie_word_embeddings=False)
    else:
        raise ValueError(arch)
    cfg._attn_implementation = "eager"  # Gemma 2's attention soft-cap is eager-only
    return cfg


def tiny_model(arch: str, out: Path, seed: int = 0) -> Path:
    """out: an HF folder of a random tiny `arch` model, every norm weight random too."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # Gemma: x * (1 + w), zeros at init; others: x * w, ones at init
                p.copy_(p + 0.3 * torch.randn_like(p))
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out)
    tokenizer().save_pretrained(out)
    return out


def tokens() -> list[str]:
    chat = ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]  # llama.cpp's Phi-3 looks them up
    return ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chat + \
        [f"\u2581w{i}" for i in range(VOCAB - 3 - 256 - len(chat))]


def tokenizer() -> Any:
    """A word-level HF tokenizer over tokens(), for the commands that read one (the chat format of a Modelfile)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({tok: i for i, tok in enumerate(tokens())}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")


def random_adapter(hf_dir: Path, out: Path, r: int = 4, alpha: int = 8) -> Path:
    """out: a PEFT LoRA on every linear layer of hf_dir with random A and B (init_lora_weights=False)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear",
                                            init_lora_weights=False))
    with torch.no_grad():  # PEFT's random B is small; a larger one makes the adapter change every answer
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)
    peft.save_pretrained(out)
    return out


def add_vocab(w: Any) -> None:
    """tokens() as a SentencePiece vocabulary: scores, types (unknown, control, byte, normal), special ids."""
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    toks = tokens()
    w.add_token_list(toks)
    w.add_token_scores([-float(i) if t.startswith("\u2581") else 0.0 for i, t in enumerate(toks)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [3 if t.startswith("<|") else 1 for t in toks[259:]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)


def add_hparams(w: Any, arch: str, c: dict[str, Any]) -> None:
    """The keys llama.cpp's convert_hf_to_gguf.py writes for these architectures."""
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    rope = c.get("rope_parameters") or {}
    theta = (rope.get("full_attention") or rope).get("rope_theta") or c.get("rope_theta") or 10000.0
    w.add_rope_freq_base(float(theta))
    if arch in ("gemma2", "gemma3"):
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
        w.add_sliding_window(c["sliding_window"])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c["attn_logit_softcapping"])
        w.add_final_logit_softcapping(c["final_logit_softcapping"])
    if arch == "gemma3" and c.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(c["final_logit_softcapping"])
    if arch == "phi3":
        w.add_rope_dimension_count(c["hidden_size"] // c["num_attention_heads"])
        w.add_rope_scaling_orig_ctx_len(c["original_max_position_embeddings"])
        w.add_sliding_window(0)
    if arch == "llama":
        w.add_rope_dimension_count(c["hidden_size"] // c["num_attention_heads"])


def base_gguf(hf_dir: Path, out: Path, norm_shift: bool = True) -> Path:
    """out: hf_dir as an f32 GGUF model. norm_shift=False leaves Gemma's norms as HF stores them (the wrong
    file a converter without the w + 1 step would write: the test's proof that the step matters)."""
    import json

    import gguf

    from pipeline.train.gguf_adapter import write_gguf
    from pipeline.train.gguf_merged import converted, hf_weights
    from pipeline.train.gguf_tensors import arch_of

    c = json.loads((hf_dir / "config.json").read_text())
    arch = arch_of(c).gguf_name
    sources = hf_weights(hf_dir, c)

    def fill(w: Any) -> None:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(f"tiny random {arch}")
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        add_hparams(w, arch, c)
        add_vocab(w)
        for name, src in sources.items():
            if name == "output.weight" and c.get("tie_word_embeddings"):
                continue  # llama.cpp reuses token_embd
            data = converted(src if norm_shift else src._replace(shift=0.0))
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))

    return write_gguf(out, arch, fill)


# ---------------------------------------------------------------- the two sides

PROMPTS = [[1, 260, 271, 300, 265, 290, 310, 77, 78, 279, 262, 301, 318, 270], [1, 300, 299, 298, 297, 40, 41, 42],
           [1, *range(262, 290, 2)]]
NEW_TOKENS = 12  # prompt + answer runs past SLIDING_WINDOW


def hf_greedy(hf_dir: Path, adapter: Path | None) -> dict[str, list]:
    """transformers (+ PEFT) greedy answers to PROMPTS and the logits of each answer step, in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out: dict[str, list] = {"answers": [], "logits": []}
    for ids in PROMPTS:
        seq, steps = list(ids), []
        with torch.inference_mode():
            for _ in range(NEW_TOKENS):
                logits = model(torch.tensor([seq])).logits[0, -1].float().numpy()
                steps.append(logits)
                seq.append(int(logits.argmax()))
        out["answers"].append(seq[len(ids):])
        out["logits"].append(np.stack(steps))
    return out


def llama_cpp_agreement(model_path: Path, lora: Path | None, want: dict[str, list]) -> dict[str, Any]:
    """llama.cpp's free-running greedy answers against `want`'s, and its logits teacher-forced on `want`'s answers:
    same answers, top-1 agreement, and the largest logit difference relative to the logits' spread."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), lora_path=str(lora) if lora else None, n_ctx=64, n_threads=2,
                logits_all=True, verbose=False, seed=0, type_k=0, type_v=0)  # an f32 KV cache (GGML_TYPE_F32)
    same, agree, total, rel = 0, 0, 0, 0.0
    for ids, target, logits in zip(PROMPTS, want["answers"], want["logits"], strict=True):
        llm.reset()
        llm.eval(ids)
        got: list[int] = []
        while len(got) < NEW_TOKENS:
            got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([got[-1]])
        same += got == target
        llm.reset()
        llm.eval(ids + target[:-1])
        mine = np.array(llm.scores[len(ids) - 1:len(ids) - 1 + len(target)])
        agree += int((mine.argmax(-1) == np.array(target)).sum())
        total += len(target)
        rel = max(rel, float(np.abs(mine - logits).max() / logits.std()))
    llm.close()
    return {"same": same, "of": len(PROMPTS), "top1": agree / total, "rel_logit_diff": rel}
