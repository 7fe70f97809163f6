"""LangChain integration: :class:`ChatInferenceGuard` (chat model), :class:`InferenceGuardLLM` (text
completion) and :class:`SafetyCallbackHandler` (the safety events of each run).

Engine events reach LangChain callbacks as custom events named ``inferenceguard.<event>`` (see
:data:`EVENT_PREFIX`), so they also show up in ``astream_events(version="v2")``.
"""

from ._bridge import EVENT_PREFIX
from .callbacks import SafetyCallbackHandler, SafetyRecord
from .chat_model import ChatInferenceGuard
from .llm import InferenceGuardLLM
from .middleware import GuardMiddlewareConfig, InferenceGuardMiddleware, InferenceGuardState

__all__ = [
    "EVENT_PREFIX",
    "ChatInferenceGuard",
    "GuardMiddlewareConfig",
    "InferenceGuardLLM",
    "InferenceGuardMiddleware",
    "InferenceGuardState",
    "SafetyCallbackHandler",
    "SafetyRecord",
]
