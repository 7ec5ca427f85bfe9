"""Near-duplicates beyond ROUGE-L: MinHash LSH (datasketch) over sets of normalised content words.

ROUGE-L is a longest common subsequence, so it misses a task whose clauses come in another
order ("For a good night's sleep, give three tips" vs "Provide 3 tips for a good night's
sleep": 0.67) and one said with other words. Here a text becomes the set of its content
words: lower-cased, stop words out, number words as digits, Porter-stemmed, and each word
of a synonym group replaced by the group's first word. Order no longer matters and the
listed synonyms meet; the Jaccard similarity of two such sets is estimated by MinHash,
and LSH finds the candidates above a threshold without comparing every pair. Each
candidate is then checked with the exact Jaccard, so the estimate's noise never rejects.

What it does not catch: paraphrases whose words are neither shared nor listed as synonyms.
The ground floor: imports nothing of ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Function words carry no task; "give", "write" stay (synonym groups map them).
STOP_WORDS = frozenset("""a an the and or but if then than so of to in on at by for with from into onto about as is are
was were be been being am do does did doing have has had having it its this that these those there here i me my we our
you your he she they them their his her him what which who whom whose when where why how all any each some such no not
only own same too very can will would should could may might must shall just also please following given below
above""".split())
NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class NearDuplicate:
    index: int  # position of the rejected text in the input
    kept: int  # position of the kept text it duplicates (the most similar one)
    jaccard: float


class ContentWords:
    """Text -> set of normalised content words (see the module docstring)."""

    def __init__(self, synonyms: Iterable[str] = ()):
        from nltk.stem.porter import PorterStemmer

        self._stem = PorterStemmer().stem
        self.canonical: dict[str, str] = {}
        for group in synonyms:
            words = [self._stem(w) for w in group.lower().split()]
            for w in words:
                self.canonical.setdefault(w, words[0])  # a word in two groups belongs to the first

    def __call__(self, text: str) -> frozenset[str]:
        out = set()
        for w in _WORD.findall(text.lower()):
            if w in STOP_WORDS:
                continue
            w = NUMBER_WORDS.get(w, w)
            stem = self._stem(w)
            out.add(self.canonical.get(stem, stem))
        return frozenset(out)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDupIndex:
    """Kept texts in a MinHash LSH index; `check` names the most similar kept text at or above the threshold."""

    def __init__(self, threshold: float, *, num_perm: int = 128, seed: int = 42, synonyms: Iterable[str] = ()):
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.words = ContentWords(synonyms)
        # LSH tuned for a slightly lower threshold: the exact check decides, so extra candidates cost little
        # and an estimate that falls just under the threshold still finds its pair.
        self.lsh = MinHashLSH(threshold=max(0.05, threshold - 0.1), num_perm=num_perm)
        self.sets: list[frozenset[str]] = []

    def _minhash(self, words: frozenset[str]):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([w.encode("utf-8") for w in sorted(words)])
        return m

    def check(self, text: str, skip: Callable[[int], bool] | None = None) -> tuple[int, float] | None:
        """(position of the most similar kept text, exact Jaccard) when it is >= threshold; else None.

        skip(position): kept texts that may be as close as they like (a row's sibling instances).
        """
        words = self.words(text)
        if not words:
            return None
        best = None
        for key in self.lsh.query(self._minhash(words)):
            if skip is not None and skip(key):
                continue
            score = jaccard(words, self.sets[key])
            if score >= self.threshold and (best is None or score > best[1] or (score == best[1] and key < best[0])):
                best = (key, score)
        return best

    def add(self, text: str) -> int:
        words = self.words(text)
        key = len(self.sets)
        self.sets.append(words)
        if words:
            self.lsh.insert(key, self._minhash(words))
        return key


def near_duplicates(texts: list[str], threshold: float, *, keep_first: int = 0, num_perm: int = 128, seed: int = 42,
                    synonyms: Iterable[str] = ()) -> list[NearDuplicate]:
    """Texts that near-duplicate an earlier kept one, in order; the first `keep_first` are always kept (the seeds)."""
    index = NearDupIndex(threshold, num_perm=num_perm, seed=seed, synonyms=synonyms)
    kept: list[int] = []  # index key -> position in texts
    found = []
    for i, text in enumerate(texts):
        hit = index.check(text) if i >= keep_first else None
        if hit is None:
            index.add(text)
            kept.append(i)
        else:
            found.append(NearDuplicate(i, kept[hit[0]], round(hit[1], 4)))
    return found
