"""Plain typed events the engine emits to observers.

The engine knows nothing of LangChain or OpenTelemetry: adapters subscribe with a callable that takes a
:data:`GuardEvent` and turn these into callbacks, spans or logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import GuardResult


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
