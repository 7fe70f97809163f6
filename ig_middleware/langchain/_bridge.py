"""Shared plumbing of the LangChain adapters: engine sharing, config overrides, and forwarding engine
events to LangChain callbacks as custom events (``inferenceguard.<event name>``)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackHandler, BaseCallbackManager, CallbackManager
from langchain_core.runnables import ensure_config
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..config import GuardConfig
from ..engine import GuardedEngine
from ..events import GuardEvent, event_name, event_to_dict
from ..models import DEFAULT_MODEL

logger = logging.getLogger(__name__)

EVENT_PREFIX = "inferenceguard."

_ENGINES: dict[tuple, GuardedEngine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(
    model: str,
    *,
    device: str = "cpu",
    cost_model: Any = None,
    reward_model: Any = None,
    critic: Any = "auto",
    telemetry: bool = True,
    tracer_provider: Any = None,
    base_url: str | None = None,
    api_key: str | None = None,
    tokenizer: str | None = None,
) -> GuardedEngine:
    """One engine per (model, device or server, judges, telemetry): instances over the same weights share it
    (and the loader shares the weights themselves between engines). Nothing is loaded here."""
    key = (model, device, id(cost_model), id(reward_model), id(critic), telemetry, id(tracer_provider), base_url,
           api_key, tokenizer)  # fmt: skip
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            backend = None
            if base_url is not None:
                from ..remote import OpenAICompletionsBackend

                backend = OpenAICompletionsBackend(base_url, model, tokenizer=tokenizer, api_key=api_key)
            engine = GuardedEngine(
                model,
                cost_model=cost_model,
                reward_model=reward_model,
                critic=critic,
                device=device,
                telemetry=telemetry,
                tracer_provider=tracer_provider,
                backend=backend,
            )
            # keep the keyed objects alive as long as the cache entry: their id() is part of the key
            engine._ig_key_refs = (cost_model, reward_model, critic, tracer_provider)  # type: ignore[attr-defined]
            _ENGINES[key] = engine
        return engine


def effective_config(
    base: GuardConfig,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    timeout: float | None = None,
) -> GuardConfig:
    """The instance's GuardConfig with the LangChain-style aliases applied (aliases win when set)."""
    updates: dict[str, Any] = {}
    if temperature is not None:
        updates["temperature"] = temperature
    if max_tokens is not None:
        updates["max_new_tokens"] = max_tokens
    if seed is not None:
        updates["seed"] = seed
    if timeout is not None:
        updates["timeout_s"] = timeout
    if not updates:
        return base
    return GuardConfig.model_validate({**base.model_dump(), "fallback": base.fallback, **updates})


_CONFIG_FIELDS = set(GuardConfig.model_fields)


def split_call_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split call kwargs into GuardConfig overrides (plus aliases) and the rest."""
    overrides: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _CONFIG_FIELDS:
            overrides[key] = value
        elif key == "max_tokens":
            if value is not None:
                overrides["max_new_tokens"] = value
        elif key == "timeout":
            if value is not None:
                overrides["timeout_s"] = value
        else:
            rest[key] = value
    return overrides, rest


def merge_stop(*stops: list[str] | None) -> list[str]:
    out: list[str] = []
    for stop in stops:
        for s in stop or []:
            if s and s not in out:
                out.append(s)
    return out


def _child_manager(cls: type, run_manager: Any) -> Any:
    """A callback manager of ``cls`` with the run's handlers, tags and metadata, parented to the model run."""
    return cls(
        handlers=run_manager.handlers,
        inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.run_id,
        tags=run_manager.tags,
        inheritable_tags=run_manager.inheritable_tags,
        metadata=run_manager.metadata,
        inheritable_metadata=run_manager.inheritable_metadata,
    )


def sync_observer(run_manager: Any) -> Callable[[GuardEvent], None] | None:
    """An engine observer that dispatches events to the run's handlers as custom events whose run id is
    the model run (so ``astream_events`` and handlers can attribute them)."""
    if run_manager is None or not run_manager.handlers:
        return None
    manager = _child_manager(CallbackManager, run_manager)
    run_id = run_manager.run_id

    def observe(event: GuardEvent) -> None:
        try:
            manager.on_custom_event(EVENT_PREFIX + event_name(event), event_to_dict(event), run_id=run_id)
        except Exception:  # noqa: BLE001 - callbacks never break the search
            logger.debug("custom event dispatch failed", exc_info=True)

    return observe


def async_observer(run_manager: Any) -> Callable[[GuardEvent], None] | None:
    """Async twin of :func:`sync_observer`: the engine calls observers from its worker thread, so the
    async handlers are scheduled on the caller's event loop (and awaited, keeping event order)."""
    if run_manager is None or not run_manager.handlers:
        return None
    manager = _child_manager(AsyncCallbackManager, run_manager)
    run_id = run_manager.run_id
    loop = asyncio.get_running_loop()

    def observe(event: GuardEvent) -> None:
        coro = manager.on_custom_event(EVENT_PREFIX + event_name(event), event_to_dict(event), run_id=run_id)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if running is loop:  # called on the loop itself: cannot block, schedule
                loop.create_task(coro)
            else:
                asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)
        except Exception:  # noqa: BLE001 - callbacks never break the search
            logger.debug("custom event dispatch failed", exc_info=True)

    return observe


# -- finding the model run when LangChain calls _stream without its run manager ---------------------
# ``BaseChatModel.stream``/``astream`` and the implicit streaming of ``invoke`` call ``_stream`` without
# ``run_manager``. The model overrides those entry points to publish the run here (a context variable),
# so the engine's events still reach the run's handlers with the model run as their ``run_id``.
_CURRENT_RUN: contextvars.ContextVar[Any] = contextvars.ContextVar("ig_current_run", default=None)


class RunSlot(BaseCallbackHandler):
    """Handler added (non-inheritably) to a streamed call: learns the model run's id and tags."""

    run_inline = True

    def __init__(self, manager: BaseCallbackManager) -> None:
        super().__init__()
        self.manager = manager
        self.run_id: UUID | None = None
        self.tags: list[str] = []
        self.metadata: dict[str, Any] = {}

    def _start(self, run_id: UUID, tags: Any, metadata: Any) -> None:
        if self.run_id is None:
            self.run_id, self.tags, self.metadata = run_id, list(tags or []), dict(metadata or {})

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._start(run_id, kwargs.get("tags"), kwargs.get("metadata"))

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._start(run_id, kwargs.get("tags"), kwargs.get("metadata"))

    # the interface of a run manager, as far as the observers need it
    @property
    def handlers(self) -> list[BaseCallbackHandler]:
        return [h for h in self.manager.handlers if h is not self] if self.run_id is not None else []

    @property
    def inheritable_handlers(self) -> list[BaseCallbackHandler]:
        return [h for h in self.manager.inheritable_handlers if h is not self]

    @property
    def inheritable_tags(self) -> list[str]:
        return []

    @property
    def inheritable_metadata(self) -> dict[str, Any]:
        return {}


def with_run_slot(config: Any, extra_handlers: Any = None) -> tuple[dict[str, Any], RunSlot]:
    """A copy of ``config`` whose callbacks include a :class:`RunSlot` (and the model's own callbacks)."""
    config = ensure_config(config)
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
    else:
        manager = CallbackManager(handlers=[])
        for handler in callbacks or []:
            manager.add_handler(handler, inherit=True)
    slot = RunSlot(manager)
    if isinstance(extra_handlers, list):
        for handler in extra_handlers:
            if handler not in manager.handlers:
                manager.add_handler(handler, inherit=False)
    elif isinstance(extra_handlers, BaseCallbackManager):
        for handler in extra_handlers.handlers:
            if handler not in manager.handlers:
                manager.add_handler(handler, inherit=False)
    manager.add_handler(slot, inherit=False)
    return {**config, "callbacks": manager}, slot


def set_current_run(run: Any) -> contextvars.Token:
    return _CURRENT_RUN.set(run)


def reset_current_run(token: contextvars.Token) -> None:
    try:
        _CURRENT_RUN.reset(token)
    except ValueError:  # finalised in another context: nothing to restore there
        pass


def current_run(run_manager: Any) -> Any:
    """The run manager to report to: the one given, else the one published for this call."""
    return run_manager if run_manager is not None else _CURRENT_RUN.get()


class GuardedModelFields(BaseModel):
    """The fields ``ChatInferenceGuard`` and ``InferenceGuardLLM`` share, with their engine and config."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: str = Field(default=DEFAULT_MODEL, alias="model_name")
    """The embedded default (``smollm2-135m-instruct``), a local folder or a Hugging Face model id."""
    guard_config: GuardConfig = Field(default_factory=GuardConfig)
    """Search settings (N, K, B, budget, ...); the aliases below override their fields when set."""
    cost_model: Any = Field(default=None, exclude=True)
    """Safety judge (``CostModel``); default: the trained offline cost model of the package."""
    reward_model: Any = Field(default=None, exclude=True)
    critic: Any = Field(default="auto", exclude=True)
    """Latent critic; ``"auto"`` uses the one shipped for the model (as ``GuardedEngine`` does), ``None`` none."""
    streaming: bool = False
    """``invoke`` streams internally (callbacks get ``on_llm_new_token``)."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, alias="max_new_tokens")
    seed: int | None = None
    timeout: float | None = None
    """Deadline of one search in seconds (on expiry the answer is the fallback)."""
    safety_state: float = 1.0
    """Share of the safety budget available to each call (per-call kwarg ``safety_state`` overrides)."""
    device: str = "cpu"
    drop_non_text_content: bool = False
    """The model reads text only: image/audio/video/file content blocks raise ``InvalidInputError`` unless this is
    set, which drops them (the answer is then given as if they were absent)."""
    telemetry: bool = True
    """OpenTelemetry spans for every search, through the global tracer provider (a no-op until the application
    configures an SDK). ``False`` turns them off; with an explicit ``engine`` its own setting applies."""
    tracer_provider: Any = Field(default=None, exclude=True)
    """An OpenTelemetry ``TracerProvider`` for this model's spans instead of the global one."""
    base_url: str | None = Field(default=None, alias="openai_api_base")
    """An OpenAI-compatible completions server (vLLM) that samples the candidates, e.g.
    ``http://host:8000/v1``; ``model`` is then its served model name. The search, the judges and the
    guarantee stay here; the latent critic is off (no hidden states over the API)."""
    api_key: SecretStr | None = Field(default=None, exclude=True)
    """Bearer key for ``base_url``."""
    tokenizer: str | None = None
    """Where the tokenizer and chat template of a served ``model`` are read (default: ``model``)."""
    engine_override: Any = Field(default=None, exclude=True, alias="engine")
    """An explicit :class:`GuardedEngine` (or a stand-in with the same methods) to use instead of the shared one."""

    @property
    def engine(self) -> GuardedEngine:
        """The shared :class:`GuardedEngine` (no weights are loaded until the first search)."""
        return self._engine_for(None)

    def _engine_for(self, model: str | None) -> GuardedEngine:
        if self.engine_override is not None and (model is None or model == self.model):
            return self.engine_override
        return shared_engine(
            model or self.model,
            device=self.device,
            cost_model=self.cost_model,
            reward_model=self.reward_model,
            critic=self.critic,
            telemetry=self.telemetry,
            tracer_provider=self.tracer_provider,
            base_url=self.base_url,
            api_key=self.api_key.get_secret_value() if self.api_key is not None else None,
            tokenizer=self.tokenizer,
        )

    @property
    def config(self) -> GuardConfig:
        """The effective default GuardConfig (``guard_config`` with the aliases applied)."""
        return effective_config(
            self.guard_config,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            timeout=self.timeout,
        )
