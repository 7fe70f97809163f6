"""Plain typed events the engine emits to observers.

The engine knows nothing of LangChain or OpenTelemetry: adapters subscribe with a callable that takes a
:data:`GuardEvent` and turn these into callbacks, spans or logs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import GuardResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchStarted:
    run_id: str
    model: str
    method: str
    prompt_tokens: int
    budget: float
    initial_safety_state: float
    config: dict = field(repr=False)
    prompt: str = field(default="", repr=False)
    backend: str = "transformers"  # where candidates are sampled (ig_middleware.sampling)


@dataclass(frozen=True)
class BlockEvaluated:
    """One block of the search scored: one entry per candidate the cost model (or critic) saw."""

    run_id: str
    block_index: int
    attempt: int  # 0 for the first sample, 1..M for resamples
    candidates: int
    safe_candidates: int
    safety_states: tuple[float, ...]
    costs: tuple[float, ...]
    judge_calls: int
    critic_used: bool
    seconds: float

    @property
    def min_safety_state(self) -> float:
        return min(self.safety_states) if self.safety_states else float("nan")

    @property
    def max_safety_state(self) -> float:
        return max(self.safety_states) if self.safety_states else float("nan")


@dataclass(frozen=True)
class Resampled:
    """No candidate of a block was safe: logits of tokens seen in unsafe candidates are penalised."""

    run_id: str
    block_index: int
    attempt: int
    penalised_tokens: int


@dataclass(frozen=True)
class BlockCommitted:
    """Text that passed the safety check and is final (streamed to the user)."""

    run_id: str
    block_index: int
    text: str
    safety_state: float
    cost: float


@dataclass(frozen=True)
class FallbackUsed:
    run_id: str
    block_index: int
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class SearchFinished:
    run_id: str
    result: GuardResult = field(repr=False)


GuardEvent = SearchStarted | BlockEvaluated | Resampled | BlockCommitted | FallbackUsed | SearchFinished
Observer = Callable[[GuardEvent], None]


EVENT_NAMES: dict[type, str] = {
    SearchStarted: "search_started",
    BlockEvaluated: "block_evaluated",
    Resampled: "resampled",
    BlockCommitted: "block_committed",
    FallbackUsed: "fallback",
    SearchFinished: "search_finished",
}


def event_name(event: GuardEvent) -> str:
    """Stable short name of an event (used for LangChain custom events: ``inferenceguard.<name>``)."""
    return EVENT_NAMES[type(event)]


def event_to_dict(event: GuardEvent) -> dict:
    """A JSON-friendly view of an event (no tensors; the result is summarised)."""
    if isinstance(event, SearchFinished):
        r = event.result
        return {
            "run_id": event.run_id,
            "finish_reason": r.finish_reason,
            "safety_state": r.safety_state,
            "cost": r.cost,
            "budget": r.budget,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "candidates_sampled": r.candidates_sampled,
            "sampled_tokens": r.sampled_tokens,
            "resamples": r.resamples,
            "blocks": r.blocks,
            "judge_calls": r.judge_calls,
            "critic_calls": r.critic_calls,
            "fallback_reason": r.fallback_reason,
            "model": r.model,
            "method": r.method,
            "backend": r.backend,
            "critic_used": r.critic_used,
            "seconds": r.timings.total_s,
        }
    out = {f: getattr(event, f) for f in event.__dataclass_fields__}
    if isinstance(event, BlockEvaluated):
        out["safety_states"], out["costs"] = list(event.safety_states), list(event.costs)
        out["min_safety_state"], out["max_safety_state"] = event.min_safety_state, event.max_safety_state
    return out


# -- observer plugins ---------------------------------------------------------------------------------
OBSERVER_PLUGINS = "ig_middleware.observers"
"""Entry-point group of observer factories that every engine attaches by default.

A factory is called as ``factory(tracer_provider=...)`` and returns an :data:`Observer` or None (off).
The package registers its OpenTelemetry tracer here, which is how spans appear without code changes
while the engine itself imports nothing of OpenTelemetry.
"""


@functools.cache
def _plugin_factories() -> tuple[tuple[str, Callable[..., Any]], ...]:
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=OBSERVER_PLUGINS):
        try:
            out.append((ep.name, ep.load()))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the engine
            log.warning("observer plugin %s failed to load: %s", ep.name, exc)
    return tuple(out)


def plugin_observers(**options: Any) -> list[Observer]:
    """The observers of the installed plugins (group :data:`OBSERVER_PLUGINS`), given ``options``."""
    observers = []
    for name, factory in _plugin_factories():
        try:
            observer = factory(**options)
        except Exception as exc:  # noqa: BLE001
            log.warning("observer plugin %s failed: %s", name, exc)
            continue
        if observer is not None:
            observers.append(observer)
    return observers
