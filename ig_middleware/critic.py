"""The latent critic of InferenceGuard: a small MLP on the LM's last hidden state and the safety state.

The paper (arXiv 2502.01208, Sec. 4) learns a critic in the LM's latent space with two outputs: the
probability that the answer ends within the safety budget, and the expected future task value. The engine
(:meth:`GuardedEngine._critic_prune`) calls :meth:`LatentCritic.predict` with the hidden state at the end of
each candidate block and the *parent's* safety state ``z`` (the state before the block's cost is spent), ranks
the candidates, and sends only the best ``critic_keep`` to the cost model, which still computes the safety
state of whatever is committed: the critic saves judge calls, it never decides safety on its own.

Safety head, by construction monotone in ``z``. The answer ends within budget iff the cost still to come
(from this block on, in budget shares) is below ``z``: ``P(safe | h, z) = P(F < z | h)``. The head models
``F | h`` as a logistic distribution with location ``mu(h)`` and scale ``s(h)``, so
``p_safe = sigmoid((z - mu(h)) / s(h))``; more budget can never look less safe.

Value head: the discounted final task reward ``gamma^(T-t) * R(x, y_T)`` from the block's hidden state.

Weights ship as ``ig_middleware/weights/critic_<model>.safetensors`` plus a JSON config (hidden size,
width, model name, gamma, budget, training statistics); :func:`load_default_critic` finds them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).with_name("weights")
_MIN_SCALE = 1e-3


def _slug(model_name: str) -> str:
    """File-name form of a model name: ``HuggingFaceTB/SmolLM2-135M`` -> ``huggingfacetb_smollm2-135m``."""
    return re.sub(r"[^a-z0-9._-]+", "_", str(model_name).strip().lower()).strip("_")


def critic_paths(model_name: str, weights_dir: str | Path = WEIGHTS_DIR) -> tuple[Path, Path]:
    """(weights, config) paths of the critic for ``model_name`` in ``weights_dir``."""
    d = Path(weights_dir)
    stem = f"critic_{_slug(model_name)}"
    return d / f"{stem}.safetensors", d / f"{stem}.json"


class LatentCritic(nn.Module):
    """MLP critic over ``[normalised hidden state]`` with a monotone-in-``z`` safety head and a value head.

    Args:
        hidden_size: the LM's hidden size (576 for SmolLM2-135M).
        width: MLP width.
        model_name: the LM the critic was trained on (hidden states of another model are meaningless to it).
        gamma, budget: the safety-state discount and budget of the training targets (recorded, not used).
        dropout: dropout in training.
    """

    def __init__(
        self,
        hidden_size: int = 576,
        width: int = 256,
        *,
        model_name: str = "smollm2-135m-instruct",
        gamma: float = 0.999,
        budget: float = 10.0,
        dropout: float = 0.1,
        stats: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size, self.width = int(hidden_size), int(width)
        self.model_name, self.gamma, self.budget = model_name, float(gamma), float(budget)
        self.dropout = float(dropout)
        self.stats: dict[str, Any] = dict(stats or {})
        # input standardisation, set from the training data (identity until then)
        self.register_buffer("h_mean", torch.zeros(self.hidden_size))
        self.register_buffer("h_std", torch.ones(self.hidden_size))
        self.register_buffer("v_mean", torch.zeros(()))
        self.register_buffer("v_std", torch.ones(()))
        self.trunk = nn.Sequential(
            nn.Linear(self.hidden_size, self.width),
            nn.GELU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.width, self.width),
            nn.GELU(),
            nn.Dropout(self.dropout),
        )
        self.safety_head = nn.Linear(self.width, 2)  # location mu, raw scale of the future-cost distribution
        self.value_head = nn.Linear(self.width, 1)

    # -- forward ------------------------------------------------------------------------------------------
    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.trunk((hidden - self.h_mean) / self.h_std)

    def forward(self, hidden: torch.Tensor, safety_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (safety logit [n], normalised value [n]); ``p_safe = sigmoid(logit)``."""
        f = self.features(hidden)
        loc_raw = self.safety_head(f)
        mu, scale = loc_raw[:, 0], nn.functional.softplus(loc_raw[:, 1]) + _MIN_SCALE
        logit = (safety_state - mu) / scale
        return logit, self.value_head(f).squeeze(-1)

    def predict(self, hidden: torch.Tensor, safety_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p_safe [n], value [n])`` for hidden states ``[n, H]`` and safety states ``[n]`` (float32, CPU).

        Non-finite inputs give ``p_safe = 0`` (fail closed: such a candidate is ranked last).
        """
        hidden = torch.as_tensor(hidden).detach().to("cpu", torch.float32)
        if hidden.ndim == 1:
            hidden = hidden[None]
        z = torch.as_tensor(safety_state).detach().to("cpu", torch.float32).reshape(-1)
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"critic expects hidden size {self.hidden_size}, got {hidden.shape[-1]}")
        if z.numel() == 1 and hidden.shape[0] != 1:
            z = z.expand(hidden.shape[0])
        if z.numel() != hidden.shape[0]:
            raise ValueError(f"{hidden.shape[0]} hidden states but {z.numel()} safety states")
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                ok = torch.isfinite(hidden).all(-1) & torch.isfinite(z)
                logit, v = self.forward(torch.nan_to_num(hidden), torch.nan_to_num(z))
                p_safe = torch.where(ok, torch.sigmoid(logit), torch.zeros_like(logit))
                p_safe = torch.where(z > 0, p_safe, torch.zeros_like(p_safe))  # nothing left: unsafe
                value = torch.where(ok, v * self.v_std + self.v_mean, torch.full_like(v, -math.inf))
        finally:
            self.train(was_training)
        return p_safe.float(), value.float()

    # -- persistence -------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "kind": "latent_critic",
            "hidden_size": self.hidden_size,
            "width": self.width,
            "model_name": self.model_name,
            "gamma": self.gamma,
            "budget": self.budget,
            "dropout": self.dropout,
            "stats": self.stats,
        }

    def save(self, out_dir: str | Path, name: str | None = None) -> tuple[Path, Path]:
        """Write ``critic_<model>.safetensors`` and ``critic_<model>.json`` into ``out_dir``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        weights, cfg = critic_paths(name or self.model_name, out)
        state = {k: v.detach().contiguous().cpu().float() for k, v in self.state_dict().items()}
        save_file(state, str(weights), metadata={"format": "pt"})
        cfg.write_text(json.dumps(self.config(), indent=2) + "\n", encoding="utf-8")
        return weights, cfg

    @classmethod
    def load(cls, path: str | Path, model_name: str | None = None) -> LatentCritic:
        """Load from a folder (with ``model_name`` choosing the file, else the only critic in it) or from the
        ``.safetensors``/``.json`` path itself."""
        from safetensors.torch import load_file

        from .errors import ModelLoadError

        p = Path(path)
        if p.is_dir():
            if model_name is not None:
                weights, cfg_path = critic_paths(model_name, p)
            else:
                found = sorted(p.glob("critic_*.safetensors"))
                if len(found) != 1:
                    raise ModelLoadError(str(p), f"expected one critic_*.safetensors, found {len(found)}")
                weights, cfg_path = found[0], found[0].with_suffix(".json")
        else:
            weights, cfg_path = p.with_suffix(".safetensors"), p.with_suffix(".json")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            state = load_file(str(weights))
            critic = cls(
                cfg["hidden_size"],
                cfg["width"],
                model_name=cfg.get("model_name", ""),
                gamma=cfg.get("gamma", 0.999),
                budget=cfg.get("budget", 10.0),
                dropout=cfg.get("dropout", 0.1),
                stats=cfg.get("stats", {}),
            )
            critic.load_state_dict(state)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - surfaced as a typed error naming the file
            raise ModelLoadError(str(weights), f"{type(exc).__name__}: {exc}") from exc
        return critic.eval()


def load_default_critic(model_name: str | Any = "smollm2-135m-instruct") -> LatentCritic | None:
    """The critic shipped for ``model_name`` (a name or a :class:`LoadedModel`), or ``None`` if none ships.

    Usage: ``GuardedEngine(model, critic=load_default_critic(model))``.
    """
    name = getattr(model_name, "name", model_name)
    weights, cfg = critic_paths(str(name))
    if not (weights.is_file() and cfg.is_file()):
        return None
    return LatentCritic.load(weights)


__all__ = ["LatentCritic", "critic_paths", "load_default_critic"]
