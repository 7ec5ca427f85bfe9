"""Option spellings and help of export and report: --out for what a command writes (old spellings hidden; --output-dir
is the folder of runs), defaults read from the config."""

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import ExportConfig


def _help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_export_and_report_write_to_out_and_keep_the_old_spellings_hidden(tmp_path):
    for command, spellings in (("export", ("--out",)), ("report", ("--out", "--output"))):
        for spelling in spellings:
            ctx = cli.commands[command].make_context(command, [str(tmp_path), spelling, "x"])
            assert ctx.params["out_dir"] == "x", (command, spelling)
        text = _help(command)
        assert "--out DIR" in text and "--output " not in text and "--output-dir" not in text, command


def test_export_help_reads_its_defaults_from_export_config():
    d, text = ExportConfig(), _help("export")
    for want in (f"held out for eval (default {d.eval_fraction})", f"train/eval split (default {d.seed})",
                 f"(default {d.formats})", f"per task (default {d.rows})", "--seed-tasks / --no-seed-tasks"):
        assert want in text, want
    assert "--no-seeds" not in text


def test_eval_judge_flag_sets_the_judge_spec(tmp_path):
    """--judge SPEC is [eval.judge] spec; the rest of the judge's table comes from --set eval.judge.KEY or the config."""
    text = _help("eval")
    assert "--judge SPEC" in text and "--set eval.judge.base_url=URL" in text


def test_set_values_survive_flags_that_were_not_given():
    """`train DATA --set max_steps=1`: the command's flags default to None, which must not undo --set."""
    from pipeline.config import TrainConfig, flag_overrides, load_section

    flags = {"max_steps": None, "epochs": None, "resume": None, "lora_r": 8}
    cfg = load_section(TrainConfig, None, "train",
                       flag_overrides(flags, ["max_steps=1", "train.epochs=0.5", "resume=false"], TrainConfig, "train"))
    assert (cfg.max_steps, cfg.epochs, cfg.resume, cfg.lora_r) == (1, 0.5, False, 8)
    # Both given: --set wins, as it does for `seed2lora run` (the file, then the flags, then --set).
    assert flag_overrides({"lora_r": 8}, ["lora_r=16"], TrainConfig, "train") == {"lora_r": 16}
