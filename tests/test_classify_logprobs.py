"""The logit classifier beats greedy decoding on the labelled seed tasks, with the embedded model (slow: ~1-2 min).

Both read the same forward pass per seed (HFTeacher's logprobs reply): the margin
log P(Yes) - log P(No), and the first token greedy decoding picks (with the teacher's
repetition penalty, as its text path generates). The threshold is fitted on one half of
the seeds and scored on the other, both ways round, so no seed is scored by a threshold
it helped to fit. Measured figures go to the test's output (-s) and docs/quality.md.
"""

import json

import pytest

from pipeline.prompts import Prompts
from pipeline.seeds import load_seeds
from pipeline.stages.calibrate import auc, balanced_accuracy, fit_threshold, yes_no_margin
from pipeline.stages.parse import parse_yes_no
from pipeline.teachers import GenParams
from pipeline.teachers.base import read_logprobs

pytestmark = pytest.mark.slow


def test_logit_classifier_beats_greedy_on_the_labelled_seeds(embedded_teacher):
    seeds = [s for s in load_seeds(None) if s.is_classification is not None]
    truth = [bool(s.is_classification) for s in seeds]
    prompts = [Prompts().render("classify.txt", instruction=s.instruction) for s in seeds]
    batch_size, embedded_teacher.batch_size = embedded_teacher.batch_size, 64  # one shared prefix per 64 seeds
    try:
        replies = embedded_teacher.generate(prompts, GenParams(max_tokens=1, logprobs=20), kind="test")
    finally:
        embedded_teacher.batch_size = batch_size
    margins = [yes_no_margin(read_logprobs(r.text)) for r in replies]
    assert None not in margins
    greedy = [bool(parse_yes_no(json.loads(r.text)["greedy"])) for r in replies]  # no Yes/No word: No, as classify does

    halves = [list(range(0, len(seeds), 2)), list(range(1, len(seeds), 2))]
    logit = [False] * len(seeds)
    for fit, held in (halves, halves[::-1]):
        threshold, _ = fit_threshold([margins[i] for i in fit], [truth[i] for i in fit])
        for i in held:
            logit[i] = margins[i] > threshold
    acc = lambda pred: sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth)  # noqa: E731
    figures = {"seeds": len(seeds), "classification": sum(truth), "auc": round(auc(margins, truth), 3),
               "greedy": {"balanced_accuracy": round(balanced_accuracy(greedy, truth), 3), "accuracy": round(acc(greedy), 3),
                          "yes": sum(greedy)},
               "logit": {"balanced_accuracy": round(balanced_accuracy(logit, truth), 3), "accuracy": round(acc(logit), 3),
                         "yes": sum(logit)}}
    print(json.dumps(figures))
    assert figures["logit"]["balanced_accuracy"] > figures["greedy"]["balanced_accuracy"], figures
    assert figures["logit"]["accuracy"] >= figures["greedy"]["accuracy"], figures


def test_the_embedded_judge_rates_every_row_by_the_log_probability_of_yes(embedded_teacher, tmp_path):
    """score.method auto: an in-process judge is asked Yes or No (it cannot write a 1-5 rating, docs/quality.md)."""
    from pipeline.config import load_config
    from pipeline.records import Instance, Task
    from pipeline.stages.score import run_score
    from pipeline.store import RunDir

    tasks = [Task(id="a", instruction="Translate the word into Spanish.", instances=[Instance("house", "casa")]),
             Task(id="b", instruction="Name three fruits.", instances=[Instance("", "The moon orbits the Earth.")])]
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r"})
    run = RunDir(cfg.run_dir).ensure()
    result = run_score(embedded_teacher, tasks, cfg, run, Prompts())
    scored = {t.id: t.meta["score"] for t in run.read_stage("score")}
    assert result.pending == 0 and set(scored) == {"a-0", "b-0"}
    assert all(1 <= s["rating"] <= 5 and s["method"] == "logprobs" and 0 < s["p_yes"] < 1 for s in scored.values())
