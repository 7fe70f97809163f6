"""The OpenAI API subset the guarded server speaks, as validated pydantic models.

Unknown top-level fields that OpenAI clients send (``user``, ``frequency_penalty``, ...) are accepted and
ignored; known fields with a wrong type or value are a 400 that names the field. InferenceGuard's own
settings travel in the ``inferenceguard`` extension object (``extra_body={"inferenceguard": {...}}`` in the
``openai`` SDK) and come back in an ``inferenceguard`` object of the response.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class GuardExtension(BaseModel):
    """Per-request guard settings: the search fields of :class:`~ig_middleware.GuardConfig` and the safety state."""

    model_config = ConfigDict(extra="forbid")

    safety_state: float | None = Field(None, ge=0, le=1, description="Share of the budget left (e.g. across turns).")
    budget: float | None = Field(None, gt=0)
    gamma: float | None = Field(None, gt=0, le=1)
    block_size: int | None = Field(None, ge=1, le=4096)
    num_candidates: int | None = Field(None, ge=1, le=4096)
    num_beams: int | None = Field(None, ge=1, le=4096)
    max_retries: int | None = Field(None, ge=0, le=16)
    method: str | None = None
    safety_mode: str | None = None
    use_critic: bool | None = None
    timeout_s: float | None = Field(None, gt=0)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"safety_state"}).items() if v is not None}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatMessageIn(BaseModel):
    """One message in OpenAI's format; content may be a string or a list of parts."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    inferenceguard: GuardExtension = Field(default_factory=GuardExtension)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported (one guarded answer per request)")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None and len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request")
            v = v[0]
        if not v.strip():
            raise ValueError("is empty")
        return v

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens
