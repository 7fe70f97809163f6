"""``SafetyCallbackHandler``: collect InferenceGuard's safety events from LangChain callbacks.

The chat model and the LLM dispatch every engine event as a LangChain custom event named
``inferenceguard.<event>`` (``search_started``, ``block_evaluated``, ``resampled``, ``block_committed``,
``fallback``, ``search_finished``) whose ``run_id`` is the model run. This handler keeps one
:class:`SafetyRecord` per model run (with its parent run, so it works for direct calls, chains and
agents) and optionally calls ``on_event(record, name, data)`` for each event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from ._bridge import EVENT_PREFIX


@dataclass
class SafetyRecord:
    """What one guarded model run did."""

    run_id: UUID
    parent_run_id: UUID | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    committed: list[dict[str, Any]] = field(default_factory=list)  # block_committed payloads
    evaluations: int = 0
    resamples: int = 0
    fallback: dict[str, Any] | None = None  # the fallback event's payload, if any
    verdict: dict[str, Any] | None = None  # search_finished payload: finish_reason, safety_state, cost, ...

    @property
    def finished(self) -> bool:
        return self.verdict is not None

    @property
    def finish_reason(self) -> str | None:
        return self.verdict.get("finish_reason") if self.verdict else None

    @property
    def used_fallback(self) -> bool:
        return self.fallback is not None or self.finish_reason == "safety_fallback"

    @property
    def safety_state(self) -> float | None:
        return self.verdict.get("safety_state") if self.verdict else None

    @property
    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]


class SafetyCallbackHandler(BaseCallbackHandler):
    """Receives the ``inferenceguard.*`` custom events; see the module docstring.

    Args:
        on_event: optional ``callable(record, name, data)`` called for every safety event (``name``
            without the ``inferenceguard.`` prefix). Exceptions it raises are swallowed unless
            ``raise_error=True``.
        raise_error: propagate errors of ``on_event`` (LangChain's handler flag).
    """

    run_inline = True  # keep event order in async runs too

    def __init__(
        self,
        on_event: Callable[[SafetyRecord, str, dict[str, Any]], None] | None = None,
        *,
        raise_error: bool = False,
    ) -> None:
        super().__init__()
        self.on_event = on_event
        self.raise_error = raise_error
        self.records: dict[UUID, SafetyRecord] = {}
        self._parents: dict[UUID, tuple[UUID | None, list[str], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # -- model run starts: remember the parent run --------------------------------------------------
    def _remember(self, run_id: UUID, parent_run_id: UUID | None, tags: Any, metadata: Any) -> None:
        with self._lock:
            self._parents[run_id] = (parent_run_id, list(tags or []), dict(metadata or {}))

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._remember(run_id, parent_run_id, tags, metadata)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._remember(run_id, parent_run_id, tags, metadata)

    # -- the safety events --------------------------------------------------------------------------
    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not name.startswith(EVENT_PREFIX):
            return
        short = name[len(EVENT_PREFIX) :]
        payload = dict(data) if isinstance(data, dict) else {"data": data}
        with self._lock:
            record = self.records.get(run_id)
            if record is None:
                parent, run_tags, run_meta = self._parents.get(run_id, (None, list(tags or []), dict(metadata or {})))
                record = self.records[run_id] = SafetyRecord(run_id, parent, run_tags, run_meta)
            record.events.append((short, payload))
            if short == "block_committed":
                record.committed.append(payload)
            elif short == "block_evaluated":
                record.evaluations += 1
            elif short == "resampled":
                record.resamples += 1
            elif short == "fallback":
                record.fallback = payload
            elif short == "search_finished":
                record.verdict = payload
        if self.on_event is not None:
            self.on_event(record, short, payload)

    # -- queries ------------------------------------------------------------------------------------
    @property
    def last(self) -> SafetyRecord | None:
        """The record of the most recent model run that sent an event."""
        with self._lock:
            return next(reversed(self.records.values()), None)

    def children_of(self, parent_run_id: UUID) -> list[SafetyRecord]:
        """Records of the model runs started directly under ``parent_run_id``."""
        with self._lock:
            return [r for r in self.records.values() if r.parent_run_id == parent_run_id]

    @property
    def fallbacks(self) -> list[SafetyRecord]:
        with self._lock:
            return [r for r in self.records.values() if r.used_fallback]

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self._parents.clear()
