"""ig-middleware: InferenceGuard, almost surely safe LLM decoding at inference time (arXiv 2502.01208).

The engine (:class:`GuardedEngine`) is plain Python over a local transformers model. LangChain adapters
live in :mod:`ig_middleware.langchain`, OpenTelemetry in :mod:`ig_middleware.telemetry`; both depend on
the engine, never the reverse.
"""

from .config import GuardConfig
from .engine import Critic, GuardChunk, GuardedEngine
from .errors import IGError, InvalidInputError, JudgeError, ModelLoadError
from .events import (
    BlockCommitted,
    BlockEvaluated,
    FallbackUsed,
    GuardEvent,
    Observer,
    Resampled,
    SearchFinished,
    SearchStarted,
    event_name,
    event_to_dict,
)
from .judges import CostModel, KeywordCostModel, RewardModel
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .result import GuardResult

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "BlockCommitted",
    "BlockEvaluated",
    "CostModel",
    "Critic",
    "FallbackUsed",
    "GuardChunk",
    "GuardConfig",
    "GuardEvent",
    "GuardResult",
    "GuardedEngine",
    "IGError",
    "InvalidInputError",
    "JudgeError",
    "KeywordCostModel",
    "LoadedModel",
    "ModelLoadError",
    "Observer",
    "Resampled",
    "event_name",
    "event_to_dict",
    "RewardModel",
    "SearchFinished",
    "SearchStarted",
    "load_model",
]
