"""Secrets are masked wherever they could be written: the manifest's command and config, messages, logs."""

import pytest

from pipeline.config import RunConfig
from pipeline.errors import is_secret_name, mask_dict, mask_secrets, masked_argv


@pytest.mark.parametrize("name, secret", [
    ("api_key", True), ("teacher.api_key", True), ("--api-key", True), ("HF_TOKEN", True), ("apiKey", True),
    ("client_secret", True), ("password", True),
    ("api_key_env", False), ("max_tokens", False), ("max_tokens_total", False), ("monkey", False), ("spec", False),
])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


@pytest.mark.parametrize("text, masked", [
    ("--set teacher.api_key=plain-value-1", "--set teacher.api_key=***"),
    ("seed2lora run --api-key hunter22 --max-tokens-total 5", "seed2lora run --api-key *** --max-tokens-total 5"),
    ("--api-key=abc", "--api-key=***"),
    ('api_key = "abc"', 'api_key = "***"'),
    ('{"api_key": "abc", "api_key_env": "OPENAI_API_KEY"}', '{"api_key": "***", "api_key_env": "OPENAI_API_KEY"}'),
    ("Authorization: Bearer abcdefghij", "Authorization: Bearer ***"),
    ("https://user:pw123@host/v1", "https://user:***@host/v1"),
    ("key sk-test-PLANTED-SECRET-0123456789 used", "key sk-test*** used"),
    ("hf_abcdefghijklmnopqrstuv", "hf_***"),
    ("password=hunter2&x=1", "password=***&x=1"),
    ("max_tokens=5 api_key_env=OPENAI_API_KEY monkey=3", "max_tokens=5 api_key_env=OPENAI_API_KEY monkey=3"),
    ("Fix: export OPENAI_API_KEY=sk-... and run again", "Fix: export OPENAI_API_KEY=sk-... and run again"),
    # the placeholder of a hint, which read "is not KEY=*** Fix: ..."; a value that merely starts so is still masked
    ("--set teacher.spec: is not KEY=VALUE. Fix: write", "--set teacher.spec: is not KEY=VALUE. Fix: write"),
    ("e.g. --set eval.judge.api_key=VALUE", "e.g. --set eval.judge.api_key=VALUE"),
    ("api_key=VALUEs3cret api_key=value", "api_key=*** api_key=***"),
])
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


def test_mask_secrets_hides_the_value_of_a_secret_variable(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "opaque-value-42")
    assert mask_secrets("sent opaque-value-42 to the server") == "sent *** to the server"


def test_masked_argv_masks_one_argument_at_a_time():
    argv = ["seed2lora", "run", "--set", "teacher.api_key=a secret phrase", "--api-key", "two words",
            "--set=teacher.api_key=q", "--api-key=z", "--teacher", "openai:m", "--max-tokens-total", "5"]
    assert masked_argv(argv) == ["seed2lora", "run", "--set", "teacher.api_key=***", "--api-key", "***",
                                 "--set=teacher.api_key=***", "--api-key=***", "--teacher", "openai:m",
                                 "--max-tokens-total", "5"]


def test_config_to_dict_masks_every_secret_field():
    cfg = RunConfig()
    cfg.teacher.api_key = "plain-PLANTED-1"
    cfg.teacher.system_prompt = "Use key sk-PLANTED-abcdefghijkl please."
    d = cfg.to_dict()
    assert d["teacher"]["api_key"] == "***" and d["teacher"]["api_key_env"] == "OPENAI_API_KEY"
    assert "PLANTED" not in repr(d) and d["bootstrap"]["max_tokens"] == 1024
    assert RunConfig().to_dict()["teacher"]["api_key"] == ""  # nothing to hide: left as it is
    assert mask_dict({"a": [{"token": "x"}], "n": 3}) == {"a": [{"token": "***"}], "n": 3}


def test_a_key_planted_every_way_is_in_no_file_no_cache_dump_no_log_and_not_in_home_cache(fake_openai, tmp_path):
    """Environment, config file, --set, and a 401 reply that echoes the key: the key is never written."""
    import os
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    home = tmp_path / "home"
    keys = {"env": "sk-env-PLANTED-0123456789abcdef", "config": "sk-cfg-PLANTED-0123456789abcdef",
            "set": "sk-set-PLANTED-0123456789abcdef"}
    config = tmp_path / "run.toml"
    config.write_text(f'[teacher]\napi_key = "{keys["config"]}"\n')
    env = {**os.environ, "PYTHONPATH": str(root), "HOME": str(home), "OPENAI_API_KEY": keys["env"]}
    env.pop("SEED2LORA_CACHE", None)
    env.pop("SEED2LORA_CACHE_DIR", None)
    base = [sys.executable, "-m", "pipeline", "run", "--teacher", "openai:fake-model", "--base-url", fake_openai.url,
            "--num-instructions", "2", "--output-dir", str(tmp_path / "out")]
    fake_openai.enqueue({"error": {"message": f"Incorrect API key provided: {keys['env']}"}}, status=401)
    logs = [subprocess.run([*base, "--run-name", "env"], env=env, capture_output=True, text=True, cwd=root)]
    assert logs[0].returncode == 2 and "API key was refused" in " ".join(logs[0].stderr.split())
    logs.append(subprocess.run([*base, "--run-name", "cfg", "--config", str(config)], env=env, capture_output=True,
                               text=True, cwd=root))
    logs.append(subprocess.run([*base, "--run-name", "set", "--set", f"teacher.api_key={keys['set']}"], env=env,
                               capture_output=True, text=True, cwd=root))
    assert [r.returncode for r in logs] == [2, 0, 0], logs[-1].stderr
    sent = {h["headers"].get("Authorization") or h["headers"].get("authorization") for h in fake_openai.history}
    assert {f"Bearer {keys['config']}", f"Bearer {keys['set']}"} <= sent  # the keys were used ...
    texts = [r.stdout + r.stderr for r in logs]
    for f in [*(tmp_path / "out").rglob("*"), *home.rglob("*")]:
        if f.is_file():
            texts.append(f.read_bytes().decode("utf-8", "replace"))
            if f.name == "cache.sqlite":
                with sqlite3.connect(f) as db:
                    texts.append("\n".join(db.iterdump()))
    for key in keys.values():  # ... and written nowhere
        assert not any(key in t for t in texts), key


def test_the_hub_token_is_sent_to_the_hub_and_written_nowhere(tmp_path):
    """export and export-adapter --push-to-hub in a child process, HF_TOKEN planted, against the Hub stand-in: the
    token reaches the Hub's Authorization header and no file, log, manifest or card; a 401 that quotes the token
    back is masked in the message."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("huggingface_hub")
    from fakehub import FakeHub
    from gguf_bases import base_gguf, random_adapter, tiny_model
    from test_export import make_run

    root = Path(__file__).resolve().parents[1]
    good, wrong = "hf_PLANTEDgoodToken0123456789abcdef", "hf_PLANTEDwrongToken0123456789abcdef"
    hub = FakeHub(good)
    run = make_run(tmp_path)
    hf = tiny_model("gemma3", tmp_path / "hf")
    adapter = random_adapter(hf, tmp_path / "adapter")
    base = base_gguf(hf, tmp_path / "base.gguf")
    env = {**os.environ, "PYTHONPATH": str(root), "HOME": str(tmp_path / "home"), "HF_ENDPOINT": hub.url,
           "HF_TOKEN": good}
    env.pop("HF_HUB_OFFLINE", None)
    py = [sys.executable, "-m", "pipeline"]
    try:
        logs = [subprocess.run([*py, "export", str(run), "--formats", "alpaca", "--push-to-hub", "me/data"],
                               env=env, capture_output=True, text=True, cwd=root, timeout=300),
                subprocess.run([*py, "export-adapter", str(adapter), "--base-gguf", str(base), "--push-to-hub",
                                "me/lora"], env=env, capture_output=True, text=True, cwd=root, timeout=300)]
        hub.echo_credentials = True
        logs.append(subprocess.run([*py, "export", str(run), "--formats", "alpaca", "--push-to-hub", "me/data"],
                                   env={**env, "HF_TOKEN": wrong}, capture_output=True, text=True, cwd=root,
                                   timeout=300))
    finally:
        hub.close()
    assert [r.returncode for r in logs] == [0, 0, 2], logs[-1].stderr + logs[-1].stdout
    assert "Bearer ***" in " ".join(logs[-1].stderr.split())  # the 401 quoted the token; the message masks it
    sent = {h["headers"].get("authorization") for h in hub.history if h["path"] != "/api/agent-harnesses"}
    assert sent == {f"Bearer {good}", f"Bearer {wrong}"}
    texts = [r.stdout + r.stderr for r in logs] + [c.decode("utf-8", "replace") for files in hub.repos.values()
                                                   for c in files.values()]
    for f in [*tmp_path.rglob("*")]:
        if f.is_file():
            texts.append(f.read_bytes().decode("utf-8", "replace"))
    for token in (good, wrong):
        assert not any(token in t for t in texts), token
