"""Shared fixtures. The real default model is loaded at most once per session (the loader caches it)."""

from __future__ import annotations

import os
import socket

import pytest

from ig_middleware import GuardConfig, KeywordCostModel


def default_test_cost_model():
    """The trained default cost model once its weights ship, else the keyword model (cheap, offline)."""
    try:
        from ig_middleware.cost_model import DEFAULT_WEIGHTS, load_default_cost_model

        if DEFAULT_WEIGHTS.is_file():
            return load_default_cost_model()
    except Exception:  # noqa: BLE001 - the default is still being built
        pass
    return KeywordCostModel()


TINY_CONFIG = dict(num_candidates=2, num_beams=1, block_size=16, max_new_tokens=24, temperature=0.0, seed=0)


@pytest.fixture(scope="session")
def tiny_guard_config() -> GuardConfig:
    """Small search settings for tests on the real model (N=2, K=1, B=16, 24 tokens, greedy)."""
    return GuardConfig(**TINY_CONFIG)


@pytest.fixture(scope="session")
def guard_cost_model():
    return default_test_cost_model()


@pytest.fixture(scope="session")
def lc_chat_model(tiny_guard_config, guard_cost_model):
    """One ChatInferenceGuard over the real default model for the whole session (weights load lazily)."""
    from ig_middleware.langchain import ChatInferenceGuard

    return ChatInferenceGuard(guard_config=tiny_guard_config, cost_model=guard_cost_model)


class PromptCost:
    """Deterministic judge: answers to prompts with "harmful" cost 20 (over the budget of 10), others 0.5."""

    def score(self, prompts, responses):
        return [20.0 if "harmful" in p else 0.5 for p in prompts]


@pytest.fixture(scope="session")
def tiny_lm():
    """A tiny random Llama (2 layers of width 32) with the default tokenizer: plumbing tests in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ig_middleware.models import LoadedModel, _default_model_dir

    try:
        tok = AutoTokenizer.from_pretrained(_default_model_dir())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"default tokenizer unavailable: {exc}")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return LoadedModel(name="tiny-llama", model=LlamaForCausalLM(cfg).eval(), tokenizer=tok, device=torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_lm, tmp_path_factory):
    """The tiny Llama saved as a local checkpoint folder (for code that loads by path)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_lm.model.save_pretrained(path)
    tiny_lm.tokenizer.save_pretrained(path)
    return str(path)


def pytest_collection_modifyitems(config, items):
    """vLLM tests need the extra venv and a server start (about a minute): only with IG_VLLM_TESTS=1."""
    if os.environ.get("IG_VLLM_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="vLLM integration: set IG_VLLM_TESTS=1 (integrations/vllm/vllm.sh install, export)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    """A free localhost TCP port (for the servers the integration tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
