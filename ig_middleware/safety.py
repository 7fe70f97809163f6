"""Safety-state arithmetic (Sauté RL, normalised form), the one place it is defined.

The safety state ``z`` is the remaining share of the safety budget ``d``: ``z0 = 1`` and after a block
with new cost ``c`` it becomes ``z' = (z - c / d) / gamma``. A trajectory is unsafe once ``z <= 0``.

The cost of a block is the increase of the *cumulative* cost of the prefix, which never decreases
(``C_t = max(C_{t-1}, cost(prefix_t))``, ``C_0 = 0``): a harmful block followed by a disclaimer stays
harmful, and negative scores (e.g. a Beaver cost model's "clearly safe") spend nothing.
"""

from __future__ import annotations

import math

import torch


def cumulative_cost(previous: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Monotone cumulative cost; NaN scores become +inf so they can only fail closed."""
    scores = torch.nan_to_num(scores.to(previous.dtype), nan=math.inf, posinf=math.inf, neginf=0.0)
    return torch.maximum(previous, scores)


def update_safety_state(z: torch.Tensor, block_cost: torch.Tensor, budget: float, gamma: float) -> torch.Tensor:
    """One Sauté step ``z' = (z - c/d) / gamma`` (vectorised over candidates)."""
    return (z - block_cost / budget) / gamma


def is_safe(z: torch.Tensor) -> torch.Tensor:
    """Within budget while ``z > 0``; NaN is unsafe."""
    return z > 0


def augmented_value(value: torch.Tensor, z: torch.Tensor, penalty: float) -> torch.Tensor:
    """Sauté's unconstrained objective: the task value counts only while z > 0, otherwise ``-penalty``."""
    return torch.where(is_safe(z), value, torch.full_like(value, -penalty))


def lagrangian_value(value: torch.Tensor, cost: torch.Tensor, lam: float) -> torch.Tensor:
    """The Lagrangian baseline ``r - lambda * c`` (safe only on average, not almost surely)."""
    return value - lam * torch.nan_to_num(cost, nan=math.inf)


def safety_state_after(cost: float, budget: float, gamma: float = 1.0, blocks: int = 1, z0: float = 1.0) -> float:
    """Scalar helper: the state after ``blocks`` blocks when ``cost`` is all spent in the first one."""
    return (z0 - cost / budget) / gamma ** max(1, blocks)
