"""Shared fixtures. The real default model is loaded at most once per session (the loader caches it)."""

from __future__ import annotations

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
