"""Where candidates come from: a sampling backend per engine, a sampler per search.

The search (:mod:`ig_middleware.engine`) asks its sampler for continuations of ``steps`` tokens for each of
its beams, and tells it which candidates became the next beams. That is the whole contract:

* :class:`LocalBackend` runs a transformers model in process, one KV cache per search whose rows are
  reused by the candidates and cropped back on a resample; it also returns the last hidden state of every
  candidate, which the latent critic reads.
* :class:`~ig_middleware.remote.OpenAICompletionsBackend` asks an OpenAI-compatible completions server
  (vLLM) per beam; no hidden states come over the API, so the latent critic is off there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .config import GuardConfig
from .errors import IGError
from .models import LoadedModel

TOP_K = 256  # candidates per step considered by nucleus sampling


class BackendError(IGError):
    """The sampling backend failed (server gone, bad answer, timeout). The search fails closed on it."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend} backend: {reason}")
        self.backend = backend
        self.reason = reason


@dataclass
class BlockSample:
    """One block for every candidate; candidate ``i`` continues beam ``parents[i]``."""

    tokens: list[list[int]]  # the new tokens, EOS excluded
    logp: list[float]  # their summed log-probability under the model
    eos: list[bool]  # the candidate ended with EOS within the block
    steps: int  # tokens sampled per candidate (<= the block size asked for)
    hidden: torch.Tensor | None = None  # (n, H) last hidden state per candidate, when the backend has them


class SearchContext(Protocol):
    """What a sampler reads of the search it serves."""

    cfg: GuardConfig
    generator: torch.Generator | None
    eos: list[int]

    def check_time(self) -> None: ...


class Sampler(Protocol):
    def sample(
        self,
        prefixes: Sequence[list[int]],
        parents: Sequence[int],
        steps: int,
        penalty: Mapping[int, float],
        resample: bool,
    ) -> BlockSample:
        """Sample ``steps`` tokens per candidate. ``prefixes`` are the beams' answer tokens so far,
        ``penalty`` the logit down-weight per token id (resampling), ``resample`` repeats the last block."""
        ...

    def retain(self, rows: Sequence[int]) -> None:
        """Candidates ``rows`` of the last block are the next beams, in this order."""
        ...


class SamplingBackend(Protocol):
    name: str
    hidden_states: bool  # BlockSample.hidden is filled (the latent critic can run)

    @property
    def lm(self) -> LoadedModel:
        """Tokenizer, chat template and config of the model (weights only for the local backend)."""
        ...

    def lock(self) -> AbstractContextManager[Any]:
        """Held for a whole search: serialises searches that share in-process weights."""
        ...

    def open(self, prompt_ids: list[int], ctx: SearchContext) -> Sampler: ...


# -- local: a transformers model in process ------------------------------------------------------------
class LocalBackend:
    """The in-process backend over a :class:`~ig_middleware.models.LoadedModel`."""

    name = "transformers"
    hidden_states = True

    def __init__(self, lm: LoadedModel) -> None:
        self._lm = lm

    @property
    def lm(self) -> LoadedModel:
        return self._lm

    def lock(self) -> AbstractContextManager[Any]:
        return self._lm.lock

    def open(self, prompt_ids: list[int], ctx: SearchContext) -> Sampler:
        return _LocalSampler(self._lm, prompt_ids, ctx)


class _LocalSampler:
    """One KV cache for the search: row i of the cache is candidate i while a block is sampled."""

    def __init__(self, lm: LoadedModel, prompt_ids: list[int], ctx: SearchContext) -> None:
        self.lm, self.ctx = lm, ctx
        with torch.inference_mode():
            out = lm.model(input_ids=torch.tensor([prompt_ids], device=lm.device), use_cache=True)
        self.cache = out.cache if "cache" in out else out.past_key_values
        self.logits = out.logits[:, -1, :].float()  # next-token logits, one row per beam
        self.start: torch.Tensor = self.logits
        self.new_logits: torch.Tensor = self.logits
        self.added = 0

    def sample(
        self,
        prefixes: Sequence[list[int]],
        parents: Sequence[int],
        steps: int,
        penalty: Mapping[int, float],
        resample: bool,
    ) -> BlockSample:
        cfg, lm = self.ctx.cfg, self.lm
        rows = torch.tensor(list(parents))
        if resample:
            self.cache.crop(-self.added)  # back to the block start: resample from the same rows
        else:
            self.cache.reorder_cache(rows.to(lm.device))
            self.start = self.logits[rows]
        logits = self.start
        bias = torch.zeros(logits.shape[-1])
        if penalty:
            bias[list(penalty)] = torch.tensor(list(penalty.values()), dtype=bias.dtype)
        n = rows.numel()
        tokens = torch.empty(n, steps, dtype=torch.long)
        logp = torch.zeros(n)
        done_at = torch.full((n,), steps, dtype=torch.long)  # index of EOS within the block
        hidden = torch.zeros(0)
        prefix_len = len(prefixes[0])
        eos = torch.tensor(self.ctx.eos, dtype=torch.long)
        for step in range(steps):
            self.ctx.check_time()
            masked = logits - bias
            if prefix_len + step < cfg.min_new_tokens and eos.numel():
                masked[:, eos] = -math.inf
            token = self._choose(masked)
            logp += torch.log_softmax(logits, -1).gather(1, token[:, None]).squeeze(1) * (done_at == steps)
            tokens[:, step] = token
            if eos.numel():
                hit = torch.isin(token, eos) & (done_at == steps)
                done_at[hit] = step
            with torch.inference_mode():
                out = lm.model(
                    input_ids=token[:, None].to(lm.device),
                    **{lm.cache_kwarg: self.cache},
                    use_cache=True,
                    output_hidden_states=True,  # the critic reads the last layer: no second pass
                )
            logits = out.logits[:, -1, :].float().cpu()
            last_h = out.hidden_states[-1][:, -1, :].float().cpu()
            hidden = last_h if step == 0 else torch.where((done_at >= step)[:, None], last_h, hidden)
            if bool((done_at < steps).all()):  # every candidate ended: stop feeding tokens
                break
        steps_done = step + 1
        self.new_logits, self.added = logits, steps_done
        return BlockSample(
            tokens=[tokens[i, : min(int(done_at[i]), steps_done)].tolist() for i in range(n)],
            logp=logp.tolist(),
            eos=[bool(done_at[i] < steps) for i in range(n)],
            steps=steps_done,
            hidden=hidden,
        )

    def retain(self, rows: Sequence[int]) -> None:
        idx = torch.tensor(list(rows))
        self.cache.reorder_cache(idx.to(self.lm.device))
        self.logits = self.new_logits[idx]

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.ctx.cfg
        if cfg.temperature == 0 or cfg.method == "greedy":
            return logits.argmax(-1)
        # Nucleus sampling inside the top-k: sorting the whole vocabulary per step costs more than the
        # model's forward pass on a CPU, and the tail beyond TOP_K holds negligible mass.
        top_logits, top_ids = logits.topk(min(TOP_K, logits.shape[-1]), dim=-1)
        probs = torch.softmax(top_logits / cfg.temperature, -1)
        if cfg.top_p < 1:
            drop = probs.cumsum(-1) - probs > cfg.top_p
            probs = probs.masked_fill(drop, 0.0)
        pick = torch.multinomial(probs, 1, generator=self.ctx.generator)
        return top_ids.gather(1, pick).squeeze(1)
