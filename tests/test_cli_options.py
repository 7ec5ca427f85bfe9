"""Option spellings and help of export and report: --output-dir everywhere (old spellings hidden), defaults read
from the config."""

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import ExportConfig


def _help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_export_and_report_write_to_output_dir_and_keep_the_old_spellings_hidden(tmp_path):
    for command, old in (("export", "--out"), ("report", "--output")):
        for spelling in ("--output-dir", old):
            ctx = cli.commands[command].make_context(command, [str(tmp_path), spelling, "x"])
            assert ctx.params["out_dir"] == "x", (command, spelling)
        text = _help(command)
        assert "--output-dir DIRECTORY" in text and f"{old} " not in text, command


def test_export_help_reads_its_defaults_from_export_config():
    d, text = ExportConfig(), _help("export")
    for want in (f"held out for eval (default {d.eval_fraction})", f"train/eval split (default {d.seed})",
                 f"(default {d.formats})", f"per task (default {d.rows})", "--seed-tasks / --no-seed-tasks"):
        assert want in text, want
    assert "--no-seeds" not in text


def test_eval_judge_flag_sets_the_judge_spec(tmp_path):
    """--judge SPEC is [eval.judge] spec; the rest of the judge's table comes from --set judge.KEY or the config."""
    text = _help("eval")
    assert "--judge SPEC" in text and "--set judge.base_url=URL" in text
