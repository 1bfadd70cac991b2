"""A test double of an OpenAI-compatible streaming server, with controlled timing and faults.

It runs on 127.0.0.1 (a free port) in its own thread and event loop, so the client under test
and the server do not share a loop. Per request: wait `first_token_delay_s`, stream
ceil(max_tokens / tokens_per_chunk) content chunks `token_delay_s` apart, then (when the client
asked for it and `include_usage`) a usage chunk, then `data: [DONE]`. Faults: every
`fail_every`-th request gets a 400 with an OpenAI error body; every `drop_every`-th request has
its connection closed after two content chunks; every `garbage_every`-th gets a non-JSON event
and every `stream_error_every`-th an error event after its first chunk. With `capacity` > 0, at
most that many requests generate at once and the rest wait in a queue (their TTFT grows with
load). Counters record what was injected and the largest number of requests streaming at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
from dataclasses import dataclass, field

from aiohttp import web


def unused_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FakeServerConfig:
    first_token_delay_s: float = 0.05
    token_delay_s: float = 0.02
    tokens_per_chunk: int = 1
    include_usage: bool = True
    fail_every: int = 0
    drop_every: int = 0
    garbage_every: int = 0  # a `data:` line that is not JSON after the first chunk
    stream_error_every: int = 0  # an {"error": ...} event after the first chunk (as vLLM does)
    health: bool = True  # False: /health is 404 (the client must fall back to /v1/models)
    models: bool = True  # False: /v1/models is 404 too
    metrics: bool = True  # expose aisp:prefix_cache_* counters (hits = half of each prompt)
    api_key: str | None = None
    capacity: int = 0  # > 0: at most this many requests generate at once; the rest queue


@dataclass
class FakeServerStats:
    requests: int = 0
    failed: int = 0
    dropped: int = 0
    garbled: int = 0
    stream_errors: int = 0
    completed: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prefix_hits: int = 0
    prefix_queries: int = 0
    bodies: list[dict] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)


class FakeServer:
    def __init__(self, config: FakeServerConfig | None = None):
        self.config = config or FakeServerConfig()
        self.stats = FakeServerStats()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._slots = asyncio.Semaphore(self.config.capacity or 1)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "FakeServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def reset(self, config: FakeServerConfig | None = None) -> None:
        """New behaviour and zeroed counters between tests (call while no request runs)."""
        if config is not None:
            self.config = config
        self.stats = FakeServerStats()
        self._slots = asyncio.Semaphore(self.config.capacity or 1)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    # -- routes ------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        if not self.config.health:
            raise web.HTTPNotFound()
        return web.Response(text="")

    async def _models(self, request: web.Request) -> web.Response:
        if not self.config.models:
            raise web.HTTPNotFound()
        return web.json_response({"object": "list", "data": [{"id": "fake-model",
                                                               "object": "model"}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.config.metrics:
            raise web.HTTPNotFound()
        s, labels = self.stats, '{model_name="fake-model"}'
        text = (
            "# HELP aisp:prefix_cache_queries_total Prompt tokens looked up.\n"
            "# TYPE aisp:prefix_cache_queries_total counter\n"
            f"aisp:prefix_cache_queries_total{labels} {float(s.prefix_queries)}\n"
            "# HELP aisp:prefix_cache_hits_total Prompt tokens found.\n"
            "# TYPE aisp:prefix_cache_hits_total counter\n"
            f"aisp:prefix_cache_hits_total{labels} {float(s.prefix_hits)}\n"
            "# HELP aisp:num_requests_running Requests running.\n"
            "# TYPE aisp:num_requests_running gauge\n"
            f"aisp:num_requests_running{labels} {float(s.in_flight)}\n")
        return web.Response(text=text, content_type="text/plain")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, chat=True)

    async def _stream(self, request: web.Request, chat: bool) -> web.StreamResponse:
        c, s = self.config, self.stats
        body = await request.json()
        s.requests += 1
        n = s.requests
        s.bodies.append(body)
        s.auth_headers.append(request.headers.get("Authorization"))
        if c.api_key is not None and request.headers.get("Authorization") != f"Bearer {c.api_key}":
            return web.json_response({"error": {"message": "bad api key", "type": "auth",
                                                "code": 401}}, status=401)
        if c.fail_every and n % c.fail_every == 0:
            s.failed += 1
            return web.json_response({"error": {"message": f"injected failure on request {n}",
                                                "type": "BadRequestError", "code": 400}},
                                     status=400)
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        n_prompt = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        s.prefix_queries += n_prompt
        s.prefix_hits += n_prompt // 2
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            await resp.prepare(request)
            if c.capacity:
                async with self._slots:
                    return await self._generate(request, resp, body, chat, n, n_prompt)
            return await self._generate(request, resp, body, chat, n, n_prompt)
        finally:
            s.in_flight -= 1

    async def _generate(self, request: web.Request, resp: web.StreamResponse, body: dict,
                        chat: bool, n: int, n_prompt: int) -> web.StreamResponse:
        c, s = self.config, self.stats
        max_tokens = int(body["max_tokens"])

        async def send(obj: dict | str) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        kind = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            await send({"object": kind, "choices": [{"index": 0, "delta": {
                "role": "assistant"}, "finish_reason": None}]})
        await asyncio.sleep(c.first_token_delay_s)
        num_chunks = math.ceil(max_tokens / c.tokens_per_chunk)
        emitted = 0
        for i in range(num_chunks):
            if i:
                await asyncio.sleep(c.token_delay_s)
            k = min(c.tokens_per_chunk, max_tokens - emitted)
            emitted += k
            text = " tok" * k
            last = emitted == max_tokens
            choice = {"index": 0, "finish_reason": "length" if last else None}
            choice.update({"delta": {"content": text}} if chat else {"text": text})
            await send({"object": kind, "choices": [choice]})
            if i == 0 and c.garbage_every and n % c.garbage_every == 0:
                s.garbled += 1
                await send("{this is not json")
            elif i == 0 and c.stream_error_every and n % c.stream_error_every == 0:
                s.stream_errors += 1
                await send({"error": {"message": "injected engine error", "code": 500}})
                await send("[DONE]")
                await resp.write_eof()
                return resp
            if c.drop_every and n % c.drop_every == 0 and i == 1:
                s.dropped += 1
                assert request.transport is not None
                request.transport.abort()  # mid-stream: the chunked body never ends
                return resp
        if c.include_usage and (body.get("stream_options") or {}).get("include_usage"):
            await send({"object": kind, "choices": [], "usage": {
                "prompt_tokens": n_prompt, "completion_tokens": emitted,
                "total_tokens": n_prompt + emitted}})
        await send("[DONE]")
        await resp.write_eof()
        s.completed += 1
        return resp
