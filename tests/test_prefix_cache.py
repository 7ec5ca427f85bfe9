"""Cached input tokens: usage.prompt_tokens_details.cached_tokens read from direct and batch replies, kept in the
usage log (old logs migrated), and priced at the model's cached-input rate in the budget, `cost`, `show` and the
dry run."""

import json
import shutil
import sqlite3

import pytest
from fakebatch import FakeBatchOpenAI
from fakeserver import FakeOpenAI
from helpers import invoke, teacher_flags

from pipeline.budget import price_for, usd_of
from pipeline.cache import USAGE_COLUMNS, ResponseCache
from pipeline.config import BudgetConfig, load_config
from pipeline.errors import InputError
from pipeline.estimate import cacheable
from pipeline.prompts import bundled_prompts_dir
from pipeline.teachers.base import Completion

PRICES = ["--set", 'budget.prices={"fake-model" = [10.0, 20.0, 1.0]}']


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def expected_usd(model: dict, factor: float = 1.0) -> float:
    fresh = model["prompt_tokens"] - model["cached_tokens"]
    return (fresh * 10.0 + model["cached_tokens"] * 1.0 + model["completion_tokens"] * 20.0) * factor / 1e6


@pytest.mark.parametrize("batch", [False, True])
def test_cached_tokens_are_read_logged_and_priced_at_the_cached_rate(key, tmp_path, batch):
    server = FakeBatchOpenAI() if batch else FakeOpenAI()
    server.prompt_tokens, server.cached_tokens = 1500, 1152
    flags = ["--batch", "--set", "teacher.batch_poll_s=0.02"] if batch else []
    try:
        invoke("run", *teacher_flags(server, tmp_path), "--num-instructions", 6, *flags, *PRICES)
    finally:
        server.close()
    model = "fake-model@batch" if batch else "fake-model"
    db = ResponseCache(tmp_path / "r" / "cache.sqlite")
    usage = db.usage_by_model()[model]
    db.close()
    assert all(u["cached_tokens"] == 1152 * u["calls"] for u in usage.values()) and usage["classify"]["calls"] == 6
    c = json.loads(invoke("cost", tmp_path / "r", "--json").output)[0]
    spent = c["models"][model]
    assert spent["cached_tokens"] == 1152 * sum(u["calls"] for u in usage.values())
    factor = 0.5 if batch else 1.0  # the batch discount on every rate, the cached one too
    assert c["dataset_usd"] == pytest.approx(expected_usd(spent, factor))
    # A tenth of the input price on 1,152 of 1,500 prompt tokens: far under the same tokens at the input price.
    assert c["dataset_usd"] < (spent["prompt_tokens"] * 10.0 + spent["completion_tokens"] * 20.0) * factor / 1e6
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["spend"]["cost_usd"] == pytest.approx(c["dataset_usd"], abs=1e-6)
    assert "prefix cache: " in invoke("cost", tmp_path / "r").output
    assert "prefix-cached" in invoke("show", tmp_path / "r").output


def test_a_server_that_reports_no_cached_tokens_is_priced_as_before(key, tmp_path):
    server = FakeOpenAI()
    try:
        invoke("run", *teacher_flags(server, tmp_path), "--num-instructions", 4, *PRICES)
    finally:
        server.close()
    c = json.loads(invoke("cost", tmp_path / "r", "--json").output)[0]
    spent = c["models"]["fake-model"]
    assert spent["cached_tokens"] == 0
    assert c["dataset_usd"] == pytest.approx((spent["prompt_tokens"] * 10.0 + spent["completion_tokens"] * 20.0) / 1e6)


def test_a_usage_log_from_before_cached_tokens_gains_the_column_with_zeros(tmp_path):
    path = tmp_path / "cache.sqlite"
    con = sqlite3.connect(path)
    old = [c for c in USAGE_COLUMNS if c != "cached_tokens"]
    con.execute(f"CREATE TABLE usage (session TEXT, kind TEXT, {', '.join(c + ' INTEGER' for c in old)}, model TEXT)")
    con.execute(f"INSERT INTO usage VALUES ('s0', 'classify', {', '.join('3' for _ in old)}, 'gpt-4o-mini')")
    con.commit()
    con.close()
    db = ResponseCache(path)
    db.record(None, Completion("Yes", "stop", prompt_tokens=2048, cached_tokens=1024), "s1", "classify",
              {"calls": 1, "prompt_tokens": 2048, "cached_tokens": 1024}, "gpt-4o-mini")
    usage = db.usage_by_model()["gpt-4o-mini"]["classify"]
    db.close()
    assert usage["prompt_tokens"] == 3 + 2048 and usage["cached_tokens"] == 1024  # the old row counts 0


def test_prices_of_three_set_the_cached_rate_and_prices_of_two_bill_cached_tokens_as_input(tmp_path):
    cfg = BudgetConfig(prices={"a": [2.0, 8.0, 0.5], "b": [2.0, 8.0]}, batch_price_factor=0.5)
    assert price_for(cfg, "a") == (2.0, 8.0, 0.5) and price_for(cfg, "b") == (2.0, 8.0, 2.0)
    assert price_for(cfg, "a@batch") == (1.0, 4.0, 0.25)
    assert usd_of(price_for(cfg, "a"), 1_000_000, 0, 400_000) == pytest.approx(600_000 * 2.0 / 1e6 + 0.2)
    assert usd_of(price_for(cfg, "b"), 1_000_000, 0, 400_000) == pytest.approx(2.0)
    assert price_for(BudgetConfig(), "gpt-4o-mini-2024-07-18")[2] == 0.075  # the OpenAI models' list price
    path = tmp_path / "c.toml"
    path.write_text('[budget]\nprices = { "m" = [1.0, 2.0, 0.1] }\n')
    assert load_config(path).budget.prices["m"] == [1.0, 2.0, 0.1]
    path.write_text('[budget]\nprices = { "m" = [1.0, 2.0, 0.1, 7.0] }\n')
    with pytest.raises(InputError, match="cached input"):
        load_config(path)


def test_openai_caches_prefixes_from_1024_tokens_in_steps_of_128():
    assert [cacheable(n) for n in (0, 1023, 1024, 1151, 1152, 5000)] == [0, 0, 1024, 1024, 1152, 4992]


def test_the_dry_run_counts_a_long_constant_prompt_start_as_prefix_cacheable(key, tmp_path):
    server = FakeOpenAI()
    prompts = tmp_path / "prompts"
    shutil.copytree(bundled_prompts_dir(), prompts)
    classify = prompts / "classify.txt"
    classify.write_text("A long constant preamble, the same for every task. " * 120 + classify.read_text())
    try:
        dry = invoke("run", *teacher_flags(server, tmp_path), "--num-instructions", 20, "--dry-run", *PRICES,
                     "--set", f"prompts_dir={prompts}", "--set", 'stages=["bootstrap", "classify"]')
        plain = invoke("run", *teacher_flags(server, tmp_path), "--num-instructions", 20, "--dry-run", *PRICES,
                       "--set", 'stages=["bootstrap", "classify"]')
    finally:
        server.close()
    assert "with the prefix cache serving every prefix-cacheable token" in dry.output
    assert "with the prefix cache" not in plain.output  # the bundled prompts start with under 1,024 tokens in common
    assert server.history == []
