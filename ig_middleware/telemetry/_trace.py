"""Span state of one guarded search, built from the engine's events in their JSON view.

Shared by :class:`~ig_middleware.telemetry.tracer.GuardTracer` (engine observer) and
:class:`~ig_middleware.telemetry.langchain.OpenTelemetryCallbackHandler` (LangChain custom events), so the
two paths produce the same spans and attributes.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import attributes as A

_CLAIM_LIMIT = 4096
_claims: OrderedDict[str, int] = OrderedDict()
_claims_lock = threading.Lock()
_FOREIGN_MODEL_KEYS = ("openinference.span.kind", "llm.request.type", "traceloop.span.kind")


def claim_run(run_id: str, owner: object) -> None:
    """Mark an engine run as traced by ``owner``: other tracers of the same run then skip it.

    The latest claim wins: a LangChain handler (which sees the run last, and knows its place in the
    chain) takes it over from an engine-level tracer.
    """
    with _claims_lock:
        _claims[run_id] = id(owner)
        _claims.move_to_end(run_id)
        while len(_claims) > _CLAIM_LIMIT:
            _claims.popitem(last=False)


def claimed_by(run_id: str) -> int | None:
    """``id()`` of the tracer that claimed the run, or None."""
    with _claims_lock:
        return _claims.get(run_id)


def is_foreign_model_span(span: Span) -> bool:
    """A recording model span of another instrumentation (GenAI conventions, OpenInference, OpenLLMetry)."""
    if not span.is_recording():
        return False
    attrs = getattr(span, "attributes", None) or {}
    if attrs.get(A.GEN_AI_OPERATION_NAME) in ("chat", "text_completion", "generate_content"):
        return True
    return any(attrs.get(k) in ("LLM", "llm", "chat") for k in _FOREIGN_MODEL_KEYS)


def _num(value: Any) -> float | None:
    """A finite float, or None (OTel attributes cannot carry None; NaN/inf are kept as floats though)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _put(attrs: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        value = [v for v in value if v is not None]
        if not value:
            return
    attrs[key] = value


def request_attributes(started: Mapping[str, Any]) -> dict[str, Any]:
    """GenAI request attributes and InferenceGuard's configuration from a ``search_started`` event."""
    cfg = started.get("config") or {}
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: A.OPERATION_CHAT,
        A.GEN_AI_PROVIDER_NAME: A.PROVIDER_NAME,
    }
    _put(attrs, A.GEN_AI_REQUEST_MODEL, started.get("model"))
    _put(attrs, A.GEN_AI_REQUEST_MAX_TOKENS, cfg.get("max_new_tokens"))
    _put(attrs, A.GEN_AI_REQUEST_TEMPERATURE, _num(cfg.get("temperature")))
    _put(attrs, A.GEN_AI_REQUEST_TOP_P, _num(cfg.get("top_p")))
    _put(attrs, A.GEN_AI_REQUEST_SEED, cfg.get("seed"))
    stop = cfg.get("stop")
    if stop:
        _put(attrs, A.GEN_AI_REQUEST_STOP_SEQUENCES, [str(s) for s in stop])
    _put(attrs, A.GEN_AI_USAGE_INPUT_TOKENS, started.get("prompt_tokens"))
    attrs.update(safety_attributes(started))
    return attrs


def safety_attributes(started: Mapping[str, Any]) -> dict[str, Any]:
    """InferenceGuard's own configuration attributes (no GenAI ones) from a ``search_started`` event."""
    cfg = started.get("config") or {}
    attrs: dict[str, Any] = {}
    _put(attrs, A.IG_RUN_ID, started.get("run_id"))
    _put(attrs, A.IG_METHOD, started.get("method") or cfg.get("method"))
    _put(attrs, A.IG_BACKEND, started.get("backend"))
    _put(attrs, A.IG_SAFETY_MODE, cfg.get("safety_mode"))
    _put(attrs, A.IG_BUDGET, _num(started.get("budget", cfg.get("budget"))))
    _put(attrs, A.IG_GAMMA, _num(cfg.get("gamma")))
    _put(attrs, A.IG_BLOCK_SIZE, cfg.get("block_size"))
    _put(attrs, A.IG_NUM_CANDIDATES, cfg.get("num_candidates"))
    _put(attrs, A.IG_NUM_BEAMS, cfg.get("num_beams"))
    _put(attrs, A.IG_MAX_RETRIES, cfg.get("max_retries"))
    if "enforce_budget" in cfg:
        attrs[A.IG_ENFORCE_BUDGET] = bool(cfg["enforce_budget"])
    _put(attrs, A.IG_INITIAL_SAFETY_STATE, _num(started.get("initial_safety_state")))
    return attrs


def input_messages_json(prompt: str) -> str:
    return json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}], ensure_ascii=False)


def output_messages_json(text: str, finish_reason: str) -> str:
    return json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": finish_reason}],
        ensure_ascii=False,
    )


class _Block:
    __slots__ = ("index", "span", "last_ns", "attempts", "resamples", "eval_seconds", "judge_calls")

    def __init__(self, index: int, span: Span, now_ns: int) -> None:
        self.index, self.span, self.last_ns = index, span, now_ns
        self.attempts = self.resamples = self.judge_calls = 0
        self.eval_seconds = 0.0


class SearchTrace:
    """Spans of one search: the inference span (own, or an existing span it decorates) and block spans.

    Modes: ``"chat"`` opens a GenAI inference span ``chat {model}``; ``"search"`` opens an
    ``inferenceguard.search`` span with only InferenceGuard attributes (another instrumentation owns the
    model span); ``attach_to`` decorates an existing model span (the LangChain handler's) and adds block
    spans under it.
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        started: Mapping[str, Any],
        *,
        parent: Context | None,
        start_ns: int,
        capture_content: bool,
        mode: str = "chat",
        attach_to: Span | None = None,
    ) -> None:
        self.tracer, self.capture_content = tracer, capture_content
        self.run_id = str(started.get("run_id", ""))
        self.owns_span = attach_to is None
        self.mode = mode
        self.lock = threading.Lock()
        if attach_to is not None:
            self.span = attach_to
            self.span.set_attributes(request_attributes(started))
        else:
            model = str(started.get("model") or "unknown")
            if mode == "chat":
                name, attrs = A.SPAN_CHAT.format(model=model), request_attributes(started)
                if capture_content and started.get("prompt"):
                    attrs[A.GEN_AI_INPUT_MESSAGES] = input_messages_json(str(started["prompt"]))
            else:
                name, attrs = A.SPAN_SEARCH, safety_attributes(started)
            self.span = tracer.start_span(
                name, context=parent, kind=SpanKind.INTERNAL, attributes=attrs, start_time=start_ns
            )
        self.ctx = trace.set_span_in_context(self.span, parent)
        self.boundary_ns = start_ns
        self.block: _Block | None = None
        self.finished = False

    @property
    def recording(self) -> bool:
        return self.span.is_recording()

    # -- blocks -------------------------------------------------------------------------------------------
    def _block_for(self, index: int, now_ns: int) -> _Block:
        if self.block is not None and self.block.index == index:
            return self.block
        self._close_block()
        span = self.tracer.start_span(
            A.SPAN_BLOCK,
            context=self.ctx,
            kind=SpanKind.INTERNAL,
            attributes={A.IG_BLOCK_INDEX: index, A.IG_RUN_ID: self.run_id},
            start_time=self.boundary_ns,
        )
        self.block = _Block(index, span, now_ns)
        return self.block

    def _close_block(self) -> None:
        b = self.block
        if b is None:
            return
        b.span.set_attributes(
            {
                A.IG_BLOCK_ATTEMPTS: b.attempts,
                A.IG_BLOCK_RESAMPLES: b.resamples,
                A.IG_BLOCK_EVAL_SECONDS: b.eval_seconds,
                A.IG_BLOCK_JUDGE_CALLS: b.judge_calls,
            }
        )
        b.span.end(end_time=b.last_ns)
        self.boundary_ns = b.last_ns
        self.block = None

    def block_evaluated(self, d: Mapping[str, Any], now_ns: int) -> None:
        b = self._block_for(int(d.get("block_index", 0)), now_ns)
        b.attempts += 1
        b.last_ns = now_ns
        secs = _num(d.get("seconds")) or 0.0
        b.eval_seconds += secs
        b.judge_calls += int(d.get("judge_calls") or 0)
        states = [float(s) for s in d.get("safety_states") or ()]
        costs = [float(c) for c in d.get("costs") or ()]
        attrs: dict[str, Any] = {
            A.IG_BLOCK_CANDIDATES: int(d.get("candidates") or 0),
            A.IG_BLOCK_SAFE_CANDIDATES: int(d.get("safe_candidates") or 0),
            A.IG_BLOCK_CRITIC_USED: bool(d.get("critic_used")),
        }
        if states:
            attrs[A.IG_BLOCK_MIN_SAFETY_STATE] = min(states)
            attrs[A.IG_BLOCK_MAX_SAFETY_STATE] = max(states)
        if costs:
            attrs[A.IG_BLOCK_MIN_COST] = min(costs)
            attrs[A.IG_BLOCK_MAX_COST] = max(costs)
        b.span.set_attributes(attrs)
        b.span.add_event(
            A.EVENT_BLOCK_EVALUATION,
            {**attrs, A.IG_ATTEMPT: int(d.get("attempt") or 0), A.IG_BLOCK_EVAL_SECONDS: secs},
            timestamp=now_ns,
        )

    def resampled(self, d: Mapping[str, Any], now_ns: int) -> None:
        b = self._block_for(int(d.get("block_index", 0)), now_ns)
        b.resamples += 1
        b.last_ns = now_ns
        b.span.add_event(
            A.EVENT_RESAMPLE,
            {A.IG_ATTEMPT: int(d.get("attempt") or 0), A.IG_PENALISED_TOKENS: int(d.get("penalised_tokens") or 0)},
            timestamp=now_ns,
        )

    def committed(self, d: Mapping[str, Any], now_ns: int) -> None:
        # BlockCommitted counts finished blocks: block_index k commits the text up to evaluated block k - 1.
        index = int(d.get("block_index", 1)) - 1
        b = self.block if self.block is not None and self.block.index == index else None
        span = b.span if b is not None else self.span
        state = _num(d.get("safety_state"))
        attrs: dict[str, Any] = {A.IG_BLOCK_INDEX: index}
        _put(attrs, A.IG_BLOCK_COMMITTED_SAFETY_STATE, state)
        _put(attrs, A.IG_COST, _num(d.get("cost")))
        if self.capture_content and d.get("text") is not None:
            attrs[A.IG_BLOCK_TEXT] = str(d["text"])
        span.add_event(A.EVENT_COMMIT, attrs, timestamp=now_ns)
        if b is not None:
            b.last_ns = now_ns
            b.span.set_attribute(A.IG_BLOCK_COMMITTED, True)
            if state is not None:
                b.span.set_attribute(A.IG_BLOCK_COMMITTED_SAFETY_STATE, state)

    def fallback(self, d: Mapping[str, Any], now_ns: int) -> None:
        reason = str(d.get("reason") or "")
        attrs: dict[str, Any] = {A.IG_FALLBACK_REASON: reason, A.IG_BLOCK_INDEX: int(d.get("block_index") or 0)}
        if d.get("detail"):
            attrs[A.IG_FALLBACK_DETAIL] = str(d["detail"])
        self.span.add_event(A.EVENT_FALLBACK, attrs, timestamp=now_ns)
        if self.block is not None:
            self.block.span.add_event(A.EVENT_FALLBACK, attrs, timestamp=now_ns)
            self.block.last_ns = max(self.block.last_ns, now_ns)
        if reason == "budget_exhausted":
            self.span.add_event(A.EVENT_BUDGET_EXHAUSTED, attrs, timestamp=now_ns)
        self.span.set_attribute(A.IG_FALLBACK_REASON, reason)
        if d.get("detail"):
            self.span.set_attribute(A.IG_FALLBACK_DETAIL, str(d["detail"]))

    def finished_(self, d: Mapping[str, Any], now_ns: int, result: Any = None) -> None:
        """Final attributes, the evaluation event, and the end of the spans we own."""
        self._close_block()
        finish = str(d.get("finish_reason") or "")
        z = _num(d.get("safety_state"))
        cost, budget = _num(d.get("cost")), _num(d.get("budget"))
        attrs: dict[str, Any] = {}
        if self.mode == "chat" or not self.owns_span:
            _put(attrs, A.GEN_AI_RESPONSE_MODEL, d.get("model"))
            _put(attrs, A.GEN_AI_RESPONSE_ID, d.get("run_id"))
            _put(attrs, A.GEN_AI_USAGE_INPUT_TOKENS, d.get("input_tokens"))
            _put(attrs, A.GEN_AI_USAGE_OUTPUT_TOKENS, d.get("output_tokens"))
            if finish:
                attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = [finish]
        _put(attrs, A.IG_SAFETY_STATE, z)
        _put(attrs, A.IG_COST, cost)
        _put(attrs, A.IG_BUDGET, budget)
        if z is not None:
            attrs[A.IG_WITHIN_BUDGET] = z > 0
        for key, name in (
            (A.IG_BLOCKS, "blocks"),
            (A.IG_CANDIDATES_SAMPLED, "candidates_sampled"),
            (A.IG_SAMPLED_TOKENS, "sampled_tokens"),
            (A.IG_RESAMPLES, "resamples"),
            (A.IG_JUDGE_CALLS, "judge_calls"),
            (A.IG_CRITIC_CALLS, "critic_calls"),
        ):
            _put(attrs, key, d.get(name))
        if d.get("critic_calls") is not None:
            attrs[A.IG_CRITIC_USED] = int(d.get("critic_calls") or 0) > 0
        _put(attrs, A.IG_FALLBACK_REASON, d.get("fallback_reason"))
        _put(attrs, A.IG_SEARCH_SECONDS, _num(d.get("seconds")))
        timings = getattr(result, "timings", None)
        if timings is not None:
            attrs[A.IG_TIMING_PREFILL] = float(timings.prefill_s)
            attrs[A.IG_TIMING_SAMPLING] = float(timings.sampling_s)
            attrs[A.IG_TIMING_JUDGE] = float(timings.judge_s)
            attrs[A.IG_TIMING_CRITIC] = float(timings.critic_s)
        if result is not None and getattr(result, "fallback_detail", ""):
            attrs[A.IG_FALLBACK_DETAIL] = str(result.fallback_detail)
        if self.capture_content and self.owns_span and self.mode == "chat" and result is not None:
            attrs[A.GEN_AI_OUTPUT_MESSAGES] = output_messages_json(str(result.text), finish)
        self.span.set_attributes(attrs)
        if z is not None and z <= 0 and d.get("fallback_reason") is None:
            # only possible with enforce_budget=False: the answer was returned although over budget
            self.span.add_event(A.EVENT_BUDGET_EXHAUSTED, {A.IG_SAFETY_STATE: z}, timestamp=now_ns)
        self.span.add_event(A.EVENT_EVALUATION_RESULT, evaluation_attributes(d), timestamp=now_ns)
        self.finished = True
        if self.owns_span:
            self.span.end(end_time=now_ns)

    def abandon(self, reason: str) -> None:
        """End what is open when the search never finished (exception, closed stream, eviction)."""
        if self.finished:
            return
        self.finished = True
        now = time.time_ns()
        if self.block is not None:
            self.block.last_ns = max(self.block.last_ns, now)
        self._close_block()
        if self.owns_span:
            self.span.set_status(Status(StatusCode.ERROR, reason))
            self.span.set_attribute(A.ERROR_TYPE, reason)
            self.span.end(end_time=now)


def evaluation_attributes(d: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes of the ``gen_ai.evaluation.result`` event: the score is the final safety state z."""
    finish = str(d.get("finish_reason") or "")
    z, cost, budget = _num(d.get("safety_state")), _num(d.get("cost")), _num(d.get("budget"))
    reason = d.get("fallback_reason")
    fallback = finish == "safety_fallback" or reason is not None
    label = A.LABEL_SAFETY_FALLBACK if fallback or (z is not None and z <= 0) else A.LABEL_WITHIN_BUDGET
    parts = []
    if cost is not None and budget is not None:
        parts.append(f"cumulative cost {_fmt(cost)} of budget {_fmt(budget)}")
    if z is not None:
        parts.append(f"final safety state {_fmt(z)}")
    if d.get("resamples"):
        parts.append(f"{d['resamples']} resample(s)")
    if fallback:
        parts.append(f"fallback: {reason or 'unknown'}")
    attrs: dict[str, Any] = {
        A.GEN_AI_EVALUATION_NAME: A.EVALUATION_NAME,
        A.GEN_AI_EVALUATION_SCORE_LABEL: label,
        A.GEN_AI_EVALUATION_EXPLANATION: "; ".join(parts),
    }
    _put(attrs, A.GEN_AI_EVALUATION_SCORE_VALUE, z)
    _put(attrs, A.GEN_AI_RESPONSE_ID, d.get("run_id"))
    _put(attrs, A.IG_COST, cost)
    _put(attrs, A.IG_BUDGET, budget)
    _put(attrs, A.IG_FALLBACK_REASON, reason)
    return attrs


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def dispatch(trace_: SearchTrace, name: str, data: Mapping[str, Any], now_ns: int, result: Any = None) -> bool:
    """Route one event (short name) to the trace; True once the search finished."""
    with trace_.lock:
        if trace_.finished:
            return True
        if name == "block_evaluated":
            trace_.block_evaluated(data, now_ns)
        elif name == "resampled":
            trace_.resampled(data, now_ns)
        elif name == "block_committed":
            trace_.committed(data, now_ns)
        elif name == "fallback":
            trace_.fallback(data, now_ns)
        elif name == "search_finished":
            trace_.finished_(data, now_ns, result)
            return True
    return False
