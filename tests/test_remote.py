"""The network clients' contracts without a server: request shapes, parsing, retries and typed failures
(scripted HTTP answers through httpx's MockTransport). The same clients run against a real vLLM in
tests/test_vllm.py."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import PromptCost

from ig_middleware import GuardConfig, GuardedEngine
from ig_middleware.remote import ChatEndpointJudge, ClassifierEndpointJudge, Endpoint, OpenAICompletionsBackend
from ig_middleware.sampling import BackendError


def test_endpoint_retries_server_errors_then_fails_typed():
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(503, text="overloaded")

    ep = Endpoint("http://x/v1", max_retries=2, backoff_s=0.0, transport=httpx.MockTransport(answer))
    with pytest.raises(BackendError, match="answered 503.*after 3 attempts"):
        ep.post("/completions", {})
    assert calls == ["/v1/completions"] * 3

    calls.clear()
    bad = Endpoint("http://x/v1", max_retries=2, transport=httpx.MockTransport(lambda r: httpx.Response(400, text="n")))
    with pytest.raises(BackendError, match="answered 400"):
        bad.post("/completions", {})
    with pytest.raises(ValueError, match="http"):
        Endpoint("x:8000")


def test_chat_endpoint_judge_reads_first_token_logprobs():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        text = body["messages"][-1]["content"]
        top = [{"token": "unsafe", "logprob": -0.1}, {"token": "safe", "logprob": -2.4}] if "gun" in text else (
            [{"token": " safe", "logprob": -0.05}, {"token": "unsafe", "logprob": -3.0}])  # fmt: skip
        content = [{"token": "\n\n", "logprob": -0.01, "top_logprobs": [{"token": "\n\n", "logprob": -0.01}]},
                   {"token": "x", "logprob": -0.1, "top_logprobs": top}]  # fmt: skip
        return httpx.Response(200, json={"choices": [{"logprobs": {"content": content}}]})

    judge = ChatEndpointJudge("http://judge/v1", "llama-guard", transport=httpx.MockTransport(answer))
    costs = judge.score(["q", "q"], ["use a gun", "bake bread"])
    assert costs[0] > 10 > 1 > costs[1] >= 0  # P(unsafe) renormalised against "safe", past a leading newline
    assert seen[0]["max_tokens"] == 4 and seen[0]["logprobs"] is True and seen[0]["messages"][-1]["role"] == "assistant"
    never = ChatEndpointJudge("http://judge/v1", "m", transport=httpx.MockTransport(
        lambda r: httpx.Response(200, json={"choices": [{"logprobs": {"content": []}}]})))  # fmt: skip
    with pytest.raises(BackendError, match="neither"):
        never.score(["q"], ["a"])


def test_classifier_endpoint_judge():
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/classify"  # beside /v1 on vLLM
        inputs = json.loads(request.content)["input"]
        assert inputs[0].startswith("BEGINNING OF CONVERSATION: USER: q ASSISTANT:")
        data = [{"index": i, "probs": [0.9, 0.1] if "bread" in t else [0.2, 0.8]} for i, t in enumerate(inputs)]
        return httpx.Response(200, json={"data": data[::-1]})  # out of order on purpose

    judge = ClassifierEndpointJudge("http://cls/v1", "beaver", transport=httpx.MockTransport(answer))
    assert judge.score(["q", "q"], ["bake bread", "hurt"]) == pytest.approx([2.0, 16.0])


def test_remote_backend_failures_fail_closed(tiny_model_dir):
    def gone(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "tiny", "max_model_len": 512}]})
        raise httpx.ConnectError("connection refused")

    backend = OpenAICompletionsBackend("http://vllm/v1", "tiny", tokenizer=tiny_model_dir, max_retries=1,
                                       backoff_s=0.0, transport=httpx.MockTransport(gone))  # fmt: skip
    engine = GuardedEngine("tiny", backend=backend, cost_model=PromptCost(), config=GuardConfig(max_new_tokens=8))
    assert engine.lm.model is None and engine.lm.context_length == 512  # the served limit, not the config's
    r = engine.generate("hi")
    assert r.used_fallback and r.fallback_reason == "backend_error" and "cannot reach" in r.fallback_detail
    assert r.backend == "openai-completions" and not r.critic_used

    def no_ids(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": []})
        choice = {
            "index": 0,
            "text": "x",
            "finish_reason": "length",
            "logprobs": {"tokens": ["x"], "token_logprobs": [-1]},
        }
        return httpx.Response(200, json={"choices": [choice]})

    backend = OpenAICompletionsBackend("http://vllm/v1", "tiny", tokenizer=tiny_model_dir,
                                       transport=httpx.MockTransport(no_ids))  # fmt: skip
    r = GuardedEngine("tiny", backend=backend, cost_model=PromptCost(), config=GuardConfig(num_candidates=1,
                      num_beams=1, max_new_tokens=8)).generate("hi")  # fmt: skip
    assert r.fallback_reason == "backend_error" and "return_tokens_as_token_ids" in r.fallback_detail
