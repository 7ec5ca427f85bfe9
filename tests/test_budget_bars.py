"""A run stopped by its budget: the bars of the steps it left short end "stopped", not "done" (seen on a llama.cpp
teacher with --max-cost: "instances: 0/15 (0%), done in 27s" above "stopped: budget reached in classify")."""

import re

from helpers import invoke, teacher_flags


def test_the_bars_of_steps_a_spent_budget_left_short_say_stopped_not_done(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("SEED2LORA_PROGRESS_EVERY_S", "300")  # only the start and end lines
    result = invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                    "--max-tokens-total", 150, "--set", "teacher.concurrency=1", expect=3)
    ends = {m.group(1): m.group(2) for m in re.finditer(r"^(\w+): .*, (done|stopped|ended) in ", result.output, re.M)}
    assert "budget reached" in result.output
    assert ends["instances"] == "stopped", result.output  # none of its 8 tasks written
    assert ends["bootstrap"] == "done"  # its target was reached before the budget ran out


class LackingBar:
    """A progress reporter without stop_short, as a test's own fake once was."""

    def __init__(self, desc, ends):
        self.desc, self.ends, self.done = desc, ends, 0

    def __call__(self, n=1):
        self.done += n

    def note(self, text):
        pass

    def fail(self, n=1):
        pass

    def set_total(self, total):
        pass


class RecordingBar(LackingBar):
    """The whole interface the loop uses, recording which steps it ended short."""

    def stop_short(self):
        self.ends[self.desc.split()[0]] = "stopped"


def test_the_loop_calls_each_short_steps_stop_short_plainly(fake_openai, tmp_path):
    """runner.stop_short called `getattr(advance, "stop_short", lambda: None)()`: a reporter without the method
    ended a step the budget left short as "done", silently. Now the method is called plainly: one that lacks it fails
    loudly, and a full one (as here) hears of each short step."""
    from contextlib import contextmanager

    import pytest

    from pipeline.budget import BudgetReached
    from pipeline.config import load_config
    from pipeline.runner import Session

    def factory(bar_class):
        ends = {}

        @contextmanager
        def progress(desc, total, *, done=0):
            yield bar_class(desc, ends)
        return progress, ends

    settings = {"output_dir": str(tmp_path), "teacher.spec": "openai:fake-model", "teacher.base_url": fake_openai.url,
                "bootstrap.num_instructions": 8, "budget.max_tokens_total": 150, "teacher.concurrency": 1}
    progress, ends = factory(RecordingBar)
    with pytest.raises(BudgetReached):
        Session(load_config(None, {**settings, "run_name": "full"}), progress=progress).run_all()
    assert ends.get("instances") == "stopped", ends
    progress, ends = factory(LackingBar)
    with pytest.raises(AttributeError):
        Session(load_config(None, {**settings, "run_name": "lacking"}), progress=progress).run_all()
