"""LangChain's standard chat-model test suites against ChatInferenceGuard on the real default model.

Tiny search settings keep the suite affordable on a CPU (N=2, K=1, B=16, at most 24 new tokens, greedy).
Where a 135M model cannot do a task by itself the test is xfailed with the reason, and the same
behaviour is proven with a scripted engine in tests/test_langchain_chat.py.
"""

from __future__ import annotations

import functools

import pytest
from conftest import TINY_CONFIG, default_test_cost_model
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from ig_middleware import GuardConfig
from ig_middleware.langchain import ChatInferenceGuard

_cost_model = functools.cache(default_test_cost_model)  # one instance: all models the suites build share an engine
_SMALL = GuardConfig(**TINY_CONFIG)

pytestmark = pytest.mark.real_model

_TINY_MODEL = "135M-parameter model"


class TestChatInferenceGuardUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatInferenceGuard]:
        return ChatInferenceGuard

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2-135m-instruct", "guard_config": _SMALL, "cost_model": _cost_model()}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {}, {}, {}


class TestChatInferenceGuardIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatInferenceGuard]:
        return ChatInferenceGuard

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2-135m-instruct", "guard_config": _SMALL, "cost_model": _cost_model()}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # -- where the 135M model (or the default judge) cannot do the task; the behaviour is proven with a
    # scripted engine in tests/test_langchain_chat.py --
    @pytest.mark.xfail(
        reason="tool_choice=auto: a 135M model does not decide by itself to call get_weather; the agent loop "
        "with a self-decided call is proven by test_langchain_chat.py::test_create_agent_tool_loop_*_scripted",
        strict=False,
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        reason="json_mode without a tool schema: the 135M model writes JSON with its own keys (e.g. title) "
        "instead of setup/punchline; json_mode parsing is proven by test_with_structured_output_scripted",
        strict=False,
    )
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(
        reason="the default judge's request head reads 'Give me the setup to a joke about cats, no punchline.' as "
        "harmful (P 0.82): every non-refusal costs over budget and the fallback (a refusal) is returned; a known "
        "over-refusal of the shipped judge (docs/cost_model.md). Structured output is proven by "
        "test_with_structured_output_scripted",
        strict=False,
    )
    def test_structured_output_optional_param(self, model) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(
        reason="the default judge reads the forced call's JSON with Chinese characters as partly harmful (content "
        "0.25, and 0.32 with the request) and the tiny search of this suite (N=2, B=16) finds no candidate within "
        "budget, so the fallback is returned; a known false positive of the shipped judge (docs/cost_model.md). "
        "Unicode tool arguments are parsed as such in test_langchain_chat.py::test_parse_tool_calls_valid_invalid_and_unclosed",
        strict=False,
    )
    def test_unicode_tool_call_integration(self, model) -> None:
        super().test_unicode_tool_call_integration(model)
