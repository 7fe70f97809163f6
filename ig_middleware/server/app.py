"""``ig-guard serve``: an OpenAI-compatible HTTP server whose every answer comes from the guarded search.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``,
``GET /metrics``. Chat goes through :class:`~ig_middleware.langchain.ChatInferenceGuard` (the same message,
tool-calling and JSON handling as in LangChain), completions through the engine directly. Streams carry
committed text only: the engine never yields text whose safety state is exhausted, so neither does the
server. A fallback answer has ``finish_reason="content_filter"``; the verdict is in the ``inferenceguard``
object of every response.

Operating rules: a bounded queue (full: 429 with ``Retry-After``), a per-search deadline (fails closed
to the fallback), a client disconnect cancels its search within one block, optional Bearer keys
(constant-time compare), a body size limit, OpenAI-style error bodies for every 4xx/5xx, and the
caller's W3C ``traceparent`` continued into the request span.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import AIMessageChunk, BaseMessage, convert_to_messages
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import GuardConfig
from ..engine import GuardedEngine
from ..errors import IGError, InvalidInputError
from ..telemetry import attributes as A
from ..telemetry.tracer import _version
from .metrics import ServerMetrics
from .schemas import ChatCompletionRequest, CompletionRequest, GuardExtension
from .settings import ServerSettings

log = logging.getLogger("ig_middleware.server")

_PARAM_OF_FIELD = {"max_new_tokens": "max_tokens", "timeout_s": "inferenceguard.timeout_s"}
_TOP_LEVEL = {"temperature", "top_p", "seed", "stop"}


class APIError(Exception):
    """An error answered with OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _validation_error(exc: ValidationError, prefix: str = "") -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in _PARAM_OF_FIELD and prefix:
        param = _PARAM_OF_FIELD[loc[0]]
    elif loc and loc[0] in _TOP_LEVEL and prefix:
        param = loc[0]
    else:
        param = ".".join(([prefix] if prefix else []) + loc) or None
    details = "; ".join(f"{'.'.join(map(str, e.get('loc', ()))) or prefix or 'body'}: {e.get('msg')}" for e in errors)
    return APIError(400, f"invalid request: {details}", param=param, code="invalid_value")


# -- admission ------------------------------------------------------------------------------------------
class Admission:
    """At most ``max_running`` searches, at most ``max_queue`` waiting; beyond that a request is refused."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.max_running, self.max_queue, self.queue_timeout = (
            settings.max_running, settings.max_queue, settings.queue_timeout_s,
        )  # fmt: skip
        self.slots = asyncio.Semaphore(settings.max_running)
        self.waiting = self.running = 0
        self.metrics = metrics
        self.retry_after = "1"

    def refuse_if_full(self) -> None:
        # counted, not read off the semaphore: a request between acquiring and running still holds its place
        if self.running + self.waiting >= self.max_running + self.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise APIError(
                429,
                f"the server is busy: {self.running} running and {self.waiting} queued requests; retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": self.retry_after},
            )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.refuse_if_full()
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        try:
            await asyncio.wait_for(self.slots.acquire(), self.queue_timeout)
        except asyncio.TimeoutError:
            self.metrics.rejected.labels("queue_timeout").inc()
            raise APIError(
                503,
                f"no search slot within {self.queue_timeout:g}s; retry later",
                type="server_error",
                code="queue_timeout",
                headers={"Retry-After": self.retry_after},
            ) from None
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)
        self.running += 1
        self.metrics.running.set(self.running)
        try:
            yield
        finally:
            self.running -= 1
            self.metrics.running.set(self.running)
            self.slots.release()


# -- the guarded service ----------------------------------------------------------------------------
class GuardService:
    """What the routes call: request -> guarded answer, with the verdict in OpenAI's shapes."""

    def __init__(self, settings: ServerSettings, engine: GuardedEngine | None, tracer_provider: Any) -> None:
        from ..langchain import ChatInferenceGuard

        self.settings = settings
        self.engine = engine or GuardedEngine(
            settings.model, device=settings.device, config=settings.guard_config, tracer_provider=tracer_provider
        )
        self.chat_model = ChatInferenceGuard(engine=self.engine, model=settings.model, guard_config=self.engine.config)
        self.metrics = ServerMetrics()
        self.admission = Admission(settings, self.metrics)
        self.tracer = trace.get_tracer(A.INSTRUMENTATION_NAME + ".server", _version(), tracer_provider=tracer_provider)
        self.keys = [k.encode() for k in settings.all_api_keys()]

    # -- request checks --------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for key in self.keys:  # every key compared in constant time, no early exit
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise APIError(401, "Incorrect or missing API key (send 'Authorization: Bearer <key>').",
                           code="invalid_api_key")  # fmt: skip

    async def body(self, request: Request) -> dict[str, Any]:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body of {declared} bytes is over the limit of {limit} bytes",
                           code="request_too_large")  # fmt: skip
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        return data

    def check_model(self, model: str) -> None:
        if model not in (self.settings.model_name, self.settings.model):
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{self.settings.model_name}'.",
                           param="model", code="model_not_found")  # fmt: skip

    def overrides(self, req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
        """GuardConfig overrides of one request, validated now so a bad one is a 400 naming its field."""
        out = req.inferenceguard.overrides()
        for name, value in (("max_new_tokens", req.token_limit), ("temperature", req.temperature),
                            ("top_p", req.top_p), ("seed", req.seed)):  # fmt: skip
            if value is not None:
                out[name] = value
        out.setdefault("timeout_s", self.settings.request_timeout_s)
        base = self.engine.config
        try:
            GuardConfig.model_validate({**base.model_dump(), "fallback": base.fallback, **out})
        except ValidationError as exc:
            raise _validation_error(exc, prefix="inferenceguard") from None
        return {k: v for k, v in out.items() if v is not None}

    # -- running a search ---------------------------------------------------------------------------------
    async def run(self, request: Request, endpoint: str, search: AsyncIterator[Any], parent: Any) -> AsyncIterator[Any]:
        """Admit, trace and run ``search`` (an async iterator of pieces), stopping it on client disconnect."""
        start = time.perf_counter()
        async with self.admission.slot():
            with self.tracer.start_as_current_span(
                f"POST {endpoint}", context=parent, kind=SpanKind.SERVER,
                attributes={A.HTTP_REQUEST_METHOD: "POST", A.HTTP_ROUTE: endpoint, A.URL_PATH: endpoint},
            ) as span:  # fmt: skip
                try:
                    async for piece in search:
                        if await request.is_disconnected():  # non-streaming: nobody is waiting any more
                            raise asyncio.CancelledError
                        yield piece
                except (asyncio.CancelledError, GeneratorExit):  # a stream's client left (or we noticed it)
                    self.metrics.cancelled.inc()
                    span.set_attribute(A.IG_CLIENT_DISCONNECTED, True)
                    raise
                except IGError as exc:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
                finally:
                    await _aclose(search)
                span.set_attribute(A.HTTP_RESPONSE_STATUS_CODE, 200)
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def record(self, ext: dict[str, Any]) -> None:
        if ext.get("safety_state") is not None:
            self.metrics.safety_state.observe(ext["safety_state"])
        if ext.get("fallback_reason"):
            self.metrics.fallbacks.labels(ext["fallback_reason"]).inc()

    # -- chat ---------------------------------------------------------------------------------------------
    def chat_call(self, req: ChatCompletionRequest) -> tuple[list[BaseMessage], dict[str, Any]]:
        try:
            messages = convert_to_messages([m.model_dump(exclude_none=True) for m in req.messages])
        except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
            raise APIError(400, f"invalid messages: {exc}", param="messages") from None
        kwargs: dict[str, Any] = self.overrides(req)
        if req.stop:
            kwargs["stop"] = req.stop
        if req.inferenceguard.safety_state is not None:
            kwargs["safety_state"] = req.inferenceguard.safety_state
        if req.tools:
            kwargs["tools"] = req.tools
            if req.tool_choice is not None:
                kwargs["tool_choice"] = req.tool_choice
        fmt = req.response_format
        if fmt is not None and fmt.type != "text":
            kwargs["json_mode"] = True
            if fmt.type == "json_schema":
                schema = (fmt.json_schema or {}).get("schema")
                if not isinstance(schema, dict):
                    raise APIError(400, "response_format.json_schema.schema must be a JSON schema object",
                                   param="response_format.json_schema")  # fmt: skip
                kwargs["json_schema"] = schema
        return messages, kwargs

    async def chat_stream(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AsyncIterator[AIMessageChunk]:
        async for chunk in self.chat_model.astream(messages, **kwargs):
            yield chunk


def _text_and_refusal(content: Any) -> tuple[str, str | None]:
    if isinstance(content, str):
        return content, None
    text, refusal = [], None
    for part in content or ():
        if isinstance(part, str):
            text.append(part)
        elif part.get("type") == "text":
            text.append(part.get("text", ""))
        elif part.get("type") == "refusal":
            refusal = part.get("refusal")
    return "".join(text), refusal


def extension(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``inferenceguard`` object of a response, from a guarded answer's metadata."""
    return {
        "safety_state": meta.get("safety_state"),
        "cost": meta.get("safety_cost", meta.get("cost")),
        "budget": meta.get("safety_budget", meta.get("budget")),
        "within_budget": (meta.get("safety_state") or 0.0) > 0.0,
        "fallback": bool(meta.get("fallback_reason")),
        "fallback_reason": meta.get("fallback_reason"),
        "resamples": meta.get("resamples"),
        "candidates_sampled": meta.get("candidates_sampled"),
        "judge_calls": meta.get("judge_calls"),
        "blocks": meta.get("blocks"),
        "method": meta.get("method"),
        "backend": meta.get("backend"),
        "critic_used": meta.get("critic_used"),
        "run_id": meta.get("search_run_id", meta.get("run_id")),
        "seconds": meta.get("search_seconds", meta.get("seconds")),
    }


def _finish_reason(meta: dict[str, Any], has_tool_calls: bool) -> str:
    if meta.get("fallback_reason") or meta.get("finish_reason") == "safety_fallback":
        return "content_filter"
    if has_tool_calls:
        return "tool_calls"
    return "length" if meta.get("finish_reason") == "length" else "stop"


def _openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c.get("args") or {}, ensure_ascii=False)}}
        for c in calls
    ]  # fmt: skip


def _usage(msg: AIMessageChunk | None) -> dict[str, int]:
    u = (msg.usage_metadata if msg is not None else None) or {}
    prompt, completion = int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _aclose(it: Any) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


# -- the app --------------------------------------------------------------------------------------------
def create_app(
    settings: ServerSettings | None = None, *, engine: GuardedEngine | None = None, tracer_provider: Any = None
) -> FastAPI:
    """The FastAPI app. ``engine`` replaces the one built from ``settings`` (tests, custom judges)."""
    settings = settings or ServerSettings()
    service = GuardService(settings, engine, tracer_provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(lambda: (service.engine.lm, service.engine.cost_model))  # load before serving
        app.state.ready = True
        yield
        app.state.ready = False

    app = FastAPI(title="ig-middleware guarded server", version=_version(), lifespan=lifespan)
    app.state.service, app.state.ready = service, False

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        service.metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return exc.response()

    @app.exception_handler(ValidationError)
    async def _invalid(request: Request, exc: ValidationError) -> JSONResponse:
        return await _api_error(request, _validation_error(exc))

    @app.exception_handler(InvalidInputError)
    async def _bad_input(request: Request, exc: InvalidInputError) -> JSONResponse:
        return await _api_error(request, APIError(400, str(exc), param=exc.field, code="invalid_input"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return await _api_error(request, APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return await _api_error(request, APIError(500, "internal server error", type="server_error"))

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = bool(app.state.ready)
        body = {"status": "ok" if ready else "loading", "model": settings.model_name,
                "running": service.admission.running, "queued": service.admission.waiting}  # fmt: skip
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        service.authorize(request)
        card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "ig-middleware"}
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        service.authorize(request)
        req = ChatCompletionRequest.model_validate(await service.body(request))
        service.check_model(req.model)
        messages, kwargs = service.chat_call(req)
        parent = propagate.extract(request.headers)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        endpoint = "/v1/chat/completions"
        base = {"id": rid, "created": created, "model": settings.model_name}

        if not req.stream:
            msg: AIMessageChunk | None = None
            try:
                async for chunk in service.run(request, endpoint, service.chat_stream(messages, kwargs), parent):
                    msg = chunk if msg is None else msg + chunk
            except asyncio.CancelledError:
                msg = None
            if msg is None:  # the client went away: nobody to answer
                return Response(status_code=499)
            meta = dict(msg.response_metadata or {})
            ext = extension(meta)
            service.record(ext)
            text, refusal = _text_and_refusal(msg.content)
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": refusal}
            if msg.tool_calls:
                message["tool_calls"] = _openai_tool_calls(msg.tool_calls)
            service.metrics.requests.labels(endpoint, "200").inc()
            return JSONResponse({
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": _finish_reason(meta, bool(msg.tool_calls))}],
                "usage": _usage(msg), "inferenceguard": ext,
            })  # fmt: skip

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events() -> AsyncIterator[bytes]:
            chunk_base = {**base, "object": "chat.completion.chunk"}
            yield _sse({**chunk_base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]})  # fmt: skip
            total: AIMessageChunk | None = None
            try:
                async for chunk in service.run(request, endpoint, service.chat_stream(messages, kwargs), parent):
                    total = chunk if total is None else total + chunk
                    text, refusal = _text_and_refusal(chunk.content)
                    delta: dict[str, Any] = {}
                    if text:
                        delta["content"] = text
                    if refusal:
                        delta["refusal"] = refusal
                    if chunk.tool_call_chunks:
                        delta["tool_calls"] = [
                            {"index": tc.get("index") or 0, "id": tc.get("id"), "type": "function",
                             "function": {"name": tc.get("name"), "arguments": tc.get("args") or ""}}
                            for tc in chunk.tool_call_chunks
                        ]  # fmt: skip
                    if delta:
                        yield _sse({**chunk_base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                               "finish_reason": None}]})  # fmt: skip
            except APIError as exc:  # refused after the stream began (queue full): an error event, then stop
                yield _sse({"error": {"message": exc.message, "type": exc.type, "code": exc.code}})
                return
            except IGError as exc:
                yield _sse({"error": {"message": str(exc), "type": "server_error", "code": type(exc).__name__}})
                return
            if total is None:
                return
            meta = dict(total.response_metadata or {})
            ext = extension(meta)
            service.record(ext)
            service.metrics.requests.labels(endpoint, "200").inc()
            yield _sse({**chunk_base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                        "finish_reason": _finish_reason(meta, bool(total.tool_calls))}], "inferenceguard": ext})  # fmt: skip
            if include_usage:
                yield _sse({**chunk_base, "choices": [], "usage": _usage(total)})
            yield _sse("[DONE]")

        service.admission.refuse_if_full()  # before the 200: a full queue is a 429, not a broken stream
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        service.authorize(request)
        req = CompletionRequest.model_validate(await service.body(request))
        service.check_model(req.model)
        kwargs = service.overrides(req)
        if req.stop:
            kwargs["stop"] = req.stop
        if req.inferenceguard.safety_state is not None:
            kwargs["safety_state"] = req.inferenceguard.safety_state
        prompt = req.prompt
        endpoint = "/v1/completions"
        parent = propagate.extract(request.headers)
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": settings.model_name}

        def search() -> AsyncIterator[Any]:
            return service.engine.astream(prompt, raw=True, **kwargs)

        def finish(result: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
            ext = extension({**result.__dict__, "run_id": result.run_id, "seconds": result.timings.total_s})
            service.record(ext)
            service.metrics.requests.labels(endpoint, "200").inc()
            usage = {"prompt_tokens": result.input_tokens, "completion_tokens": result.output_tokens,
                     "total_tokens": result.input_tokens + result.output_tokens}  # fmt: skip
            return ext, usage, _finish_reason({"fallback_reason": result.fallback_reason,
                                               "finish_reason": result.finish_reason}, False)  # fmt: skip

        if not req.stream:
            result = None
            try:
                async for piece in service.run(request, endpoint, search(), parent):
                    result = piece.result or result
            except asyncio.CancelledError:
                result = None
            if result is None:
                return Response(status_code=499)
            ext, usage, reason = finish(result)
            return JSONResponse({**base, "object": "text_completion", "choices": [
                {"index": 0, "text": (prompt if req.echo else "") + result.text, "logprobs": None,
                 "finish_reason": reason}], "usage": usage, "inferenceguard": ext})  # fmt: skip

        async def events() -> AsyncIterator[bytes]:
            chunk_base = {**base, "object": "text_completion"}
            result = None
            async for piece in service.run(request, endpoint, search(), parent):
                result = piece.result or result
                if piece.text:
                    yield _sse({**chunk_base, "choices": [{"index": 0, "text": piece.text, "logprobs": None,
                                                           "finish_reason": None}]})  # fmt: skip
            if result is None:
                return
            ext, usage, reason = finish(result)
            yield _sse({**chunk_base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": reason}],
                        "inferenceguard": ext})  # fmt: skip
            if req.stream_options and req.stream_options.include_usage:
                yield _sse({**chunk_base, "choices": [], "usage": usage})
            yield _sse("[DONE]")

        service.admission.refuse_if_full()
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def serve(settings: ServerSettings, *, engine: GuardedEngine | None = None) -> None:
    """Run the server in the foreground (uvicorn) until SIGINT/SIGTERM; in-flight requests get
    ``graceful_shutdown_s`` to finish (each search also has its own deadline, which fails closed)."""
    import uvicorn

    from ..telemetry import configure_from_env

    configure_from_env(service_name="ig-guard-serve")
    app = create_app(settings, engine=engine)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s) or None,
    )


__all__ = ["APIError", "GuardExtension", "create_app", "extension", "serve"]
