"""In-process teacher with transformers: any local folder or hub id, GGUF included.

Prompts are sorted by length and generated in batches with left padding, so similar
lengths share a batch and little compute goes to padding. Sampling is seeded from the
prompts themselves, so the same prompts give the same replies on a re-run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import TeacherConfig
from ..errors import TeacherError
from .base import BaseTeacher, Completion, GenParams, Request, logprob_reply
from .origin import RUN_TEACHER, Origin

# A logprobs batch is one forward pass over short tails after a shared prefix that runs once per batch, so
# bigger batches run the prefix (400 tokens of classify.txt) less often: 64 classify prompts took 21-22 s at
# 4 x batch_size against 38-40 s at 1 x on the shared 2-core CPU.
LOGPROB_BATCH_FACTOR = 4


def check_model_folder(model: str, origin: Origin = RUN_TEACHER) -> None:
    """A model named by its path (not a hub id) must exist: checked before torch loads, and by `run --dry-run`."""
    if str(model).startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        raise TeacherError(f"no model folder at {model}. Fix: give the folder holding config.json and the weights "
                           f"(or a .gguf file), e.g. {origin.give('spec', 'hf:/models/Qwen2.5-0.5B-Instruct')}")


class HFTeacher(BaseTeacher):
    sort_by_length = True
    def __init__(self, model: str, cfg: TeacherConfig | None = None, *, gguf_file: str | None = None,
                 spec: str | None = None, seed: int = 0, origin: Origin = RUN_TEACHER, **settings: Any):
        """A teacher is its config: `cfg` (TeacherConfig, the one place of its defaults), any of its fields as
        keywords over it; `origin`, the table and flags its messages name. api "auto" means completions in process: small models follow a prompt's text best."""
        cfg = dataclasses.replace(cfg or TeacherConfig(), **settings)
        api = "completions" if cfg.api == "auto" else cfg.api
        batch_size, device, dtype = cfg.batch_size, cfg.device, cfg.dtype
        repetition_penalty, system_prompt, trust_remote_code = (cfg.repetition_penalty, cfg.system_prompt,
                                                                cfg.trust_remote_code)
        super().__init__()
        self.origin = origin
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
        check_model_folder(model, origin)
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

    def _stream(self, requests: Iterator[Request | None], params: GenParams) -> Iterator[tuple[Request, Completion]]:
        """Batches of `batch_size` with left padding, one batch per sampling setting (a stream
        may mix kinds). A batch runs when it is full, when the source says WAIT (its next
        prompts need these replies), or when the source ends."""
        buckets: dict[GenParams, list[Request]] = {}
        ended = False
        while not ended or buckets:
            full = None
            while not ended and full is None:
                req = self.pull(requests, 0, params)
                if req is False:
                    ended = True
                elif req is None:  # WAIT: run what is queued so its replies can feed the source
                    break
                else:
                    p = req.params or params
                    cached = self.lookup(req, p)
                    if cached is not None:
                        yield req, cached
                        continue
                    buckets.setdefault(p, []).append(req)
                    if len(buckets[p]) >= self.batch_size * (LOGPROB_BATCH_FACTOR if p.logprobs else 1):
                        full = p
            if not buckets:
                if req is None and not ended:
                    return  # WAIT with nothing queued or in flight: the source has nothing more
                continue
            p = full or max(buckets, key=lambda k: len(buckets[k]))
            batch = buckets.pop(p)
            yield from zip(batch, self._generate_batch([self.render(r.prompt) for r in batch], p,
                                                       [r.salt for r in batch]), strict=True)

    def _generate_batch(self, texts: list[str], params: GenParams, salts: list[str] | tuple = ()) -> list[Completion]:
        import torch

        if params.logprobs:
            return self._logprob_batch(texts, params.logprobs)
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
            gen_kwargs["stopping_criteria"] = [StopOnText(self.tokenizer, stops, enc["input_ids"].shape[1])]
        # The salts are in the seed: a retry (a new salt) of the same prompt must be free to come out differently.
        digest = hashlib.sha256(("\x00".join(texts) + "\x01" + "\x00".join(salts) + f"|{self.seed}").encode()).digest()
        torch.manual_seed(int.from_bytes(digest[:8], "little"))
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        completions = []
        for row, prompt_len in zip(new, enc["attention_mask"].sum(dim=1).tolist(), strict=True):
            ids = row.tolist()
            n = next((k for k, t in enumerate(ids) if t in eos), None)
            finished = n is not None
            ids = ids[:n] if finished else ids
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            hit_limit = not finished and len(ids) >= params.max_tokens
            completions.append(Completion(text=text, finish_reason="length" if hit_limit else "stop",
                                          prompt_tokens=int(prompt_len), completion_tokens=len(ids)))
        return completions


    def _logprob_batch(self, texts: list[str], k: int) -> list[Completion]:
        """The top-k next-token log-probabilities after each text, one forward pass for the batch.

        Few-shot prompts (classify.txt) share all but their last lines, so the longest common
        token prefix is run once and its KV cache repeated over the batch: the rows then cost
        only their own tails (about 20 tokens of 400 for classify).
        """
        import torch
        from transformers import RepetitionPenaltyLogitsProcessor

        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        common = 0  # every row keeps at least one token of its own, whose logits are the answer's
        while common < min(map(len, ids)) - 1 and all(row[common] == ids[0][common] for row in ids):
            common += 1
        tails = [row[common:] for row in ids]
        width = max(map(len, tails))
        batch = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), common + width), dtype=torch.long)
        mask[:, :common] = 1
        for r, tail in enumerate(tails):  # right padding: a row's real tokens sit right after the shared prefix
            batch[r, :len(tail)] = torch.tensor(tail)
            mask[r, common:common + len(tail)] = 1
        with torch.inference_mode():
            cached: dict[str, Any] = {}
            if common:
                past = self.model(torch.tensor([ids[0][:common]], device=self.device), use_cache=True).past_key_values
                past.batch_repeat_interleave(len(ids))
                # transformers renamed the argument (past_key_values -> cache); take whichever this version has
                name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
                cached = {name: past, "use_cache": True}
            logits = self.model(input_ids=batch.to(self.device), attention_mask=mask.to(self.device),
                                logits_to_keep=width, **cached).logits
            raw = logits[torch.arange(len(ids)), torch.tensor([len(t) - 1 for t in tails])].float()
            values, indices = raw.log_softmax(-1).topk(k, dim=-1)
            # The first token greedy generation would pick (same repetition penalty), to compare with the margin.
            penalty = RepetitionPenaltyLogitsProcessor(self.repetition_penalty)
            greedy = [int(penalty(torch.tensor([r]), raw[j:j + 1].cpu()).argmax()) for j, r in enumerate(ids)]
        out = []
        for row, vals, idx, g in zip(ids, values.tolist(), indices.tolist(), greedy, strict=True):
            top: dict[str, float] = {}
            for v, i in zip(vals, idx, strict=True):
                top.setdefault(self.tokenizer.decode([i]), v)  # two ids may decode alike: keep the likelier
            out.append(Completion(logprob_reply(top, greedy=self.tokenizer.decode([g])), "stop",
                                  prompt_tokens=len(row), completion_tokens=1))
        return out


class StopOnText:
    """Stop each sequence once its new text contains a stop string.

    transformers' own `stop_strings` pre-processes the whole vocabulary on every call,
    which here cost more than the generation itself. This decodes only the last few new
    tokens of each row per step: a token is at least one character, so a window as long
    as the longest stop string (in tokens) always sees a complete match.
    """

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int):
        self.tokenizer, self.stops, self.start = tokenizer, stops, prompt_len
        self.window = max(len(s) for s in stops) + 1

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        tails = input_ids[:, max(self.start, input_ids.shape[1] - self.window):]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)
