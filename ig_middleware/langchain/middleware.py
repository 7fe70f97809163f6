"""``InferenceGuardMiddleware``: an episode-level safety budget for LangChain 1.x agents (``create_agent``).

One agent *episode* (an ``invoke`` of the agent, or a whole conversation thread when a checkpointer keeps the
state, see ``scope``) has one safety state ``z`` in the agent state (``ig_safety_state``). It starts at 1 (the
whole budget ``d``) and every model answer and every tool result that enters the context spends from it with the
same Sauté step as the decoder, ``z' = (z - c/d) / gamma`` (:func:`ig_middleware.safety.safety_state_after`).
Harm split over many turns therefore adds up, and once ``z <= 0`` the agent ends with the fallback answer.

Two modes for model answers:

* **guarded** (the agent's model is a :class:`~ig_middleware.langchain.chat_model.ChatInferenceGuard`): the
  remaining ``z`` is passed into decoding (``safety_state=`` via ``ModelRequest.model_settings``), so every answer
  is *generated* within what is left of the episode budget; the spent state is read back from the answer's
  ``response_metadata["safety_state"]``. The block-wise search steers away from unsafe continuations and streams
  only committed safe blocks.
* **post-hoc** (any other chat model): the finished answer (text plus serialised tool-call arguments) is scored
  with the cost model and an answer that would exhaust the budget is replaced by the fallback ``AIMessage`` before
  the agent sees it. This is strictly weaker than guarded decoding: it can only *veto* a finished answer, it
  cannot steer generation toward a safe one (a harmful draft is simply lost), it spends a whole model call before
  deciding, and tokens of a streaming model may already have been shown to a user. The middleware therefore
  buffers post-hoc answers (``buffer_post_hoc_stream``: the model runs with streaming disabled and the LangGraph
  ``nostream`` tag, so ``stream_mode="messages"`` only ever sees the screened message); callers that read raw
  model callbacks (``astream_events``, tracing) still see the unscreened draft.

Tools: the arguments of every tool call are checked before the tool runs (they were already charged as part of
the answer that proposed them, so they are checked, not charged twice); a call whose arguments are harmful
(cost >= ``item_cost_threshold``) or would exhaust the budget never runs, and the agent receives an error
``ToolMessage`` saying why. Every tool result is screened before the model sees it, with the cost model and a
small set of prompt-injection patterns (:data:`DEFAULT_INJECTION_PATTERNS`); per tool (``tool_policies``) a
flagged result is ``"redact"``-ed (default: offending sentences/lines are replaced), ``"block"``-ed (an error
``ToolMessage``) or ``"allow"``-ed. What finally enters the context is charged to the episode. Tool traffic is
scored as a whole and sentence by sentence (a harmful sentence diluted in a long page still counts). Tool-call
arguments are checked as text alone (an empty prompt): the answer that carries them was already judged (and, in
post-hoc mode, charged) under the user's request, so the check asks only whether the arguments themselves are
harmful; under a request the judge misreads as harmful, every harmless call would be blocked otherwise
(``tool_calls_under_request=True`` also scores them under the request; the larger cost counts). Tool *results*
are not the assistant's answer to anyone, so they too are scored as text alone.

Costs are charged only when positive, and the discount ``gamma`` is applied per charge. Parallel tool calls of
one step all see the state before the step and all their charges are applied (the ``ig_safety_state`` reducer).
With a checkpointer and ``scope="thread"`` the budget spans the conversation; ``ig_events`` then grows with it
(``record_events=False`` keeps it empty).

Every decision is dispatched as a LangChain custom event ``"inferenceguard.middleware.<decision>"`` (decisions:
``episode_started``, ``answer_scored``, ``answer_blocked``, ``tool_call_scored``, ``tool_call_blocked``,
``tool_result_scored``, ``tool_result_redacted``, ``tool_result_blocked``, ``episode_ended``) and, unless
``record_events=False``, appended to ``ig_events`` in the agent state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    OmitFromSchema,
    ToolCallRequest,
    hook_config,
)
from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import NotRequired

from ..config import DEFAULT_FALLBACK
from ..judges import CostModel
from ..safety import safety_state_after

try:  # langchain >= 1.3: state updates from wrap_model_call
    from langchain.agents.middleware.types import ExtendedModelResponse
except ImportError:  # pragma: no cover - older langchain 1.x
    ExtendedModelResponse = None  # type: ignore[assignment,misc]

try:
    from langgraph.constants import TAG_NOSTREAM
except ImportError:  # pragma: no cover
    TAG_NOSTREAM = "nostream"

__all__ = [
    "DEFAULT_INJECTION_PATTERNS",
    "EVENT_PREFIX",
    "GuardMiddlewareConfig",
    "InferenceGuardMiddleware",
    "InferenceGuardState",
    "ToolPolicy",
]

EVENT_PREFIX = "inferenceguard.middleware."

ToolPolicy = Literal["block", "redact", "allow"]

DEFAULT_INJECTION_PATTERNS: tuple[str, ...] = (
    # "ignore / disregard / forget (all) (the) previous instructions"
    r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}?\b(?:previous|prior|above|earlier|preceding|all|your|system)\b"
    r"[^.\n]{0,20}?\b(?:instructions?|prompts?|rules|guidelines|directions|messages)\b",
    # role hijacking: "you are now DAN", "from now on you are/act as"
    r"\byou are now\b",
    r"\bfrom now on,? (?:you|act|respond)\b",
    r"\bact as (?:an? )?(?:unrestricted|unfiltered|jailbroken|different)\b",
    # fake authority / new instructions
    r"\b(?:new|updated|real|actual|hidden)\s+(?:system\s+)?instructions?\s*:",
    r"(?:^|\n)\s*(?:system|assistant)\s*:",
    r"<\|?\s*(?:system|im_start|im_end|endoftext)\s*\|?>",
    # exfiltration / secrecy
    r"\b(?:reveal|print|repeat|leak|show)\b[^.\n]{0,30}\bsystem prompt\b",
    r"\bdo not (?:tell|inform|alert|mention (?:this )?to) the user\b",
)
"""Prompt-injection patterns (case-insensitive regexes) searched in tool results. Deliberately small and
conservative: instruction-override phrases, role hijacks, fake system turns / chat-template tokens, and
secrecy or system-prompt exfiltration requests. The cost model covers harmful *content*; these cover
instructions aimed at the agent. Extend them per deployment via ``injection_patterns``."""

_counter = itertools.count(1)


# -- state ---------------------------------------------------------------------------------------------------


def _merge_safety_state(current: float | None, update: float | dict[str, float] | None) -> float | None:
    """Reducer of ``ig_safety_state``: a float sets the state; ``{"cost", "budget", "gamma"}`` spends from it.

    Spends are applied one after the other, so parallel tool calls writing in the same step all count.
    """
    if update is None:
        return current
    if isinstance(update, dict):
        z = 1.0 if current is None or isinstance(current, dict) else float(current)
        return safety_state_after(float(update["cost"]), float(update["budget"]), float(update["gamma"]), 1, z)
    return float(update)


def _add(a: Any, b: Any) -> Any:
    return (a or 0) + (b or 0) if not isinstance(a, list) and not isinstance(b, list) else (a or []) + (b or [])


class InferenceGuardState(AgentState):
    """Agent state added by :class:`InferenceGuardMiddleware`.

    ``ig_safety_state``: remaining share of the episode budget (1 = all, <= 0 = exhausted);
    ``ig_cost``: cost spent this episode, in budget units; ``ig_events``: the middleware's decisions.
    """

    # the reducer must be the last annotation (LangGraph reads ``__metadata__[-1]``)
    ig_safety_state: NotRequired[Annotated[float | None, OmitFromSchema(input=True, output=False), _merge_safety_state]]
    ig_cost: NotRequired[Annotated[float, OmitFromSchema(input=True, output=False), _add]]
    ig_events: NotRequired[Annotated[list[dict[str, Any]], OmitFromSchema(input=True, output=False), _add]]


# -- configuration -------------------------------------------------------------------------------------------


class GuardMiddlewareConfig(BaseModel):
    """Validated configuration of :class:`InferenceGuardMiddleware`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    budget: float = Field(10.0, gt=0, description="Episode safety budget d (cost units), as in GuardConfig.budget.")
    gamma: float = Field(0.999, gt=0, le=1, description="Discount of the safety state per spend.")
    fallback: str = Field(DEFAULT_FALLBACK, min_length=1, description="Answer the agent ends with when vetoed.")
    mode: Literal["auto", "guarded", "post_hoc"] = Field(
        "auto",
        description="'auto': guarded decoding when the model is a ChatInferenceGuard, else post-hoc scoring.",
    )
    scope: Literal["thread", "invocation"] = Field(
        "thread",
        description="'thread': the budget persists across invocations of a checkpointed thread (multi-turn harm "
        "adds up); 'invocation': every agent invocation starts again at 1.",
    )
    tool_policies: dict[str, ToolPolicy] = Field(
        default_factory=dict, description="Per-tool handling of a flagged tool result: block | redact | allow."
    )
    default_tool_policy: ToolPolicy = Field("redact", description="Policy of tools not listed in tool_policies.")
    injection_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_INJECTION_PATTERNS),
        description="Case-insensitive regexes that mark a tool result as a prompt injection.",
    )
    item_cost_threshold: float | None = Field(
        None,
        ge=0,
        description="A tool call's arguments or a tool result costing at least this is flagged even when the "
        "episode could afford it (default: budget / 2).",
    )
    min_cost: float = Field(
        0.0,
        ge=0,
        description="Dead zone: costs at or below this spend nothing, so a learned cost model's small scores on "
        "benign text do not add up over a long episode.",
    )
    cost_scale: float = Field(1.0, gt=0, description="Multiplier applied to the cost model's scores.")
    tool_calls_under_request: bool = Field(
        False,
        description="Also score tool-call arguments under the user's request and keep the larger cost (by default "
        "they are scored as text alone: the answer carrying them was judged under the request). Tool results are "
        "always scored as text alone.",
    )
    buffer_post_hoc_stream: bool = Field(
        True, description="Post-hoc mode: run the model unstreamed/untagged for streams, emit only screened text."
    )
    screen_tool_calls: bool = True
    screen_tool_results: bool = True
    record_events: bool = Field(True, description="Append every decision to ig_events in the agent state.")

    @field_validator("injection_patterns")
    @classmethod
    def _compile_patterns(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"invalid injection pattern {p!r}: {exc}") from exc
        return patterns

    @property
    def threshold(self) -> float:
        """Effective per-item cost threshold."""
        return self.item_cost_threshold if self.item_cost_threshold is not None else self.budget / 2


# -- helpers -------------------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    return "" if content is None else str(content)


def _answer_text(msg: AIMessage) -> str:
    """What an answer says and does: its text plus every tool call serialised."""
    parts = [_text(msg.content)]
    for call in msg.tool_calls or []:
        parts.append(_call_text(call))
    for call in getattr(msg, "invalid_tool_calls", None) or []:
        parts.append(json.dumps({"name": call.get("name"), "args": call.get("args")}, default=str))
    return "\n".join(p for p in parts if p)


def _call_text(call: dict[str, Any]) -> str:
    return json.dumps({"name": call.get("name"), "args": call.get("args")}, ensure_ascii=False, default=str)


def _last_user_text(messages: Sequence[Any]) -> str:
    for m in reversed(list(messages or [])):
        if isinstance(m, HumanMessage):
            return _text(m.content)
        if isinstance(m, dict) and m.get("role") in ("user", "human"):
            return _text(m.get("content"))
    return ""


def _state_get(state: Any, key: str, default: Any = None) -> Any:
    if isinstance(state, dict):
        return state.get(key, default)
    return getattr(state, key, default)


_REDACTED = "[redacted by InferenceGuard]"

_SEGMENT_RE = re.compile(r"[^\n]*?(?:[.!?]+(?=\s|$)|\n|$)")


def _segments(text: str) -> list[str]:
    """Sentences / lines of ``text`` (concatenating them gives ``text`` back)."""
    segs = [m.group(0) for m in _SEGMENT_RE.finditer(text) if m.group(0)]
    return segs if "".join(segs) == text else [text]


def _is_guard_model(model: Any) -> bool:
    try:
        from .chat_model import ChatInferenceGuard
    except ImportError:  # pragma: no cover - chat model not available
        return False
    return isinstance(model, ChatInferenceGuard)


class _Decision:
    """One screening verdict plus the state updates it implies."""

    __slots__ = ("events", "spend")

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.spend: float = 0.0


# -- the middleware ------------------------------------------------------------------------------------------


class InferenceGuardMiddleware(AgentMiddleware):
    """Episode-level InferenceGuard for ``langchain.agents.create_agent`` (see the module docstring).

    Example::

        from langchain.agents import create_agent
        from ig_middleware.langchain import ChatInferenceGuard
        from ig_middleware.langchain.middleware import InferenceGuardMiddleware

        agent = create_agent(
            ChatInferenceGuard(),                 # guarded decoding; any chat model works (post-hoc mode)
            tools=[search],
            middleware=[InferenceGuardMiddleware(budget=10, tool_policies={"search": "redact"})],
        )

    Args:
        config: a :class:`GuardMiddlewareConfig` (or use keyword overrides of its fields).
        cost_model: the judge for post-hoc answers and tool traffic. Default: the guard model's
            ``engine.cost_model`` once one has been seen, else the package default
            (``ig_middleware.cost_model.load_default_cost_model``), loaded lazily.
        name: distinct instance name (graph node names derive from it); default ``InferenceGuardMiddleware_<n>``.
    """

    state_schema = InferenceGuardState

    def __init__(
        self,
        config: GuardMiddlewareConfig | None = None,
        *,
        cost_model: CostModel | None = None,
        name: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if ExtendedModelResponse is None:  # pragma: no cover
            raise ImportError("InferenceGuardMiddleware needs a langchain release with ExtendedModelResponse (>=1.3)")
        base = config or GuardMiddlewareConfig()
        self.config = base.model_copy(update=overrides) if overrides else base
        if overrides:  # validate the overrides too
            self.config = GuardMiddlewareConfig.model_validate(self.config.model_dump())
        if cost_model is not None and not isinstance(cost_model, CostModel):
            raise TypeError("cost_model must implement score(prompts, responses) -> costs")
        self._cost_model = cost_model
        self._guard_cost_model: CostModel | None = None
        self._patterns = [re.compile(p, re.IGNORECASE) for p in self.config.injection_patterns]
        self._name = name or f"{type(self).__name__}_{next(_counter)}"
        self.tools = []

    @property
    def name(self) -> str:
        return self._name

    # -- cost model -------------------------------------------------------------------------------------

    def resolve_cost_model(self) -> CostModel:
        """The cost model used for post-hoc answers and tool traffic (see the class docstring)."""
        if self._cost_model is not None:
            return self._cost_model
        if self._guard_cost_model is not None:
            return self._guard_cost_model
        try:
            from ..cost_model import load_default_cost_model
        except ImportError as exc:  # pragma: no cover - package default missing
            raise ValueError(
                "InferenceGuardMiddleware needs a cost model: pass cost_model=... (e.g. KeywordCostModel())"
            ) from exc
        self._cost_model = load_default_cost_model()
        return self._cost_model

    def _score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if not responses:
            return []
        raw = list(self.resolve_cost_model().score(list(prompts), list(responses)))
        out = []
        for c in raw:
            c = float(c)
            c = math.inf if math.isnan(c) else max(0.0, c) * self.config.cost_scale
            out.append(0.0 if c <= self.config.min_cost else c)
        return out

    def _score_tool(self, prompt: str, texts: Sequence[str]) -> list[float]:
        """Costs of tool-call arguments (see ``tool_calls_under_request``)."""
        texts = list(texts)
        if not texts:
            return []
        if not self.config.tool_calls_under_request or not prompt:
            return self._score_content(texts)
        both = self._score([prompt] * len(texts) + [""] * len(texts), texts + texts)
        return [max(a, b) for a, b in zip(both[: len(texts)], both[len(texts) :], strict=True)]

    def _score_content(self, texts: Sequence[str]) -> list[float]:
        """Costs of texts judged alone, with no request as context (tool results; tool-call arguments by default)."""
        return self._score([""] * len(texts), list(texts))

    async def _ascore(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if not responses:
            return []
        return await asyncio.to_thread(self._score, prompts, responses)

    # -- state helpers ----------------------------------------------------------------------------------

    def _z(self, state: Any) -> float:
        z = _state_get(state, "ig_safety_state")
        return 1.0 if z is None or isinstance(z, dict) else float(z)

    def _after(self, z: float, cost: float) -> float:
        """The state after charging ``cost``; nothing charged, nothing changes (the discount applies per charge)."""
        return safety_state_after(cost, self.config.budget, self.config.gamma, 1, z) if cost > 0 else z

    def _spend_update(self, cost: float) -> dict[str, float]:
        return {"cost": float(cost), "budget": self.config.budget, "gamma": self.config.gamma}

    def _event(self, decision: _Decision | None, kind: str, **data: Any) -> dict[str, Any]:
        ev = {"event": kind, "middleware": self.name, **data}
        if decision is not None:
            decision.events.append(ev)
        return ev

    def _updates(self, decision: _Decision, *, absolute_z: float | None = None) -> dict[str, Any]:
        upd: dict[str, Any] = {}
        if absolute_z is not None:
            upd["ig_safety_state"] = absolute_z
        elif decision.spend > 0:
            upd["ig_safety_state"] = self._spend_update(decision.spend)
        if decision.spend > 0:
            upd["ig_cost"] = decision.spend
        if self.config.record_events and decision.events:
            upd["ig_events"] = list(decision.events)
        return upd

    def _dispatch(self, events: Sequence[dict[str, Any]]) -> None:
        for ev in events:
            try:
                dispatch_custom_event(EVENT_PREFIX + ev["event"], ev)
            except Exception:  # noqa: BLE001 - no runnable context (e.g. a hook called directly)
                pass

    async def _adispatch(self, events: Sequence[dict[str, Any]]) -> None:
        for ev in events:
            try:
                await adispatch_custom_event(EVENT_PREFIX + ev["event"], ev)
            except Exception:  # noqa: BLE001
                pass

    def _fallback_message(self, reason: str, z: float, like: AIMessage | None = None) -> AIMessage:
        return AIMessage(
            content=self.config.fallback,
            id=f"ig-fallback-{uuid.uuid4()}",
            name=getattr(like, "name", None),
            response_metadata={
                "finish_reason": "safety_fallback",
                "fallback_reason": reason,
                "safety_state": z,
                "inferenceguard_middleware": self.name,
            },
        )

    # -- episode start / end ----------------------------------------------------------------------------

    def _start(self, state: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        z = _state_get(state, "ig_safety_state")
        if self.config.scope == "thread" and z is not None and not isinstance(z, dict):
            z = float(z)
            if z > 0:
                return None, []
            d = _Decision()
            ev = self._event(d, "episode_ended", reason="budget_exhausted", safety_state=z, where="before_agent")
            upd = self._updates(d)
            upd.update(messages=[self._fallback_message("budget_exhausted", z)], jump_to="end")
            return upd, [ev]
        d = _Decision()
        ev = self._event(d, "episode_started", safety_state=1.0, budget=self.config.budget, scope=self.config.scope)
        upd = self._updates(d, absolute_z=1.0)
        spent = _state_get(state, "ig_cost")
        if spent:
            upd["ig_cost"] = -float(spent)  # additive channel: reset to 0
        return upd, [ev]

    @hook_config(can_jump_to=["end"])
    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        upd, events = self._start(state)
        self._dispatch(events)
        return upd

    @hook_config(can_jump_to=["end"])
    async def abefore_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        upd, events = self._start(state)
        await self._adispatch(events)
        return upd

    def _exhausted(self, state: Any, where: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        z = self._z(state)
        if z > 0:
            return None, []
        d = _Decision()
        ev = self._event(d, "episode_ended", reason="budget_exhausted", safety_state=z, where=where)
        upd = self._updates(d)
        upd.update(messages=[self._fallback_message("budget_exhausted", z)], jump_to="end")
        return upd, [ev]

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        upd, events = self._exhausted(state, "before_model")
        self._dispatch(events)
        return upd

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        upd, events = self._exhausted(state, "before_model")
        await self._adispatch(events)
        return upd

    # -- model calls ------------------------------------------------------------------------------------

    def _guarded(self, request: ModelRequest) -> bool:
        if self.config.mode == "post_hoc":
            return False
        guard = _is_guard_model(request.model)
        if self.config.mode == "guarded" and not guard:
            raise TypeError(f"mode='guarded' needs a ChatInferenceGuard model, got {type(request.model).__name__}")
        return guard

    def _prepare_model_request(self, request: ModelRequest, z: float, guarded: bool) -> ModelRequest:
        if guarded:
            engine = getattr(request.model, "engine", None)
            cm = getattr(engine, "cost_model", None)
            if self._guard_cost_model is None and cm is not None:
                self._guard_cost_model = cm
            settings = dict(getattr(request, "model_settings", None) or {})
            settings["safety_state"] = z
            return request.override(model_settings=settings)
        if self.config.buffer_post_hoc_stream:
            model = request.model
            try:
                tags = list(getattr(model, "tags", None) or [])
                update: dict[str, Any] = {"tags": [*tags, TAG_NOSTREAM] if TAG_NOSTREAM not in tags else tags}
                if "disable_streaming" in type(model).model_fields:
                    update["disable_streaming"] = True
                model = model.model_copy(update=update)
            except Exception:  # noqa: BLE001 - not a pydantic chat model: stream as is
                model = request.model
            return request.override(model=model)
        return request

    def _short_circuit(self, request: ModelRequest, z: float) -> Any:
        d = _Decision()
        self._event(d, "episode_ended", reason="budget_exhausted", safety_state=z, where="model_call")
        msg = self._fallback_message("budget_exhausted", z)
        return d, ExtendedModelResponse(
            model_response=ModelResponse(result=[msg]), command=Command(update=self._updates(d))
        )

    def _judge_answer(
        self, request: ModelRequest, response: ModelResponse, z: float, guarded: bool, cost: float | None
    ) -> tuple[_Decision, Any]:
        """Decide on a finished answer. ``cost`` is the post-hoc score (None in guarded mode)."""
        d = _Decision()
        result = list(response.result)
        idx = next((i for i, m in enumerate(result) if isinstance(m, AIMessage)), None)
        if idx is None:
            return d, response
        msg = result[idx]
        meta = msg.response_metadata or {}
        absolute: float | None = None
        if guarded and meta.get("safety_state") is not None:
            z_new = float(meta["safety_state"])
            spent = float(meta.get("safety_cost") or 0.0)
            absolute = z_new
            mode = "guarded"
        else:
            spent = float(cost or 0.0)
            z_new = self._after(z, spent)
            mode = "post_hoc"
        d.spend = spent
        self._event(
            d,
            "answer_scored",
            mode=mode,
            cost=spent,
            safety_state_before=z,
            safety_state=z_new,
            tool_calls=len(msg.tool_calls or []),
            finish_reason=meta.get("finish_reason"),
        )
        if z_new <= 0:
            self._event(d, "answer_blocked", mode=mode, reason="budget_exhausted", cost=spent, safety_state=z_new)
            self._event(d, "episode_ended", reason="budget_exhausted", safety_state=z_new, where="model_call")
            result[idx] = self._fallback_message("budget_exhausted", z_new, like=msg)
            result = [m for m in result if not isinstance(m, ToolMessage)]  # structured-output tool echoes
            response = ModelResponse(result=result, structured_response=None)
        upd = self._updates(d, absolute_z=absolute)
        return d, ExtendedModelResponse(model_response=response, command=Command(update=upd) if upd else None)

    def _posthoc_inputs(self, request: ModelRequest, response: ModelResponse) -> tuple[str, str] | None:
        msg = next((m for m in response.result if isinstance(m, AIMessage)), None)
        if msg is None:
            return None
        return _last_user_text(request.messages), _answer_text(msg)

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        z = self._z(request.state)
        if z <= 0:
            d, out = self._short_circuit(request, z)
            self._dispatch(d.events)
            return out
        guarded = self._guarded(request)
        response = handler(self._prepare_model_request(request, z, guarded))
        cost = None
        if not guarded or not self._has_state(response):
            guarded = False
            inputs = self._posthoc_inputs(request, response)
            cost = self._score([inputs[0]], [inputs[1]])[0] if inputs and inputs[1] else 0.0
        d, out = self._judge_answer(request, response, z, guarded, cost)
        self._dispatch(d.events)
        return out

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        z = self._z(request.state)
        if z <= 0:
            d, out = self._short_circuit(request, z)
            await self._adispatch(d.events)
            return out
        guarded = self._guarded(request)
        response = await handler(self._prepare_model_request(request, z, guarded))
        cost = None
        if not guarded or not self._has_state(response):
            guarded = False
            inputs = self._posthoc_inputs(request, response)
            cost = (await self._ascore([inputs[0]], [inputs[1]]))[0] if inputs and inputs[1] else 0.0
        d, out = self._judge_answer(request, response, z, guarded, cost)
        await self._adispatch(d.events)
        return out

    @staticmethod
    def _has_state(response: ModelResponse) -> bool:
        msg = next((m for m in response.result if isinstance(m, AIMessage)), None)
        return msg is not None and (msg.response_metadata or {}).get("safety_state") is not None

    # -- tool calls ---------------------------------------------------------------------------------------

    def _policy(self, tool: str) -> ToolPolicy:
        return self.config.tool_policies.get(tool, self.config.default_tool_policy)

    def _flags(self, text: str) -> list[str]:
        return [p.pattern for p in self._patterns if p.search(text)]

    def _harmful(self, z: float, cost: float) -> str | None:
        if cost > 0 and cost >= self.config.threshold:
            return "harmful"
        if cost > 0 and self._after(z, cost) <= 0:
            return "over_budget"
        return None

    def _check_call(self, request: ToolCallRequest) -> tuple[_Decision, Command | None]:
        """Score a tool call's arguments before the tool runs (checked, not charged: the answer paid for them)."""
        call = request.tool_call
        name, call_id = call.get("name", ""), call.get("id")
        z = self._z(request.state)
        cost = self._score_tool(_last_user_text(_state_get(request.state, "messages", []) or []), [_call_text(call)])[0]
        d = _Decision()
        self._event(d, "tool_call_scored", tool=name, tool_call_id=call_id, cost=cost, safety_state=z)
        reason = "budget_exhausted" if z <= 0 else self._harmful(z, cost)
        if reason is None:
            return d, None
        reason = "harmful_arguments" if reason == "harmful" else reason
        self._event(d, "tool_call_blocked", tool=name, tool_call_id=call_id, cost=cost, reason=reason, safety_state=z)
        msg = ToolMessage(
            content=(
                f"Tool call blocked by InferenceGuard ({reason.replace('_', ' ')}): the arguments of '{name}' were "
                f"judged unsafe (cost {cost:.2f}, episode safety state {z:.2f}). The tool was not run."
            ),
            tool_call_id=call_id or "",
            name=name,
            status="error",
        )
        return d, Command(update={"messages": [msg], **self._updates(d)})

    def _redact(self, segs: list[str], seg_costs: list[float], z: float, force: set[int]) -> tuple[str, int]:
        """Replace the sentences/lines that carry an injection (``force``) or are harmful on their own."""
        drop = set(force) | {i for i, c in enumerate(seg_costs) if self._harmful(z, c)}
        out, prev = [], False
        for i, seg in enumerate(segs):
            if i in drop:
                if not prev:
                    lead = seg[: len(seg) - len(seg.lstrip())]
                    out.append(lead + _REDACTED + ("\n" if seg.endswith("\n") else ""))
                prev = True
            else:
                out.append(seg)
                prev = False
        return "".join(out), len(drop)

    def _screen_result(self, request: ToolCallRequest, msg: ToolMessage, z: float) -> tuple[_Decision, ToolMessage]:
        """Screen one tool result before the model sees it; what passes is charged to the episode."""
        d = _Decision()
        name, call_id = request.tool_call.get("name", ""), request.tool_call.get("id")
        policy = self._policy(name)
        text = _text(msg.content)
        hits = self._flags(text)
        # the whole result and each sentence/line: a harmful sentence diluted in a long benign page still counts
        segs = _segments(text) if text else []
        scored = [i for i, seg in enumerate(segs) if seg.strip()] if len(segs) > 1 else []
        costs = self._score_content([text] + [segs[i] for i in scored]) if text else [0.0]
        seg_costs = [0.0] * len(segs)
        for i, c in zip(scored, costs[1:], strict=True):
            seg_costs[i] = c
        cost = max(costs)
        verdict = "prompt_injection" if hits else self._harmful(z, cost)
        reason = "harmful_content" if verdict == "harmful" else verdict
        self._event(
            d,
            "tool_result_scored",
            tool=name,
            tool_call_id=call_id,
            cost=cost,
            injection=bool(hits),
            verdict=reason or "ok",
            policy=policy,
            safety_state=z,
        )
        if reason is None or policy == "allow":
            d.spend = cost
            return d, msg
        if policy == "redact":
            if len(segs) == 1:
                seg_costs = [cost]
            force = {i for i, seg in enumerate(segs) if any(p.search(seg) for p in self._patterns)}
            new_text, removed = self._redact(segs, seg_costs, z, force)
            kept = new_text.replace(_REDACTED, "")  # judge what is left, not the placeholder
            new_cost = self._score_content([kept])[0] if kept.strip() else 0.0
            if not self._flags(new_text) and self._harmful(z, new_cost) is None:
                self._event(
                    d,
                    "tool_result_redacted",
                    tool=name,
                    tool_call_id=call_id,
                    reason=reason,
                    segments_removed=removed,
                    cost=new_cost,
                    original_cost=cost,
                )
                d.spend = new_cost
                return d, msg.model_copy(update={"content": new_text})
            reason += "_unredactable"
        self._event(d, "tool_result_blocked", tool=name, tool_call_id=call_id, reason=reason, cost=cost, policy=policy)
        blocked = ToolMessage(
            content=(
                f"Tool result withheld by InferenceGuard ({reason.replace('_', ' ')}): the output of '{name}' was "
                "judged unsafe to show to the model."
            ),
            tool_call_id=msg.tool_call_id,
            name=msg.name or name,
            status="error",
            id=msg.id,
        )
        return d, blocked

    def _screen_results(
        self, request: ToolCallRequest, result: Any, pre: _Decision
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Screen every ToolMessage of a tool's output (a ToolMessage or a Command) and attach the state updates."""
        total = _Decision()
        total.events, total.spend = list(pre.events), pre.spend
        screened: dict[int, ToolMessage] = {}
        if self.config.screen_tool_results:
            z = self._z(request.state)
            if isinstance(result, ToolMessage):
                found = [(0, result)]
            elif isinstance(result, Command) and isinstance(result.update, dict):
                found = [
                    (i, m) for i, m in enumerate(result.update.get("messages") or []) if isinstance(m, ToolMessage)
                ]
            else:  # pragma: no cover - unknown output shape: nothing to screen
                found = []
            for i, msg in found:
                d, screened[i] = self._screen_result(request, msg, z)
                z = self._after(z, d.spend) if d.spend > 0 else z
                total.events += d.events
                total.spend += d.spend
        upd = self._updates(total)
        if isinstance(result, ToolMessage):
            msg = screened.get(0, result)
            return (Command(update={"messages": [msg], **upd}) if upd else msg), total.events
        if isinstance(result, Command) and isinstance(result.update, dict):
            new_update = dict(result.update)
            if screened:
                msgs = list(new_update.get("messages") or [])
                for i, m in screened.items():
                    msgs[i] = m
                new_update["messages"] = msgs
            for k, v in upd.items():
                new_update.setdefault(k, v)
            return Command(graph=result.graph, update=new_update, resume=result.resume, goto=result.goto), total.events
        return result, total.events

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Any]) -> Any:
        pre = _Decision()
        if self.config.screen_tool_calls:
            pre, blocked = self._check_call(request)
            if blocked is not None:
                self._dispatch(pre.events)
                return blocked
        out, events = self._screen_results(request, handler(request), pre)
        self._dispatch(events)
        return out

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[Any]]
    ) -> Any:
        pre = _Decision()
        if self.config.screen_tool_calls:
            pre, blocked = await asyncio.to_thread(self._check_call, request)
            if blocked is not None:
                await self._adispatch(pre.events)
                return blocked
        result = await handler(request)
        out, events = await asyncio.to_thread(self._screen_results, request, result, pre)
        await self._adispatch(events)
        return out
