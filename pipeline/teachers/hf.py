"""In-process teacher with transformers: any local folder or hub id, GGUF included.

Prompts are sorted by length and generated in batches with left padding, so similar
lengths share a batch and little compute goes to padding. Sampling is seeded from the
prompts themselves, so the same prompts give the same replies on a re-run.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import TeacherError
from .base import BaseTeacher, Completion, GenParams, ProgressFn


class HFTeacher(BaseTeacher):
    def __init__(self, model: str, *, gguf_file: str | None = None, api: str = "completions",
                 batch_size: int = 8, device: str = "auto", dtype: str = "auto",
                 repetition_penalty: float = 1.15, system_prompt: str = "", trust_remote_code: bool = False,
                 spec: str | None = None, seed: int = 0):
        super().__init__()
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.logging.set_verbosity_error()  # load reports and progress bars drown our own
        transformers.logging.disable_progress_bar()
        if api not in ("chat", "completions"):
            raise TeacherError(f"teacher api must be 'chat' or 'completions', not {api!r}")
        self.name = spec or f"hf:{model}"
        self.model_ref, self.api, self.batch_size = model, api, max(1, batch_size)
        self.repetition_penalty, self.system_prompt, self.seed = repetition_penalty, system_prompt, seed
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), **kwargs)
        except (OSError, ValueError) as e:
            raise TeacherError(f"cannot load model {model!r}: {str(e).splitlines()[0]}. Fix: give a local "
                               "model folder (config.json + weights) or a .gguf path; hub downloads need network") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow each prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if api == "chat" and not getattr(self.tokenizer, "chat_template", None):
            self.api = "completions"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "hf", "model": str(self.model_ref), "api": self.api,
                "device": self.device, "dtype": str(self.model.dtype), "batch_size": self.batch_size}

    def render(self, prompt: str) -> str:
        if self.api != "chat":
            return prompt
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _generate(self, prompts: list[str], params: GenParams, progress: ProgressFn) -> list[Completion]:
        rendered = [self.render(p) for p in prompts]
        lengths = [len(self.tokenizer(r, add_special_tokens=False).input_ids) for r in rendered]
        order = sorted(range(len(rendered)), key=lambda i: lengths[i])  # length bucketing
        results: list[Completion | None] = [None] * len(rendered)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, c in zip(idx, self._generate_batch([rendered[i] for i in idx], params)):
                results[i] = c
            progress(len(idx))
        return [r for r in results if r is not None]

    def _generate_batch(self, texts: list[str], params: GenParams) -> list[Completion]:
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = params.temperature > 0
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_tokens, do_sample=sample,
            repetition_penalty=self.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if sample:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p if 0 < params.top_p <= 1 else 1.0)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        stops = [s for s in params.stop if s.strip()]
        if stops:
            gen_kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        digest = hashlib.sha256(("\x00".join(texts) + f"|{self.seed}").encode()).digest()
        torch.manual_seed(int.from_bytes(digest[:8], "little"))
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        completions = []
        for row, prompt_len in zip(new, enc["attention_mask"].sum(dim=1).tolist()):
            ids = row.tolist()
            n = next((k for k, t in enumerate(ids) if t in eos), None)
            finished = n is not None
            ids = ids[:n] if finished else ids
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            hit_limit = not finished and len(ids) >= params.max_tokens
            completions.append(Completion(text=text, finish_reason="length" if hit_limit else "stop",
                                          prompt_tokens=int(prompt_len), completion_tokens=len(ids)))
        return completions
