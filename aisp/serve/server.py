"""Running the server: on the caller's event loop (`Server`) or in a background thread
(`start_server`, for tests, notebooks and `ch16/inference_server_load_test.py`).

Contract:
- `Server(engine, host, port, ...)` owns one `LLMEngine`: it attaches `EngineMetrics`, hands the
  engine to an `AsyncLLMEngine` (whose thread owns it from then on) and builds the app.
  `await server.start()` binds and returns the port (port 0 picks a free one); `await
  server.stop(drain=True)` refuses new requests (503), lets in-flight ones finish (bounded by
  `timeout` if given), closes the listener and the connections, and stops the engine thread.
- `start_server(engine_or_config, host="127.0.0.1", port=0, ...) -> RunningServer` does the same
  on a private event loop in a daemon thread and returns once the port is bound;
  `RunningServer.stop()` (or leaving its `with` block) drains and joins. Its `engine` attribute
  is the LLMEngine, which only the engine thread may drive (tests may read counters).
- Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

from aisp.engine.async_engine import AsyncLLMEngine
from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.metrics import EngineMetrics
from aisp.serve.app import MAX_BODY_BYTES, build_app

__all__ = ["RunningServer", "Server", "start_server"]

log = logging.getLogger(__name__)


class Server:
    """The HTTP server and its engine, started and stopped on the caller's event loop."""

    def __init__(self, engine: LLMEngine, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, served_model_name: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, shutdown_timeout: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.served_model_name = served_model_name or engine.config.model
        self.metrics = EngineMetrics(model_name=self.served_model_name).attach(engine)
        self.engine = engine
        self.async_engine = AsyncLLMEngine(engine)   # the engine thread owns `engine` from here
        self.app = build_app(self.async_engine, self.metrics, self.served_model_name, api_key,
                             max_body_bytes)
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        # handler_cancellation: a client that disconnects cancels its handler, which aborts its
        # request even while nothing is being written (queued, or a non-streaming request).
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            await self.async_engine.shutdown(drain=False)
            raise
        self.port = self._runner.addresses[0][1]
        log.info("serving %s on %s", self.served_model_name, self.url)
        return self.port

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting (503), drain or abort in-flight requests, close, stop the engine."""
        await self.async_engine.shutdown(drain=drain, timeout=timeout)
        if self._runner is not None:
            # Handlers still writing their last chunks get `shutdown_timeout` to finish.
            await self._runner.cleanup()
            self._runner = None


class RunningServer:
    """A `Server` on its own event loop thread; see `start_server`."""

    def __init__(self, server: Server, start_timeout: float = 60.0) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aisp-http",
                                        daemon=True)
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(server.start(), self._loop).result(
                start_timeout)
        except BaseException:
            self._close_loop()
            raise
        self.host = server.host
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def engine(self) -> LLMEngine:
        return self.server.engine

    @property
    def async_engine(self) -> AsyncLLMEngine:
        return self.server.async_engine

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Drain (or abort) and stop; idempotent. Blocks until the threads have exited."""
        if self._stopped:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(drain, timeout), self._loop).result()
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(engine: LLMEngine | EngineConfig, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, served_model_name: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> RunningServer:
    """Serve `engine` (or a new engine built from a config) in a background thread; returns
    once listening. Port 0 binds a free port: read it from `.port` / `.url`."""
    if isinstance(engine, EngineConfig):
        engine = LLMEngine(engine)
    return RunningServer(Server(engine, host, port, api_key, served_model_name, max_body_bytes))
