"""An adapter trained before summaries named their paths whole, read from another directory.

Its training_summary.json keeps data, source and model as `train` was given them, relative to where it ran. Read
from elsewhere, eval's held-out split and export-adapter's dataset hash went to whatever those relative paths named
there (another project's outputs/r/export), or to nothing. Now they are read from where train ran (the summary's
relative output_dir says where), or the command says the path is relative and what it tried.
"""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.errors import Seed2LoraError
from pipeline.train import eval as train_eval
from pipeline.train.eval import default_eval_data, find_run_dir
from pipeline.train.gguf_adapter import provenance
from pipeline.train.model import adapter_info

ROW = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def project(root: Path, answer: str) -> Path:
    """A folder train could have run in: a run (manifest) with its export, and a base model folder."""
    write(root / "outputs/r/manifest.json", json.dumps({"status": "done"}))
    write(root / "outputs/r/export/export.json", json.dumps({"run_dir": "outputs/r"}))
    row = {**ROW, "messages": [ROW["messages"][0], {"role": "assistant", "content": answer}]}
    write(root / "outputs/r/export/messages/train.jsonl", json.dumps(row) + "\n")
    write(root / "models/base/config.json", "{}")
    return root


def old_adapter(root: Path, where: str = "adapters/a", output_dir: str | None = None) -> Path:
    """An adapter whose summary names its paths relative to `root`, where train ran."""
    adapter = root / where
    write(adapter / "adapter_config.json", json.dumps({"r": 8, "base_model_name_or_path": "models/base"}))
    write(adapter / "training_summary.json", json.dumps({
        "model": "models/base", "data": "outputs/r/export", "source": "outputs/r/export/messages/train.jsonl",
        "output_dir": output_dir or where, "config": {}}))
    return adapter


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The project train ran in, and another one, with the same relative paths, where the command runs now."""
    here, other = project(tmp_path / "proj", "Hi."), project(tmp_path / "other", "Another project's answer.")
    monkeypatch.chdir(other)
    monkeypatch.setattr(train_eval, "find_user_oriented", lambda: None)  # eval falls back on the held-out split
    return here


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_old_adapters_paths_are_read_from_where_train_ran(elsewhere):
    adapter = old_adapter(elsewhere)
    data, why = default_eval_data(adapter)
    assert data == "heldout:" + str(elsewhere / "outputs/r/export"), data  # not the current project's
    assert f"read from {elsewhere}, where train ran" in why, why
    assert find_run_dir(adapter) == elsewhere / "outputs/r"
    notes = []
    prov = provenance(adapter, SimpleNamespace(name="base"), notes)
    source = elsewhere / "outputs/r/export/messages/train.jsonl"
    assert prov["dataset"] == str(source) and prov["dataset_sha256"] == sha(source)
    assert len(notes) == 2 and all("relative to where train ran" in n and str(elsewhere) in n for n in notes), notes
    assert adapter_info(adapter)["base"] == str(elsewhere / "models/base")


def test_an_old_adapters_data_gone_says_it_is_relative_and_what_was_tried(elsewhere):
    adapter = old_adapter(elsewhere)
    (elsewhere / "outputs/r/export/messages/train.jsonl").unlink()
    (elsewhere / "outputs/r/export/export.json").unlink()
    (elsewhere / "outputs/r/export/messages").rmdir()
    (elsewhere / "outputs/r/export").rmdir()
    with pytest.raises(Seed2LoraError) as e:
        default_eval_data(adapter)
    text = str(e.value)
    assert "names its data relative to where train ran (outputs/r/export" in text, text
    assert f"it is not there from {elsewhere}, where train ran" in text and "Fix: pass --data FILE.jsonl" in text
    notes = []
    prov = provenance(adapter, SimpleNamespace(name="base"), notes)
    assert prov["dataset_sha256"] == "" and prov["dataset"] == ""  # the other project's file is not hashed
    assert notes and all("not there" in n for n in notes), notes


def test_an_adapter_that_cannot_say_where_train_ran_says_it_read_the_current_directory(elsewhere, tmp_path):
    """output_dir whole (--out /abs/path), data relative: the current directory is all there is, and it is said."""
    moved = old_adapter(elsewhere, "adapters/b", output_dir=str(tmp_path / "gone/adapter"))
    data, why = default_eval_data(moved)
    assert data == "heldout:" + str(Path.cwd() / "outputs/r/export")
    assert "from the current directory" in why and "does not say where train ran" in why, why
    assert find_run_dir(moved) is None  # a run guessed from here could be another one: not its budget nor cache


def test_a_whole_path_that_is_gone_is_said_so(elsewhere, tmp_path):
    adapter = old_adapter(elsewhere)
    summary = json.loads((adapter / "training_summary.json").read_text())
    summary["data"] = str(tmp_path / "deleted/export")
    (adapter / "training_summary.json").write_text(json.dumps(summary))
    with pytest.raises(Seed2LoraError, match=r"names its data .*deleted/export, which is not there"):
        default_eval_data(adapter)
