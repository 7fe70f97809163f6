"""OpenTelemetry for InferenceGuard: spans for searches, blocks and safety events.

* :class:`GuardTracer` / :func:`instrument`: an engine observer producing ``chat {model}`` spans with
  ``inferenceguard.block`` children and a ``gen_ai.evaluation.result`` event (the final safety state).
* :class:`~ig_middleware.telemetry.langchain.OpenTelemetryCallbackHandler` (import from
  ``ig_middleware.telemetry.langchain``): LangChain runs as spans, safety events nested under the run
  that caused them.
* :func:`configure_from_env` / :func:`make_tracer_provider`: OTLP export set-up.
* :mod:`ig_middleware.telemetry.attributes`: every span, attribute and event name.

Nothing here is imported by the engine: every engine gets :func:`auto_observer` through the entry point
``ig_middleware.observers`` (off with ``GuardedEngine(telemetry=False)``, ``OTEL_SDK_DISABLED=true`` or
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=ig_middleware``). With no SDK configured the OpenTelemetry API's
no-op tracer is used and the overhead per search is a few dictionary look-ups.
"""

from . import attributes
from .tracer import (
    GuardTracer,
    InstrumentedObserver,
    auto_observer,
    capture_content_from_env,
    configure_from_env,
    disabled_from_env,
    instrument,
    make_tracer_provider,
    otlp_exporter,
    uninstrument,
)

__all__ = [
    "GuardTracer",
    "InstrumentedObserver",
    "attributes",
    "auto_observer",
    "capture_content_from_env",
    "configure_from_env",
    "disabled_from_env",
    "instrument",
    "make_tracer_provider",
    "otlp_exporter",
    "uninstrument",
]
