"""OpenTelemetry spans for InferenceGuard searches, from the engine's observer events.

``GuardTracer`` is a plain engine observer: ``engine.add_observer(GuardTracer())`` (or
:func:`instrument`) gives, per search, an inference span ``chat {model}`` (GenAI conventions plus
``inferenceguard.*``), a child span ``inferenceguard.block`` per search block, events for resamples,
commits, fallback and budget exhaustion, and the final verdict as a ``gen_ai.evaluation.result`` event.
Without a configured SDK the API's no-op tracer is used and a search costs a few dictionary look-ups.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from ig_middleware.events import GuardEvent, SearchFinished, SearchStarted, event_name, event_to_dict

from . import attributes as A
from ._trace import SearchTrace, claim_run, claimed_by, dispatch, is_foreign_model_span

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


def capture_content_from_env() -> bool:
    """``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is true (content capture is opt-in)."""
    return os.environ.get(A.ENV_CAPTURE_CONTENT, "").strip().lower() in _TRUE


def _version() -> str:
    try:
        from ig_middleware import __version__

        return __version__
    except Exception:  # noqa: BLE001
        return "0"


def sdk_disabled_from_env() -> bool:
    """``OTEL_SDK_DISABLED`` is true."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE


def disabled_from_env() -> bool:
    """``OTEL_SDK_DISABLED`` is true, or ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names this package."""
    if sdk_disabled_from_env():
        return True
    names = {n.strip() for n in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    return bool(names & A.INSTRUMENTATION_ALIASES)


class _Pending:
    __slots__ = ("event", "parent", "start_ns", "foreign")

    def __init__(self, event: SearchStarted, parent: Context, start_ns: int, foreign: bool) -> None:
        self.event, self.parent, self.start_ns, self.foreign = event, parent, start_ns, foreign


class GuardTracer:
    """Engine observer that turns a search's events into spans.

    Args:
        tracer_provider: an SDK ``TracerProvider``; default the global one (no-op until configured).
        capture_content: record the prompt and the answer (``gen_ai.input.messages`` /
            ``gen_ai.output.messages``) and committed text. Default: the
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` environment variable (read per search),
            else off.
        parent_context: a fixed parent for every search (otherwise: the context registered for the run
            with :meth:`set_parent`/:meth:`context_kwargs`, else the current context at ``SearchStarted``,
            which the engine emits in the thread that runs the search).
        max_open_runs: searches kept open at once; the oldest is ended (status ERROR) beyond this, so a
            search that never finished (an abandoned stream) does not leak.
        auto: the zero-code tracer every engine gets (:func:`auto_observer`): it yields each run to any
            other tracer of it, where an explicit one claims the run.

    One run gets one set of spans. The inference span is created at the run's second event (with the
    ``SearchStarted`` time as start), so that whoever claims the run by then wins: a LangChain
    :class:`~ig_middleware.telemetry.langchain.OpenTelemetryCallbackHandler` over an explicit tracer, an
    explicit tracer over the automatic one. When another instrumentation's model span (OpenLLMetry,
    OpenInference, GenAI conventions) is current, only the safety span ``inferenceguard.search`` is made
    under it, not a second inference span.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        capture_content: bool | None = None,
        parent_context: Context | None = None,
        max_open_runs: int = 1024,
        auto: bool = False,
    ) -> None:
        self.tracer_provider = tracer_provider
        # without a provider this is the API's proxy: it follows the global provider once one is set
        self.tracer = trace.get_tracer(A.INSTRUMENTATION_NAME, _version(), tracer_provider=tracer_provider)
        self.capture_content = capture_content if capture_content is None else bool(capture_content)
        self.auto = auto
        self.parent_context = parent_context
        self.max_open_runs = max_open_runs
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, SearchTrace | _Pending] = OrderedDict()
        self._parents: OrderedDict[str, Context] = OrderedDict()

    # -- parent propagation -----------------------------------------------------------------------
    def set_parent(self, run_id: str, ctx: Context | None = None) -> None:
        """Parent the span of engine run ``run_id`` to ``ctx`` (default: the current context)."""
        with self._lock:
            self._parents[run_id] = ctx if ctx is not None else otel_context.get_current()
            while len(self._parents) > self.max_open_runs:
                self._parents.popitem(last=False)

    def context_kwargs(self, run_id: str | None = None) -> dict[str, str]:
        """``{"run_id": ...}`` for an engine call, with the current context registered as its parent.

        For calls whose search runs in a thread that does not inherit the caller's context
        (``engine.astream``): ``async for c in engine.astream(p, **tracer.context_kwargs()): ...``.
        """
        rid = run_id or uuid.uuid4().hex
        self.set_parent(rid)
        return {"run_id": rid}

    # -- observer -------------------------------------------------------------------------------------
    def __call__(self, event: GuardEvent) -> None:
        now = time.time_ns()
        if isinstance(event, SearchStarted):
            self._started(event, now)
            return
        rid = event.run_id
        state = self._runs.get(rid)  # lock-free fast path: nothing traced for this run
        if state is None:
            return
        if isinstance(state, _Pending):
            state = self._materialise(rid, state)
            if state is None:
                return
        result = event.result if isinstance(event, SearchFinished) else None
        if dispatch(state, event_name(event), event_to_dict(event), now, result):
            with self._lock:
                self._runs.pop(rid, None)

    def _started(self, event: SearchStarted, now: int) -> None:
        if not self.auto:
            claim_run(event.run_id, self)
        with self._lock:
            parent = self._parents.pop(event.run_id, None)
            if parent is None:
                parent = self.parent_context if self.parent_context is not None else otel_context.get_current()
            foreign = is_foreign_model_span(trace.get_current_span(parent))
            self._runs[event.run_id] = _Pending(event, parent, now, foreign)
            evicted = []
            while len(self._runs) > self.max_open_runs:
                evicted.append(self._runs.popitem(last=False)[1])
        for old in evicted:
            if isinstance(old, SearchTrace):
                old.abandon("evicted")

    def _materialise(self, rid: str, pending: _Pending) -> SearchTrace | None:
        with self._lock:
            if self._runs.get(rid) is not pending:
                state = self._runs.get(rid)
                return state if isinstance(state, SearchTrace) else None
            owner = claimed_by(rid)
            if owner is not None and owner != id(self):  # traced by a handler or an explicit tracer
                self._runs.pop(rid, None)
                return None
            capture = capture_content_from_env() if self.capture_content is None else self.capture_content
            state = SearchTrace(
                self.tracer,
                event_to_dict(pending.event),
                parent=pending.parent,
                start_ns=pending.start_ns,
                capture_content=capture,
                mode="search" if pending.foreign else "chat",
            )
            if not state.recording:  # no-op tracer / not sampled: nothing more to do for this run
                self._runs.pop(rid, None)
                return None
            self._runs[rid] = state
            return state

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def open_runs(self) -> int:
        return len(self._runs)

    def close(self) -> None:
        """End the spans of searches that never finished."""
        with self._lock:
            states = list(self._runs.values())
            self._runs.clear()
        for s in states:
            if isinstance(s, SearchTrace):
                s.abandon("closed")


InstrumentedObserver = GuardTracer


def auto_observer(tracer_provider: trace.TracerProvider | None = None, **_: Any) -> GuardTracer | None:
    """The engine's default tracer (entry point ``ig_middleware.observers:otel``): spans through the
    global provider, or ``tracer_provider``; None (no observer at all) when the environment turns
    OpenTelemetry or this instrumentation off (:func:`disabled_from_env`)."""
    if disabled_from_env():
        return None
    return GuardTracer(tracer_provider, auto=True)


def instrument(
    engine: Any, tracer_provider: trace.TracerProvider | None = None, *, capture_content: bool | None = None
) -> GuardTracer:
    """Add a :class:`GuardTracer` to ``engine`` (idempotent: an explicit one with the same provider is
    returned). The engine's automatic tracer stays and yields every run to it."""
    for obs in getattr(engine, "observers", ()):
        if isinstance(obs, GuardTracer) and not obs.auto and obs.tracer_provider is tracer_provider:
            return obs
    tracer = GuardTracer(tracer_provider, capture_content=capture_content)
    engine.add_observer(tracer)
    return tracer


def uninstrument(engine: Any) -> None:
    """Remove the tracers :func:`instrument` added (the automatic one stays: ``telemetry=False`` is its switch)."""
    for obs in [o for o in engine.observers if isinstance(o, GuardTracer) and not o.auto]:
        engine.observers.remove(obs)
        obs.close()


# -- SDK setup ------------------------------------------------------------------------------------------
def otlp_exporter(endpoint: str | None = None, protocol: str | None = None, headers: dict[str, str] | None = None):
    """An OTLP span exporter: HTTP/protobuf (default) or gRPC when asked for and installed.

    ``endpoint`` may be a base URL (``http://localhost:6006``; ``/v1/traces`` is appended for HTTP) or a
    full traces URL; None leaves it to the standard ``OTEL_EXPORTER_OTLP_*`` variables.
    """
    protocol = (
        (
            protocol
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        .strip()
        .lower()
    )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            log.warning(
                "OTLP protocol grpc requested but opentelemetry-exporter-otlp-proto-grpc is not installed; "
                "using http/protobuf"
            )
        else:
            return GrpcExporter(endpoint=endpoint, headers=headers) if endpoint else GrpcExporter(headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint is None:
        return OTLPSpanExporter(headers=headers)
    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return OTLPSpanExporter(endpoint=url, headers=headers)


def make_tracer_provider(
    endpoint: str | None = None,
    *,
    protocol: str | None = None,
    service_name: str = "ig-middleware",
    exporter: Any = None,
    batch: bool = True,
    resource_attributes: dict[str, Any] | None = None,
):
    """An SDK ``TracerProvider`` exporting to OTLP ``endpoint`` (or to ``exporter``).

    ``resource_attributes`` are added to the resource (e.g. ``{"openinference.project.name": "demo"}``
    picks the Phoenix project).
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attrs: dict[str, Any] = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    attrs.update(resource_attributes or {})
    provider = TracerProvider(resource=Resource.create(attrs))
    exp = exporter if exporter is not None else otlp_exporter(endpoint, protocol)
    provider.add_span_processor(BatchSpanProcessor(exp) if batch else SimpleSpanProcessor(exp))
    return provider


def configure_from_env(*, service_name: str = "ig-middleware", set_global: bool = True):
    """Set up tracing from the standard OpenTelemetry environment variables, if any.

    Configured when ``OTEL_TRACES_EXPORTER`` names ``otlp`` or ``console``, or when it is unset and an
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is given. Returns the provider
    (also made global unless ``set_global=False``; an SDK provider already global is returned as is), or
    None when nothing is configured: the API's no-op tracer then stays in place.
    """
    current = trace.get_tracer_provider()
    if set_global and type(current).__module__.startswith("opentelemetry.sdk"):
        return current
    if sdk_disabled_from_env():
        return None
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            names = ["otlp"]
        else:
            return None
    if names == ["none"]:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attrs))
    for name in names:
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(otlp_exporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name != "none":
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; ignored", name)
    if set_global:
        trace.set_tracer_provider(provider)
    return provider
