import json

import pytest

from pipeline.config import FilterConfig
from pipeline.errors import InputError
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
])
def test_bad_seed_lines_name_file_line_and_fix(tmp_path, content, line, problem):
    path = tmp_path / "seeds.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as e:
        load_seeds(path)
    assert f"{path}:{line}: " in str(e.value) and problem in str(e.value) and "Fix:" in str(e.value)


def test_empty_and_missing_seed_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="holds no seed tasks"):
        load_seeds(empty)
    with pytest.raises(InputError, match="does not exist"):
        load_seeds(tmp_path / "nope.jsonl")
