"""What a guarded generation returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

FinishReason = Literal["stop", "length", "safety_fallback"]
FallbackReason = Literal[
    "no_safe_candidate",
    "cost_model_error",
    "cost_model_timeout",
    "cost_model_invalid",
    "timeout",
    "budget_exhausted",
    "backend_error",  # the sampling backend (e.g. a vLLM server) failed
]


@dataclass
class Timings:
    prefill_s: float = 0.0
    sampling_s: float = 0.0
    judge_s: float = 0.0
    critic_s: float = 0.0
    total_s: float = 0.0


@dataclass
class GuardResult:
    """The answer and the safety outcome of one search.

    ``safety_state`` is the final z (> 0 means within budget w.r.t. the cost model) and ``cost`` the
    cumulative cost the cost model gave the returned text. With ``finish_reason == "safety_fallback"``
    the text is the configured fallback (after any text already committed while streaming).
    """

    text: str
    finish_reason: FinishReason
    safety_state: float
    cost: float
    budget: float
    input_tokens: int
    output_tokens: int
    candidates_sampled: int
    resamples: int
    blocks: int
    judge_calls: int
    sampled_tokens: int = 0
    critic_calls: int = 0
    fallback_reason: FallbackReason | None = None
    fallback_detail: str = ""
    model: str = ""
    method: str = "inferenceguard"
    run_id: str = ""
    backend: str = "transformers"  # where candidates were sampled (ig_middleware.sampling)
    critic_used: bool = False  # the latent critic pruned candidates (needs hidden states: local backends only)
    timings: Timings = field(default_factory=Timings)
    hidden_states: torch.Tensor | None = field(default=None, repr=False)  # [blocks, hidden]: critic training
    block_texts: list[str] = field(default_factory=list, repr=False)  # the answer's prefix at each block

    @property
    def safe(self) -> bool:
        """Within budget by the cost model (always true for a returned answer when the budget is enforced)."""
        return self.safety_state > 0

    @property
    def used_fallback(self) -> bool:
        return self.finish_reason == "safety_fallback"
