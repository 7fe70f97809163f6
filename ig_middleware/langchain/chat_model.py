"""``ChatInferenceGuard``: a LangChain chat model whose every answer comes from the InferenceGuard search.

Drop-in for any ``BaseChatModel`` (chains, ``create_agent``, ``with_structured_output``): the local model
(default: the embedded SmolLM2-135M-Instruct) decodes block by block and only text whose safety state
stays within budget is returned or streamed; otherwise the answer is the configured safe fallback
(``finish_reason="safety_fallback"``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from ..config import GuardConfig
from ..engine import GuardedEngine
from ..result import GuardResult
from . import _tools
from ._bridge import (
    GuardedModelFields,
    async_observer,
    current_run,
    merge_stop,
    reset_current_run,
    set_current_run,
    split_call_kwargs,
    sync_observer,
    with_run_slot,
)

try:  # standard refusal content block: langchain-core >= 1.7.5
    from langchain_core.messages.content import RefusalContentBlock  # noqa: F401

    HAS_REFUSAL_BLOCK = True
except ImportError:  # pragma: no cover - older langchain-core
    HAS_REFUSAL_BLOCK = False

HAS_CHUNK_POSITION = "chunk_position" in AIMessageChunk.model_fields

JSON_MODE_PROMPT = "Respond with a single JSON object and nothing else."


class _Prepared:
    """Everything one call needs: the prompt for the engine, the config and the tool handling."""

    def __init__(
        self,
        engine: GuardedEngine,
        prompt: str | list[dict[str, str]],
        raw: bool,
        config: GuardConfig,
        overrides: dict[str, Any],
        safety_state: float,
        prefix: str,
        tools_active: bool,
    ) -> None:
        self.engine, self.prompt, self.raw, self.config, self.overrides = engine, prompt, raw, config, overrides
        self.safety_state, self.prefix, self.tools_active = safety_state, prefix, tools_active

    def engine_kwargs(self, observer: Callable | None) -> dict[str, Any]:
        return {
            "safety_state": self.safety_state,
            "raw": self.raw,
            "observers": [observer] if observer else [],
            **self.overrides,
        }


class ChatInferenceGuard(GuardedModelFields, BaseChatModel):
    """Chat model over a local LM decoded with the InferenceGuard safe search.

    Example:
        ```python
        from ig_middleware import GuardConfig
        from ig_middleware.langchain import ChatInferenceGuard

        model = ChatInferenceGuard(guard_config=GuardConfig(num_candidates=4, num_beams=2), max_tokens=64)
        model.invoke("Give me a tip for learning Python.")
        model.invoke(messages, safety_state=0.4)  # 40% of the budget left (e.g. across agent turns)
        ```

    Construction loads nothing; the weights load on first use and are shared by all instances (and
    engines) over the same model. Call kwargs: ``safety_state`` and any :class:`GuardConfig` field
    (e.g. ``num_candidates=8``), plus ``max_tokens``/``timeout`` aliases.
    """

    # -- identity --------------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "inferenceguard"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "guard_config": self.config.model_dump(mode="json"),
            "cost_model": type(self.cost_model).__name__ if self.cost_model is not None else "default",
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        cfg = self.config
        params = LangSmithParams(
            ls_provider="inferenceguard",
            ls_model_name=kwargs.get("model") or self.model,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", cfg.temperature),
            ls_max_tokens=kwargs.get("max_tokens", cfg.max_new_tokens),
        )
        if stops := merge_stop(cfg.stop, self.stop, stop):
            params["ls_stop"] = stops
        return params

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    # -- preparing a call ------------------------------------------------------------------------
    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Prepared:
        overrides, rest = split_call_kwargs(dict(kwargs))
        tools = rest.pop("tools", None) or []
        tool_choice = rest.pop("tool_choice", None)
        json_mode = bool(rest.pop("json_mode", False))
        json_schema = rest.pop("json_schema", None)
        safety_state = float(rest.pop("safety_state", self.safety_state))
        engine = self._engine_for(rest.pop("model", None))
        cfg = self.config
        stops = merge_stop(cfg.stop, self.stop, stop, overrides.pop("stop", None))

        render_tools, forced = (False, None)
        if tools:
            hint = next((_tools.content_text(m.content) for m in reversed(messages) if m.type == "human"), "")
            render_tools, forced = _tools.tool_choice_name(tool_choice, tools, hint)
        tools_text = _tools.describe_tools(tools, forced=forced is not None) if render_tools else None
        if json_mode:
            tools_text = JSON_MODE_PROMPT + (
                "\nThe JSON schema:\n" + json.dumps(json_schema, ensure_ascii=False) if json_schema else ""
            )
        if render_tools:
            stops = merge_stop(stops, [_tools.TOOL_CLOSE])
        chat = _tools.to_chat_messages(messages, tools_text, drop_media=self.drop_non_text_content)
        prefix = _tools.forced_prefix(forced, tools) if render_tools else ""
        if json_mode:
            prefix = "{"
        overrides["stop"] = stops
        if prefix:
            prompt: str | list[dict[str, str]] = engine.lm.render(chat) + prefix
            raw = True
        else:
            prompt, raw = chat, False
        return _Prepared(engine, prompt, raw, cfg, overrides, safety_state, prefix, render_tools)

    # -- results -> messages ---------------------------------------------------------------------
    @staticmethod
    def _usage(result: GuardResult) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            total_tokens=result.input_tokens + result.output_tokens,
        )

    @staticmethod
    def _metadata(result: GuardResult) -> dict[str, Any]:
        return {
            "model_name": result.model,
            "finish_reason": result.finish_reason,
            "safety_state": result.safety_state,
            "safety_cost": result.cost,
            "safety_budget": result.budget,
            "candidates_sampled": result.candidates_sampled,
            "resamples": result.resamples,
            "fallback_reason": result.fallback_reason,
            "sampled_tokens": result.sampled_tokens,
            "blocks": result.blocks,
            "judge_calls": result.judge_calls,
            "method": result.method,
            "backend": result.backend,
            "critic_used": result.critic_used,
            "search_run_id": result.run_id,
            "search_seconds": result.timings.total_s,
        }

    @staticmethod
    def _fallback_content(text: str, refusal: str) -> str | list[str | dict]:
        if not HAS_REFUSAL_BLOCK:
            return text
        return [{"type": "text", "text": text}, {"type": "refusal", "refusal": refusal.strip()}]

    def _message(self, result: GuardResult, prep: _Prepared) -> AIMessage:
        meta = self._metadata(result)
        usage = self._usage(result)
        if result.used_fallback:
            return AIMessage(
                content=self._fallback_content(result.text, result.text),
                response_metadata=meta,
                usage_metadata=usage,
            )
        text = prep.prefix + result.text
        if prep.tools_active:
            content, calls, invalid = _tools.parse_tool_calls(text)
            return AIMessage(
                content=content,
                tool_calls=calls,
                invalid_tool_calls=invalid,
                response_metadata=meta,
                usage_metadata=usage,
            )
        return AIMessage(content=text, response_metadata=meta, usage_metadata=usage)

    # -- generate --------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            chunk = None
            for c in self._stream(messages, stop, run_manager, **kwargs):
                chunk = c if chunk is None else chunk + c
            assert chunk is not None
            return ChatResult(generations=[_chunk_to_generation(chunk)])
        prep = self._prepare(messages, stop, kwargs)
        result = prep.engine.generate(prep.prompt, prep.config, **prep.engine_kwargs(sync_observer(run_manager)))
        return ChatResult(generations=[ChatGeneration(message=self._message(result, prep))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            chunk = None
            async for c in self._astream(messages, stop, run_manager, **kwargs):
                chunk = c if chunk is None else chunk + c
            assert chunk is not None
            return ChatResult(generations=[_chunk_to_generation(chunk)])
        prep = self._prepare(messages, stop, kwargs)
        result = await prep.engine.agenerate(
            prep.prompt, prep.config, **prep.engine_kwargs(async_observer(run_manager))
        )
        return ChatResult(generations=[ChatGeneration(message=self._message(result, prep))])

    # -- stream ----------------------------------------------------------------------------------
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prep = self._prepare(messages, stop, kwargs)
        splitter = _StreamSplitter(prep)
        observer = sync_observer(current_run(run_manager))
        for piece in prep.engine.stream(prep.prompt, prep.config, **prep.engine_kwargs(observer)):
            for chunk in splitter.feed(piece.text, piece.result, self):
                if run_manager:
                    run_manager.on_llm_new_token(_chunk_text(chunk.message), chunk=chunk)
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        prep = self._prepare(messages, stop, kwargs)
        splitter = _StreamSplitter(prep)
        observer = async_observer(current_run(run_manager))
        stream = prep.engine.astream(prep.prompt, prep.config, **prep.engine_kwargs(observer))
        async for piece in stream:
            for chunk in splitter.feed(piece.text, piece.result, self):
                if run_manager:
                    await run_manager.on_llm_new_token(_chunk_text(chunk.message), chunk=chunk)
                yield chunk

    # -- entry points that call _stream without the run manager: publish the run for the observers --
    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:  # fmt: skip
        config, slot = with_run_slot(config, self.callbacks)
        token = set_current_run(slot)
        try:
            yield from super().stream(input, config, stop=stop, **kwargs)
        finally:
            reset_current_run(token)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:  # fmt: skip
        config, slot = with_run_slot(config, self.callbacks)
        token = set_current_run(slot)
        try:
            async for chunk in super().astream(input, config, stop=stop, **kwargs):
                yield chunk
        finally:
            reset_current_run(token)

    def _generate_with_cache(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:  # fmt: skip
        token = set_current_run(run_manager)
        try:
            return super()._generate_with_cache(messages, stop=stop, run_manager=run_manager, **kwargs)
        finally:
            reset_current_run(token)

    async def _agenerate_with_cache(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:  # fmt: skip
        token = set_current_run(run_manager)
        try:
            return await super()._agenerate_with_cache(messages, stop=stop, run_manager=run_manager, **kwargs)
        finally:
            reset_current_run(token)

    # -- tools and structured output -------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: they are described in the system prompt, and generated
        ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` become ``AIMessage.tool_calls``.

        ``tool_choice``: ``"auto"``/None (the model decides), ``"none"`` (tools not shown), ``"any"``/
        ``"required"``/True (a call is forced; with several tools, the one whose name and description best
        match the last user message), or a tool name / ``{"type": "function", "function": {"name": ...}}``
        (that tool is forced). A forced call is prefilled up to its first argument's value so that even
        a 135M model produces a parseable call; only one call per turn is generated.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None and formatted:
            _tools.tool_choice_name(tool_choice, formatted)  # validate early
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | Any]:
        """Structured output. ``function_calling`` (default) and ``json_schema`` force a call of a tool
        named after the schema; ``json_mode`` prefills ``{`` and parses the answer as JSON."""
        kwargs.pop("strict", None)
        if method in ("function_calling", "json_schema"):
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method != "json_mode":
            raise ValueError(f"unsupported method {method!r}: function_calling, json_schema or json_mode")
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        json_schema = convert_to_json_schema(schema) if schema is not None else None
        llm = self.bind(
            json_mode=True,
            json_schema=json_schema,
            ls_structured_output_format={"kwargs": {"method": "json_mode"}, "schema": schema},
        )
        parser: Runnable = PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()
        if include_raw:
            parser_assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
            parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=llm) | parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
        return llm | parser


def _chunk_text(message: BaseMessage) -> str:
    return _tools.content_text(message.content)


def _chunk_to_generation(chunk: ChatGenerationChunk) -> ChatGeneration:
    msg = chunk.message
    return ChatGeneration(
        message=AIMessage(
            content=msg.content,
            tool_calls=msg.tool_calls,
            invalid_tool_calls=msg.invalid_tool_calls,
            response_metadata=msg.response_metadata,
            usage_metadata=msg.usage_metadata,
            id=msg.id,
        ),
        generation_info=chunk.generation_info,
    )


class _StreamSplitter:
    """Turns committed text into chat chunks: plain text streams as content; from ``<tool_call>`` on the
    text is held and becomes ``tool_call_chunks`` on the last chunk (parsed once complete)."""

    def __init__(self, prep: _Prepared) -> None:
        self.prep = prep
        self.tool_mode = bool(prep.prefix) and not prep.prefix.startswith("{")
        self.buffer = prep.prefix if self.tool_mode else ""
        self.pending = ""  # text mode: held back because it may start "<tool_call>"
        self.json_prefix = prep.prefix if prep.prefix.startswith("{") else ""

    def _text(self, delta: str) -> str:
        if self.json_prefix:
            delta, self.json_prefix = self.json_prefix + delta, ""
        if not self.prep.tools_active:
            return delta
        if self.tool_mode:
            self.buffer += delta
            return ""
        text = self.pending + delta
        self.pending = ""
        i = text.find(_tools.TOOL_OPEN)
        if i >= 0:
            self.tool_mode = True
            self.buffer = text[i:]
            return text[:i]
        for k in range(min(len(_tools.TOOL_OPEN) - 1, len(text)), 0, -1):
            if text.endswith(_tools.TOOL_OPEN[:k]):
                self.pending = text[-k:]
                return text[:-k]
        return text

    def feed(self, delta: str, result: GuardResult | None, model: ChatInferenceGuard) -> list[ChatGenerationChunk]:
        if result is None:
            text = self._text(delta)
            return [ChatGenerationChunk(message=AIMessageChunk(content=text))] if text else []
        # the last piece: its text is the tail, the result carries the outcome
        meta = model._metadata(result)
        usage = model._usage(result)
        extra: dict[str, Any] = {"chunk_position": "last"} if HAS_CHUNK_POSITION else {}
        if result.used_fallback:
            held = self.pending if not self.tool_mode else ""
            tail = delta if (held or not self.tool_mode) else delta.lstrip()
            text = held + tail
            content: Any = text
            if HAS_REFUSAL_BLOCK:
                content = [{"type": "text", "text": text}] if text else []
                content.append({"type": "refusal", "refusal": result.text.strip()})
            msg = AIMessageChunk(content=content, response_metadata=meta, usage_metadata=usage, **extra)
            return [ChatGenerationChunk(message=msg)]
        text = self._text(delta)
        if not self.tool_mode:
            text, self.pending = text + self.pending, ""
            msg = AIMessageChunk(content=text, response_metadata=meta, usage_metadata=usage, **extra)
            return [ChatGenerationChunk(message=msg)]
        rest, calls, invalid = _tools.parse_tool_calls(self.buffer)
        tool_chunks: list[dict[str, Any]] = []
        for i, call in enumerate(calls):
            args = json.dumps(call["args"], ensure_ascii=False)
            tool_chunks.append({"name": call["name"], "args": args, "id": call["id"], "index": i})
        for j, bad in enumerate(invalid, start=len(calls)):
            args = bad["args"]
            if _lenient_parses(args):  # keep it invalid once LangChain's lenient chunk parser sees it
                args = "(invalid tool call) " + args
            tool_chunks.append({"name": bad["name"], "args": args, "id": bad["id"], "index": j})
        content = (text + rest) if rest else text
        msg = AIMessageChunk(
            content=content,
            tool_call_chunks=tool_chunks,
            response_metadata=meta,
            usage_metadata=usage,
            **extra,
        )
        return [ChatGenerationChunk(message=msg)]


def _lenient_parses(text: str) -> bool:
    from langchain_core.utils.json import parse_partial_json

    try:
        return isinstance(parse_partial_json(text), dict)
    except Exception:  # noqa: BLE001
        return False
