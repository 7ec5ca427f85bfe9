"""One CLI dialect (issue 19): `--set section.key` everywhere, one meaning per flag, a run named the same way, tables
that are not cut, messages that say what happened, and range checks on config values."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import invoke, read, teacher_flags

from pipeline.cache import ResponseCache
from pipeline.cli import build_config, cli
from pipeline.config import (
    RANGES,
    EvalConfig,
    ExportConfig,
    RunConfig,
    TrainConfig,
    flag_overrides,
    load_config,
    load_section,
    parse_overrides,
)
from pipeline.errors import InputError
from pipeline.records import Instance, Task
from pipeline.stages.common import MapResult
from pipeline.store import write_jsonl_atomic


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def kept_run(tmp_path) -> Path:
    """A run with kept tasks, a manifest and a usage log whose call kinds share long prefixes."""
    path = tmp_path / "run"
    path.mkdir()
    write_jsonl_atomic(path / "filter.jsonl", [
        Task(id=f"t{i}", instruction=f"Name a colour number {i}.", stage="filter", instances=[Instance("", "Blue.")])
        for i in range(4)])
    cache = ResponseCache(path / "cache.sqlite")
    model = "Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4-long-model-name"
    for kind in ("classify", "classify_calibration", "evolve", "evolve_answer", "evolve_judge"):
        cache.log_usage("s1", kind, {"calls": 1234, "prompt_tokens": 1_234_567, "completion_tokens": 765_432}, model)
    cache.close()
    (path / "manifest.json").write_text(json.dumps({
        "config": {"teacher": {"spec": f"openai:{model}"}}, "teacher": {"name": f"openai:{model}", "model": model},
        "usage": {k: {"calls": 1234, "prompt_tokens": 1_234_567, "completion_tokens": 765_432}
                  for k in ("classify_calibration", "evolve_answer", "evolve_judge")}}))
    return path


# ---------------------------------------------------------------- --set section.key everywhere


def test_export_train_eval_and_cost_take_set_section_key_and_say_so(kept_run):
    """Every command documents and takes `--set section.key=value`, as `run` does; the bare key still works."""
    for command, example in (("export", "export.rows=task"), ("train", "train.lora_r=16"),
                             ("eval", "eval.limit=50"), ("cost", "cost.train_usd=100")):
        assert f"--set {example}" in _flat(_cli(command, "--help").output), command
    for cls, section, items, want in ((ExportConfig, "export", ["export.rows=task", "seed=7"], ("rows", "task")),
                                      (TrainConfig, "train", ["train.lora_r=16", "epochs=1"], ("lora_r", 16)),
                                      (EvalConfig, "eval", ["eval.judge.base_url=http://x", "limit=3"],
                                       ("limit", 3))):
        cfg = load_section(cls, None, section, flag_overrides({}, items, cls, section))
        assert getattr(cfg, want[0]) == want[1], section
    out = kept_run.parent / "export"
    invoke("export", kept_run, "--out", out, "--set", "export.rows=task", "--set", "export.formats=alpaca")
    settings = json.loads((out / "export.json").read_text())["export"]
    assert (settings["rows"], settings["formats"]) == ("task", "alpaca")
    # cost reads [cost] and the [budget] prices, so both are settable: a local model priced on the command line.
    result = _cli("cost", kept_run, "--json", "--set", "cost.train_usd=100",
                  "--set", 'budget.prices={"Qwen/Qwen2.5-72B" = [1.0, 2.0]}')
    assert result.exit_code == 0, result.output
    (c,) = json.loads(result.output)
    assert c["training"]["usd"] == 100 and c["dataset_usd"] == pytest.approx(5 * (1_234_567 + 2 * 765_432) / 1e6)


def test_a_key_of_a_section_the_command_does_not_read_is_refused(kept_run):
    result = _cli("export", kept_run, "--set", "teacher.concurrency=2")
    assert result.exit_code == 2 and "this command does not read teacher.concurrency" in _flat(result.output)
    assert "set a key of [export], e.g. --set export.formats=VALUE" in _flat(result.output)


def test_an_ambiguous_bare_key_is_refused_naming_each_full_key(tmp_path):
    """`max_tokens` is a key of five sections: refused with their full names. A key one section has works bare."""
    result = _cli("run", "--dry-run", "--output-dir", tmp_path, "--set", "max_tokens=64")
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    assert "'max_tokens' is ambiguous" in text and "name the section, e.g. --set bootstrap.max_tokens=VALUE" in text
    for full in ("bootstrap.max_tokens", "classify.max_tokens", "instances.max_tokens", "evolve.max_tokens"):
        assert full in text
    got = parse_overrides(["rouge_threshold=0.6", "weights.breadth=2", "frac=0.25", "seed=3"])
    assert got == {"filter.rouge_threshold": 0.6, "evolve.weights.breadth": 2.0, "select.frac": 0.25, "seed": 3}


# ---------------------------------------------------------------- one meaning per flag, one way to name a run


def test_output_dir_is_the_folder_of_runs_and_a_command_writes_to_out(kept_run, tmp_path):
    """--output-dir means the folder run directories go under; where it meant a command's own output, the error
    names --out with the value given."""
    for command, target in (("export", kept_run), ("report", kept_run), ("train", kept_run), ("eval", kept_run),
                            ("merge", kept_run)):
        result = _cli(command, target, "--output-dir", "somewhere")
        assert result.exit_code == 2, (command, result.output)
        assert "this command writes to --out somewhere" in _flat(result.output), command
        assert "--output-dir" not in _cli(command, "--help").output, command
    for command in ("run", "bootstrap", "classify", "instances", "filter", "evolve"):
        assert "The folder run directories go under" in _flat(_cli(command, "--help").output), command


def test_every_command_on_a_run_takes_run_dir(fake_openai, tmp_path):
    """Generation commands take the run as RUN_DIR too (or --output-dir/--run-name); the others refuse --run-name
    with the RUN_DIR form."""
    run = tmp_path / "mine"
    flags = ["--teacher", "openai:fake-model", "--base-url", fake_openai.url]
    invoke("bootstrap", run, *flags, "--num-instructions", 3)
    assert len(read(run / "bootstrap.jsonl")) == 3
    cfg = build_config(None, (), run_dir=str(run))
    assert (cfg.output_dir, cfg.run_name) == (str(tmp_path), "mine")
    both = _cli("classify", run, *flags, "--run-name", "other")
    assert both.exit_code == 2 and "not both" in both.output
    assert _cli("run", tmp_path / "run.toml").exit_code == 2  # a config given where the run goes
    for command in ("export", "score", "select", "show", "report", "cost"):
        result = _cli(command, "--run-name", "mine")
        assert result.exit_code == 2 and "here give the run as RUN_DIR, e.g. outputs/mine" in _flat(result.output)


# ---------------------------------------------------------------- tables that fit, messages that say what happened


def test_cost_and_show_tables_are_not_cut_when_the_output_is_not_a_terminal(kept_run):
    for command in ("cost", "show"):
        result = _cli(command, kept_run)
        assert result.exit_code == 0, result.output
        assert "…" not in result.output, command
        for label in ("classify_calibration", "evolve_answer", "evolve_judge",
                      "Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4-long-model-name"):
            assert label in result.output, (command, label)


def test_the_retry_note_says_whether_any_retry_happened(fake_openai, tmp_path):
    assert MapResult(written=4).replies_note(2) == "every reply usable at the first try"
    assert MapResult().replies_note(2) == "nothing left to ask"  # before: "every reply usable", with none asked
    assert MapResult(pending=3).replies_note(2) == "no reply to read"
    assert MapResult(retried=3).replies_note(2) == "3 unusable replies asked again, none rejected"
    assert MapResult(retried=1, rejected=1).replies_note(2) == \
        "1 unusable reply asked again, 1 task rejected (still unusable after 2 retries)"
    assert MapResult(retried=2, rejected=2).replies_note(1, "instance") == \
        "2 unusable replies asked again, 2 instances rejected (still unusable after 1 retry)"
    assert MapResult(rejected=2).replies_note(0) == "2 tasks rejected for an unusable reply, none asked again"
    # A call that failed and was sent again (a later batch wave, a 429) was no first try, though its reply parsed at
    # once; each failed call sent again counts once, in the words of every stage (common.resent_note)
    causes = "5xx, timeout or dropped connection)"
    assert MapResult(written=4, resent=2).replies_note(2) == \
        f"every reply usable, none asked again; 2 retries of failed calls (a 429, {causes}"
    assert "first try" not in MapResult(written=4, resent=1).replies_note(2)
    assert MapResult(written=3, retried=1, resent=1).replies_note(2, batch=True) == \
        f"1 unusable reply asked again, none rejected; 1 retry of a failed call (a batch line failed in a wave, or " \
        f"a 429, {causes}"  # a killed endpoint's requests, sent again to another, are retries too
    assert MapResult(written=3, retried=1, resent=1).replies_note(2) == \
        f"1 unusable reply asked again, none rejected; 1 retry of a failed call (a 429, {causes}"
    user = tmp_path / "mine.jsonl"
    user.write_text('{"instruction": "Suggest a name for a bakery."}\n')
    out = invoke("classify", *teacher_flags(fake_openai, tmp_path, "u"), "--input", user).output
    assert "classify: 1 tasks written (1 in classify.jsonl); every reply usable at the first try" in _flat(out)
    assert "retries of unusable" not in out


# ---------------------------------------------------------------- range checks


@pytest.mark.parametrize("args, key, value, allowed", [
    (["--set", "teacher.concurrency=0"], "teacher.concurrency", "0", "1 or more"),
    (["--set", "teacher.concurrency=-3"], "teacher.concurrency", "-3", "1 or more"),
    (["--set", "filter.rouge_threshold=1.5"], "filter.rouge_threshold", "1.5", "0 to 1"),
    (["--set", "bootstrap.top_p=-0.1"], "bootstrap.top_p", "-0.1", "0 to 1"),
    (["--set", "select.frac=0"], "select.frac", "0.0", "more than 0, at most 1"),
    (["--num-instructions", "0"], "'--num-instructions'", "0", "1 or more"),  # the flag typed, not its key
    (["--max-cost", "-1"], "'--max-cost'", "-1.0", "0 or more"),
])
def test_a_value_out_of_range_exits_2_naming_key_value_and_range(tmp_path, args, key, value, allowed):
    result = _cli("run", "--dry-run", "--output-dir", tmp_path, *args)
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    assert key in text and f"{value} is out of range (allowed: {allowed})" in text, text
    assert not (tmp_path / "run").exists()  # nothing written


def test_ranges_hold_in_toml_files_and_in_every_command(tmp_path, kept_run):
    config = tmp_path / "run.toml"
    config.write_text("[teacher]\nconcurrency = -3\n")
    with pytest.raises(InputError, match=r"run.toml:2: \[teacher\] concurrency = -3 is out of range "
                                                       r"\(allowed: 1 or more\)"):
        load_config(config)
    result = _cli("export", kept_run, "--eval-fraction", "1.5")
    assert result.exit_code == 2 and "'--eval-fraction': 1.5 is out of range (allowed: 0 or more, less than 1)" in _flat(result.output)
    result = _cli("eval", kept_run, "--set", "eval.judge.concurrency=0")
    assert result.exit_code == 2 and "0 is out of range (allowed: 1 or more)" in _flat(result.output)
    result = _cli("cost", kept_run, "--set", "cost.gpu_usd_per_hour=-2")
    assert result.exit_code == 2 and "-2.0 is out of range (allowed: 0 or more)" in _flat(result.output)
    for args in (["--max-steps", "0"], ["--set", "train.max_steps=0"]):  # before: 0 trained one update ("1/0")
        result = _cli("train", kept_run, *args)
        assert result.exit_code == 2 and "0 is out of range (allowed: -1 or more, but not 0)" in _flat(result.output), \
            result.output
        assert not (Path(kept_run) / "adapter").exists()


@pytest.mark.parametrize("command, flag, value, problem, fix", [
    ("run", "--num-instructions", "-5", "-5 is out of range (allowed: 1 or more)", "--num-instructions 100"),
    ("run", "--max-tokens-total", "-1", "-1 is out of range (allowed: 0 or more)", "--max-tokens-total 0"),
    ("evolve", "--rounds", "-1", "-1 is out of range (allowed: 0 or more)", "--rounds 4"),
    ("select", "--frac", "2", "2.0 is out of range (allowed: more than 0, at most 1)", "--frac 0.5"),
    ("select", "--top", "-3", "-3 is out of range (allowed: 0 or more)", "--top 0"),
    ("ifd", "--batch-size", "0", "0 is out of range (allowed: 1 or more)", "--batch-size 8"),
    ("score", "--max-tokens-total", "-1", "-1 is out of range (allowed: 0 or more)", "--max-tokens-total 0"),
    ("train", "--epochs", "-1", "-1.0 is out of range (allowed: more than 0)", "--epochs 3.0"),
    ("train", "--lr", "0", "0.0 is out of range (allowed: more than 0)", "--lr 0.0002"),
    ("eval", "--limit", "-1", "-1 is out of range (allowed: 0 or more)", "--limit 0"),
])
def test_a_flag_out_of_range_is_named_as_typed_with_its_fix_as_a_flag(kept_run, command, flag, value, problem, fix):
    """A flag's value out of range named the setting behind it, with a TOML line as its fix (`select --frac 2`:
    "select.frac: ... e.g. select.frac = 0.5"; `evolve --rounds -1`: "--set evolve.rounds=-1"): words the user never
    typed. The flag is named, and its fix is the flag."""
    result = _cli(command, kept_run, flag, value)
    text = _flat(result.output)
    assert result.exit_code == 2 and f"Invalid value for '{flag}': {problem}. Fix: give a value in range, e.g. {fix}." \
        in text, text
    assert not any((Path(kept_run) / name).exists() for name in ("select.jsonl", "ifd.jsonl", "adapter", "evolve.jsonl"))


def test_every_range_names_a_number_setting_whose_default_it_allows():
    classes = {}

    def walk(cls):
        classes[cls.__name__] = cls
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint)
    walk(RunConfig)
    for name, limits in RANGES.items():
        cls_name, _, field_name = name.partition(".")
        cls = classes[cls_name]
        assert typing.get_type_hints(cls)[field_name] in (int, float), name
        default = next(f for f in dataclasses.fields(cls) if f.name == field_name).default
        assert limits.holds(default), (name, default, str(limits))
