"""InferenceGuardLLM: text completion through the guarded engine."""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from ig_middleware.langchain import InferenceGuardLLM, SafetyCallbackHandler
from ig_middleware.langchain.testing import ScriptedEngine, ScriptedFallback


class Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens = []

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


def test_llm_invoke_stream_tokens_scripted():
    engine = ScriptedEngine(["red, green and blue."], block_chars=5)
    llm = InferenceGuardLLM(engine=engine)
    assert llm.invoke("The primary colours are") == "red, green and blue."
    assert engine.calls[-1][1]["raw"] is True  # completion text, no chat template
    tokens, safety = Tokens(), SafetyCallbackHandler()
    pieces = list(llm.stream("The primary colours are", config={"callbacks": [tokens, safety]}))
    assert "".join(pieces) == "red, green and blue."
    assert "".join(tokens.tokens) == "red, green and blue." and len(tokens.tokens) > 1
    assert safety.last.finished and safety.last.committed
    gen = llm.generate(["a", "b"]).generations
    assert gen[0][0].generation_info["finish_reason"] == "stop"
    assert gen[0][0].generation_info["usage"]["total_tokens"] > 0


async def test_llm_async_and_fallback_scripted():
    llm = InferenceGuardLLM(engine=ScriptedEngine([ScriptedFallback()]))
    safety = SafetyCallbackHandler()
    out = await llm.ainvoke("x", config={"callbacks": [safety]})
    assert "can't help" in out and safety.last.used_fallback
    pieces = [p async for p in llm.astream("x")]
    assert "can't help" in "".join(pieces)
    streaming = InferenceGuardLLM(engine=ScriptedEngine(["abc def ghi"], block_chars=3), streaming=True)
    tokens = Tokens()
    assert await streaming.ainvoke("x", config={"callbacks": [tokens]}) == "abc def ghi"
    assert len(tokens.tokens) > 1


@pytest.mark.real_model
def test_llm_real(tiny_guard_config, guard_cost_model):
    llm = InferenceGuardLLM(guard_config=tiny_guard_config, cost_model=guard_cost_model, max_tokens=12)
    tokens = Tokens()
    text = llm.invoke("The capital of France is", config={"callbacks": [tokens]})
    assert isinstance(text, str) and text.strip()
    streamed = "".join(llm.stream("Once upon a time", config={"callbacks": [tokens]}))
    assert streamed.strip() and "".join(tokens.tokens) == streamed
