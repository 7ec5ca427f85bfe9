import json

import pytest

from pipeline.config import FilterConfig
from pipeline.datasets_io import load_pool
from pipeline.errors import InputError
from pipeline.records import Instance
from pipeline.seeds import load_seeds
from pipeline.similarity import RougeLIndex
from pipeline.stages.filter import instruction_reject_reason


def test_bundled_seeds_have_the_breadth_of_the_original():
    seeds = load_seeds()
    assert 170 <= len(seeds) <= 180
    n_clf = sum(1 for s in seeds if s.is_classification)
    assert 20 <= n_clf <= 30
    assert all(s.instances and s.instances[0].output for s in seeds)
    assert len({s.id for s in seeds}) == len(seeds)
    # Seeds model good tasks: they pass the rules the pipeline applies to machine tasks.
    assert [s.instruction for s in seeds if instruction_reject_reason(s.instruction, FilterConfig())] == []


def test_bundled_seeds_are_not_near_copies_of_each_other():
    idx = RougeLIndex()
    for s in load_seeds():
        added, score = idx.add_if_novel(s.instruction, 0.7)
        assert added, (s.instruction, score)


def test_original_self_instruct_seed_file_loads_as_is(shared_data):
    seeds = load_seeds(shared_data / "self_instruct_seed_tasks.jsonl")
    assert len(seeds) == 175
    assert seeds[0].id == "seed_task_0" and seeds[0].meta["name"] == "breakfast_suggestion"
    assert sum(s.is_classification for s in seeds) == 26  # the file marks 26, the paper says 25
    assert all(s.origin == "seed" for s in seeds)


def test_user_oriented_file_loads_too(shared_data):
    tasks = load_seeds(shared_data / "user_oriented_instructions.jsonl")
    assert len(tasks) == 252 and tasks[0].meta["motivation_app"] == "Grammarly"
    assert all(t.is_classification is None for t in tasks)


def test_csv_and_alpaca_json(tmp_path):
    csv_path = tmp_path / "s.csv"
    csv_path.write_text('instruction,input,output,is_classification\n"Say hi, politely.",,Hello there!,false\n'
                        'Is it odd?,3,Yes,true\n')
    seeds = load_seeds(csv_path)
    assert [s.instruction for s in seeds] == ["Say hi, politely.", "Is it odd?"]
    assert seeds[1].is_classification is True and seeds[1].instances[0].input == "3"
    js = tmp_path / "alpaca.json"
    js.write_text(json.dumps([{"instruction": "Name a color.", "input": "", "output": "Blue"}]))
    (task,) = load_seeds(js)
    assert task.instances[0].output == "Blue" and task.id == "seed_task_0"


@pytest.mark.parametrize("content, line, problem", [
    ('{"instruction": "ok", "instances": []}\n{"name": "x"}\n', 2, "has no 'instruction' string"),
    ('{"instruction": "ok", "instances": "oops"}\n', 1, "'instances' is not a list"),
    ('{"instruction": "ok", "instances": [{"input": 3, "output": "x"}]}\n', 1, "'input' is int"),
    ('{"instruction": "ok", "is_classification": "maybe"}\n', 1, "'is_classification' is 'maybe'"),
    ('{"id": "a", "instruction": "ok"}\n{"id": "a", "instruction": "ok2"}\n', 2, "repeats id 'a'"),
    ('["not", "an", "object"]\n', 1, "holds a JSON list"),
    ('{"instruction": "ok"}\n{"instruction": "torn\n{"instruction": "ok2"}\n', 2,
     "is not valid JSON (Unterminated string starting at column 17)"),  # was "starting at at column 17"
])
def test_bad_seed_lines_name_file_line_and_fix(tmp_path, content, line, problem):
    path = tmp_path / "seeds.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as e:
        load_seeds(path)
    assert f"{path}:{line}: " in str(e.value) and problem in str(e.value) and "Fix:" in str(e.value)


def test_a_jsonl_file_with_a_bom_and_crlf_lines_loads_as_seeds_and_as_evolve_input(tmp_path):
    """Windows tools (PowerShell's Out-File, Notepad's "UTF-8 with BOM") start a file with a BOM: a JSONL seed file
    stopped at line 1 as "not valid JSON ... Fix: write one JSON object per line", which it was."""
    path = tmp_path / "mine.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({**r, "source": "lab", "tags": ["x"]}) + "\r\n"
                                                for r in SEED_ROWS).encode())
    assert [(s.instruction, s.instances[0].output) for s in load_seeds(path)] == [
        ("Name a color of the sky.", "Blue"), ("Add the two numbers.", "5")]
    assert [t.instruction for t in load_pool(path)] == ["Name a color of the sky.", "Add the two numbers."]


def test_empty_and_missing_seed_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="holds no seed tasks"):
        load_seeds(empty)
    with pytest.raises(InputError, match="does not exist"):
        load_seeds(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- every format train reads

SEED_ROWS = [{"instruction": "Name a color of the sky.", "input": "", "output": "Blue"},
             {"instruction": "Add the two numbers.", "input": "2 and 3", "output": "5"}]
CHAT_ROWS = [{"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Name a color of the sky."},
                           {"role": "assistant", "content": "Blue"}]},
             {"messages": [{"role": "user", "content": "Add the two numbers.\n\n2 and 3"},
                           {"role": "assistant", "content": "5"},
                           {"role": "user", "content": "And times?"}, {"role": "assistant", "content": "6"}]}]


def write_every_format(folder, rows):
    """The same records as JSONL, JSON, parquet and two saved datasets (a Dataset and a DatasetDict)."""
    import datasets
    import pandas as pd

    (folder / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "s.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(folder / "s.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "hf"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder / "hf_dict"))
    return ["s.jsonl", "s.json", "s.parquet", "hf", "hf_dict"]


def test_seeds_load_from_every_format_train_reads(tmp_path):
    names = write_every_format(tmp_path, SEED_ROWS)
    (tmp_path / "s.csv").write_text("instruction,input,output\nName a color of the sky.,,Blue\n"
                                    "Add the two numbers.,2 and 3,5\n")
    for name in [*names, "s.csv"]:
        seeds = load_seeds(tmp_path / name)
        assert [(s.id, s.instruction, s.instances) for s in seeds] == [
            ("seed_task_0", "Name a color of the sky.", [Instance("", "Blue")]),
            ("seed_task_1", "Add the two numbers.", [Instance("2 and 3", "5")])], name


def test_chat_rows_are_seeds_and_evolve_input(tmp_path):
    """The first user turn is the instruction, the assistant turn answering it the output; a system turn is dropped."""
    for name in write_every_format(tmp_path, CHAT_ROWS):
        seeds = load_seeds(tmp_path / name)
        assert [(s.instruction, s.instances) for s in seeds] == [
            ("Name a color of the sky.", [Instance("", "Blue")]),
            ("Add the two numbers.\n\n2 and 3", [Instance("", "5")])], name
        pool = load_pool(tmp_path / name)
        assert [(t.instruction, t.instances) for t in pool] == [(s.instruction, s.instances) for s in seeds], name
    (tmp_path / "q.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Just a question."}]}) + "\n")
    assert load_seeds(tmp_path / "q.jsonl")[0].instances == [] and load_pool(tmp_path / "q.jsonl")[0].instances == []


def test_a_mixed_dataset_of_alpaca_and_chat_rows(tmp_path):
    """A saved dataset holding both shapes has every column on every row, empty (None) where a row has none."""
    import datasets

    alpaca, chat = SEED_ROWS[0], CHAT_ROWS[1]
    rows = [{**alpaca, "messages": None}, {**dict.fromkeys(alpaca), **chat}]  # from_list takes the first row's keys
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "mixed"))
    seeds = load_seeds(tmp_path / "mixed")
    assert [(s.instruction, s.instances[0].output) for s in seeds] == [
        ("Name a color of the sky.", "Blue"), ("Add the two numbers.\n\n2 and 3", "5")]
    assert [t.instances for t in load_pool(tmp_path / "mixed")] == [s.instances for s in seeds]


@pytest.mark.parametrize("messages, problem", [
    ("hello", "'messages' is not a list of {role, content} objects"),
    ([{"role": "assistant", "content": "Hi"}], "'messages' has no user turn (roles: ['assistant'])"),
    ([{"role": "user", "content": ["a", "list"]}], "the first user turn's content is list, not text"),
])
def test_bad_chat_rows_name_the_line_and_the_fix(tmp_path, messages, problem):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CHAT_ROWS[0]["messages"]}) + "\n" + json.dumps({"messages": messages}) + "\n")
    for load in (load_seeds, load_pool):
        with pytest.raises(InputError) as e:
            load(path)
        assert f"{path}:2: {problem}" in str(e.value) and "Fix:" in str(e.value), load


def test_a_folder_that_is_not_a_dataset_is_named_with_the_fix(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("nothing here")
    for load in (load_seeds, load_pool):
        with pytest.raises(InputError) as e:
            load(folder)
        message = str(e.value)
        assert f"{folder}: is a folder but not a saved Hugging Face dataset (it holds todo.txt)" in message
        assert "Fix: give a data file (.jsonl, .json, .csv, .tsv, .parquet) or a folder written by Dataset.save_to_disk" in message
    with pytest.raises(InputError, match="does not exist"):
        load_seeds(tmp_path / "missing")


def test_run_takes_a_dataset_folder_as_seeds(tmp_path):
    """`--seeds DIR` (a save_to_disk folder) goes as far as any seed file: the filter reads it as the run's seeds
    (of the run's own instances.jsonl: a user's --input rows are not compared with a seed file)."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    write_every_format(tmp_path, CHAT_ROWS)
    tasks = tmp_path / "out" / "r" / "instances.jsonl"
    tasks.parent.mkdir(parents=True)
    tasks.write_text(json.dumps({"id": "t1", "instruction": "Name a color of the sky.", "origin": "machine",
                                 "stage": "instances", "instances": [{"input": "", "output": "Blue"}]}) + "\n")
    result = CliRunner().invoke(cli, ["filter", str(tmp_path / "out" / "r"), "--seeds", str(tmp_path / "hf")])
    assert result.exit_code == 2 and "the filter rejected all 1 tasks" in result.output  # a copy of a seed
    rejected = [json.loads(line) for line in (tmp_path / "out" / "r" / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["reject_reason"].startswith("rouge")


def test_a_run_whose_seeds_are_a_dataset_folder_exports_them(tmp_path):
    from pipeline.config import ExportConfig
    from pipeline.records import Task
    from pipeline.rows import run_rows
    from pipeline.store import RunDir, write_jsonl_atomic

    write_every_format(tmp_path, CHAT_ROWS)
    run = RunDir(tmp_path / "run").ensure()
    run.update_manifest(config={"seed_tasks": str(tmp_path / "hf")})
    write_jsonl_atomic(run.stage_file("filter"), [Task(id="t", instruction="Say hi.", instances=[Instance("", "Hi")])])
    rows = run_rows(run, ExportConfig()).rows
    assert [(r["origin"], r["instruction"], r["output"]) for r in rows] == [
        ("machine", "Say hi.", "Hi"), ("seed", "Name a color of the sky.", "Blue"),
        ("seed", "Add the two numbers.\n\n2 and 3", "5")]


def test_rows_given_to_a_stage_without_ids_get_ids_from_their_content(tmp_path):
    """`filter --input` rows with no id were named by position (`seed_task_0`, ...): the bundled seeds' own ids, and
    after the file was edited (a row removed at the top) every id named another row, so `ifd` kept all 80 stale
    scores ("0 rows scored, 80 of 80 in ifd.jsonl") and `select --by ifd` ranked rows by other rows' values. Now an
    id comes from the instruction and input, as evolve's reader of the same files names them."""
    from helpers import invoke, read

    from pipeline.records import Instance, input_id

    rows = [{"instruction": text, "input": "", "output": "It helps."}
            for text in ("Explain in two sentences why rainfall matters to a gardener.",
                         "List four board games that children under ten enjoy.",
                         "Translate the following greeting into formal German.")]
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps(r) + "\n" for r in rows))
    invoke("filter", tmp_path / "run", "--input", mine)
    first = {t["instruction"]: t["id"] for t in read(tmp_path / "run" / "filter.jsonl")}
    assert first == {r["instruction"]: input_id(r["instruction"], [Instance("", "It helps.")]) for r in rows}
    mine.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))  # the first row removed
    invoke("filter", tmp_path / "run", "--input", mine)
    again = {t["instruction"]: t["id"] for t in read(tmp_path / "run" / "filter.jsonl")}
    assert again == {k: v for k, v in first.items() if k != rows[0]["instruction"]}
    mine.write_text(json.dumps({"id": "mine-7", **rows[0]}) + "\n")  # a row's own id stays
    invoke("filter", tmp_path / "run", "--input", mine)
    assert [t["id"] for t in read(tmp_path / "run" / "filter.jsonl")] == ["mine-7"]


def test_a_repeated_seed_is_loaded_once_and_named(tmp_path):
    """A row pasted twice loaded twice, silently (twice the weight in prompts and in the export's train split); rows
    given to a stage, whose ids come from their content, clashed as "repeats id 'input_...'. Fix: give every seed
    task a unique id", an id the user never wrote."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    path = tmp_path / "mine.jsonl"
    path.write_text('{"instruction": "Say hi to the new neighbour.", "output": "Hi there!"}\n\n'
                    '{"instruction": "Add the two numbers.", "input": "1, 2", "output": "3"}\n'
                    '{"instruction": "Say hi to the new neighbour.", "output": "Hi there!"}\n')
    for content_ids in (False, True):
        seeds = load_seeds(path, content_ids=content_ids)
        assert [s.instruction for s in seeds] == ["Say hi to the new neighbour.", "Add the two numbers."]
        assert seeds.repeated == ["line 4"]
    assert load_seeds(path).note("mine.jsonl") == "line 4 of mine.jsonl repeats an earlier row whole: loaded once"
    result = CliRunner().invoke(cli, ["filter", str(tmp_path / "run"), "--input", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "note: line 4 of mine.jsonl repeats an earlier row whole: loaded once" in result.output


def test_the_seeds_flag_help_names_every_format_the_loader_takes():
    """`--seeds FILE` said ".jsonl, .json or .csv", so a user with parquet or a saved dataset looked no further."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    for command in ("run", "bootstrap", "evolve"):
        text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
        assert "--seeds PATH Seed tasks: .jsonl, .json, .csv, .tsv, .parquet or a saved datasets folder" in text, command


def test_a_csv_separated_by_semicolons_or_tabs_loads(tmp_path):
    """Excel in a comma-decimal locale saves "CSV" with semicolons: the loader saw one column named
    'instruction;input;output' and said "Fix: name the columns instruction,input,output", which they were."""
    for sep in (";", "\t"):
        path = tmp_path / "mine.csv"
        path.write_bytes(("\ufeff" + sep.join(["instruction", "input", "output"]) + "\r\n"
                          + sep.join(['"Add the numbers; then halve."', "2, 4", "3"]) + "\r\n"
                          + sep.join(["Name a colour of the sky.", "", "Blue"]) + "\r\n").encode())
        seeds = load_seeds(path)
        assert [(s.instruction, s.instances[0].input, s.instances[0].output) for s in seeds] == [
            ("Add the numbers; then halve.", "2, 4", "3"), ("Name a colour of the sky.", "", "Blue")], sep
        assert [t.instruction for t in load_pool(path)] == [s.instruction for s in seeds]


def test_a_csv_row_with_more_cells_than_its_header_is_refused_naming_its_line(tmp_path):
    """An unquoted comma in an instruction ('Summarize the text, briefly') made one cell more: the loader moved the
    row's text a column on (input ' briefly', output the input) and dropped the last cell without a word."""
    path = tmp_path / "mine.csv"
    path.write_text("instruction,input,output\nName a colour of the sky.,,Blue\n"
                    "Summarize the text, briefly.,The cat sat on the mat.,A cat sat.\n")
    for load in (load_seeds, load_pool):
        with pytest.raises(InputError) as e:
            load(path)
        assert (e.value.path, e.value.line) == (path, 3)
        assert "has 4 cells where the header has 3 (instruction, input, output)" in e.value.problem
        assert e.value.fix.startswith("put a cell that holds a comma (the separator) in double quotes")
    path.write_text("instruction;input;output\nAdd the numbers; then halve.;2;1\n")
    with pytest.raises(InputError, match="holds a semicolon"):
        load_seeds(path)


def test_a_tsv_file_loads_as_a_tab_separated_csv_and_quoted_line_breaks_stay_in_their_cell(tmp_path):
    """`--seeds mine.tsv` (a spreadsheet's tab-separated export) was read as JSON lines and refused at line 1; a
    .tsv is tab separated whatever its header holds, with CSV's rules: quotes, and a line break inside them."""
    tsv = tmp_path / "mine.tsv"
    tsv.write_text("instruction\tinput\toutput\tnotes, if any\n"
                   'Write a haiku about rain.\t\t"Soft rain on the roof\nthe garden drinks slowly\nsleep comes"\tx\n'
                   "Add the numbers.\t2, 4\t6\t\n")
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text('instruction,input,output\nWrite a haiku about rain.,,"Soft rain on the roof\nthe garden '
                        'drinks slowly\nsleep comes"\nAdd the numbers.,"2, 4",6\n')
    for path in (tsv, csv_file):
        seeds = load_seeds(path)
        assert [(s.instruction, s.instances[0].input, s.instances[0].output) for s in seeds] == [
            ("Write a haiku about rain.", "", "Soft rain on the roof\nthe garden drinks slowly\nsleep comes"),
            ("Add the numbers.", "2, 4", "6")], path.name
        assert [t.instances[0].output for t in load_pool(path)] == [s.instances[0].output for s in seeds]
    broken = tmp_path / "broken.tsv"
    broken.write_text("prompt\tanswer\nAdd 2 and 3.\t5\n")
    with pytest.raises(InputError, match=r"broken.tsv:1: has no 'instruction' column .*name the columns"):
        load_seeds(broken)
    late = tmp_path / "late.tsv"  # a row after a multi-line cell is named by its own line
    late.write_text('instruction\tinput\toutput\nA task.\t\t"two\nlines"\n\t\tno instruction\n')
    with pytest.raises(InputError, match=r"late.tsv:4"):
        load_seeds(late)


def test_a_seed_rows_input_without_an_output_is_said_when_it_is_left_out(tmp_path, fake_openai, monkeypatch):
    """A seed row with an input and no output kept its instruction and lost its input, without a word (an example
    needs an output: in a prompt, and as a training row)."""
    from helpers import invoke, teacher_flags

    path = tmp_path / "mine.jsonl"
    path.write_text('{"instruction": "Add the two numbers.", "input": "1, 2", "output": ""}\n'
                    '{"instruction": "Say hi to the new neighbour.", "output": "Hi there!"}\n'
                    '{"instruction": "Name the capital.", "input": "France"}\n')
    seeds = load_seeds(path)
    assert [len(s.instances) for s in seeds] == [0, 1, 0] and seeds.no_output == ["line 1", "line 3"]
    assert seeds.note("mine.jsonl") == ("line 1, line 3 of mine.jsonl (2) have an input but no output: loaded "
                                        "without that input (an instance needs an output)")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--seeds", path, "--num-instructions", 2).output
    assert "note: line 1, line 3 of mine.jsonl (2) have an input but no output" in out, out


def test_an_instance_without_an_output_is_left_out_and_said_by_every_loader(tmp_path, fake_openai, monkeypatch):
    """Two behaviours for one row: a seed file's Alpaca row with an input and no output loaded without the input, and
    said so; the same row in Self-Instruct's shape ("instances") kept an instance with an empty output, without a
    word: `filter --input` then dropped it as instance_empty_output in rejected.jsonl, far from its line, and the
    seeds kept it. evolve's pool (datasets_io.load_pool) kept both shapes' empty outputs, and the export wrote the
    evolved file's rows, its evolutions' roots, as training rows with an empty output. Every loader now leaves such an
    instance out (an instance needs an output, as every instance of Self-Instruct's seed tasks has) and names the
    file and line."""
    from helpers import invoke, read, teacher_flags

    from pipeline.datasets_io import load_pool

    path = tmp_path / "mine.jsonl"
    path.write_text('{"instruction": "Name three rivers in Europe.", "output": "Rhine, Danube, Seine."}\n'
                    '{"instruction": "Translate the sentence into French.", "instances": [{"input": "The cat sleeps.", '
                    '"output": ""}, {"input": "I am here.", "output": "Je suis ici."}]}\n'
                    '{"instruction": "Summarize the text in one sentence.", "input": "A long text.", "output": ""}\n')
    note = ("line 2, line 3 of mine.jsonl (2) have an input but no output: loaded without that input (an instance "
            "needs an output)")
    for pool in (load_seeds(path), load_seeds(path, content_ids=True), load_pool(path)):
        assert [[(i.input, i.output) for i in t.instances] for t in pool] == [
            [("", "Rhine, Danube, Seine.")], [("I am here.", "Je suis ici.")], []]
        assert pool.note("mine.jsonl") == note
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    flags = teacher_flags(fake_openai, tmp_path)
    out = invoke("filter", "--input", path, *flags[4:]).output
    assert f"note: {note}" in " ".join(out.split()), out
    rejected = read(tmp_path / "r" / "rejected.jsonl")
    assert [r["reject_reason"].split(":")[0] for r in rejected] == ["no_valid_instances"], rejected
    out = invoke("evolve", "--input", path, *teacher_flags(fake_openai, tmp_path, "e"), "--rounds", "1").output
    assert f"note: {note}" in " ".join(out.split()), out
    invoke("export", tmp_path / "e", "--formats", "alpaca", "--set", "decontaminate=off", "--out", tmp_path / "exp")
    rows = [r for f in sorted((tmp_path / "exp" / "alpaca").glob("*.json")) for r in json.loads(f.read_text())]
    assert len(rows) >= 3 and all(r["output"].strip() for r in rows), rows  # the two seed rows, and evolutions
