"""Synthetic instruction-like sentences for benchmarking the ROUGE-L filter.

Realistic enough to exercise the filter the way Self-Instruct does: task-style
openings ("Write a ...", "Classify ..."), a Zipf-distributed vocabulary (so
stop-words are shared by almost every pair, as in real data), lognormal
lengths (mean ~17 words, long tail past 64 and 256 tokens) and ~15%
near-duplicates made by editing an earlier sentence.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_FILES = [
    REPO / "seeds" / "seed_tasks.jsonl",
    REPO.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl",
]

_OPENINGS = [
    "Write a", "Generate a list of", "Explain why", "Classify the following",
    "Given the", "Summarize the", "Translate the", "Create a", "Describe how",
    "What is the", "Find the", "Rewrite the given", "Suggest some", "Identify the",
    "How can I", "Make a", "Tell me", "Compose a", "Come up with", "Convert the",
]
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "do", "ge",
              "bri", "str", "on", "an", "el", "ix", "um", "or", "ta", "qu", "ph", "yl"]
_PUNCT = [",", ".", "?", "!", ";", ":", " -", "'s"]


def seed_instructions() -> list[str]:
    """Instructions from the seed files that exist on this machine."""
    out = []
    for path in SEED_FILES:
        if path.exists():
            with path.open(encoding="utf-8") as f:
                out += [json.loads(line)["instruction"] for line in f if line.strip()]
    return list(dict.fromkeys(out))  # the same task in two files counts once


class SentenceGenerator:
    def __init__(self, seed: int = 0, vocab_size: int = 30_000, zipf_s: float = 1.07,
                 dup_rate: float = 0.15):
        self.rng = random.Random(seed)
        words, seen = [], set()
        while len(words) < vocab_size:  # pronounceable pseudo-words, short ones first
            k = 1 + sum(len(words) >= t for t in (20, 500, 10_000)) + (self.rng.random() < 0.3)
            w = "".join(self.rng.choice(_SYLLABLES) for _ in range(k))
            if w not in seen:
                seen.add(w)
                words.append(w)
        self.words = words
        self.cum_weights = list(itertools.accumulate(1 / (r + 1) ** zipf_s
                                                     for r in range(vocab_size)))
        self.dup_rate = dup_rate
        self.history: list[str] = []

    def _length(self) -> int:
        # lognormal(mu=2.65, sigma=0.55): mean ~16.5, median ~14, p99 ~50, rare >100
        n = int(self.rng.lognormvariate(2.65, 0.55))
        if self.rng.random() < 0.002:  # long-tail documents (multi-word bit vectors)
            n = self.rng.randint(65, 400)
        return max(1, n)

    def _words(self, n: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum_weights, k=n)

    def _fresh(self) -> str:
        n = self._length()
        body = self._words(n)
        for i in range(len(body)):
            if self.rng.random() < 0.06:
                body[i] += self.rng.choice(_PUNCT)
        return self.rng.choice(_OPENINGS) + " " + " ".join(body)

    def _edit(self, text: str) -> str:
        toks = text.split()
        for _ in range(self.rng.randint(1, 3)):
            op = self.rng.random()
            i = self.rng.randrange(len(toks))
            if op < 0.4:
                toks[i] = self._words(1)[0]
            elif op < 0.7 and len(toks) > 1:
                del toks[i]
            else:
                toks.insert(i, self._words(1)[0])
        if self.rng.random() < 0.3:
            toks[0] = toks[0].capitalize() if toks[0].islower() else toks[0].lower()
        return " ".join(toks)

    def sentence(self) -> str:
        if self.history and self.rng.random() < self.dup_rate:
            s = self._edit(self.rng.choice(self.history))
        else:
            s = self._fresh()
        self.history.append(s)
        return s


def instructions(n: int, seed: int = 0) -> list[str]:
    """The first `n` benchmark instructions: real seeds first, then synthetic."""
    out = seed_instructions()[:n]
    gen = SentenceGenerator(seed)
    gen.history.extend(out)
    while len(out) < n:
        out.append(gen.sentence())
    return out
