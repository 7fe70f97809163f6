"""A scripted stand-in for :class:`~ig_middleware.engine.GuardedEngine`, for testing LangChain plumbing
(tool loops, callbacks, fallbacks) without a model: ``ChatInferenceGuard(engine=ScriptedEngine([...]))``.

Each call answers with the next scripted item: a string (the generated text, after any prefill) or
:class:`ScriptedFallback` (the search fails closed). It emits the same events as the real engine.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import DEFAULT_FALLBACK, GuardConfig
from ..engine import GuardChunk
from ..events import BlockCommitted, BlockEvaluated, FallbackUsed, SearchFinished, SearchStarted
from ..models import validate_messages
from ..result import GuardResult


@dataclass
class ScriptedFallback:
    """A scripted answer whose search fails closed (``finish_reason="safety_fallback"``)."""

    reason: str = "no_safe_candidate"
    committed: str = ""  # text committed (streamed) before the failure


class _FakeLM:
    name = "scripted"

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> str:
        msgs = validate_messages(messages)
        return "".join(f"<|{m['role']}|>{m['content']}\n" for m in msgs) + "<|assistant|>"


class ScriptedEngine:
    """Answers from a script; records every call in :attr:`calls` as ``(prompt, kwargs)``."""

    def __init__(
        self,
        script: Sequence[str | ScriptedFallback | Callable[[Any], str]],
        *,
        block_chars: int = 8,
        repeat_last: bool = True,
        config: GuardConfig | None = None,
    ) -> None:
        self.script = list(script)
        self.block_chars = block_chars
        self.repeat_last = repeat_last
        self.config = config or GuardConfig()
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        self.lm = _FakeLM()
        self.model_name = "scripted"
        self.cost_model = None
        self._lock = threading.Lock()

    def _next(self, prompt: Any) -> str | ScriptedFallback:
        with self._lock:
            item = self.script.pop(0) if (len(self.script) > 1 or not self.repeat_last) else self.script[0]
        return item(prompt) if callable(item) else item

    def _run(self, prompt: Any, config: GuardConfig | None, **kwargs: Any) -> Iterator[GuardChunk]:
        self.calls.append((prompt, dict(kwargs)))
        cfg = config or self.config
        stop = kwargs.get("stop", cfg.stop) or []
        z0 = float(kwargs.get("safety_state", 1.0))
        observers = list(kwargs.get("observers") or [])
        run_id = kwargs.get("run_id") or uuid.uuid4().hex

        def emit(ev: Any) -> None:
            for ob in observers:
                try:
                    ob(ev)
                except Exception:  # noqa: BLE001
                    pass

        emit(SearchStarted(run_id, "scripted", cfg.method, 3, cfg.budget, z0, cfg.model_dump(mode="json")))
        item = self._next(prompt)
        fail = isinstance(item, ScriptedFallback)
        text = item.committed if fail else item
        finish = "length"
        for s in stop:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        if not fail and finish != "stop":
            finish = "stop"
        blocks = [text[i : i + self.block_chars] for i in range(0, len(text), self.block_chars)] or [""]
        emitted = ""
        for i, block in enumerate(blocks):
            emit(BlockEvaluated(run_id, i, 0, 2, 2, (z0, z0), (0.0, 0.0), 2, False, 0.0))
            emitted += block
            if block and (i < len(blocks) - 1 or fail):
                emit(BlockCommitted(run_id, i, emitted, z0, 0.0))
                yield GuardChunk(block)
        if fail:
            fb = DEFAULT_FALLBACK if not isinstance(cfg.fallback, str) else cfg.fallback
            emit(FallbackUsed(run_id, len(blocks), item.reason))
            full = (emitted.rstrip() + "\n\n" + fb) if emitted.strip() else fb
            result = self._result(full, "safety_fallback", 0.0, len(blocks), run_id, cfg, item.reason)
            tail = full[len(emitted) :]
        else:
            result = self._result(text, finish, z0, len(blocks), run_id, cfg, None)
            tail = blocks[-1] if len(blocks) >= 1 and text else ""
        emit(SearchFinished(run_id, result))
        yield GuardChunk(tail, result)

    @staticmethod
    def _result(
        text: str, finish: str, z: float, blocks: int, run_id: str, cfg: GuardConfig, reason: str | None
    ) -> GuardResult:
        return GuardResult(
            text=text,
            finish_reason=finish,  # type: ignore[arg-type]
            safety_state=z,
            cost=0.0 if reason is None else cfg.budget,
            budget=cfg.budget,
            input_tokens=3,
            output_tokens=max(1, len(text.split())),
            candidates_sampled=2 * blocks,
            resamples=0,
            blocks=blocks,
            judge_calls=2 * blocks,
            fallback_reason=reason,  # type: ignore[arg-type]
            model="scripted",
            run_id=run_id,
        )

    def generate(self, prompt: Any, config: GuardConfig | None = None, **kwargs: Any) -> GuardResult:
        result = None
        for chunk in self._run(prompt, config, **kwargs):
            result = chunk.result or result
        assert result is not None
        return result

    def stream(self, prompt: Any, config: GuardConfig | None = None, **kwargs: Any) -> Iterator[GuardChunk]:
        yield from self._run(prompt, config, **kwargs)

    async def agenerate(self, prompt: Any, config: GuardConfig | None = None, **kwargs: Any) -> GuardResult:
        return await asyncio.to_thread(self.generate, prompt, config, **kwargs)

    async def astream(self, prompt: Any, config: GuardConfig | None = None, **kwargs: Any) -> AsyncIterator[GuardChunk]:
        chunks = await asyncio.to_thread(lambda: list(self._run(prompt, config, **kwargs)))
        for chunk in chunks:
            yield chunk
