"""Typed exceptions. Every failure inside the search fails *closed*: the engine turns these into a
fallback answer with a :class:`FallbackReason`, it never lets unchecked text through."""

from __future__ import annotations


class IGError(Exception):
    """Base class of every error raised by ig_middleware."""


class ModelLoadError(IGError):
    """A language model, cost model or critic could not be loaded (bad path, missing package, bad file)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot load model {source!r}: {reason}")
        self.source = source
        self.reason = reason


class InvalidInputError(IGError, ValueError):
    """The prompt or messages given to the engine are malformed. ``field`` names the offending part."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid input {field!r}: {reason}")
        self.field = field
        self.reason = reason


class JudgeError(IGError):
    """A cost or reward model raised, timed out or returned invalid scores. Never escapes a search:
    the engine catches it and answers with the fallback."""

    def __init__(self, judge: str, reason: str) -> None:
        super().__init__(f"{judge} failed: {reason}")
        self.judge = judge
        self.reason = reason
