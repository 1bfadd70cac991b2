"""The OpenAI-compatible HTTP routes over an `EngineClient` (aiohttp).

aiohttp rather than FastAPI/uvicorn: the GPU machine has aiohttp and lacks fastapi, uvicorn and
pydantic, and the server needs nothing they add (see DESIGN.md).

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions, GET /health (200 while
admitting, 503 while draining or unhealthy), GET /metrics (Prometheus text of `EngineMetrics`).

Contract:
- The server uses only the engine-client API (aisp.engine.client; STYLE.md #18): `add_request`,
  the streams, `model_info` (the model, its context and what set it, the vocabulary),
  `tokenizer`, health, and the metrics fed by the client's listeners. The engine core may run
  in another process; nothing here can tell.
- GET /v1/models lists one model card: OpenAI's fields plus vLLM's `max_model_len` (prompt +
  output tokens of one request, at most) and aisp's `vocab_size` (token-id prompts must hold
  ids in [0, vocab_size)), so a load tester can fit its prompts to the model.
- Every failure is `{"error": {"message", "type", "param", "code"}}` with a 4xx for bad input
  (400 invalid values and admission errors, 401 API key, 404 unknown model or route, 405, 413
  body over `max_body_bytes`) and 503 while shutting down; a bad request never touches the engine
  beyond its own admission, so concurrent requests are unaffected.
- Prompts are tokenized here (in a worker thread, off the event loop): the server needs the
  prompt's length to default `max_tokens` to the remaining context and to report usage. Text
  and stop strings come with the client's outputs (its front end builds them).
- Streaming and non-streaming share `responses.chunks`; the latter is its fold.
- A client that disconnects is noticed either by a failed write or by aiohttp cancelling the
  handler (the runner is started with handler_cancellation=True); either way the request's
  stream is closed, which aborts it in the engine core and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aisp.engine.client import (EngineClient, EngineDeadError, EngineShuttingDownError,
                                EngineStepError, ModelInfo, SamplingParams)
from aisp.engine.metrics import EngineMetrics
from aisp.serve.chat import ChatTemplate, ChatTemplateError
from aisp.serve.protocol import (ApiError, ParsedRequest, bad_request, parse_chat,
                                 parse_completion, sampling_error)
from aisp.serve.responses import ResponseFormat, chunks, fold

__all__ = ["MAX_BODY_BYTES", "METRICS_CONTENT_TYPE", "ServerState", "build_app"]

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 << 20   # 4 MiB: ~1M tokens of text, far beyond any context we serve
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class ServerState:
    engine: EngineClient
    model: ModelInfo
    metrics: EngineMetrics
    served_model_name: str
    api_key: str | None
    chat_template: ChatTemplate | None   # None without a tokenizer
    max_body_bytes: int
    created: int


STATE = web.AppKey("aisp_state", ServerState)


def build_app(engine: EngineClient, metrics: EngineMetrics, served_model_name: str,
              api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> web.Application:
    """The aiohttp application; `metrics` must already be attached to `engine`."""
    template = (ChatTemplate.for_model(engine.model_info.model, engine.tokenizer)
                if engine.tokenizer is not None else None)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors, _auth])
    app[STATE] = ServerState(engine, engine.model_info, metrics, served_model_name, api_key,
                             template, max_body_bytes, int(time.time()))
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_route)
    return app


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.to_dict(), status=error.status)


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error leaves in OpenAI's shape, whatever raised it."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPException as e:   # aiohttp's own: unknown route, wrong method, ...
        if e.status < 400:
            raise
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status, "server_error")
        return error_response(ApiError(e.status, f"{request.method} {request.path}: {e.reason}",
                                       kind, code=str(e.status)))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(ApiError(500, f"internal server error: {e!r}", "server_error"))


@web.middleware
async def _auth(request: web.Request, handler) -> web.StreamResponse:
    """With an API key, /v1/* needs `Authorization: Bearer <key>`; /health and /metrics are open
    (probes and Prometheus scrapers)."""
    key = request.app[STATE].api_key
    if key is not None and request.path.startswith("/v1/"):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 key.encode()):
            what = "no API key was sent" if not header else "the API key is wrong"
            raise ApiError(401, f"{what}; send the header 'Authorization: Bearer <key>' with "
                                f"the key the server was started with (--api-key)",
                           "authentication_error", code="invalid_api_key")
    return await handler(request)


# -- simple routes --------------------------------------------------------------------------------
async def models(request: web.Request) -> web.Response:
    s = request.app[STATE]
    return web.json_response({"object": "list", "data": [{
        "id": s.served_model_name, "object": "model", "created": s.created, "owned_by": "aisp",
        "root": s.model.model, "max_model_len": s.model.max_model_len,
        "vocab_size": s.model.vocab_size}]})


async def health(request: web.Request) -> web.Response:
    engine = request.app[STATE].engine
    if engine.is_accepting:
        return web.json_response({"status": "ok"})
    return error_response(_unavailable(engine))


async def metrics_route(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def _unavailable(engine: EngineClient) -> ApiError:
    if engine.is_healthy:
        return ApiError(503, "server is shutting down; it no longer accepts requests",
                        "service_unavailable_error", code="server_shutting_down")
    return ApiError(503, f"the engine is not healthy ({engine.last_error}); the server must "
                         f"be restarted", "service_unavailable_error",
                    code="engine_unhealthy")


# -- generation -----------------------------------------------------------------------------------
async def completions(request: web.Request) -> web.StreamResponse:
    arrival = time.monotonic()
    return await _generate(request, parse_completion(await _json_body(request)), arrival)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    arrival = time.monotonic()
    return await _generate(request, parse_chat(await _json_body(request)), arrival)


async def _json_body(request: web.Request) -> Any:
    limit = request.app[STATE].max_body_bytes
    too_large = ApiError(413, f"the request body is larger than the server's limit of "
                              f"{limit:,} bytes; send a shorter prompt", "invalid_request_error",
                         code="request_too_large")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _prompt_ids(s: ServerState, parsed: ParsedRequest) -> tuple[tuple[int, ...], str]:
    """Token ids of the prompt and the name of the field it came from."""
    tokenizer = s.engine.tokenizer
    field = "messages" if parsed.messages is not None else "prompt"
    if isinstance(parsed.prompt, tuple):
        return parsed.prompt, field
    if tokenizer is None:
        raise bad_request(f"model '{s.served_model_name}' has no tokenizer.json, so only "
                          f"completions with token-id prompts can be served", param=field)
    loop = asyncio.get_running_loop()
    if parsed.messages is not None:
        try:
            text = s.chat_template.render(parsed.messages)
        except ChatTemplateError as e:
            raise bad_request(str(e), param="messages") from None
        encode = loop.run_in_executor(None, tokenizer.encode, text, False)
    else:
        encode = loop.run_in_executor(None, tokenizer.encode, parsed.prompt)
    try:
        ids = await encode
    except ValueError as e:   # text the tokenizer cannot take (protocol.py checks the fields)
        raise bad_request(f"{field}: {e}", param=field, code="invalid_text") from None
    return tuple(ids), field


async def _generate(request: web.Request, parsed: ParsedRequest,
                    arrival: float) -> web.StreamResponse:
    s = request.app[STATE]
    if parsed.model is not None and parsed.model != s.served_model_name:
        raise ApiError(404, f"model '{parsed.model}' does not exist; this server serves "
                            f"'{s.served_model_name}' (see GET /v1/models)",
                       "invalid_request_error", param="model", code="model_not_found")
    if not s.engine.is_accepting:
        raise _unavailable(s.engine)
    prompt_ids, field = await _prompt_ids(s, parsed)
    limit = s.model.max_model_len
    if len(prompt_ids) >= limit:
        raise bad_request(f"the prompt has {len(prompt_ids):,} tokens; this server's max_model_len "
                          f"is {limit:,} tokens ({s.model.max_model_len_reason}), which "
                          f"leaves no room to generate; shorten the prompt", param=field,
                          code="context_length_exceeded")
    sampling = dict(parsed.sampling)
    sampling.setdefault("max_tokens", limit - len(prompt_ids))   # unset: the remaining context
    try:
        params = SamplingParams(**sampling)
    except ValueError as e:
        raise sampling_error(e) from None
    chat = parsed.messages is not None
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    try:
        stream = await s.engine.add_request(prompt_ids, params, request_id=rid,
                                            arrival_time=arrival)
    except ValueError as e:   # admission: the scheduler's message has the numbers and the fix
        raise bad_request(str(e)) from None
    except (EngineShuttingDownError, EngineDeadError):
        raise _unavailable(s.engine) from None
    fmt = ResponseFormat(chat, rid, int(time.time()), s.served_model_name, prompt_ids,
                         parsed.return_token_ids, parsed.continuous_usage)
    async with stream:   # leaving early (error, disconnect, cancellation) aborts the request
        if parsed.stream:
            return await _sse(request, chunks(stream, fmt), parsed.include_usage)
        try:
            async with aclosing(chunks(stream, fmt)) as seq:
                return web.json_response(fold(fmt, [c async for c in seq]))
        except EngineShuttingDownError:
            raise _unavailable(s.engine) from None
        except (EngineStepError, EngineDeadError) as e:
            raise ApiError(500, str(e), "server_error", code="engine_error") from None


async def _sse(request: web.Request, sequence: AsyncIterator[dict[str, Any]],
               include_usage: bool) -> web.StreamResponse:
    """Server-sent events: `data: {chunk}` per chunk, then `data: [DONE]`."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        async with aclosing(sequence) as seq:
            try:
                async for chunk in seq:
                    if include_usage or chunk["choices"]:   # the last one is usage only
                        await resp.write(_event(chunk))
            except (EngineStepError, EngineDeadError, EngineShuttingDownError) as e:
                # Headers are gone: the error travels as an event, as vLLM does.
                code = "server_shutting_down" if isinstance(e, EngineShuttingDownError) else \
                    "engine_error"
                await resp.write(_event(ApiError(500, str(e), "server_error",
                                                 code=code).to_dict()))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        log.info("client went away during %s; aborting its request", request.path)
    return resp


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
