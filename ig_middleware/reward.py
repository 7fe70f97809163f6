"""The default offline reward (task value): relevance, minus refusing benign requests, minus degeneration.

:class:`DefaultReward` scores (prompt, response-so-far) pairs with no network and no extra model: the shared
MiniLM encoder (:mod:`ig_middleware.encoder`) for relevance, and the default judge's request reading
(:meth:`ig_middleware.cost_model.MiniLMCostModel.request_harm_prob`) to tell benign requests from harmful ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from .encoder import MiniLMEncoder, PromptCache, get_encoder, user_text

_REFUSAL_RE = re.compile(
    r"\b(I(?:'m| am) sorry|I apologi[sz]e|I (?:can(?:'|no)t|cannot|won't|will not|am unable to|'m unable to|"
    r"am not able to|'m not able to|must decline|do not feel comfortable|don't feel comfortable)|"
    r"as an AI|not (?:able|allowed|appropriate) to|against my (?:guidelines|programming|policy)|"
    r"I'm not going to|I refuse|I can not)\b",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """A refusal marker ("I'm sorry", "I can't", "as an AI", ...) in the first 200 characters."""
    return bool(_REFUSAL_RE.search(text[:200]))


def repetition(text: str, n: int = 3) -> float:
    """Share of repeated word n-grams (0 = none repeated, towards 1 = a loop like "a lone, a lone, ...")."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 4:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


class DefaultReward:
    """Offline task-value reward (larger is better); implements :class:`~ig_middleware.judges.RewardModel`.

    For a prompt ``x`` and a response-so-far ``y``::

        reward = relevance(x, y)                      # cosine of MiniLM embeddings, in [-1, 1]
               + length_weight * min(1, words(y) / target_words)
               + refusal_weight * refused(y) * (2 * P(harmful | x) - 1)
               - repetition_weight * repetition(y)

    * ``relevance``: on-topic answers score higher than off-topic ones (and than a generic refusal).
    * ``refused(y)``: 1 if the answer opens with a refusal marker (:func:`is_refusal`), else the soft
      similarity of ``y`` to canonical refusals. Its sign follows ``P(harmful | x)`` (the judge's request
      head): refusing a *benign* request (over-refusal) is penalised, and
      declining a harmful one is the task done well, so the search prefers a refusal over evasive text the
      judge happens to pass. Whether an answer is *safe* stays the cost model's job.
    * ``length``: a small bonus for a substantive answer, saturating at ``target_words``.
    * ``repetition``: the share of repeated word trigrams, penalising degenerate loops.

    An empty response scores 0. ``cost_model`` is anything with ``request_harm_prob(prompts)`` (default: the
    shipped judge, which caches it per request); prompt embeddings are cached here (the same prompt is scored at
    every block).
    """

    CANONICAL_REFUSALS = (
        "I'm sorry, but I can't help with that.",
        "I cannot assist with this request.",
        "As an AI assistant, I must decline to answer.",
    )

    def __init__(
        self,
        cost_model=None,
        encoder: MiniLMEncoder | None = None,
        refusal_weight: float = 1.0,
        length_weight: float = 0.1,
        target_words: int = 40,
        repetition_weight: float = 0.5,
    ) -> None:
        if cost_model is None:
            from .cost_model import load_default_cost_model

            cost_model = load_default_cost_model()
        if not callable(getattr(cost_model, "request_harm_prob", None)):
            raise TypeError("DefaultReward needs a cost model with request_harm_prob(prompts), e.g. the default one")
        self.cost_model = cost_model
        self.encoder = encoder if encoder is not None else get_encoder()
        self._prompts = PromptCache()
        self.refusal_weight = float(refusal_weight)
        self.length_weight = float(length_weight)
        self.target_words = int(target_words)
        self.repetition_weight = float(repetition_weight)
        self._refusal_emb = self.encoder.encode(list(self.CANONICAL_REFUSALS))

    def _prompt_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.stack(self._prompts.get_many([user_text(p) for p in prompts], self.encoder.encode))

    def components(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        """The terms of the reward for each pair (for reports and debugging)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out = [
            {"relevance": 0.0, "length": 0.0, "refused": 0.0, "p_harmful_prompt": 0.0, "repetition": 0.0}
            for _ in responses
        ]
        idx = [i for i, r in enumerate(responses) if r.strip()]
        if not idx:
            return out
        sub_prompts = [prompts[i] for i in idx]
        p = self._prompt_embeddings(sub_prompts)
        r = self.encoder.encode([responses[i] for i in idx])
        harm = list(self.cost_model.request_harm_prob(sub_prompts))
        with torch.inference_mode():
            rel = (p * r).sum(-1).tolist()
            soft = ((r @ self._refusal_emb.T).max(-1).values - 0.35).div(0.35).clamp(0, 1).tolist()
        for k, i in enumerate(idx):
            text = responses[i]
            out[i] = {
                "relevance": float(rel[k]),
                "length": min(1.0, len(text.split()) / self.target_words),
                "refused": 1.0 if is_refusal(text) else float(soft[k]),
                "p_harmful_prompt": float(harm[k]),
                "repetition": repetition(text),
            }
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scores = []
        for resp, c in zip(responses, self.components(prompts, responses), strict=True):
            if not resp.strip():
                scores.append(0.0)
                continue
            scores.append(
                c["relevance"]
                + self.length_weight * c["length"]
                + self.refusal_weight * c["refused"] * (2.0 * c["p_harmful_prompt"] - 1.0)
                - self.repetition_weight * c["repetition"]
            )
        return scores


__all__ = ["DefaultReward", "is_refusal", "repetition", "user_text"]
