"""Exact, fast ROUGE-L for the Self-Instruct diversity filter.

Scores are bit-for-bit those of ``rouge_score`` (RougeScorer(["rougeL"])):
the same tokenizer (lowercase, runs of [a-z0-9] are tokens, optional Porter
stemming of tokens longer than 3 chars) and the same float formula
(p = lcs/len(pred), r = lcs/len(target), f = 2*p*r/(p+r)).

Algorithm
---------
* Tokens are interned to ints, so an entry is a slice of one int32 array.
* LCS length is computed bit-parallel (Allison-Dix / Hyyro 2004): with the
  query's token positions as bit masks M[t], one pass over the other text
  doing ``u = V & M[t]; V = (V + u) | (V - u)`` leaves LCS = number of zero
  bits of V.  Queries longer than 64 tokens use multi-word V with carries.
* Batches (``filter_batch``) score up to 64 short queries at once: each pool
  token is read once and updates 64 independent bit vectors, a loop LLVM
  vectorises.  Pool tokens absent from every query leave V unchanged and are
  skipped.  Work is split over all cores by threads running nogil kernels.
* Candidates of a batch are then decided in order against the pool maxima and
  the scores among themselves, which gives the same decisions as calling
  ``add_if_novel`` one by one.
* A single query of up to 64 tokens (``max_score``, ``scores``, ``top_k``,
  ``add_if_novel``) reads each entry as its common tokens only (the 255 most
  frequent of the pool, a byte each, their match masks in a 2 KB table):
  tokens in no query leave V unchanged, so this is exact for every entry
  holding no rare token of the query; the few that do (found through the
  postings, token -> its entries) are read again whole.  Entries added since
  the last freeze of these arrays are scanned whole, and so is a small pool
  (up to _SCAN_WHOLE tokens), which has no such arrays.  The row is exact,
  and the last row is kept while the pool is unchanged.  ``summary`` gives
  the filter a candidate's max, top-k and mean (np.mean's pairwise sum, the
  same additions) from one row; for a small pool the row and all three come
  from one kernel call, and a frozen pool's row is one call too.
* A query over 64 tokens uses a multi-word bit vector; ``max_score`` then
  skips entries whose F bound cannot beat the best so far: the length bound
  LCS <= min(m, n) and the bag-of-words bound (entry tokens that occur in
  the query).  The bound is the exact float F of the bound LCS, so pruning
  never changes a result, including the many "exactly 0.7" pairs that
  evaluate to 0.7000000000000001.
* ``filter_batch_detailed`` also returns Self-Instruct's most-similar top-k
  and mean score for every candidate, from the score rows the batch computes
  anyway; it is much faster than calling ``scores``/``top_k`` per candidate.

Backends: "numba" (default when importable), "rapidfuzz" (LCSseq over tokens
mapped to characters) and "python" (Python-int bit vectors, the test oracle).
An index is not thread-safe.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

try:
    import numba
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None
try:
    from rapidfuzz import process as _rf_process
    from rapidfuzz.distance import LCSseq as _rf_lcs
except ImportError:  # pragma: no cover
    _rf_process = None

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_LANES = 64  # queries scored together per pass over the pool in filter_batch
_MIN_PARALLEL_WORK = 1 << 20  # token x lane steps (~0.5 ms) below which one thread runs
# worker threads: NUMBA_NUM_THREADS if set, else every CPU this process may run on
_THREADS = int(os.environ.get("NUMBA_NUM_THREADS") or (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class _Tokenizer:
    """rouge_score.tokenize.tokenize, with an optional cached Porter stemmer."""

    def __init__(self, use_stemmer: bool = False):
        self._stem = None
        if use_stemmer:
            from nltk.stem import porter

            self._stem = porter.PorterStemmer().stem
            self._cache: dict[str, str] = {}

    def __call__(self, text) -> list[str]:
        if isinstance(text, bytes):  # six.ensure_str: lower() first, then utf-8 decode
            text = text.lower().decode("utf-8")
        else:
            text = text.lower()
        # findall == rouge-score's sub(non-alnum, " ") + split + VALID_TOKEN filter
        tokens = _TOKEN_RE.findall(text)
        if self._stem is not None:
            tokens = [self._stemmed(t) if len(t) > 3 else t for t in tokens]
            tokens = [t for t in tokens if _TOKEN_RE.fullmatch(t)]
        return tokens

    def _stemmed(self, token: str) -> str:
        s = self._cache.get(token)
        if s is None:
            s = self._cache[token] = self._stem(token)
        return s


def _fmeasure(lcs: int, n_target: int, n_pred: int) -> float:
    """rouge_score._score_lcs + scoring.fmeasure, same float operations."""
    if not n_target or not n_pred:
        return 0.0
    precision = lcs / n_pred
    recall = lcs / n_target
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _match_masks(tokens) -> dict:
    """token -> bitmask of its positions in `tokens`."""
    masks: dict = {}
    for i, t in enumerate(tokens):
        masks[t] = masks.get(t, 0) | (1 << i)
    return masks


def _lcs_bits(masks: dict, m: int, other) -> int:
    """LCS length by Hyyro's bit-parallel recurrence on Python ints."""
    full = (1 << m) - 1
    v = full
    for t in other:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


_default_tokenizer = _Tokenizer()


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of RougeScorer(["rougeL"]).score(a, b)."""
    ta, tb = _default_tokenizer(a), _default_tokenizer(b)
    if not ta or not tb:
        return 0.0
    return _fmeasure(_lcs_bits(_match_masks(ta), len(ta), tb), len(ta), len(tb))


def _top_k_numpy(scores: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")  # stable: ties keep lower position first
    return order[:k]


# --------------------------------------------------------------------------- numba
if numba is not None:

    @intrinsic
    def _popcount(typingctx, x):
        def codegen(context, builder, sig, args):
            return builder.ctpop(args[0])

        return numba.types.uint64(numba.types.uint64), codegen

    _ONES = np.uint64(0xFFFFFFFFFFFFFFFF)

    @numba.njit(cache=True, inline="always")
    def _f(lcs, m, n):
        # Same operations and order as rouge_score; lcs == 0 covers empty texts.
        if lcs == 0:
            return 0.0
        p = lcs / n
        r = lcs / m
        return 2 * p * r / (p + r)

    @numba.njit(cache=True, inline="always")
    def _low_mask(bits):
        return _ONES >> np.uint64(64 - bits) if bits > 0 else np.uint64(0)

    @numba.njit(cache=True, inline="always")
    def _entry_f(e, flat, start, pm, top, m):
        """F of entry e (tokens flat[start[e]:start[e + 1]]), read whole, against one query of m <= 64 tokens: the
        single-word bit-parallel LCS (pm: the query's match mask of every token; top: its m low bits)."""
        x = top
        for j in range(start[e], start[e + 1]):
            u = x & pm[flat[j]]
            x = (x + u) | (x - u)
        return _f(m - np.int64(_popcount(x & top)), m, start[e + 1] - start[e])

    @numba.njit(cache=True)
    def _pack(qflat, qstart, n_vocab, n_words):
        """Match masks of several queries, indexed through a slot table.

        slot[token] is 0 for tokens in no query, else a row of `table`; row s
        holds, for query q and word w, the bits of the token's positions at
        column q * n_words + w.
        """
        slot = np.zeros(n_vocab, np.int32)
        n_slots = 1
        for t in qflat:
            if slot[t] == 0:
                slot[t] = n_slots
                n_slots += 1
        table = np.zeros((n_slots, (qstart.shape[0] - 1) * n_words), np.uint64)
        for q in range(qstart.shape[0] - 1):
            for p in range(qstart[q + 1] - qstart[q]):
                t = qflat[qstart[q] + p]
                table[slot[t], q * n_words + p // 64] |= np.uint64(1) << np.uint64(p % 64)
        return slot, table

    @numba.njit(cache=True, nogil=True)
    def _block_scores(lo, hi, flat, start, slot, table, qlen, out, out_rows):
        """F of up to 64-token queries (lanes) against entries lo..hi-1.

        Returns the lane maxima, and writes out[out_rows[lane], entry] when
        `out` has columns.
        """
        lanes = qlen.shape[0]
        full = np.empty(lanes, np.uint64)
        for k in range(lanes):
            full[k] = _low_mask(qlen[k])
        best = np.zeros(lanes)
        v = np.empty(lanes, np.uint64)
        for i in range(lo, hi):
            v[:] = full
            for j in range(start[i], start[i + 1]):
                s = slot[flat[j]]
                if s:  # tokens in no query leave every V unchanged
                    row = table[s]
                    for k in range(lanes):
                        u = v[k] & row[k]
                        v[k] = (v[k] + u) | (v[k] - u)
            n_i = start[i + 1] - start[i]
            for k in range(lanes):
                f = _f(qlen[k] - np.int64(_popcount(v[k] & full[k])), qlen[k], n_i)
                best[k] = max(best[k], f)
                if out.shape[1]:
                    out[out_rows[k], i] = f
        return best

    @numba.njit(cache=True, inline="always")
    def _lcs_words(flat, lo, hi, slot, table, v, top, m):
        """LCS of one multi-word query and flat[lo:hi]."""
        words = v.shape[0]
        v[:] = _ONES
        v[words - 1] = top
        for j in range(lo, hi):
            s = slot[flat[j]]
            if s:
                row = table[s]
                carry = np.uint64(0)
                for w in range(words):  # V + u with the carry running across words
                    x = v[w]
                    u = x & row[w]
                    y = x + u
                    z = y + carry
                    carry = np.uint64(1) if (y < x or z < y) else np.uint64(0)
                    v[w] = z | (x - u)
        zeros = np.int64(_popcount(v[words - 1] & top))
        for w in range(words - 1):
            zeros += np.int64(_popcount(v[w]))
        return m - zeros

    @numba.njit(cache=True, nogil=True)
    def _query_scores(lo, hi, flat, start, pm, slot, table, m, out, prune):
        """Max F of one query of any length against entries lo..hi-1.

        Up to 64 tokens, pm[token] is the match mask (a dense array: one load
        and no branch per token is fastest); longer queries use slot/table.
        Writes out[entry] when `out` is not empty.  With `prune`, entries
        whose exact-float F bound cannot beat the best so far are skipped.
        """
        words = table.shape[1]
        top = _low_mask(m - 64 * (words - 1))
        v = np.empty(words, np.uint64)
        best = 0.0
        for i in range(lo, hi):
            a, b = start[i], start[i + 1]
            if prune:
                bound = min(m, b - a)
                if _f(bound, m, b - a) <= best:
                    continue
                if words > 1:  # bag-of-words bound, cheaper than a multi-word LCS
                    hits = 0  # entry tokens found in the query >= LCS
                    for j in range(a, b):
                        hits += slot[flat[j]] != 0
                    if _f(min(bound, hits), m, b - a) <= best:
                        continue
            if words == 1:
                x = top
                for j in range(a, b):
                    u = x & pm[flat[j]]
                    x = (x + u) | (x - u)
                lcs = m - np.int64(_popcount(x & top))
            else:
                lcs = _lcs_words(flat, a, b, slot, table, v, top, m)
            f = _f(lcs, m, b - a)
            best = max(best, f)
            if out.shape[0]:
                out[i] = f
        return best

    @numba.njit(cache=True, nogil=True)
    def _projected_scores(lo, hi, codes, gstart, glen, lane_entry, pm_code, start, m, out):
        """F of one query of at most 64 tokens against the entries of groups lo..hi-1, each entry read as its
        common tokens only (pm_code[code]: the query's match mask of that token): exact for every entry holding
        no other token of the query, as a token in no query leaves the bit vector unchanged. A group is
        _LANES_COMMON entries of about the same number of common tokens, stored position by position
        (codes[gstart[g] + k * lanes + lane], padded with code 255, whose mask is 0), so their bit vectors run
        side by side; lane_entry names each lane's entry (-1: padding). The table is 2 KB and a code one byte."""
        lanes = _LANES_COMMON
        top = _low_mask(m)
        short = 64  # F by (LCS, entry length) up to this length: a lookup, not three divisions, per entry
        f_of = np.zeros((m + 1) * (short + 1))
        for lcs in range(m + 1):
            for n in range(1, short + 1):
                f_of[lcs * (short + 1) + n] = _f(lcs, m, n)
        v = np.empty(lanes, np.uint64)
        for g in range(lo, hi):
            for k in range(lanes):
                v[k] = top
            base = gstart[g]
            for p in range(glen[g]):
                row = base + p * lanes
                for k in range(lanes):
                    u = v[k] & pm_code[codes[row + k]]
                    v[k] = (v[k] + u) | (v[k] - u)
            for k in range(lanes):
                e = lane_entry[g * lanes + k]
                if e >= 0:
                    lcs = m - np.int64(_popcount(v[k] & top))
                    n = start[e + 1] - start[e]
                    out[e] = f_of[lcs * (short + 1) + n] if n <= short else _f(lcs, m, n)
        return 0.0

    @numba.njit(cache=True)
    def _entry_scores(entries, seg_lo, seg_hi, flat, start, pm, m, out):
        """F of one query of at most 64 tokens against the entries listed in entries[seg_lo[g]:seg_hi[g]] (the
        postings of its rare tokens), each read whole (pm: the query's match mask of every token). An entry
        listed twice is scored twice, to the same value."""
        top = _low_mask(m)
        for g in range(seg_lo.shape[0]):
            for c in range(seg_lo[g], seg_hi[g]):
                e = entries[c]
                out[e] = _entry_f(e, flat, start, pm, top, m)

    @numba.njit(cache=True)
    def _postings(tokens, owner, offsets):
        """owner[np.argsort(tokens, kind="stable")] as int32: the entries of each token, in entry order, by a
        counting sort (offsets: where each token's entries start). At 20,000 instructions the sort cost most of a
        freeze (about 30 ms, one every 1,024 instructions added)."""
        entries = np.empty(tokens.shape[0], np.int32)
        fill = offsets[:-1].copy()
        for j in range(tokens.shape[0]):
            t = tokens[j]
            entries[fill[t]] = owner[j]
            fill[t] += 1
        return entries

    @numba.njit(cache=True, nogil=True)
    def _scan_row(q, n, flat, start, pm, out):
        """F of one query of 1 to 64 tokens (ids q) against entries 0..n-1, each read whole, into out: the masks
        set in pm (zero between queries) and cleared again here, so a row is one call (_query_scores' single-word
        recurrence, the same values)."""
        m = q.shape[0]
        for p in range(m):
            pm[q[p]] |= np.uint64(1) << np.uint64(p)
        top = _low_mask(m)
        for i in range(n):
            out[i] = _entry_f(i, flat, start, pm, top, m)
        for p in range(m):
            pm[q[p]] = 0

    @numba.njit(cache=True, inline="always")
    def _block_sum(a, lo, n):
        """numpy's pairwise_sum on a block of at most 128 values: 8 running sums, then the rest one by one."""
        if n < 8:
            s = -0.0
            for i in range(lo, lo + n):
                s += a[i]
            return s
        r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
        r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
        i = 8
        while i < n - n % 8:
            r0 += a[lo + i]
            r1 += a[lo + i + 1]
            r2 += a[lo + i + 2]
            r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]
            r5 += a[lo + i + 5]
            r6 += a[lo + i + 6]
            r7 += a[lo + i + 7]
            i += 8
        s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            s += a[lo + i]
            i += 1
        return s

    @numba.njit(cache=True, nogil=True)
    def _pairwise_sum(a):
        """numpy's pairwise summation (add.reduce of a contiguous float64 array), the same additions in the same
        order: np.mean(a) == _pairwise_sum(a) / len(a), bit for bit (tests/test_similarity.py). numpy halves a
        block of over 128 values (the first half a multiple of 8) and adds the two sums; the halving runs here
        on a stack of its own (a recursive kernel is not cached safely)."""
        los, ns = np.empty(128, np.int64), np.empty(128, np.int64)
        done = np.zeros(128, np.bool_)  # a node whose halves are summed: add them
        sums = np.empty(128)
        los[0], ns[0], top, depth = 0, a.shape[0], 1, 0
        while top:
            top -= 1
            lo, n = los[top], ns[top]
            if done[top]:
                done[top] = False
                depth -= 1
                sums[depth - 1] = sums[depth - 1] + sums[depth]
                continue
            if n <= 128:
                sums[depth] = _block_sum(a, lo, n)
                depth += 1
                continue
            half = n // 2
            half -= half % 8
            done[top] = True  # back to this node once both halves are summed
            top += 1
            los[top], ns[top] = lo + half, n - half
            los[top + 1], ns[top + 1] = lo, half
            top += 2
        return sums[0]

    @numba.njit(cache=True, nogil=True)
    def _summary(row, k):
        """(max, the indices of the k best (best first, ties by lower index) and their scores, mean) of a
        non-empty row: its max(), _top_k_numba and np.mean, in one call."""
        n = row.shape[0]
        top = _top_k_numba(row, max(k, 1))  # its first is the max (the first of equal ones)
        return row[top[0]], top[:k], row[top[:k]], _pairwise_sum(row) / n

    @numba.njit(cache=True, nogil=True)
    def _frozen_scan(q, n, flat, start, pm, pm_code, offsets, entries, code_of, codes, gstart, glen, lane_entry,
                     frozen, entry_cost, out):
        """_NumbaEngine._frozen_row and the tail's scan in one call, for a query of 1 to 64 tokens (ids q): the
        same choice of paths and the same kernels, with the masks set in pm and pm_code here and cleared again."""
        m = q.shape[0]
        for p in range(m):
            pm[q[p]] |= np.uint64(1) << np.uint64(p)
        n_known = offsets.shape[0] - 1  # a token first seen after the freeze is in no frozen entry
        first = np.zeros(m, np.bool_)  # each token once, at its first position
        occurrences = 0
        for p in range(m):
            t = q[p]
            first[p] = True
            for r in range(p):
                if q[r] == t:
                    first[p] = False
                    break
            if first[p] and t < n_known:
                occurrences += offsets[t + 1] - offsets[t]
        few = occurrences * entry_cost <= codes.shape[0]
        if not few:
            common = False
            for p in range(m):
                t = q[p]
                if first[p] and t < n_known and code_of[t] >= 0:
                    pm_code[code_of[t]] = pm[t]
                    common = True
            if common:
                _projected_scores(0, glen.shape[0], codes, gstart, glen, lane_entry, pm_code, start, m, out)
                for p in range(m):
                    t = q[p]
                    if t < n_known and code_of[t] >= 0:
                        pm_code[code_of[t]] = 0
        top = _low_mask(m)
        for p in range(m):  # the entries of the query's tokens (few), or of its rare ones, each read whole
            t = q[p]
            if first[p] and t < n_known and (few or code_of[t] < 0):
                for c in range(offsets[t], offsets[t + 1]):
                    e = entries[c]
                    out[e] = _entry_f(e, flat, start, pm, top, m)
        for i in range(frozen, n):  # the tail, scanned whole
            out[i] = _entry_f(i, flat, start, pm, top, m)
        for p in range(m):
            pm[q[p]] = 0

    @numba.njit(cache=True, nogil=True)
    def _scan_summary(q, n, flat, start, pm, out, k):
        """_scan_row, then _summary of the row: a candidate's check against a small pool in one call."""
        _scan_row(q, n, flat, start, pm, out)
        return _summary(out, k)

    @numba.njit(cache=True)
    def _top_k_numba(scores, k):
        """Indices of the k best scores, best first, ties by lower index."""
        k = max(0, min(k, scores.shape[0]))
        idx = np.empty(k, np.int64)
        val = np.empty(k, np.float64)
        size = 0
        for i in range(scores.shape[0] if k else 0):
            s = scores[i]
            if size == k and s <= val[k - 1]:  # equal scores never displace earlier ones
                continue
            j = min(size, k - 1)
            while j > 0 and val[j - 1] < s:
                val[j] = val[j - 1]
                idx[j] = idx[j - 1]
                j -= 1
            val[j] = s
            idx[j] = i
            size = min(size + 1, k)
        return idx


class _Flat:
    """Growable (flat token ids, start offsets) pair."""

    def __init__(self):
        self.flat = np.empty(1024, np.int32)
        self.start = np.zeros(1024, np.int64)
        self.n = 0

    def append(self, ids: np.ndarray) -> None:
        end = self.start[self.n] + len(ids)
        if end > len(self.flat):
            self.flat = np.resize(self.flat, max(2 * len(self.flat), end))
        if self.n + 2 > len(self.start):
            self.start = np.resize(self.start, 2 * len(self.start))
        self.flat[self.start[self.n]:end] = ids
        self.n += 1
        self.start[self.n] = end

    def arrays(self):
        return self.flat, self.start[: self.n + 1]

    @classmethod
    def of(cls, seqs) -> tuple[np.ndarray, np.ndarray]:
        start = np.zeros(len(seqs) + 1, np.int64)
        np.cumsum([len(s) for s in seqs], out=start[1:])
        flat = np.concatenate(seqs) if seqs else np.empty(0, np.int32)
        return flat.astype(np.int32, copy=False), start


class _Frozen:
    """The pool's first `frozen` entries, read two ways for one query: each entry as its common tokens only
    (the _COMMON most frequent tokens at the freeze, one byte each, in groups of entries of about the same
    number of them: see _projected_scores), and the postings of every token (token -> the entries holding it,
    CSR by token id: offsets, entries). An entry holding a rare token of the query is scored whole from the
    postings; every other one from its common tokens. Entries added since (the tail) are scanned whole. A
    freeze rebuilds both once the tail holds more than an eighth of the pool or 1,024 entries, so an add costs
    O(1) amortized (a freeze of 20,000 instructions takes about 30 ms) and the tail scan stays short."""

    def __init__(self):
        self.offsets = np.zeros(1, np.int64)  # token t's entries are entries[offsets[t]:offsets[t + 1]]
        self.entries = np.empty(0, np.int32)
        self.code_of = np.full(0, -1, np.int16)  # token -> its code among the common tokens, -1 for the others
        self.codes = np.empty(0, np.uint8)  # the groups' common tokens, as codes, position by position
        self.gstart = np.zeros(1, np.int64)  # group g's codes start at gstart[g]
        self.glen = np.zeros(0, np.int64)  # the common tokens of group g's longest entry
        self.lane_entry = np.empty(0, np.int64)  # the entry of each group's lane, -1 for padding
        self.frozen = 0  # entries in the arrays

    def freeze(self, flat: np.ndarray, start: np.ndarray) -> None:
        """When the tail has grown past an eighth of the pool (or 1,024 entries): every entry into the arrays."""
        n = len(start) - 1
        if n - self.frozen <= max(256, min(n // 8, 1024)):
            return
        lengths = np.diff(start)
        tokens = flat[:start[-1]]
        owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
        counts = np.bincount(tokens, minlength=1)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.entries = _postings(tokens, owner, self.offsets)  # by token, then by entry
        common = np.argsort(-counts, kind="stable")[:_COMMON]
        common = common[counts[common] > 0]
        self.code_of = np.full(len(counts), -1, np.int16)
        self.code_of[common] = np.arange(len(common), dtype=np.int16)
        code = self.code_of[tokens]
        kept = code >= 0
        self._group(code[kept].astype(np.uint8), owner[kept], n)
        self.frozen = n

    def _group(self, codes: np.ndarray, owner: np.ndarray, n: int) -> None:
        """Entries sorted by their number of common tokens, _LANES_COMMON a group, stored position by position:
        a group's lanes then run about as long as each other (0.4% padding at 20,000 instructions)."""
        lanes = _LANES_COMMON
        per_entry = np.bincount(owner, minlength=n)
        order = np.argsort(per_entry, kind="stable")
        groups = (n + lanes - 1) // lanes
        self.lane_entry = np.full(groups * lanes, -1, np.int64)
        self.lane_entry[:n] = order
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        sizes = np.zeros(groups * lanes, np.int64)
        sizes[:n] = per_entry[order]
        self.glen = sizes.reshape(groups, lanes).max(axis=1)
        self.gstart = np.concatenate([[0], np.cumsum(self.glen * lanes)])
        self.codes = np.full(self.gstart[-1], 255, np.uint8)  # 255: no common token, mask 0
        first = np.concatenate([[0], np.cumsum(per_entry)])
        slot = rank[owner]  # each code's place: its entry's group and lane, and its position in the entry
        self.codes[self.gstart[slot // lanes] + (np.arange(len(codes)) - first[owner]) * lanes + slot % lanes] = codes


# The tokens an entry is read by in a query's common pass: the most frequent ones of the pool, a byte each (255,
# the 256th code, pads). They cover about 65% of the tokens of 20,000-52,000 instructions; the next is in under
# 0.6% of them, so the entries read whole through a rare token's postings are few (benchmarks/client_cpu.py).
_COMMON = 255
_LANES_COMMON = 8  # entries whose bit vectors run side by side in _projected_scores
# An occurrence of a query token read through the postings (its entry read whole) costs about this many codes
# of the common pass: a query whose tokens occur fewer times than the codes / this reads only its entries.
_ENTRY_COST = 48
# A pool of up to this many tokens (about 2,000 instructions) is scanned whole for a query, in one call: below it the
# frozen arrays' set-up (a dozen numpy calls a query, and a freeze every 256 instructions) cost more than the scan.
# At 500-2,000 instructions bootstrap's rows took 15-25% less CPU in a run (benchmarks/RESULTS.md, issue 20).
_SCAN_WHOLE = 24_576
_executor = None


def _split(kernel, n, work, *args, first=0):
    """kernel(lo, hi, *args) over entries first..n-1, split across threads.

    Plain threads running nogil kernels rather than numba's OpenMP prange:
    idle OpenMP workers spin, and on a busy 2-core machine that made the
    filter 2-2.5x slower; these workers sleep.  Small work runs inline.
    """
    global _executor
    parts = _THREADS if work >= _MIN_PARALLEL_WORK else 1
    bounds = [first + (n - first) * p // parts for p in range(parts + 1)]
    if parts == 1:
        return [kernel(first, n, *args)]
    if _executor is None:
        _executor = ThreadPoolExecutor(_THREADS - 1, thread_name_prefix="rouge-l")
    futures = [_executor.submit(kernel, bounds[p], bounds[p + 1], *args) for p in range(1, parts)]
    return [kernel(first, bounds[1], *args)] + [f.result() for f in futures]


def _forget_executor():
    global _executor
    _executor = None  # a forked child has the executor but not its threads


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_executor)


class _NumbaEngine:
    def __init__(self):
        self.pool = _Flat()
        # For one query against the whole pool: the entries of each token, so that an entry sharing no token
        # with the query costs nothing and one sharing a single occurrence no LCS (most of a pool, as real
        # instructions share a few stop words at most).
        self.frozen = _Frozen()
        self.pm = np.zeros(1024, np.uint64)  # token -> its match mask in the query being scored: zero between
        self.pm_code = np.zeros(256, np.uint64)  # common token code -> its mask in the query: zero between
        self.no_slot, self.no_table = np.zeros(0, np.int32), np.zeros((1, 1), np.uint64)  # one word: unused
        self.last: tuple[tuple[bytes, int], np.ndarray] | None = None  # (query, pool size) -> its row

    def add(self, ids: np.ndarray) -> None:
        self.pool.append(ids)

    def _row(self, q, n_vocab) -> np.ndarray:
        """F of a query of 1 to 64 tokens against every entry, read-only. The last row is kept while the pool
        is unchanged: a caller may ask a candidate's max, then its top-k and mean."""
        key = (q.tobytes(), self.pool.n)
        if self.last is not None and self.last[0] == key:
            return self.last[1]
        out = self._new_row(q, n_vocab)
        out.flags.writeable = False
        self.last = (key, out)
        return out

    def _new_row(self, q, n_vocab) -> np.ndarray:
        n, m = self.pool.n, len(q)
        out = np.zeros(n)
        if len(self.pm) < n_vocab:
            self.pm = np.zeros(2 * n_vocab, np.uint64)
        pool = self.pool
        if pool.start[n] <= _SCAN_WHOLE:  # a small pool: no frozen arrays, the row in one call
            _scan_row(q, n, pool.flat, pool.start, self.pm, out)
            return out
        flat, start = pool.arrays()
        frozen = self.frozen
        frozen.freeze(flat, start)
        if frozen.frozen and max(len(frozen.codes), start[n] - start[frozen.frozen]) < _MIN_PARALLEL_WORK:
            _frozen_scan(q, n, flat, start, self.pm, self.pm_code, frozen.offsets, frozen.entries, frozen.code_of,
                         frozen.codes, frozen.gstart, frozen.glen, frozen.lane_entry, frozen.frozen, _ENTRY_COST, out)
            return out
        # Work that _split shares between threads: each pass apart.
        by_token: dict[int, int] = {}
        for p, t in enumerate(q.tolist()):
            by_token[t] = by_token.get(t, 0) | (1 << p)
        tokens = np.array(list(by_token), np.int64)
        masks = np.array(list(by_token.values()), np.uint64)
        pm = self.pm
        pm[tokens] = masks
        try:
            if frozen.frozen:
                self._frozen_row(frozen, tokens, masks, flat, start, m, out)
            if frozen.frozen < n:  # the tail the arrays do not hold yet: scanned whole
                _split(_query_scores, n, start[n] - start[frozen.frozen], flat, start, pm, self.no_slot,
                       self.no_table, m, out, False, first=frozen.frozen)
        finally:
            pm[tokens] = 0
        return out

    def _frozen_row(self, frozen: _Frozen, tokens, masks, flat, start, m, out) -> None:
        """The row over the frozen entries (self.pm holds the query's masks): the entries holding one of its
        tokens, each read whole, when they are few; else every entry from its common tokens, then those
        holding a rare token of the query again, whole."""
        known = tokens < len(frozen.offsets) - 1  # a token first seen after the freeze is in no frozen entry
        lo, hi = frozen.offsets[tokens[known]], frozen.offsets[tokens[known] + 1]
        if int((hi - lo).sum()) * _ENTRY_COST <= len(frozen.codes):
            _entry_scores(frozen.entries, lo, hi, flat, start, self.pm, m, out)
            return
        code = np.full(len(tokens), -1, np.int64)
        code[known] = frozen.code_of[tokens[known]]
        common = code >= 0
        if common.any():  # else every entry holding none of its rare tokens stays 0
            pm_code = self.pm_code
            pm_code[code[common]] = masks[common]
            try:
                _split(_projected_scores, len(frozen.glen), len(frozen.codes), frozen.codes, frozen.gstart,
                       frozen.glen, frozen.lane_entry, pm_code, start, m, out)
            finally:
                pm_code[code[common]] = 0
        rare = known & ~common
        if rare.any():
            _entry_scores(frozen.entries, frozen.offsets[tokens[rare]], frozen.offsets[tokens[rare] + 1], flat,
                          start, self.pm, m, out)

    @staticmethod
    def _query(q, target, n_vocab, out, prune):
        """Max F of one query (any length) against target; its row into `out` unless empty."""
        flat, start = target
        slot, table = _pack(q, np.array([0, len(q)]), n_vocab, (len(q) + 63) // 64)
        pm = table[slot, 0] if table.shape[1] == 1 else np.zeros(0, np.uint64)
        return max(_split(_query_scores, len(start) - 1, start[-1] * table.shape[1],
                          flat, start, pm, slot, table, len(q), out, prune))

    def _run(self, queries, target, n_vocab, out=None):
        """Max F of each query against (flat, start); rows into out[q, :n] if given."""
        flat, start = target
        maxima = np.zeros(len(queries))
        no_rows = np.zeros((0, 0))
        short = [i for i, q in enumerate(queries) if 0 < len(q) <= 64]
        for b in range(0, len(short), _LANES):
            lanes = np.array(short[b:b + _LANES])
            qflat, qstart = _Flat.of([queries[i] for i in lanes])
            slot, table = _pack(qflat, qstart, n_vocab, 1)
            best = _split(_block_scores, len(start) - 1, start[-1] * len(lanes), flat, start, slot,
                          table, np.diff(qstart), no_rows if out is None else out, lanes)
            maxima[lanes] = np.max(best, axis=0)
        for i, q in enumerate(queries):
            if len(q) > 64:
                row = np.zeros(0) if out is None else out[i]
                maxima[i] = self._query(q, target, n_vocab, row, prune=out is None)
        return maxima

    def pool_scores(self, queries, n_vocab, out=None):
        return self._run(queries, self.pool.arrays(), n_vocab, out)

    def cross_scores(self, queries, n_vocab):
        out = np.zeros((len(queries), len(queries)))
        self._run(queries, _Flat.of(queries), n_vocab, out)
        return out

    def max_score(self, q, n_vocab):
        if len(q) == 0 or self.pool.n == 0:
            return 0.0
        if len(q) <= 64:
            return float(self._row(q, n_vocab).max())
        # A long query: a multi-word bit vector with pruning.
        return float(self._query(q, self.pool.arrays(), n_vocab, np.zeros(0), True))

    def scores(self, q, n_vocab):
        if 0 < len(q) <= 64:
            return self._row(q, n_vocab)
        out = np.zeros(self.pool.n)
        if len(q):
            self._query(q, self.pool.arrays(), n_vocab, out, False)
        return out

    def summary(self, q, n_vocab, k):
        """(max, the top-k indices and scores, mean) of the query's row against a non-empty pool, in one
        kernel call."""
        pool, n = self.pool, self.pool.n
        if not 0 < len(q) <= 64 or pool.start[n] > _SCAN_WHOLE:
            return _summary(self.scores(q, n_vocab), k)
        if len(self.pm) < n_vocab:
            self.pm = np.zeros(2 * n_vocab, np.uint64)
        out = np.zeros(n)
        result = _scan_summary(q, n, pool.flat, pool.start, self.pm, out, k)
        out.flags.writeable = False
        self.last = ((q.tobytes(), n), out)  # the row, as _row keeps it, for a scores() of the same query
        return result

    top_k = staticmethod(_top_k_numba if numba is not None else None)


class _RapidfuzzEngine:
    """Token ids as characters, LCS lengths from rapidfuzz's C++ bit-parallel cdist."""

    def __init__(self):
        self.pool: list[str] = []
        self.lens: list[int] = []

    @staticmethod
    def _str(ids) -> str:
        return "".join(map(chr, ids))  # up to 0x110000 distinct tokens

    def add(self, ids) -> None:
        self.pool.append(self._str(ids))
        self.lens.append(len(ids))

    @staticmethod
    def _f(lcs, m, n):
        with np.errstate(invalid="ignore", divide="ignore"):
            p = lcs / n
            r = lcs / m
            return np.where(lcs > 0, 2 * p * r / (p + r), 0.0)

    def _matrix(self, queries, strs, lens):
        if not strs or not queries:
            return np.zeros((len(queries), len(strs)))
        # rapidfuzz starts its threads per call: worth it only for large matrices
        workers = -1 if len(queries) * len(strs) > 1 << 16 else 1
        lcs = _rf_process.cdist([self._str(q) for q in queries], strs,
                                scorer=_rf_lcs.similarity, dtype=np.int32, workers=workers)
        m = np.array([len(q) for q in queries])[:, None]
        return self._f(lcs, m, np.asarray(lens)[None, :])

    def pool_scores(self, queries, n_vocab, out=None):
        f = self._matrix(queries, self.pool, self.lens)
        if out is not None:
            out[:, :f.shape[1]] = f
        return f.max(axis=1) if f.shape[1] else np.zeros(len(queries))

    def cross_scores(self, queries, n_vocab):
        return self._matrix(queries, [self._str(q) for q in queries], [len(q) for q in queries])

    def max_score(self, q, n_vocab):
        return float(self.pool_scores([q], n_vocab)[0])

    def scores(self, q, n_vocab):
        return self._matrix([q], self.pool, self.lens)[0]

    top_k = staticmethod(_top_k_numpy)


class Decision(NamedTuple):
    """Outcome of one candidate of filter_batch_detailed.

    top_k and mean_score are over the entries present when the candidate was
    considered (like Self-Instruct's most_similar_instructions and
    avg_similarity_score); mean_score is 0.0 for an empty index.
    """

    added: bool
    max_score: float
    top_k: list[tuple[int, float]]
    mean_score: float


def _available_backend() -> str:
    if numba is not None:
        return "numba"
    if _rf_process is not None:
        return "rapidfuzz"
    return "python"


class _Vocabulary(dict):
    """token -> id, ids 0, 1, 2, ... in the order tokens are first looked up: an unknown one gets the next."""

    def __missing__(self, token: str) -> int:
        self[token] = new = len(self)
        return new


class RougeLIndex:
    """A growing pool of texts answering ROUGE-L queries against all of them.

    A query is the target and entries the predictions, as in Stanford Alpaca's
    ``_score_lcs(new_tokens, pool_tokens)``; F is symmetric anyway.
    """

    def __init__(self, use_stemmer: bool = False, backend: str = "auto"):
        if backend == "auto":
            backend = _available_backend()
        engines = {"numba": numba and _NumbaEngine, "rapidfuzz": _rf_process and _RapidfuzzEngine}
        if backend != "python" and not engines.get(backend):
            raise ValueError(f"backend {backend!r} is unknown or not installed")
        self.backend = backend
        self._engine = engines[backend]() if backend != "python" else None
        self._tokenize = _Tokenizer(use_stemmer)
        self._vocab = _Vocabulary()
        self._last_ids: tuple[str | None, np.ndarray] = (None, np.empty(0, np.int32))
        self._texts: list[str] = []
        self._tokens: list[list[str]] = []  # python backend only

    def __len__(self) -> int:
        return len(self._texts)

    def text(self, i: int) -> str:
        return self._texts[i]

    def _ids(self, text: str) -> np.ndarray:
        # The filter asks about one candidate several times (max, top-k, mean): its ids are kept (a token's id
        # never changes, so they stay right as the vocabulary grows).
        if self._last_ids[0] == text:
            return self._last_ids[1]
        tokens = self._tokenize(text)
        # One pass, a new token given its id as it comes (_Vocabulary), into np.fromiter: no list in between. A list
        # of lookups, made again with setdefault when a token was new (82% of drv.py's synthetic candidates), into
        # np.array: 5.2 us a bootstrap candidate; this 4.3 (issue 20).
        ids = np.fromiter(map(self._vocab.__getitem__, tokens), np.int32, len(tokens))
        ids.flags.writeable = False
        self._last_ids = (text, ids)
        return ids

    def _add_ids(self, text: str, ids: np.ndarray) -> int:
        self._texts.append(text)
        self._engine.add(ids)
        return len(self._texts) - 1

    def add(self, text: str) -> int:
        if self._engine is None:
            self._tokens.append(self._tokenize(text))
            self._texts.append(text)
            return len(self._texts) - 1
        return self._add_ids(text, self._ids(text))

    def scores(self, text: str) -> np.ndarray:
        """F-measure of `text` (as target) against every entry (as prediction)."""
        if self._engine is not None:
            return self._engine.scores(self._ids(text), len(self._vocab))
        q = self._tokenize(text)
        out = np.zeros(len(self._tokens))
        if q:
            masks, m = _match_masks(q), len(q)
            for i, e in enumerate(self._tokens):
                out[i] = _fmeasure(_lcs_bits(masks, m, e), m, len(e))
        return out

    def max_score(self, text: str) -> float:
        if self._engine is not None:
            return self._engine.max_score(self._ids(text), len(self._vocab))
        return float(self.scores(text).max()) if self._texts else 0.0

    def top_k(self, text: str, k: int = 10) -> list[tuple[int, float]]:
        s = self.scores(text)
        top = self._engine.top_k(s, k) if self._engine is not None else _top_k_numpy(s, k)
        return [(int(i), float(s[i])) for i in top]

    def summary(self, text: str, k: int = 10) -> tuple[float, list[tuple[int, float]], float]:
        """max_score, top_k and np.mean(scores) of `text` from its one row, as the three calls give them, for a
        non-empty index: the filter's check of a candidate in one call (on the numba backend, one kernel)."""
        if self.backend != "numba":
            s = self.scores(text)
            return float(s.max()), self.top_k(text, k), float(np.mean(s))
        best, top, values, mean = self._engine.summary(self._ids(text), len(self._vocab), k)
        return float(best), list(zip(top.tolist(), values.tolist(), strict=True)), float(mean)

    def add_if_novel(self, text: str, threshold: float = 0.7) -> tuple[bool, float]:
        best = self.max_score(text)
        if best <= threshold:
            self.add(text)
            return True, best
        return False, best

    def filter_batch(self, texts, threshold: float = 0.7) -> list[tuple[bool, float]]:
        """add_if_novel over `texts` in order (each also sees earlier accepted ones)."""
        if self._engine is None:
            return [self.add_if_novel(t, threshold) for t in texts]
        return [(d.added, d.max_score) for d in self._filter(texts, threshold, None)]

    def filter_batch_detailed(self, texts, threshold: float = 0.7, k: int = 10) -> list[Decision]:
        """filter_batch plus, for every candidate, its top-k entries and mean score."""
        if self._engine is None:
            out = []
            for t in texts:
                s = self.scores(t)
                top = [(int(i), float(s[i])) for i in _top_k_numpy(s, k)]
                added, best = self.add_if_novel(t, threshold)
                out.append(Decision(added, best, top, float(np.mean(s)) if s.size else 0.0))
            return out
        return self._filter(texts, threshold, k)

    def _filter(self, texts, threshold, k):
        texts = list(texts)
        out: list[Decision] = []
        for b in range(0, len(texts), _LANES):
            block = texts[b:b + _LANES]
            ids = [self._ids(t) for t in block]
            n0, n_vocab = len(self), len(self._vocab)
            # Row i: scores against the pool, then against the earlier accepted
            # candidates of the block, i.e. in index order, so top-k positions
            # and np.mean's summation order are those of the grown index.
            rows = np.zeros((len(block), n0 + len(block))) if k is not None else None
            pool_max = self._engine.pool_scores(ids, n_vocab, rows)
            cross = self._engine.cross_scores(ids, n_vocab)
            accepted: list[int] = []
            for i, text in enumerate(block):
                earlier = cross[i, accepted]
                best = float(max(pool_max[i], earlier.max(initial=0.0)))
                top, mean = [], 0.0
                if k is not None:
                    row = rows[i, :n0 + len(accepted)]
                    row[n0:] = earlier
                    top = [(int(j), float(row[j])) for j in self._engine.top_k(row, k)]
                    mean = float(np.mean(row)) if row.size else 0.0
                added = best <= threshold
                if added:
                    self._add_ids(text, ids[i])
                    accepted.append(i)
                out.append(Decision(added, best, top, mean))
        return out
