"""LangChain callbacks to OpenTelemetry spans, with InferenceGuard's safety events in the right place.

``OpenTelemetryCallbackHandler`` turns chain, chat-model, tool and agent runs into spans (parented by
``parent_run_id``) and the custom events ``inferenceguard.*`` into spans/events under the run that emitted
them: the chat model (:class:`~ig_middleware.langchain.chat_model.ChatInferenceGuard`) dispatches engine
events as ``inferenceguard.<event_name>`` with :func:`~ig_middleware.events.event_to_dict` data, parented to
its run; the agent middleware dispatches ``inferenceguard.middleware.*``. So a block span sits under the
chat model span, which sits under the agent step that called it.

When another instrumentation (OpenLLMetry, OpenInference, ...) already makes the model spans, pass
``model_spans=False`` (or leave ``None``: a recording GenAI/LLM span current at model start is detected):
no second model span is made, the safety spans go under an ``inferenceguard.search`` span instead.
Engine runs traced here are claimed, so a :class:`~ig_middleware.telemetry.tracer.GuardTracer` on the same
engine skips them: the two never duplicate each other.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import attributes as A
from ._trace import SearchTrace, claim_run, dispatch, is_foreign_model_span
from .tracer import _version, capture_content_from_env

ENGINE_EVENTS = {"search_started", "block_evaluated", "resampled", "block_committed", "fallback", "search_finished"}
_CONTENT_KEYS = {
    "text", "content", "prompt", "answer", "messages", "message", "response", "input", "output", "fallback_text",
    "query", "completion", "tool_input", "tool_output", "args", "arguments", "result",
}  # fmt: skip
_HIDDEN_TAG = "langsmith:hidden"


class _Run:
    __slots__ = ("span", "ctx", "kind", "foreign", "searches")

    def __init__(self, span: Span | None, ctx: Context, kind: str, foreign: bool = False) -> None:
        self.span, self.ctx, self.kind, self.foreign = span, ctx, kind, foreign
        self.searches: dict[str, SearchTrace] = {}


def _truncate(s: str, limit: int = 8192) -> str:
    return s if len(s) <= limit else s[:limit] + "…"


def _json(value: Any) -> str:
    try:
        return _truncate(json.dumps(value, default=str, ensure_ascii=False))
    except Exception:  # noqa: BLE001
        return _truncate(str(value))


def _message_json(msg: Any) -> dict[str, Any]:
    role = {"human": "user", "ai": "assistant"}.get(getattr(msg, "type", ""), getattr(msg, "type", "user"))
    content = getattr(msg, "content", msg)
    parts: list[dict[str, Any]] = [{"type": "text", "content": content if isinstance(content, str) else _json(content)}]
    for tc in getattr(msg, "tool_calls", None) or ():
        parts.append({"type": "tool_call", "id": tc.get("id"), "name": tc.get("name"), "arguments": tc.get("args")})
    return {"role": role, "parts": parts}


def _scalar_attrs(data: Any, capture_content: bool) -> dict[str, Any]:
    """Attributes of a custom event's data: scalars kept (``inferenceguard.<key>``), the rest as JSON;
    content-like keys only with content capture."""
    if not isinstance(data, Mapping):
        return {A.IG_EVENT_DATA: _json(data)} if capture_content else {}
    out: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for k, v in data.items():
        key = str(k)
        if key in _CONTENT_KEYS and not capture_content:
            continue
        name = key if key.startswith(("inferenceguard.", "gen_ai.")) else f"inferenceguard.{key}"
        if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 1024):
            out[name] = v
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
            out[name] = [float(x) for x in v]
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
            out[name] = list(v)
        elif v is not None:
            rest[key] = v
    if rest:
        out[A.IG_EVENT_DATA] = _json(rest)
    return out


class OpenTelemetryCallbackHandler(BaseCallbackHandler):
    """LangChain callback handler that records runs as OpenTelemetry spans.

    Args:
        tracer_provider: SDK ``TracerProvider``; default the global one.
        capture_content: record messages, tool arguments/results and answers. Default: the
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` environment variable, else off.
        model_spans: ``True`` always make chat-model spans, ``False`` never (another instrumentation
            makes them: only the safety spans are added), ``None`` (default) decide per run: no model span
            when a recording model span of another instrumentation is current at model start.
        chain_spans: make spans for chains (else chains are transparent and children attach higher up).
        agent_names: chain names recorded as agent invocations (``invoke_agent {name}``).
        parent_context: parent of root runs (default: the context current at the root run's start).
    """

    run_inline = True  # callbacks in the caller's thread/context, so the current span is the caller's
    raise_error = False

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        capture_content: bool | None = None,
        model_spans: bool | None = None,
        chain_spans: bool = True,
        agent_names: Sequence[str] = ("LangGraph", "AgentExecutor", "agent"),
        parent_context: Context | None = None,
        max_open_runs: int = 4096,
    ) -> None:
        super().__init__()
        self.tracer = trace.get_tracer(A.INSTRUMENTATION_NAME, _version(), tracer_provider=tracer_provider)
        self.capture_content = capture_content_from_env() if capture_content is None else bool(capture_content)
        self.model_spans = model_spans
        self.chain_spans = chain_spans
        self.agent_names = set(agent_names)
        self.parent_context = parent_context
        self.max_open_runs = max_open_runs
        self._runs: OrderedDict[UUID, _Run] = OrderedDict()
        self._own_span_ids: set[int] = set()
        self._lock = threading.RLock()

    # -- plumbing -------------------------------------------------------------------------------------
    def _parent_ctx(self, parent_run_id: UUID | None) -> Context:
        if parent_run_id is not None:
            with self._lock:
                parent = self._runs.get(parent_run_id)
            if parent is not None:
                return parent.ctx
        return self.parent_context if self.parent_context is not None else otel_context.get_current()

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        name: str,
        kind: str,
        attrs: dict[str, Any],
    ) -> _Run:
        parent = self._parent_ctx(parent_run_id)
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.INTERNAL, attributes=attrs)
        run = _Run(span, trace.set_span_in_context(span, parent), kind)
        self._remember(run_id, run, span)
        return run

    def _remember(self, run_id: UUID, run: _Run, span: Span | None) -> None:
        evicted: list[_Run] = []
        with self._lock:
            self._runs[run_id] = run
            if span is not None:
                self._own_span_ids.add(span.get_span_context().span_id)
            while len(self._runs) > self.max_open_runs:
                evicted.append(self._runs.popitem(last=False)[1])
        for old in evicted:
            self._finish(old, error="evicted")

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            run = self._runs.pop(run_id, None)
            if run is not None and run.span is not None:
                self._own_span_ids.discard(run.span.get_span_context().span_id)
            return run

    def _finish(self, run: _Run, error: BaseException | str | None = None, attrs: dict | None = None) -> None:
        for search in list(run.searches.values()):
            search.abandon("run ended before the search finished")
        if run.span is None:
            return
        if attrs:
            run.span.set_attributes(attrs)
        if error is not None:
            etype = error if isinstance(error, str) else type(error).__qualname__
            run.span.set_attribute(A.ERROR_TYPE, etype)
            run.span.set_status(Status(StatusCode.ERROR, str(error)))
            if isinstance(error, BaseException):
                run.span.record_exception(error)
        run.span.end()

    @staticmethod
    def _base(run_id: UUID, run_type: str, name: str, tags: list[str] | None) -> dict[str, Any]:
        attrs: dict[str, Any] = {A.LC_RUN_ID: str(run_id), A.LC_RUN_TYPE: run_type, A.LC_RUN_NAME: name}
        if tags:
            attrs[A.LC_TAGS] = [str(t) for t in tags]
        return attrs

    def _alias(self, run_id: UUID, parent_run_id: UUID | None, kind: str) -> None:
        """A run without its own span: children attach to the parent's span."""
        self._remember(run_id, _Run(None, self._parent_ctx(parent_run_id), kind), None)

    # -- chains and agents ------------------------------------------------------------------------------
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name") or "chain"
        sid = (serialized or {}).get("id") or []
        is_agent = name in self.agent_names or (isinstance(sid, list) and "AgentExecutor" in sid)
        if not is_agent and (not self.chain_spans or _HIDDEN_TAG in (tags or ())):
            self._alias(run_id, parent_run_id, "chain")
            return
        attrs = self._base(run_id, "chain", name, tags)
        if is_agent:
            attrs[A.GEN_AI_OPERATION_NAME] = A.OPERATION_INVOKE_AGENT
            attrs[A.GEN_AI_AGENT_NAME] = name
            span_name = A.SPAN_INVOKE_AGENT.format(name=name)
        else:
            span_name = name
        if self.capture_content:
            attrs["langchain.input"] = _json(inputs)
        self._start(run_id, parent_run_id, span_name, "agent" if is_agent else "chain", attrs)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is not None:
            extra = {"langchain.output": _json(outputs)} if self.capture_content and run.span is not None else None
            self._finish(run, attrs=extra)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is not None:
            self._finish(run, error=error)

    def on_agent_action(self, action: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._event(run_id, "langchain.agent_action", {A.GEN_AI_TOOL_NAME: str(getattr(action, "tool", ""))})

    def on_agent_finish(self, finish: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._event(run_id, "langchain.agent_finish", {})

    # -- chat models ------------------------------------------------------------------------------------
    def _foreign_model_span_current(self) -> bool:
        span = trace.get_current_span()
        if not span.is_recording():
            return False
        with self._lock:
            if span.get_span_context().span_id in self._own_span_ids:
                return False
        return is_foreign_model_span(span)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._model_start(serialized, run_id, parent_run_id, tags, metadata, kwargs, messages=messages)

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._model_start(serialized, run_id, parent_run_id, tags, metadata, kwargs, prompts=prompts)

    def _model_start(
        self,
        serialized: dict[str, Any] | None,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
        messages: list[list[Any]] | None = None,
        prompts: list[str] | None = None,
    ) -> None:
        foreign = self.model_spans is False or (self.model_spans is None and self._foreign_model_span_current())
        if foreign:
            # the other instrumentation's model span, when current, is the parent of our safety spans
            recording = trace.get_current_span().is_recording()
            ctx = otel_context.get_current() if recording else self._parent_ctx(parent_run_id)
            self._remember(run_id, _Run(None, ctx, "model", foreign=True), None)
            return
        md = metadata or {}
        params = kwargs.get("invocation_params") or {}
        model = (
            md.get("ls_model_name")
            or params.get("model_name")
            or params.get("model")
            or (serialized or {}).get("name")
            or kwargs.get("name")
            or "unknown"
        )
        provider = md.get("ls_provider") or params.get("_type") or "langchain"
        op = A.OPERATION_CHAT if messages is not None else "text_completion"
        attrs = self._base(run_id, "chat_model" if messages is not None else "llm", kwargs.get("name") or model, tags)
        attrs.update({A.GEN_AI_OPERATION_NAME: op, A.GEN_AI_PROVIDER_NAME: str(provider)})
        attrs[A.GEN_AI_REQUEST_MODEL] = str(model)
        for key, src in (
            (A.GEN_AI_REQUEST_TEMPERATURE, md.get("ls_temperature", params.get("temperature"))),
            (A.GEN_AI_REQUEST_MAX_TOKENS, md.get("ls_max_tokens", params.get("max_new_tokens"))),
            (A.GEN_AI_REQUEST_TOP_P, params.get("top_p")),
            (A.GEN_AI_REQUEST_SEED, params.get("seed")),
        ):
            if isinstance(src, (int, float)) and not isinstance(src, bool):
                attrs[key] = src
        stop = md.get("ls_stop") or params.get("stop")
        if isinstance(stop, (list, tuple)) and stop:
            attrs[A.GEN_AI_REQUEST_STOP_SEQUENCES] = [str(s) for s in stop]
        if self.capture_content:
            if messages is not None:
                attrs[A.GEN_AI_INPUT_MESSAGES] = _json([_message_json(m) for m in (messages[0] if messages else [])])
            elif prompts:
                attrs[A.GEN_AI_INPUT_MESSAGES] = _json(
                    [{"role": "user", "parts": [{"type": "text", "content": p}]} for p in prompts]
                )
        self._start(run_id, parent_run_id, f"{op} {model}", "model", attrs)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is None:
            return
        attrs: dict[str, Any] = {}
        gen = None
        try:
            gen = response.generations[0][0]
        except (AttributeError, IndexError, TypeError):
            pass
        msg = getattr(gen, "message", None)
        meta: dict[str, Any] = dict(getattr(msg, "response_metadata", None) or {})
        meta.update({k: v for k, v in (getattr(gen, "generation_info", None) or {}).items() if k not in meta})
        usage = getattr(msg, "usage_metadata", None) or {}
        if not usage and isinstance(getattr(response, "llm_output", None), dict):
            usage = response.llm_output.get("token_usage") or response.llm_output.get("usage") or {}
        if usage.get("input_tokens") is not None:
            attrs[A.GEN_AI_USAGE_INPUT_TOKENS] = int(usage["input_tokens"])
        if usage.get("output_tokens") is not None:
            attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] = int(usage["output_tokens"])
        if meta.get("finish_reason"):
            attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = [str(meta["finish_reason"])]
        if meta.get("model_name"):
            attrs[A.GEN_AI_RESPONSE_MODEL] = str(meta["model_name"])
        # the chat model's flat safety metadata (shared contract), in case no engine events came through
        for key, src in (
            (A.IG_SAFETY_STATE, "safety_state"),
            (A.IG_COST, "safety_cost"),
            (A.IG_BUDGET, "safety_budget"),
            (A.IG_CANDIDATES_SAMPLED, "candidates_sampled"),
            (A.IG_RESAMPLES, "resamples"),
        ):
            v = meta.get(src)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs[key] = v
        if meta.get("fallback_reason"):
            attrs[A.IG_FALLBACK_REASON] = str(meta["fallback_reason"])
        if self.capture_content and gen is not None:
            text = getattr(gen, "text", "") or (getattr(msg, "content", "") if msg is not None else "")
            out = (
                _message_json(msg)
                if msg is not None
                else {"role": "assistant", "parts": [{"type": "text", "content": text}]}
            )
            if meta.get("finish_reason"):
                out["finish_reason"] = str(meta["finish_reason"])
            attrs[A.GEN_AI_OUTPUT_MESSAGES] = _json([out])
        if run.span is None:  # foreign model span: nothing of ours to decorate
            attrs = None
        self._finish(run, attrs=attrs)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is not None:
            self._finish(run, error=error)

    # -- tools ------------------------------------------------------------------------------------------
    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name") or "tool"
        attrs = self._base(run_id, "tool", name, tags)
        attrs.update({A.GEN_AI_OPERATION_NAME: A.OPERATION_EXECUTE_TOOL, A.GEN_AI_TOOL_NAME: name})
        if kwargs.get("tool_call_id"):
            attrs[A.GEN_AI_TOOL_CALL_ID] = str(kwargs["tool_call_id"])
        if self.capture_content:
            attrs[A.GEN_AI_TOOL_CALL_ARGUMENTS] = _json(inputs if inputs is not None else input_str)
        self._start(run_id, parent_run_id, A.SPAN_EXECUTE_TOOL.format(name=name), "tool", attrs)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is not None:
            content = getattr(output, "content", output)
            extra = {A.GEN_AI_TOOL_CALL_RESULT: _json(content)} if self.capture_content else None
            self._finish(run, attrs=extra)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is not None:
            self._finish(run, error=error)

    # -- InferenceGuard custom events -------------------------------------------------------------------
    def _event(self, run_id: UUID, name: str, attrs: dict[str, Any]) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        span = run.span if run is not None and run.span is not None else None
        if span is None:
            ctx = run.ctx if run is not None else otel_context.get_current()
            span = trace.get_current_span(ctx)
        if span.is_recording():
            span.add_event(name, attrs)

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not name.startswith(A.EVENT_LANGCHAIN_PREFIX):
            return
        short = name[len(A.EVENT_LANGCHAIN_PREFIX) :]
        if short in ENGINE_EVENTS and isinstance(data, Mapping) and data.get("run_id"):
            self._engine_event(run_id, short, data)
        else:
            self._event(run_id, name, _scalar_attrs(data, self.capture_content))

    def _engine_event(self, run_id: UUID, short: str, data: Mapping[str, Any]) -> None:
        now = time.time_ns()
        engine_run = str(data["run_id"])
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:  # events of a run we do not know (e.g. started before the handler was added)
                run = _Run(None, otel_context.get_current(), "unknown")
                self._runs[run_id] = run
        if short == "search_started":
            claim_run(engine_run, self)
            if run.span is not None and run.kind == "model":
                search = SearchTrace(
                    self.tracer, data, parent=run.ctx, start_ns=now, capture_content=False, attach_to=run.span
                )
            else:
                # another instrumentation's model span: a safety-only span; elsewhere (a chain calling the
                # engine directly): a full inference span
                mode = "search" if run.foreign else "chat"
                search = SearchTrace(
                    self.tracer, data, parent=run.ctx, start_ns=now, capture_content=self.capture_content, mode=mode
                )
            with self._lock:
                run.searches[engine_run] = search
            return
        search = run.searches.get(engine_run)
        if search is not None and dispatch(search, short, data, now):
            with self._lock:
                run.searches.pop(engine_run, None)
                if run.kind == "unknown" and not run.searches:
                    self._runs.pop(run_id, None)
