"""Running the server: on the caller's event loop (`Server`) or in a background thread
(`start_server`, for tests, notebooks and `ch16/inference_server_load_test.py`).

Contract:
- `Server(client, host, port, ...)` owns one `EngineClient` (aisp.engine.client): it attaches
  `EngineMetrics` to the client's listeners (one `CollectorRegistry` in this process, which
  later exporters join) and builds the app. `await server.start()` binds and returns the port
  (port 0 picks a free one); `await server.stop(drain=True)` refuses new requests (503), lets
  in-flight ones finish (bounded by `timeout` if given), closes the listener and the
  connections, and stops the engine core (its process, when it has one).
- `start_server(engine_or_config, host="127.0.0.1", port=0, ..., engine_process=None) ->
  RunningServer` does the same on a private event loop in a daemon thread and returns once the
  port is bound; `RunningServer.stop()` (or leaving its `with` block) drains and joins. From a
  config the core runs in its own process (unless `engine_process=False`); an `LLMEngine`
  given as it is runs on a thread of this process (tests that read its counters).
- Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web
from prometheus_client import CollectorRegistry

from aisp.engine.client import EngineClient
from aisp.engine.config import EngineConfig
from aisp.engine.metrics import EngineMetrics
from aisp.serve.app import MAX_BODY_BYTES, build_app

__all__ = ["RunningServer", "Server", "start_server"]

log = logging.getLogger(__name__)


class Server:
    """The HTTP server and its engine, started and stopped on the caller's event loop."""

    def __init__(self, client: EngineClient, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, served_model_name: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, shutdown_timeout: float = 60.0,
                 registry: CollectorRegistry | None = None) -> None:
        self.host = host
        self.port = port
        self.served_model_name = served_model_name or client.model_info.model
        # One registry for the process: pass it to let GPU and allocator exporters join /metrics.
        self.metrics = EngineMetrics(registry, self.served_model_name).attach(client)
        self.client = client
        self.app = build_app(client, self.metrics, self.served_model_name, api_key,
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
            await self.client.shutdown(drain=False)
            raise
        self.port = self._runner.addresses[0][1]
        log.info("serving %s on %s", self.served_model_name, self.url)
        return self.port

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting (503), drain or abort in-flight requests, close, stop the engine."""
        await self.client.shutdown(drain=drain, timeout=timeout)
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
    def client(self) -> EngineClient:
        return self.server.client

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


def start_server(engine: EngineConfig | object, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, served_model_name: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 engine_process: bool | None = None) -> RunningServer:
    """Serve a new engine built from a config (its core in its own process unless
    `engine_process` is False), or an `LLMEngine` already built (on a thread of this process),
    from a background thread; returns once listening. Port 0 binds a free port: read it from
    `.port` / `.url`."""
    if not isinstance(engine, EngineConfig):
        if engine_process:
            raise ValueError("an LLMEngine already built lives in this process; pass its "
                             "EngineConfig to run the engine core in a process of its own")
        client = EngineClient.in_process(engine)
    elif engine_process is False:
        client = EngineClient.in_process(engine)
    else:
        client = EngineClient.start(engine)
    try:
        return RunningServer(Server(client, host, port, api_key, served_model_name,
                                    max_body_bytes))
    except BaseException:
        _stop_client(client)
        raise


def _stop_client(client: EngineClient) -> None:
    """Stop a client whose server never started (no loop is running yet)."""
    asyncio.run(client.shutdown(drain=False))
