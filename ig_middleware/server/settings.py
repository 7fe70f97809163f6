"""Server settings: CLI flags and ``IG_SERVE_*`` environment variables, validated in one model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import GuardConfig
from ..errors import InvalidInputError
from ..models import DEFAULT_MODEL

ENV_PREFIX = "IG_SERVE_"
ENV_API_KEYS = "IG_SERVE_API_KEYS"  # comma-separated; never logged


class ServerSettings(BaseModel):
    """How ``ig-guard serve`` runs. Every field can also be set as ``IG_SERVE_<FIELD>`` (flags win)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model: str = DEFAULT_MODEL
    """The embedded default, a local folder or a Hugging Face model id."""
    served_model_name: str | None = None
    """The name clients send as ``model`` (default: ``model``)."""
    device: str = "cpu"
    guard_config: GuardConfig = Field(default_factory=GuardConfig)
    max_running: int = Field(1, ge=1, le=64)
    """Searches at once (they share the model, whose forward passes are serialised)."""
    max_queue: int = Field(16, ge=0, le=4096)
    """Requests waiting for a search slot; beyond it a request gets 429 with ``Retry-After``."""
    queue_timeout_s: float = Field(60.0, gt=0)
    """Longest wait for a slot before 503 (``Retry-After``)."""
    request_timeout_s: float | None = Field(120.0, gt=0)
    """Deadline of one search; on expiry the answer is the fallback (fails closed)."""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    api_keys: list[str] = Field(default_factory=list, repr=False)
    """Bearer keys; empty means no authentication. Not shown in reprs or logs."""
    api_key_file: Path | None = None
    """A file with one key per line (added to ``api_keys``)."""
    graceful_shutdown_s: float = Field(30.0, ge=0)
    log_level: str = "info"

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        keys = [k.strip() for k in v if k.strip()]
        if any(len(k) < 8 for k in keys):
            raise ValueError("API keys must be at least 8 characters")
        return keys

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    def all_api_keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text().splitlines()
            except OSError as exc:
                raise InvalidInputError("api_key_file", f"cannot be read: {exc}") from exc
            keys += [k.strip() for k in lines if k.strip() and not k.startswith("#")]
        return keys

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **flags: Any) -> ServerSettings:
        """Settings from ``IG_SERVE_*`` variables, overridden by the given flags (None = not given)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or name == "guard_config":
                continue
            values[name] = raw.split(",") if name == "api_keys" else raw
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls.model_validate(values)
