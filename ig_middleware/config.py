"""Validated configuration of a guarded generation (pydantic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

Method = Literal["greedy", "sample", "best_of_n", "beam", "inferenceguard"]
SafetyMode = Literal["none", "lagrangian", "augmented"]
StreamCommit = Literal["best", "consensus"]

DEFAULT_FALLBACK = "I'm sorry, but I can't help with that request."


class GuardConfig(BaseModel):
    """How to search. Names follow the paper (arXiv 2502.01208): budget ``d``, discount ``gamma``,
    block size ``B``, ``N`` candidates per block, ``K`` beams kept, ``M`` resamples.

    The defaults are sized for a CPU (N=16, K=4); :meth:`paper` gives the paper's settings.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    method: Method = Field("inferenceguard", description="Search method; the non-IG ones are the paper's baselines.")
    safety_mode: SafetyMode = Field(
        "augmented", description="How baselines use the cost: ignore it, r - lambda*c, or Sauté's augmented value."
    )
    lagrangian_lambda: float = Field(5.0, ge=0, description="lambda of the Lagrangian baseline.")
    budget: float = Field(10.0, gt=0, description="Safety budget d: cumulative cost allowed per answer.")
    gamma: float = Field(0.999, gt=0, le=1, description="Discount of the safety state.")
    block_size: int = Field(32, ge=1, le=4096, description="B: tokens sampled per candidate per block.")
    num_candidates: int = Field(16, ge=1, le=4096, description="N: candidates sampled per block.")
    num_beams: int = Field(4, ge=1, le=4096, description="K: beams kept after each block.")
    max_retries: int = Field(2, ge=0, le=16, description="M: resamples when no candidate is safe.")
    max_new_tokens: int = Field(256, ge=1, le=32768)
    min_new_tokens: int = Field(0, ge=0, description="EOS is suppressed before this many tokens.")
    temperature: float = Field(0.8, ge=0, le=10, description="0 means greedy token choice.")
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int | None = Field(None, description="Seed for reproducible sampling.")
    penalty: float = Field(100.0, ge=0, description="Value given to a candidate whose safety state is exhausted.")
    resample_penalty: float = Field(4.0, ge=0, description="Logit down-weight of tokens seen in unsafe candidates.")
    fallback: str | Callable[[str], str] = Field(
        DEFAULT_FALLBACK, description="Safe answer (or a function of the prompt) when no safe candidate exists."
    )
    stop: list[str] = Field(default_factory=list, description="Stop sequences (may span several tokens).")
    timeout_s: float | None = Field(None, gt=0, description="Deadline for one search; on expiry it fails closed.")
    judge_timeout_s: float | None = Field(60.0, gt=0, description="Deadline for one cost-model call.")
    enforce_budget: bool = Field(
        True, description="Never return or stream text whose safety state is exhausted (the guarantee)."
    )
    use_critic: bool = Field(True, description="Use the latent critic (if the engine has one) to prune candidates.")
    critic_keep: int | None = Field(
        None, ge=1, description="Candidates per block the judge still scores (default 2K, or N/2 when 2K >= N)."
    )
    stream_commit: StreamCommit = Field(
        "best", description="'best': commit the best safe beam each block; 'consensus': what all beams share."
    )

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: list[str]) -> list[str]:
        if any(s == "" for s in stop):
            raise ValueError("stop sequences must be non-empty strings")
        return stop

    @model_validator(mode="after")
    def _check_search_shape(self) -> GuardConfig:
        if self.num_beams > self.num_candidates:
            raise ValueError(f"num_beams (K={self.num_beams}) must be <= num_candidates (N={self.num_candidates})")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must be <= max_new_tokens")
        return self

    @field_serializer("fallback")
    def _ser_fallback(self, fallback: str | Callable[[str], str]) -> str:
        return fallback if isinstance(fallback, str) else getattr(fallback, "__name__", "callable")

    @classmethod
    def paper(cls, **overrides: object) -> GuardConfig:
        """The paper's settings (Table 1): B=32, N=128, K=N/4, M=2, d=10, gamma=0.999, depth 128."""
        base: dict[str, object] = dict(
            block_size=32,
            num_candidates=128,
            num_beams=32,
            max_retries=2,
            budget=10.0,
            gamma=0.999,
            max_new_tokens=128,
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def fallback_text(self, prompt: str) -> str:
        """The configured safe answer for ``prompt``."""
        return self.fallback if isinstance(self.fallback, str) else str(self.fallback(prompt))

    def search_shape(self) -> tuple[int, int, int]:
        """Effective (N, K, B) of the method: the baselines are special cases of the block search."""
        if self.method in ("greedy", "sample"):
            return 1, 1, self.block_size
        if self.method == "best_of_n":
            return self.num_candidates, 1, self.max_new_tokens
        return self.num_candidates, self.num_beams, self.block_size
