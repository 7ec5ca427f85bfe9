"""The run's fine-tuning steps: ifd, train and eval, each `step(ctx, records) -> StepResult` (pipeline/context.py).

They read the run through the context: the export, adapter and eval folders are the run
directory's (store.RunDir), and the eval judge is built as the run's teacher is.
"""

from __future__ import annotations

import dataclasses
import json

from ..context import Records, RunContext, StepResult
from ..errors import Refused
from ..rows import export_out_of_date, generated_rows
from ..store import EXPORT_INFO


def ifd_step(ctx: RunContext, records: Records | None) -> StepResult:
    """Instruction-following difficulty of each kept row with the student; write ifd.jsonl."""
    from .ifd import ifd_run

    info = ifd_run(ctx.run.path, ctx.cfg.export.include, ctx.cfg.train, ctx.cfg.ifd, log=ctx.log,
                   progress=ctx.progress)
    return StepResult(f"ifd: {info['scored']} rows scored with the student ({info['done']} of {info['rows']} "
                      "in ifd.jsonl)", 0, {"generated": info["rows"], "kept": info["done"]})


def ifd_left(ctx: RunContext) -> int:
    """The kept rows not yet in ifd.jsonl: what a stopped ifd step has pending (Step.left)."""
    done = {t.id for t in ctx.run.read_stage("ifd")}
    return sum(r["id"] not in done for r in generated_rows(ctx.run, ctx.cfg.export.include))


def train_step(ctx: RunContext, records: Records | None) -> StepResult:
    """Train on the export (or the run's rows); a finished adapter with the same settings and data is kept."""
    from .data import load_rows, rows_fingerprint
    from .summary import SUMMARY
    from .trainer import RESUMABLE, setting_changes
    from .trainer import train as run_training

    adapter = ctx.run.adapter_dir(ctx.cfg.train.output_dir)
    cfg = dataclasses.replace(ctx.cfg.train, output_dir=str(adapter))
    data = ctx.run.export_dir if (ctx.run.export_dir / EXPORT_INFO).is_file() else ctx.run.path
    if data == ctx.run.export_dir and (why := export_out_of_date(ctx.run)):  # it trained on the old rows, saying nothing
        raise Refused(f"{data} was written before {why}: training on it would leave the new records out. Fix: "
                      f"export again first (`seed2lora export {ctx.run.path}`, or \"export\" before \"train\" in "
                      "stages), or train that export as it is with `seed2lora train` on its folder")
    summary_file = adapter / SUMMARY
    rows = None  # read here for the fingerprint, they are trained on as read: not read again
    if summary_file.is_file():
        done = json.loads(summary_file.read_text(encoding="utf-8"))
        rows = load_rows(data, ctx.cfg.export)
        # Adapters from before the data was fingerprinted carry no data_sha256: judged by the settings alone.
        same_data = done.get("data_sha256") in (None, rows_fingerprint(rows))
        # Only settings that change the adapter count: a new activation_memory_gb or save_steps trains nothing again
        changed, ignored = setting_changes(done.get("config") or {}, cfg)
        if not changed and same_data:
            if ignored:
                return StepResult(f"train: {adapter} is already trained with these data and every setting that "
                                  f"changes its weights; ignored, as they change no weight: {', '.join(ignored.values())} "
                                  "(delete it to train again)")
            return StepResult(f"train: {adapter} is already trained with these settings and data "
                              "(delete it to train again)")
        why = [*([] if same_data else ["data"]), *([f"settings: {', '.join(changed.values())}"] if changed else [])]
        ctx.log(f"train: {adapter} was trained with other {' and '.join(why)}; training again")
        if not same_data or not changed.keys() <= RESUMABLE:
            # Its checkpoints hold the old data's or settings' training: start over (only a longer or shorter
            # run, epochs or max_steps, goes on from them). The old summary goes now, so that a re-run after an
            # interruption resumes the new training instead of starting again.
            cfg = dataclasses.replace(cfg, resume=False)
            summary_file.unlink()
    # No export yet: the run's rows as its own [export] settings would write them (include_seeds, include, ...)
    summary = run_training(data, cfg, log=ctx.log, progress=ctx.progress, export=ctx.cfg.export, rows=rows)
    ctx.record(adapter=str(adapter))
    return StepResult(f"train: {summary['steps']} steps, eval loss {summary['eval_losses']['first']} -> "
                      f"{summary['eval_losses']['last']} -> {adapter}")


def eval_check(ctx: RunContext) -> None:
    """`run` through eval with a judge: its template is there before bootstrap and training are paid for."""
    from .eval import judge_prompts

    if ctx.cfg.eval.judge.spec.strip():
        judge_prompts(ctx.prompts)


def eval_step(ctx: RunContext, records: Records | None) -> StepResult:
    """Base versus adapter; a report newer than the adapter, with the same settings, is kept."""
    from .eval import evaluate, report_settings, summary_line

    ctx.uses.add("eval.judge")  # the manifest records this command's [eval.judge]: the judge of its report
    adapter = ctx.run.adapter_dir(ctx.cfg.train.output_dir)
    report_file = ctx.run.eval_dir(ctx.cfg.train.output_dir) / "eval_report.json"
    weights = adapter / "adapter_model.safetensors"
    if report_file.is_file() and weights.is_file() and report_file.stat().st_mtime > weights.stat().st_mtime:
        old = json.loads(report_file.read_text(encoding="utf-8"))
        asked = old.get("data_asked", old.get("data"))  # "user-oriented" names the file the report has as data
        if old.get("settings") == report_settings(ctx.cfg.eval) and (not ctx.cfg.eval.data
                                                                     or asked == ctx.cfg.eval.data):
            return StepResult(f"eval: {report_file} is up to date (delete it to evaluate again)")
    report = evaluate(adapter, ctx.cfg.eval, run_dir=ctx.run.path, log=ctx.log, progress=ctx.progress, flags=ctx.flags,
                      python=ctx.python)
    return StepResult(f"eval: {summary_line(report)} -> {report['report_dir']}")
