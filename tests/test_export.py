"""seed2lora export: rows, seeded split by task, every format, the dataset card, and reading it back."""

import json
import random

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import ExportConfig
from pipeline.errors import Seed2LoraError
from pipeline.records import Instance, Task
from pipeline.stages.export import export_run, row_messages, split_by_task, task_rows
from pipeline.store import RunDir, write_jsonl_atomic
from pipeline.train.data import load_rows, train_eval_rows


def make_tasks(n=10):
    return [Task(id=f"t{i}", instruction=f"Write a short note number {i} about cats.", origin="machine",
                 instances=[Instance(input=f"in {i}.{k}" if k else "", output=f"out {i}.{k}") for k in range(2)])
            for i in range(n)]


def make_run(tmp_path, tasks=None):
    """A run of 10 kept machine tasks (2 instances each) made from 3 human seed tasks (one with 2 instances)."""
    run = RunDir(tmp_path / "run").ensure()
    write_jsonl_atomic(run.stage_file("filter"), tasks or make_tasks())
    write_jsonl_atomic(run.rejected_file, [make_tasks(1)[0].rejected("rouge_l: 0.81 vs x", "filter")])
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Name a fruit that is colour {i}.",
                                         "instances": [{"input": "", "output": f"fruit {i}.{k}"}
                                                       for k in range(1 + (i == 0))]}) + "\n" for i in range(3)))
    run.update_manifest(teacher={"name": "embedded", "model": "SmolLM2-135M-Instruct"},
                        config={"seed": 42, "seed_tasks": str(seeds), "filter": {"rouge_threshold": 0.7, "min_words": 4, "max_words": 150,
                                                       "blacklist": ["image"], "banned_prefixes": ["Write a program"],
                                                       "max_instances": 5}, "bootstrap": {"mode": "self-instruct"}})
    return run.path


def test_rows_per_instance_or_task_and_alpaca_messages():
    tasks = make_tasks(2)
    rows = task_rows(tasks)
    assert [r["id"] for r in rows] == ["t0-0", "t0-1", "t1-0", "t1-1"]
    assert rows[1] == {"id": "t0-1", "task_id": "t0", "instruction": "Write a short note number 0 about cats.",
                       "input": "in 0.1", "output": "out 0.1", "origin": "machine"}
    assert len(task_rows(tasks, rows="task")) == 2
    assert row_messages(rows[1]) == [{"role": "user", "content": "Write a short note number 0 about cats.\n\nin 0.1"},
                                      {"role": "assistant", "content": "out 0.1"}]
    assert row_messages(rows[0])[0]["content"] == "Write a short note number 0 about cats."  # no input, no blank line
    with pytest.raises(Seed2LoraError, match="must end with an assistant"):
        row_messages({"messages": [{"role": "user", "content": "hi"}]})


def test_split_is_seeded_and_by_task():
    rows = task_rows(make_tasks(20))
    train, held = split_by_task(rows, 0.1, random.Random(7))
    assert (train, held) == split_by_task(rows, 0.1, random.Random(7))
    assert len({r["task_id"] for r in held}) == 2 and len(held) == 4
    assert not {r["task_id"] for r in held} & {r["task_id"] for r in train}
    assert split_by_task(rows[:2], 0.1, random.Random(0))[1] == []  # one task: nothing to hold out


def test_export_writes_every_format_and_a_card(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "export"
    info = export_run(run, out, ExportConfig(seed=1))
    assert info["counts"] == {"tasks": 10, "seed_tasks": 3, "rows": 24, "train_rows": 22, "eval_rows": 2,
                              "train_tasks": 12, "eval_tasks": 1, "by_origin": {"machine": 20, "seed": 4}}
    alpaca = json.loads((out / "alpaca" / "train.json").read_text())
    assert len(alpaca) == 22 and set(alpaca[0]) == {"instruction", "input", "output"}
    assert sum(r["instruction"].startswith("Name a fruit") for r in alpaca) == 4  # every seed instance trains
    messages = [json.loads(line) for line in (out / "messages" / "eval.jsonl").read_text().splitlines()]
    assert len(messages) == 2 and messages[0]["messages"][-1]["role"] == "assistant"
    import pandas as pd
    from datasets import load_from_disk

    train = pd.read_parquet(out / "parquet" / "train.parquet")
    assert len(train) == 22 and (train["origin"] == "seed").sum() == 4 and "seed:s0" in set(train["task_id"])
    ds = load_from_disk(str(out / "hf"))
    assert ds["eval"].num_rows == 2 and ds["train"][0]["messages"][0]["role"] == "user"
    card = (out / "README.md").read_text()
    for fact in ("| train | 12 | 22 |", "| eval | 1 | 2 |", "| total | 13 | 24 |", "3 of the train tasks are", "Teacher: `embedded` (SmolLM2-135M-Instruct)",
                 "rejected above 0.7", "Blacklisted words: image", "Banned prefixes: Write a program",
                 "| filter: rouge_l | 1 |", "seed 1"):
        assert fact in card, fact
    assert json.loads((out / "export.json").read_text())["export"]["seed"] == 1


def test_seed_rows_always_train_and_can_be_left_out(tmp_path):
    run = make_run(tmp_path)
    rows = load_rows(run).train
    assert sum(r["origin"] == "seed" for r in rows) == 4
    for seed in range(20):  # whatever the split, no seed row is held out
        train, held = split_by_task(rows, 0.5, random.Random(seed))
        assert len(held) == 10 and all(r["origin"] == "machine" for r in held)
        assert sum(r["origin"] == "seed" for r in train) == 4
    info = export_run(run, tmp_path / "no-seeds", ExportConfig(include_seeds=False))
    assert info["counts"]["rows"] == 20 and info["counts"]["seed_tasks"] == 0
    assert "are not included" in (tmp_path / "no-seeds" / "README.md").read_text()
    (tmp_path / "seeds.jsonl").unlink()  # a run whose seed file moved: say so, and how to go on
    with pytest.raises(Seed2LoraError, match="--no-seeds"):
        export_run(run, tmp_path / "x", ExportConfig())
    result = CliRunner().invoke(cli, ["export", str(run), "--no-seeds", "--formats", "alpaca"])
    assert result.exit_code == 0 and "10 machine + 0 seed tasks" in result.output


def test_each_export_format_reads_back_with_the_same_split(tmp_path):
    out = tmp_path / "export"
    export_run(make_run(tmp_path), out, ExportConfig())
    ref = load_rows(out)
    ids = sorted(r["id"] for r in ref.train), sorted(r["id"] for r in ref.eval)
    assert ref.run_dir == tmp_path / "run"
    hf = load_rows(out / "hf")
    assert (sorted(r["id"] for r in hf.train), sorted(r["id"] for r in hf.eval)) == ids
    assert sorted(r["id"] for r in load_rows(out / "parquet" / "train.parquet").train) == ids[0]
    expected = [row_messages(r) for r in ref.train]
    for path in (out / "alpaca" / "train.json", out / "parquet" / "train.parquet"):
        assert [row_messages(r) for r in load_rows(path).train] == expected, path
    # A run directory given straight to `train` splits the same way as its export.
    direct = train_eval_rows(load_rows(tmp_path / "run"), 0.1, 42)
    assert sorted(r["id"] for r in direct[1]) == ids[1]


def test_export_cli_and_friendly_errors(tmp_path):
    run = make_run(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(run), "--formats", "alpaca,messages", "--rows", "task"])
    assert result.exit_code == 0, result.output
    assert "exported:" in result.output and (run / "export" / "alpaca" / "eval.json").is_file()
    assert not (run / "export" / "hf").exists()
    empty = RunDir(tmp_path / "empty").ensure().path
    result = CliRunner().invoke(cli, ["export", str(empty)])
    assert result.exit_code == 2 and "does not exist" in result.output and "seed2lora filter" in result.output
    result = CliRunner().invoke(cli, ["export", str(run), "--formats", "csv"])
    assert result.exit_code == 2 and "unknown export format" in result.output


def test_train_data_files_share_the_pool_readers(tmp_path):
    """train reads CSV too, and a bad file is named with the place and the fix (datasets_io.read_records)."""
    from pipeline.errors import InputError

    csv_path = tmp_path / "rows.csv"
    csv_path.write_text('instruction,input,output\n"Say hi,\npolitely.",,Hello!\nCount to 2.,,1 2\n', encoding="utf-8")
    rows = load_rows(csv_path).train
    assert [r["output"] for r in rows] == ["Hello!", "1 2"] and rows[0]["instruction"] == "Say hi,\npolitely."
    bad = tmp_path / "rows.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "b"}, "oops"]))
    with pytest.raises(InputError, match="item 2 is a str"):
        load_rows(bad)
    bad_jsonl = tmp_path / "rows.jsonl"
    bad_jsonl.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(InputError, match=r"rows\.jsonl:2"):
        load_rows(bad_jsonl)
