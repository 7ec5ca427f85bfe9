"""pipeline.similarity must agree with rouge-score bit for bit, on every backend."""

import json
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer, tokenize

from pipeline import similarity
from pipeline.similarity import RougeLIndex, rouge_l

FAST_BACKENDS = [name for name, module in (("numba", similarity.numba),
                                           ("rapidfuzz", similarity._rf_process)) if module]
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Tokens chosen to trip the tokenizer: case folding that changes length or
# produces ASCII ("İ" -> "i̇", Kelvin sign -> "k"), ligatures, digits, accents.
WORDS = ["the", "a", "of", "cat", "Cat", "CAT", "dog", "7", "x2", "42nd", "naïve", "İstanbul",
         "straße", "ﬁle", "\u212a", "don't", "e-mail", "über", "日本", "a1b2", "λ", "run", "runs",
         "running", "ran"]
SEPS = [" ", "  ", ", ", "-", "\n", "\t", "...", "'", "\u00a0", "\u3000", "_", "/"]


@st.composite
def wordy(draw, min_size=0, max_size=25):
    words = draw(st.lists(st.sampled_from(WORDS), min_size=min_size, max_size=max_size))
    seps = draw(st.lists(st.sampled_from(SEPS), min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps, strict=True))


@st.composite
def long_wordy(draw, min_size, max_size):
    # drawing hundreds of list elements is slow in hypothesis; a seeded Random is not
    rnd = draw(st.randoms(use_true_random=False))
    n = rnd.randint(min_size, max_size)
    return "".join(rnd.choice(WORDS) + rnd.choice(SEPS) for _ in range(n))


TEXT = st.one_of(
    st.text(max_size=60),
    wordy(),
    long_wordy(60, 90),    # around the 64-token word boundary
    long_wordy(250, 320),  # several 64-bit words
)


def reference(target: str, prediction: str) -> float:
    return SCORER.score(target, prediction)["rougeL"].fmeasure


def same(a: float, b: float) -> bool:
    return float(a).hex() == float(b).hex()


@HYP
@given(TEXT, st.booleans())
def test_tokenizer_matches_rouge_score(text, stem):
    stemmer = PorterStemmer() if stem else None
    assert similarity._Tokenizer(stem)(text) == tokenize.tokenize(text, stemmer)


@HYP
@given(TEXT, TEXT)
def test_rouge_l_is_bit_identical_both_ways(a, b):
    assert same(rouge_l(a, b), reference(a, b))
    assert same(rouge_l(b, a), reference(b, a))


@HYP
@given(st.lists(TEXT, max_size=12), TEXT)
def test_python_backend_matches_rouge_score(pool, query):
    idx = RougeLIndex(backend="python")
    for t in pool:
        idx.add(t)
    expected = [reference(query, t) for t in pool]
    assert [s.hex() for s in idx.scores(query)] == [float(s).hex() for s in expected]
    assert same(idx.max_score(query), max(expected, default=0.0))


def build(backend, pool, stemmer=False):
    idx = RougeLIndex(use_stemmer=stemmer, backend=backend)
    for t in pool:
        idx.add(t)
    return idx


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@HYP
@given(pool=st.lists(TEXT, max_size=20), queries=st.lists(TEXT, min_size=1, max_size=4),
       k=st.integers(1, 25), stemmer=st.booleans())
def test_queries_match_python(backend, pool, queries, k, stemmer):
    fast, ref = build(backend, pool, stemmer), build("python", pool, stemmer)
    for q in queries:
        assert np.array_equal(fast.scores(q), ref.scores(q))
        assert same(fast.max_score(q), ref.max_score(q))
        assert fast.top_k(q, k) == ref.top_k(q, k)
        assert fast.add_if_novel(q, 0.5) == ref.add_if_novel(q, 0.5)
    assert [fast.text(i) for i in range(len(fast))] == [ref.text(i) for i in range(len(ref))]


# Near-duplicates make accept/reject decisions non-trivial.
@st.composite
def batch(draw):
    texts = draw(st.lists(TEXT, min_size=1, max_size=30))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(len(texts) // 2):
        words = rnd.choice(texts).split()
        if words:
            del words[rnd.randrange(len(words))]
        texts.insert(rnd.randrange(len(texts) + 1), " ".join(words))
    return texts


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@HYP
@given(pool=st.lists(TEXT, max_size=10), texts=batch(),
       threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_filter_batch_matches_add_if_novel_loop(backend, pool, texts, threshold):
    fast, ref = build(backend, pool), build("python", pool)
    expected = [ref.add_if_novel(t, threshold) for t in texts]
    assert fast.filter_batch(texts, threshold) == expected
    assert [fast.text(i) for i in range(len(fast))] == [ref.text(i) for i in range(len(ref))]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@HYP
@given(pool=st.lists(TEXT, max_size=10), texts=batch(), k=st.integers(1, 12))
def test_filter_batch_detailed_matches_python(backend, pool, texts, k):
    fast, ref = build(backend, pool), build("python", pool)
    got = fast.filter_batch_detailed(texts, 0.7, k)
    want = ref.filter_batch_detailed(texts, 0.7, k)
    assert [(d.added, d.max_score.hex(), d.top_k, d.mean_score.hex()) for d in got] == \
           [(d.added, d.max_score.hex(), d.top_k, d.mean_score.hex()) for d in want]


def test_filter_batch_spans_several_blocks():
    """More candidates than one block of lanes, with long ones mixed in."""
    rnd = random.Random(1)
    texts = [" ".join(rnd.choices(WORDS[:12], k=rnd.choice([3, 8, 20, 70, 300])))
             for _ in range(2 * similarity._LANES + 5)]
    for backend in FAST_BACKENDS:
        fast, ref = build(backend, texts[:7]), build("python", texts[:7])
        assert fast.filter_batch(texts, 0.6) == ref.filter_batch(texts, 0.6)
        fast, ref = build(backend, texts[:7]), build("python", texts[:7])
        assert fast.filter_batch_detailed(texts, 0.6, 5) == ref.filter_batch_detailed(texts, 0.6, 5)


def exact_boundary_cases(threshold=Fraction(7, 10), max_len=40):
    """(lcs, target length, prediction length) whose true F is exactly `threshold`."""
    return [(lcs, m, n) for m in range(1, max_len) for n in range(1, max_len)
            for lcs in range(1, min(m, n) + 1) if Fraction(2 * lcs, m + n) == threshold]


@pytest.mark.parametrize("backend", ["python"] + FAST_BACKENDS)
def test_exact_0_7_boundary_decisions(backend):
    cases = exact_boundary_cases()
    floats = set()
    for lcs, m, n in cases:
        target = " ".join(f"w{i}" for i in range(m))
        prediction = " ".join([f"w{i}" for i in range(lcs)] + [f"z{i}" for i in range(n - lcs)])
        ref = reference(target, prediction)
        floats.add(ref)
        idx = build(backend, [prediction])
        assert same(idx.max_score(target), ref)
        assert idx.add_if_novel(target, 0.7) == (ref <= 0.7, ref)
        batch_idx = build(backend, [prediction])
        assert batch_idx.filter_batch([target], 0.7) == [(ref <= 0.7, ref)]
    assert 0.7000000000000001 in floats and 0.7 in floats  # both sides really occur


@pytest.mark.parametrize("backend", ["python"] + FAST_BACKENDS)
def test_empty_index_and_empty_texts(backend):
    idx = RougeLIndex(backend=backend)
    assert len(idx) == 0 and idx.max_score("anything") == 0.0 and idx.top_k("x") == []
    assert idx.scores("x").shape == (0,)
    assert idx.add_if_novel("", 0.7) == (True, 0.0)
    assert idx.add_if_novel("!!! ...", 0.7) == (True, 0.0)
    assert idx.filter_batch([]) == []
    assert idx.add("hello world") == 2 and idx.text(2) == "hello world"
    assert idx.top_k("Hello, WORLD!", 2) == [(2, 1.0), (0, 0.0)]
    assert idx.top_k("hello", 0) == []


def test_import_without_numba_or_rapidfuzz():
    code = ("import sys; sys.modules['numba'] = sys.modules['rapidfuzz'] = None\n"
            "from pipeline.similarity import RougeLIndex\n"
            "idx = RougeLIndex(); idx.add('a b c')\n"
            "print(idx.backend, idx.filter_batch(['a b c d', 'x y']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True).stdout
    assert out.split(None, 1) == ["python", "[(False, 0.8571428571428571), (True, 0.0)]\n"]


def test_backend_selection(monkeypatch):
    with pytest.raises(ValueError):
        RougeLIndex(backend="cuda")
    monkeypatch.setattr(similarity, "numba", None)
    assert similarity._available_backend() == ("rapidfuzz" if similarity._rf_process else "python")
    monkeypatch.setattr(similarity, "_rf_process", None)
    assert similarity._available_backend() == "python"
    assert RougeLIndex().backend == "python"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_seed_tasks_against_rouge_score(backend, shared_data):  # skips without ../shared/data
    texts = []
    for name in ("self_instruct_seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        with (shared_data / name).open(encoding="utf-8") as f:
            texts += [json.loads(line)["instruction"] for line in f]
    pool, queries = texts[:300], random.Random(0).sample(texts, 12)
    idx = build(backend, pool)
    for q in queries:
        expected = np.array([reference(q, t) for t in pool])
        assert np.array_equal(idx.scores(q), expected)
        assert same(idx.max_score(q), expected.max())
    ref = build("python", texts[:100])
    assert build(backend, texts[:100]).filter_batch(texts[100:], 0.5) == \
        ref.filter_batch(texts[100:], 0.5)


@pytest.mark.skipif(similarity.numba is None, reason="the numba backend")
# (common tokens, entry cost, pool tokens scanned whole): every entry read whole through the postings; no common
# token; a few; the defaults of the frozen arrays; the defaults (this pool is small enough to be scanned whole)
@pytest.mark.parametrize(("common", "entry_cost", "scan_whole"),
                         [(255, 0, 0), (0, 10**9, 0), (3, 10**9, 0), (255, 48, 0), (255, 48, None)])
def test_one_query_row_is_exact_through_the_common_tokens_and_the_postings(monkeypatch, common, entry_cost,
                                                                           scan_whole):
    """A query's row against a pool of real and synthetic instructions (near-duplicates, stop words shared
    by most pairs, entries over 64 tokens, repeated tokens) equals the brute-force reference bit for bit, and
    so do the max, the top-k and the add_if_novel decisions, whichever way a row is computed: entries read as
    their common tokens, entries read whole through a rare token's postings, the tail scanned, a small pool
    scanned whole."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _synthetic import instructions  # real seed tasks first where present, then synthetic ones

    monkeypatch.setattr(similarity, "_COMMON", common)
    monkeypatch.setattr(similarity, "_ENTRY_COST", entry_cost)
    if scan_whole is not None:
        monkeypatch.setattr(similarity, "_SCAN_WHOLE", scan_whole)
    if entry_cost == 48:  # the defaults, with every pass split across threads (the tail's from its first entry on)
        monkeypatch.setattr(similarity, "_MIN_PARALLEL_WORK", 0)
    texts = instructions(1500, seed=3)
    rnd = random.Random(common)
    texts += [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 90))) for _ in range(100)]  # 1-90 tokens
    pool, queries = texts[:1200], texts[1200:] + rnd.sample(texts[:1200], 20)  # 20 already in the pool: F 1
    fast, ref = build("numba", pool), build("python", pool)
    flat, start = fast._engine.pool.arrays()
    assert (start[-1] <= similarity._SCAN_WHOLE) == (scan_whole is None)  # which way this case reads the pool
    for q in queries:
        summary = fast.summary(q, 10)  # first: the row made by summary's own call where the pool is scanned whole
        row = fast.scores(q)
        assert np.array_equal(row, ref.scores(q))
        assert summary == ref.summary(q, 10) == (fast.max_score(q), fast.top_k(q, 10), float(np.mean(row)))
        assert same(fast.max_score(q), ref.max_score(q)) and fast.top_k(q, 10) == ref.top_k(q, 10)
    assert [fast.add_if_novel(q, 0.7) for q in queries] == [ref.add_if_novel(q, 0.7) for q in queries]
    assert len(fast) == len(ref)


@pytest.mark.skipif(similarity.numba is None, reason="the numba backend")
def test_the_kernels_mean_is_numpys_bit_for_bit():
    """RougeLIndex.summary's mean (one kernel) is np.mean's pairwise sum, the same additions in the same order:
    rows of every length around numpy's blocks of 8 and 128 and its halving, of scores and of values whose sum
    rounds differently in any other order."""
    rng = np.random.default_rng(5)
    sizes = [*range(1, 300), 1000, 4095, 8192, 8193, 20_000, 24_577, 52_000, 100_001]
    for n in sizes:
        for row in (rng.random(n), rng.random(n) * 10.0 ** rng.integers(-8, 9, n), np.round(rng.random(n), 2)):
            assert similarity._pairwise_sum(row) / n == np.mean(row), n
    row = rng.random(20_000)
    assert sum(row) / len(row) != np.mean(row)  # the order matters: a plain running sum is not numpy's


@pytest.mark.parametrize("backend", ["python"] + FAST_BACKENDS)
def test_summary_is_the_rows_max_top_k_and_mean(backend):
    """summary(text, k): the filter's max, top-k (best first, ties by pool order) and mean from one row, as the
    three calls give them, for texts in the pool, near it, with no token in it, and empty."""
    pool = ["Write a poem about the sea.", "Write a poem about the sea!", "Sort these numbers.",
            "Name three rivers of Europe.", "Write a poem about a cat."] * 3
    index = build(backend, pool)
    for text in ["Write a poem about the sea.", "Write a song about the sea", "zebra quokka", "", "the"]:
        for k in (1, 3, 10, 40):
            scores = index.scores(text)
            assert index.summary(text, k) == (index.max_score(text), index.top_k(text, k), float(np.mean(scores)))


@pytest.mark.skipif(similarity.numba is None, reason="the numba backend")
def test_a_freeze_lists_each_tokens_entries_as_the_stable_sort_did():
    """The postings of a freeze (token -> its entries, by a counting sort since issue 20) are those of
    owner[np.argsort(tokens, kind="stable")]: each token's entries in entry order, an entry once per occurrence."""
    rnd = random.Random(11)
    index = build("numba", [" ".join(rnd.choice(WORDS[:40]) for _ in range(rnd.randint(1, 30))) for _ in range(700)])
    flat, start = index._engine.pool.arrays()
    frozen = similarity._Frozen()
    frozen.freeze(flat, start)
    tokens = flat[:start[-1]]
    owner = np.repeat(np.arange(len(start) - 1), np.diff(start))
    assert frozen.frozen == 700
    assert np.array_equal(frozen.entries, owner[np.argsort(tokens, kind="stable")].astype(np.int32))
    assert frozen.entries.dtype == np.int32
    assert np.array_equal(np.diff(frozen.offsets), np.bincount(tokens))


def test_token_ids_are_given_in_the_order_tokens_first_come():
    """_ids (issue 20: one pass, an unknown token's id given as it is looked up) gives each token the id a
    setdefault over the tokens in order gave: 0, 1, 2, ... by first use, a repeat its first id, across texts."""
    rnd = random.Random(4)
    words = ["the", "a", "poem", "sea", "Zebra", "x1", "quokka", "sea", "é", "don't"]
    texts = [" ".join(rnd.choice(words) for _ in range(rnd.randint(0, 9))) for _ in range(300)]
    index, vocab = RougeLIndex(), {}
    for text in texts:
        expected = [vocab.setdefault(t, len(vocab)) for t in similarity._default_tokenizer(text)]
        got = index._ids(text)
        assert got.dtype == np.int32 and got.tolist() == expected and not got.flags.writeable
        if rnd.random() < 0.5:
            index.add(text)
    assert dict(index._vocab) == vocab
