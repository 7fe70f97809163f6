"""The guarded OpenAI-compatible server (``ig-guard serve``); needs the ``serve`` extra (FastAPI, uvicorn)."""

from .app import APIError, create_app, serve
from .settings import ServerSettings

__all__ = ["APIError", "ServerSettings", "create_app", "serve"]
