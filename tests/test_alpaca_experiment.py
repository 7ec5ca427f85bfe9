"""benchmarks/alpaca_select_experiment.py --quick end to end on real Alpaca rows, and a re-run that resumes."""

import pipeline.train  # noqa: F401, I001 -- first: sets OMP_WAIT_POLICY before torch loads (2 busy cores: ~4x faster)
import json
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # the judge is the embedded model


def test_quick_experiment_runs_every_arm_and_resumes(shared_data, tiny_model, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import alpaca_select_experiment as experiment

    argv = ["--work-dir", str(tmp_path), "--quick", "--rows", "12", "--size", "4", "--student", tiny_model]
    results = experiment.main(argv)
    assert list(results["arms"]) == list(experiment.ARMS) and not results["missing"]
    assert {a["train_rows"] for n, a in results["arms"].items() if n != "all"} == {4}  # same size ...
    assert results["arms"]["all"]["train_rows"] == 12
    assert {a["updates"] for a in results["arms"].values()} == {2}  # ... and the same number of updates
    ifd = json.loads((tmp_path / "arm-ifd" / "select.json").read_text())
    assert ifd["by"] == "ifd" and all(k["value"] < 1.0 for k in ifd["kept"])  # Cherry LLM: high IFD below 1
    values = [k["value"] for k in ifd["kept"]]
    assert values == sorted(values, reverse=True)
    judge = json.loads((tmp_path / "arm-judge" / "select.json").read_text())
    assert judge["by"] == "judge" and len(judge["kept"]) == 4
    c = results["compare"]
    assert c["n_loss"] == 8 and c["n_rouge"] == 2
    for name in results["arms"]:  # every arm paired with the base on the same 8 tasks, and with random
        loss = c["vs_base"][name]["reference_loss"]
        assert loss["base_higher"] + loss["adapter_higher"] + loss["equal"] == 8
        assert loss["delta_ci95"][0] <= loss["delta"] <= loss["delta_ci95"][1]
    assert set(c["vs_random"]) == set(results["arms"]) - {"random"}
    table = (tmp_path / "results.md").read_text()
    assert "| ifd | 4 | 2 |" in table and "| base | - | 0 |" in table
    capsys.readouterr()

    again = experiment.main(argv)  # everything is on disk: nothing is scored, trained or evaluated twice
    out = capsys.readouterr().out
    assert " ...\n" not in out.replace("phases (wall / CPU s):", "")
    assert again["compare"] == results["compare"]
