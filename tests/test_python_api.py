"""The Python API: docs/python.md's example runs as written, against a fake teacher server (issue 19)."""

import json
import re

import pytest

from pipeline import Run, Seed2LoraError


def doc_example() -> str:
    from conftest import ROOT

    text = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)


def test_the_docs_example_runs_against_a_fake_server(fake_openai, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    exec(compile(doc_example(), "docs/python.md", "exec"), {})
    out = capsys.readouterr().out
    assert "filter:" in out and "tasks;" in out and "done" in out
    run = tmp_path / "outputs" / "notebook"
    assert json.loads((run / "manifest.json").read_text())["status"] == "done"
    assert (run / "export").is_dir()


def test_open_goes_on_with_the_recorded_config(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", name="r",
             output_dir=tmp_path, progress=False) as run:
        run.run(["bootstrap"])
    calls = len(fake_openai.history)
    again = Run.open(tmp_path / "r", progress=False)
    assert again.config.bootstrap.num_instructions == 3 and len(again.records("bootstrap")) == 3
    again.run(["bootstrap"])
    assert len(fake_openai.history) == calls  # resumed: nothing sent again
    again.close()
    # A Run(...) that leaves the target out raises before any request, naming the key and value
    with Run(teacher="openai:fake-model", name="r", output_dir=tmp_path, progress=False) as bare, \
            pytest.raises(Seed2LoraError, match="bootstrap.num_instructions=3 to go on"):
        bare.run(["bootstrap"])
    assert len(fake_openai.history) == calls


def test_bad_settings_and_folders_raise_with_the_fix():
    with pytest.raises(Seed2LoraError, match="concurrency"):
        Run(settings={"teacher.concurrency": 0}, progress=False)
    with pytest.raises(Seed2LoraError, match="not a seed2lora run"):
        Run.open("/nonexistent/run")


def test_every_public_name_loads_from_pipeline_with_a_docstring_and_the_faults_are_seed2lora_errors():
    import pipeline

    for name in (n for n in pipeline.__all__ if n != "__version__"):
        assert getattr(pipeline, name).__doc__, name
    from pipeline import BudgetReached, Incomplete, InputError, LowYield, TeacherUnavailable

    codes = {BudgetReached: 3, TeacherUnavailable: 4, Incomplete: 5, LowYield: 6}  # as docs/python.md says
    assert all(issubclass(c, Seed2LoraError) and c.exit_code == code for c, code in codes.items())
    assert issubclass(InputError, Seed2LoraError)
    from pipeline import TeacherError

    assert issubclass(TeacherUnavailable, TeacherError) and getattr(TeacherError, "exit_code", 2) == 2


def test_one_stage_name_runs_that_stage_and_a_misspelt_stage_is_an_error_not_an_empty_list(fake_openai, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", name="r",
             output_dir=tmp_path, progress=False) as run:
        (line,) = run.run("bootstrap")  # before: nine unknown stages, 'b', 'o', 'o', ...
        assert line.startswith("bootstrap:") and len(run.records("bootstrap")) == 3
        for read in (run.records, run.rejected):
            with pytest.raises(Seed2LoraError, match="unknown stage 'filters'. Fix: use one of .*filter"):
                read("filters")  # before: [], as if the stage had kept nothing
        assert run.records("ifd") == [] and run.rejected("export") == []


def test_a_dict_as_config_or_a_list_as_settings_names_the_argument_and_the_fix():
    with pytest.raises(Seed2LoraError, match=r"config: expected a TOML file's path or a RunConfig, not dict\. "
                                             r'Fix: put settings in settings=\{"section.key": value\}'):
        Run(config={"bootstrap": {"num_instructions": 5}}, progress=False)  # before: a bare TypeError, deep inside
    with pytest.raises(Seed2LoraError, match=r'settings: expected a dict, not list\. Fix: give settings=\{'):
        Run(settings=[("bootstrap.num_instructions", 5)], progress=False)
