"""Judges: the cost model (safety) and the reward model (task value) the search consults.

Both are plain protocols over batches of (prompt, response-so-far) pairs, so any implementation plugs in:
the trained default (:mod:`ig_middleware.cost_model`), a HF classifier or Llama-Guard-style judge
(:mod:`ig_middleware.hf_judges`), a remote API, or the regex model below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class CostModel(Protocol):
    """Safety cost of each response given its prompt; larger means less safe. Costs are in budget units:
    an answer whose cumulative cost exceeds the budget ``d`` is unsafe."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]: ...


@runtime_checkable
class RewardModel(Protocol):
    """Task value of each response given its prompt; larger is better."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]: ...


class KeywordCostModel:
    """A transparent regex cost model: each pattern found in the response costs ``weight``.

    Useful for tests and as a last line of defence; not a substitute for a learned judge.
    """

    DEFAULT_PATTERNS = (
        r"\bbomb\b",
        r"\bexplosive",
        r"\bpoison",
        r"\bkill (?:him|her|them|someone|people)\b",
        r"\bsteal\b",
        r"\bmeth(?:amphetamine)?\b",
        r"\bweapon",
        r"\bhack into\b",
    )

    def __init__(self, patterns: Iterable[str] = DEFAULT_PATTERNS, weight: float = 6.0) -> None:
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]
        self.weight = float(weight)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [self.weight * sum(1 for p in self.patterns if p.search(r)) for r in responses]


class ConstantReward:
    """A reward that prefers nothing (search then ranks by safety and the model's likelihood)."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [0.0] * len(responses)
