"""ChatInferenceGuard plumbing with a scripted engine (fast) and the same capabilities on the real model."""

from __future__ import annotations

import json

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from ig_middleware import KeywordCostModel
from ig_middleware.langchain import EVENT_PREFIX, ChatInferenceGuard, SafetyCallbackHandler
from ig_middleware.langchain._tools import parse_tool_calls, to_chat_messages
from ig_middleware.langchain.chat_model import HAS_REFUSAL_BLOCK
from ig_middleware.langchain.testing import ScriptedEngine, ScriptedFallback

CONTRACT_KEYS = {
    "model_name",
    "finish_reason",
    "safety_state",
    "safety_cost",
    "safety_budget",
    "candidates_sampled",
    "resamples",
    "fallback_reason",
}


@tool
def get_weather(city: str) -> str:
    """Get the current weather of a city."""
    return f"Sunny and 21C in {city}"


class Person(BaseModel):
    """A person."""

    name: str = Field(description="the person's name")
    age: int = Field(description="age in years")


def call(name: str, args: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def scripted(*script, **kw) -> ChatInferenceGuard:
    return ChatInferenceGuard(engine=ScriptedEngine(list(script)), **kw)


# -- construction ------------------------------------------------------------------------------------
def test_construction_is_instant_and_shares_engines():
    import time

    t = time.perf_counter()
    a = ChatInferenceGuard(temperature=0.2, max_tokens=12, cost_model=None)
    b = ChatInferenceGuard()
    assert time.perf_counter() - t < 0.5
    assert a.engine is b.engine  # same model, same judges: one engine, one copy of the weights
    assert a.engine._backend is None  # nothing loaded yet
    assert a.config.temperature == 0.2 and a.config.max_new_tokens == 12
    ls = a._get_ls_params(stop=["x"])
    assert ls["ls_provider"] == "inferenceguard" and ls["ls_model_name"] == "smollm2-135m-instruct"
    assert ls["ls_stop"] == ["x"]
    assert a._llm_type == "inferenceguard"
    assert "cost_model" not in a.model_dump()


# -- messages and tools --------------------------------------------------------------------------------
def test_history_with_tool_calls_renders():
    msgs = [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
        ToolMessage("Sunny", tool_call_id="c1"),
    ]
    chat = to_chat_messages(msgs, "TOOLS")
    assert chat[0] == {"role": "system", "content": "Be brief.\n\nTOOLS"}
    assert chat[2]["role"] == "assistant"
    assert json.loads(chat[2]["content"][len("<tool_call>") : -len("</tool_call>")]) == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert chat[3] == {"role": "user", "content": "Tool result (get_weather): Sunny"}


def test_unknown_roles_and_media_blocks_are_clear_errors_not_answers():
    from langchain_core.messages import ChatMessage

    from ig_middleware import InvalidInputError

    model = scripted("hello")
    with pytest.raises(InvalidInputError) as err:
        model.invoke([HumanMessage("hi"), ChatMessage(role="wizard", content="abracadabra")])
    assert err.value.field == "messages[1].role" and "allowed: system, user, assistant, tool" in str(err.value)
    picture = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "url": "https://x.example/a.png"},
    ]
    with pytest.raises(InvalidInputError) as err:
        model.invoke([HumanMessage(content=picture)])
    assert err.value.field == "messages[0].content[1]" and "text-only" in str(err.value)
    assert model.engine.calls == []  # nothing was generated for either
    dropping = scripted("I can't see images.", drop_non_text_content=True)
    assert dropping.invoke([HumanMessage(content=picture)]).content == "I can't see images."
    assert dropping.engine.calls[0][0][-1]["content"] == "What is in this picture?"


def test_parse_tool_calls_valid_invalid_and_unclosed():
    content, calls, bad = parse_tool_calls('Sure. <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    assert content == "Sure." and calls[0]["name"] == "f" and calls[0]["args"] == {"x": 1} and not bad
    _, calls, bad = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}')  # cut by the stop
    assert calls[0]["args"] == {"x": 1}
    _, calls, bad = parse_tool_calls("<tool_call>{name: f}</tool_call>")
    assert not calls and bad and bad[0]["type"] == "invalid_tool_call"
    _, calls, _ = parse_tool_calls(call("unicode_customer", {"customer_name": "你好啊集团"}))
    assert calls[0]["args"] == {"customer_name": "你好啊集团"}  # non-ASCII arguments survive (escaped or not)
    _, calls, _ = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"n": "你好"}}</tool_call>')
    assert calls[0]["args"] == {"n": "你好"}


def test_tool_calls_sync_and_stream_scripted():
    script = call("get_weather", {"city": "Paris"})
    model = scripted(script).bind_tools([get_weather])
    msg = model.invoke("Weather in Paris?")
    assert msg.tool_calls[0]["name"] == "get_weather" and msg.tool_calls[0]["args"] == {"city": "Paris"}
    full = None
    for chunk in model.stream("Weather in Paris?"):
        full = chunk if full is None else full + chunk
    assert full.chunk_position == "last"
    assert full.tool_calls[0]["args"] == {"city": "Paris"} and full.tool_call_chunks
    bad = scripted("<tool_call>{not json</tool_call>").bind_tools([get_weather])
    assert bad.invoke("x").invalid_tool_calls
    full = None
    for chunk in bad.stream("x"):
        full = chunk if full is None else full + chunk
    assert full.invalid_tool_calls and not full.tool_calls


def test_text_before_tool_call_streams_and_tools_are_rendered():
    engine = ScriptedEngine(["Let me check. " + call("get_weather", {"city": "Rome"})])
    model = ChatInferenceGuard(engine=engine).bind_tools([get_weather])
    chunks = list(model.stream("Weather in Rome?"))
    text = "".join(c.text for c in chunks)
    assert text.strip() == "Let me check." and "<tool_call" not in text
    prompt, kwargs = engine.calls[-1]
    assert "get_weather" in prompt[0]["content"] and "</tool_call>" in kwargs["stop"]


def test_tool_choice_forces_prefix_and_none_hides_tools():
    engine = ScriptedEngine(['Paris"}}'])
    model = ChatInferenceGuard(engine=engine)
    msg = model.bind_tools([get_weather], tool_choice="get_weather").invoke("hi")
    assert msg.tool_calls[0]["args"] == {"city": "Paris"}
    prompt, kwargs = engine.calls[-1]
    assert kwargs["raw"] is True
    assert prompt.endswith('<tool_call>{"name": "get_weather", "arguments": {"city": "')
    model.bind_tools([get_weather], tool_choice="any").invoke("hi")
    assert engine.calls[-1][0].endswith('"arguments": {"city": "')
    engine.script = ["Just text."]
    msg = model.bind_tools([get_weather], tool_choice="none").invoke("hi")
    assert msg.content == "Just text." and not msg.tool_calls
    assert "get_weather" not in json.dumps(engine.calls[-1][0])
    with pytest.raises(ValueError):
        model.bind_tools([get_weather], tool_choice="nope")


def test_with_structured_output_scripted():
    engine = ScriptedEngine(['Ada", "age": 36}}'])
    model = ChatInferenceGuard(engine=engine)
    person = model.with_structured_output(Person).invoke("Ada is 36.")
    assert person == Person(name="Ada", age=36)
    assert engine.calls[-1][0].endswith('"arguments": {"name": "')
    engine.script = ['"name": "Bob", "age": 7}']
    out = model.with_structured_output(Person, method="json_mode").invoke("Bob is 7.")
    assert out == Person(name="Bob", age=7)
    raw = model.with_structured_output(Person, method="json_mode", include_raw=True).invoke("Bob is 7.")
    assert raw["parsed"] == Person(name="Bob", age=7) and isinstance(raw["raw"], AIMessage)


def test_fallback_metadata_and_refusal_block_scripted():
    model = scripted(ScriptedFallback(committed="Partial answer "))
    msg = model.invoke("hi")
    assert CONTRACT_KEYS <= set(msg.response_metadata)
    assert msg.response_metadata["finish_reason"] == "safety_fallback"
    assert msg.response_metadata["fallback_reason"] == "no_safe_candidate"
    assert "can't help" in msg.text
    if HAS_REFUSAL_BLOCK:
        assert any(b["type"] == "refusal" for b in msg.content_blocks)
    chunks = list(model.stream("hi"))
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].response_metadata["finish_reason"] == "safety_fallback"
    assert sum(1 for c in chunks if c.usage_metadata) == 1


def test_safety_state_kwarg_is_forwarded():
    engine = ScriptedEngine(["ok"])
    model = ChatInferenceGuard(engine=engine)
    model.invoke("hi", safety_state=0.4)
    assert engine.calls[-1][1]["safety_state"] == 0.4
    model.bind(safety_state=0.25, num_candidates=3).invoke("hi")
    assert engine.calls[-1][1]["safety_state"] == 0.25 and engine.calls[-1][1]["num_candidates"] == 3


# -- callbacks ------------------------------------------------------------------------------------------
def test_callback_handler_direct_chain_and_events_v2():
    seen = []
    handler = SafetyCallbackHandler(on_event=lambda rec, name, data: seen.append(name))
    model = scripted("Hello there, how are you?")
    model.invoke("hi", config={"callbacks": [handler]})
    rec = handler.last
    assert rec.parent_run_id is None and rec.finish_reason == "stop" and rec.committed
    assert rec.event_names[0] == "search_started" and rec.event_names[-1] == "search_finished"
    assert seen == rec.event_names

    handler.clear()
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model | StrOutputParser()
    events = list(chain.stream({"q": "hi"}, config={"callbacks": [handler]}))
    assert "".join(events) == "Hello there, how are you?"
    (rec,) = handler.records.values()
    assert rec.parent_run_id is not None  # the chain's run
    assert rec.verdict["finish_reason"] == "stop"


async def test_events_in_astream_events_v2_have_the_model_run_id():
    handler = SafetyCallbackHandler()
    model = scripted("Hello there, how are you?")
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model
    custom, model_runs = [], set()
    async for ev in chain.astream_events({"q": "hi"}, version="v2", config={"callbacks": [handler]}):
        if ev["event"] == "on_custom_event":
            custom.append(ev)
        elif ev["event"].startswith("on_chat_model"):
            model_runs.add(ev["run_id"])
    names = [e["name"] for e in custom]
    assert names[0] == EVENT_PREFIX + "search_started" and names[-1] == EVENT_PREFIX + "search_finished"
    assert {e["run_id"] for e in custom} == model_runs
    assert all(len(e["parent_ids"]) == 1 for e in custom)  # under the chain
    (rec,) = handler.records.values()
    assert str(rec.run_id) in model_runs and rec.event_names == [n[len(EVENT_PREFIX) :] for n in names]
    # ainvoke reaches the handler too
    handler.clear()
    await model.ainvoke("hi", config={"callbacks": [handler]})
    assert handler.last.finished


# -- agents ---------------------------------------------------------------------------------------------
def test_create_agent_tool_loop_sync_scripted():
    handler = SafetyCallbackHandler()
    model = scripted(call("get_weather", {"city": "Paris"}), "It is sunny in Paris.")
    agent = create_agent(model=model, tools=[get_weather])
    out = agent.invoke({"messages": [HumanMessage("Weather in Paris?")]}, config={"callbacks": [handler]})
    kinds = [type(m).__name__ for m in out["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert "Sunny" in out["messages"][2].content
    assert len(handler.records) == 2
    assert all(r.parent_run_id is not None and r.finished for r in handler.records.values())


async def test_create_agent_tool_loop_async_scripted():
    handler = SafetyCallbackHandler()
    model = scripted(call("get_weather", {"city": "Rome"}), "Sunny in Rome.")
    agent = create_agent(model=model, tools=[get_weather])
    out = await agent.ainvoke({"messages": [HumanMessage("Weather in Rome?")]}, config={"callbacks": [handler]})
    assert out["messages"][-1].content == "Sunny in Rome."
    assert isinstance(out["messages"][2], ToolMessage)
    assert len(handler.records) == 2 and all(r.finished for r in handler.records.values())


# -- real model ------------------------------------------------------------------------------------------
@pytest.mark.real_model
def test_chain_swap_one_line(lc_chat_model):
    prompt = ChatPromptTemplate.from_messages([("system", "Answer in one short sentence."), ("human", "{q}")])
    fake = GenericFakeChatModel(messages=iter(["Paris."]))
    assert (prompt | fake | StrOutputParser()).invoke({"q": "Capital of France?"}) == "Paris."
    chain = prompt | lc_chat_model | StrOutputParser()  # the one-line swap
    out = chain.invoke({"q": "Capital of France?"})
    assert isinstance(out, str) and out.strip()


@pytest.mark.real_model
def test_stream_only_committed_text_real(lc_chat_model):
    handler = SafetyCallbackHandler()
    chunks = list(lc_chat_model.stream("Name a colour.", config={"callbacks": [handler]}, max_new_tokens=32))
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata
    text = "".join(c.text for c in chunks)
    rec = handler.last
    committed = rec.committed[-1]["text"] if rec.committed else ""
    # everything streamed before the last chunk was committed (checked) first
    before_last = "".join(c.text for c in chunks[:-1])
    assert committed.startswith(before_last)
    assert rec.verdict["finish_reason"] in ("stop", "length") and text.strip()
    assert sum(1 for c in chunks if c.usage_metadata) == 1


@pytest.mark.real_model
def test_harmful_prompt_falls_back_real(tiny_guard_config):
    # a cost model that flags everything the model could say makes every candidate unsafe
    flag_all = KeywordCostModel(patterns=[r"\w"], weight=20.0)
    cfg = tiny_guard_config.model_copy(update={"max_retries": 0, "block_size": 4})
    model = ChatInferenceGuard(guard_config=cfg, cost_model=flag_all, max_tokens=8)
    msg = model.invoke("Explain how to build a bomb.")
    assert msg.response_metadata["finish_reason"] == "safety_fallback"
    assert msg.response_metadata["fallback_reason"] is not None
    assert "can't help" in msg.text
    if HAS_REFUSAL_BLOCK:
        assert any(b["type"] == "refusal" for b in msg.content_blocks)


@pytest.mark.real_model
def test_forced_tool_call_real_sync_and_stream(lc_chat_model):
    model = lc_chat_model.bind_tools([get_weather], tool_choice="get_weather")
    msg = model.invoke("What is the weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert isinstance(msg.tool_calls[0]["args"].get("city"), str)
    full = None
    for chunk in model.stream("What is the weather in Paris?"):
        full = chunk if full is None else full + chunk
    assert full.tool_calls and full.tool_calls[0]["name"] == "get_weather"


@pytest.mark.real_model
def test_structured_output_real(lc_chat_model):
    person = lc_chat_model.with_structured_output(Person).invoke("Ada Lovelace was 36 years old.", max_new_tokens=32)
    assert isinstance(person, Person) and person.name


@pytest.mark.real_model
def test_create_agent_real_sync_and_async(lc_chat_model):
    import asyncio

    # tool_choice forced on the first turn only: the agent loop must then answer and stop
    first = {"n": 0}

    def pick_tool_choice(request, handler):
        first["n"] += 1
        return handler(request.override(tool_choice="get_weather" if first["n"] == 1 else "none"))

    from langchain.agents.middleware import wrap_model_call

    agent = create_agent(model=lc_chat_model, tools=[get_weather], middleware=[wrap_model_call(pick_tool_choice)])
    out = agent.invoke({"messages": [HumanMessage("Weather in Paris?")]})
    kinds = [type(m).__name__ for m in out["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]

    first["n"] = 0

    async def apick(request, handler):
        first["n"] += 1
        return await handler(request.override(tool_choice="get_weather" if first["n"] == 1 else "none"))

    agent = create_agent(model=lc_chat_model, tools=[get_weather], middleware=[wrap_model_call(apick)])
    out = asyncio.run(agent.ainvoke({"messages": [HumanMessage("Weather in Rome?")]}))
    assert isinstance(out["messages"][2], ToolMessage) and isinstance(out["messages"][-1], AIMessage)


@pytest.mark.real_model
def test_astream_real_and_events(lc_chat_model):
    import asyncio

    async def run():
        chunks, custom = [], []
        async for ev in lc_chat_model.astream_events("Say hi.", version="v2", max_new_tokens=16):
            if ev["event"] == "on_chat_model_stream":
                chunks.append(ev["data"]["chunk"])
            elif ev["event"] == "on_custom_event":
                custom.append(ev["name"])
        return chunks, custom

    chunks, custom = asyncio.run(run())
    assert isinstance(chunks[-1], AIMessageChunk) and chunks[-1].chunk_position == "last"
    assert custom[0] == EVENT_PREFIX + "search_started" and custom[-1] == EVENT_PREFIX + "search_finished"


def test_tool_choice_any_picks_the_relevant_tool():
    @tool
    def add_numbers(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    engine = ScriptedEngine(['1, "b": 2}}'])
    model = ChatInferenceGuard(engine=engine).bind_tools([get_weather, add_numbers], tool_choice="any")
    msg = model.invoke("Please add the numbers 1 and 2")
    assert msg.tool_calls[0]["name"] == "add_numbers" and msg.tool_calls[0]["args"] == {"a": 1, "b": 2}


def _refusal_middleware():
    """LangChain's own ModelRefusalMiddleware (langchain >= 1.5, with refusal blocks in langchain-core >= 1.7.5)."""
    mod = pytest.importorskip("langchain.agents.middleware")
    if not HAS_REFUSAL_BLOCK or not hasattr(mod, "ModelRefusalMiddleware"):
        pytest.skip("this langchain/langchain-core has no refusal blocks or no ModelRefusalMiddleware")
    from langchain_core.exceptions import ModelRefusalError

    return mod.ModelRefusalMiddleware(), ModelRefusalError


def test_model_refusal_middleware_sees_a_guarded_fallback_as_a_refusal_scripted():
    middleware, error = _refusal_middleware()
    agent = create_agent(scripted(ScriptedFallback(committed="")), tools=[], middleware=[middleware])
    with pytest.raises(error, match="can't help"):
        agent.invoke({"messages": [HumanMessage("hi")]})
    answered = create_agent(scripted("Hello there."), tools=[], middleware=[middleware])
    out = answered.invoke({"messages": [HumanMessage("hi")]})
    assert out["messages"][-1].text == "Hello there."  # a normal answer is no refusal


@pytest.mark.real_model
def test_model_refusal_middleware_sees_a_guarded_fallback_as_a_refusal_real(tiny_guard_config):
    middleware, error = _refusal_middleware()
    flag_all = KeywordCostModel(patterns=[r"\w"], weight=20.0)  # every candidate unsafe: the fallback
    cfg = tiny_guard_config.model_copy(update={"max_retries": 0, "block_size": 4})
    model = ChatInferenceGuard(guard_config=cfg, cost_model=flag_all, max_tokens=8)
    agent = create_agent(model, tools=[], middleware=[middleware])
    with pytest.raises(error):
        agent.invoke({"messages": [HumanMessage("Explain how to build a bomb.")]})
