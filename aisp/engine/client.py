"""The engine-client API: the one way into an engine for the server, tests and tools.

    client = EngineClient.start(config)            # the core in its own process (serving)
    client = EngineClient.in_process(LLMEngine(c))  # the core on a thread (tests, notebooks)
    stream = await client.add_request(prompt_ids, params, request_id, priority, arrival_time)
    async for out in stream: ...                    # RequestOutput deltas, text included
    client.model_info, client.tokenizer, client.is_healthy, client.is_accepting
    client.step_listeners / finished_listeners      # per-step stats, finished outputs (metrics)
    await client.shutdown(drain=True, timeout=None)

Contract:
- The client is the front end: it tokenizes text prompts, keeps each request's text and stop
  strings (aisp.engine.output_processor) and its stream; the core (aisp.engine.core) sees token
  ids and sampling params without stop strings. Two cores, one client: `InProcessCore` runs the
  core loop on a thread of this process; `ProcessCore` (aisp.engine.core_process) in a process
  of its own, over a pipe. Everything below holds for both.
- `add_request` waits for the core's admission and raises its ValueError (with the numbers)
  when the request can never be served, before any output, so an HTTP layer can answer 400
  before it sends headers; `EngineShuttingDownError` / `EngineDeadError` when nothing is
  admitted. A stream yields the request's deltas and ends after the finished one.
- A consumer that stops early (breaks, is cancelled, the client disconnects) closes its stream
  (`async with`, `aclose()`): the request is aborted in the core, which frees its KV blocks
  before its next step, and the finished listeners see it as 'abort'.
- A step that fails takes down the requests it held: their streams raise `EngineStepError`; if
  the core then cannot go on, or its process dies, every stream raises `EngineDeadError`, new
  requests are refused with it and `is_healthy` turns False at once (the process's exit is
  watched, not polled).
- `shutdown(drain)`: new requests are refused at once with `EngineShuttingDownError`; with
  drain, in-flight requests run to completion (bounded by `timeout` if given), the rest fail
  with that error; then the core stops (its process exits; none is left behind).
- Listeners run on the thread that receives the core's messages; prometheus_client's metrics
  are thread-safe. `kv_free_blocks` and `num_unfinished` are the core's numbers after its
  latest message (tests use them to see blocks freed across the process boundary).
- The streams of one request live on the event loop that created them; several loops may share
  a client, but `shutdown` must be awaited on a running loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from aisp.engine.config import EngineConfig
from aisp.engine.core import (AbortRequests, AddRequest, Command, CoreBatch, Shutdown,
                              StopRequests, run_core_loop)
from aisp.engine.engine import LLMEngine, ModelInfo, RequestOutput, StepStats
from aisp.engine.output_processor import OutputProcessor
from aisp.engine.sampling_params import SamplingParams
from aisp.model.tokenizer import Tokenizer

__all__ = ["EngineClient", "EngineDeadError", "EngineShuttingDownError", "EngineStepError",
           "InProcessCore", "ModelInfo", "RequestOutput", "RequestStream", "SamplingParams",
           "StepStats"]

log = logging.getLogger(__name__)


class EngineShuttingDownError(RuntimeError):
    """The server is shutting down: no new requests (or, without drain, no more output)."""


class EngineDeadError(RuntimeError):
    """The engine core failed or exited and cannot serve; the server must be restarted."""


class EngineStepError(RuntimeError):
    """An engine step raised while this request was in flight; the request was aborted."""


class Core(Protocol):
    """What the client needs of a core: a way to send commands and a source of batches."""

    model_info: ModelInfo
    pid: int | None

    def start(self, on_batch: Callable[[CoreBatch], None],
              on_exit: Callable[[str], None]) -> None: ...
    def send(self, command: Command) -> None: ...     # thread-safe, never blocks for long
    def join(self, timeout: float | None = None) -> None: ...
    @property
    def alive(self) -> bool: ...


class InProcessCore:
    """The core loop on a daemon thread of this process; commands through a queue."""

    pid = None

    def __init__(self, engine: LLMEngine, thread_name: str = "aisp-engine") -> None:
        self.engine = engine
        self.model_info = engine.model_info
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None

    def start(self, on_batch, on_exit) -> None:
        def run() -> None:
            reason = "the engine thread stopped"
            try:
                run_core_loop(self.engine, self._receive, on_batch)
            except BaseException as e:   # a bug in the loop itself: say so, then stop
                log.exception("the engine thread failed")
                reason = f"the engine thread failed: {e!r}"
            finally:
                on_exit(reason)
        self._thread = threading.Thread(target=run, name=self._thread_name, daemon=True)
        self._thread.start()

    def _receive(self, block: bool) -> list[Command]:
        commands = [self._inbox.get()] if block else []
        while True:
            try:
                commands.append(self._inbox.get_nowait())
            except queue.Empty:
                return commands

    def send(self, command: Command) -> None:
        self._inbox.put(command)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class RequestStream:
    """The deltas of one admitted request, as an async iterator that ends after the finished
    output. Close it (async with / aclose) to abort a request that has not finished."""

    def __init__(self, owner: "EngineClient", request_id: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.loop = loop
        self._owner = owner
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._done = False   # a finished output or an error was consumed, or the stream closed

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finished:
            self._done = True
        return item

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Abort the request unless it already ended; idempotent, safe from a `finally`."""
        if not self._done:
            self._done = True
            self._owner._abort(self.request_id)

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)


class EngineClient:
    """The front end of one engine core; see the module docstring."""

    def __init__(self, core: Core, tokenizer: Tokenizer | None) -> None:
        self.model_info: ModelInfo = core.model_info
        self.tokenizer = tokenizer
        self.step_listeners: list[Callable[[StepStats], None]] = []
        self.finished_listeners: list[Callable[[RequestOutput], None]] = []
        self.kv_free_blocks = self.model_info.num_kv_blocks
        self.num_unfinished = 0
        self.last_error: BaseException | None = None
        self._core = core
        self._front = OutputProcessor(tokenizer)
        self._lock = threading.Lock()
        self._live: dict[str, RequestStream] = {}       # admitted or waiting: route outputs
        self._admissions: dict[str, asyncio.Future] = {}
        self._inflight: set[str] = set()                # not yet ended for their consumer
        self._idle: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._closing = False
        self._dead = False
        core.start(self._on_batch, self._on_exit)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def in_process(cls, engine: LLMEngine | EngineConfig) -> "EngineClient":
        """A client over `engine` (or one built from a config) driven by a thread of this
        process, which owns the engine from now on."""
        if isinstance(engine, EngineConfig):
            engine = LLMEngine(engine)
        return cls(InProcessCore(engine), engine.tokenizer)

    @classmethod
    def start(cls, config: EngineConfig, start_timeout: float | None = None) -> "EngineClient":
        """Start the core in a process of its own and return its client once the engine is
        built (model loaded, graphs captured); its build errors are raised here."""
        from aisp.engine.core_process import ProcessCore
        from aisp.model.presets import resolve_model

        core = ProcessCore(config, start_timeout)
        try:
            tokenizer = resolve_model(config.model).tokenizer()
        except FileNotFoundError:
            tokenizer = None   # a weights-only folder still serves token-id prompts
        return cls(core, tokenizer)

    @property
    def core_pid(self) -> int | None:
        """The engine-core process's pid (None for an in-process core)."""
        return self._core.pid

    # -- state -----------------------------------------------------------------------------------
    @property
    def is_healthy(self) -> bool:
        return self._core.alive and not self._dead

    @property
    def is_accepting(self) -> bool:
        return self.is_healthy and not self._closing

    @property
    def num_inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    # -- requests --------------------------------------------------------------------------------
    async def add_request(self, prompt: str | Sequence[int], params: SamplingParams,
                          request_id: str | None = None, priority: int = 0,
                          arrival_time: float | None = None) -> RequestStream:
        """Admit one request and return its stream (see the module docstring)."""
        loop = asyncio.get_running_loop()
        rid = request_id or f"req-{uuid.uuid4().hex}"
        arrival = time.monotonic() if arrival_time is None else arrival_time
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"model '{self.model_info.model}' has no tokenizer.json, so "
                                 f"text prompts cannot be used; pass prompt token ids")
            prompt = self.tokenizer.encode(prompt)
        stream = RequestStream(self, rid, loop)
        admitted = loop.create_future()
        # Under the lock `shutdown` takes to close admission: a request is either refused here
        # or queued ahead of shutdown's aborts and stop, never lost in between.
        with self._lock:
            self._check_accepting()
            if rid in self._inflight:
                raise ValueError(f"request id {rid!r} is already in flight; use a unique id")
            self._front.add(rid, prompt, params, arrival)   # ValueError: stop strings, no text
            self._inflight.add(rid)
            self._live[rid] = stream
            self._admissions[rid] = admitted
            self._core.send(AddRequest(rid, tuple(prompt), dataclasses.replace(params, stop=()),
                                       priority, arrival))
        try:
            await admitted
        except asyncio.CancelledError:
            stream.close()   # the caller left while waiting: abort if it was admitted meanwhile
            raise
        except BaseException:
            self._end(rid)
            raise
        return stream

    async def generate(self, prompt: str | Sequence[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's deltas until it finishes; leaving early aborts it once the
        generator is closed (`contextlib.aclosing`, or add_request + `async with`)."""
        stream = await self.add_request(prompt, params, request_id)
        async with stream:
            async for out in stream:
                yield out

    def _check_accepting(self) -> None:
        if self._closing:
            raise EngineShuttingDownError("server is shutting down; it no longer accepts requests")
        if not self.is_healthy:
            raise EngineDeadError(str(self.last_error) if self.last_error is not None else
                                  "the engine core is not running; restart the server")

    def _abort(self, request_id: str) -> None:
        """A consumer left: stop delivering, tell the core, count it as aborted."""
        with self._lock:
            self._live.pop(request_id, None)
            out = self._front.abort(request_id, time.monotonic())
        self._end(request_id)
        self._core.send(AbortRequests((request_id,)))
        if out is not None:
            for listener in self.finished_listeners:
                listener(out)

    def _end(self, request_id: str) -> None:
        with self._lock:
            self._inflight.discard(request_id)
            if self._inflight:
                return
            waiters, self._idle = self._idle, []
        for loop, event in waiters:
            _call_soon(loop, event.set)

    # -- messages from the core (its receiving thread) -------------------------------------------
    def _on_batch(self, batch: CoreBatch) -> None:
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, object]]] = {}
        finished: list[RequestOutput] = []
        settle: list[tuple[asyncio.Future, BaseException | None]] = []
        with self._lock:
            self.kv_free_blocks, self.num_unfinished = batch.kv_free_blocks, batch.num_unfinished
            for rid in batch.admitted:
                future = self._admissions.pop(rid, None)
                if future is not None:
                    settle.append((future, None))
            for rid, why in batch.rejected:
                future = self._admissions.pop(rid, None)
                self._live.pop(rid, None)
                self._front.abort(rid, 0.0)   # never admitted: not a finished request
                if future is not None:
                    settle.append((future, ValueError(why)))
            for core_out in batch.outputs:
                out = self._front.process(core_out)
                stream = self._live.get(core_out.request_id)
                if out is None or stream is None:
                    continue   # finished here already (stop string), or its consumer left
                if out.finished:
                    del self._live[out.request_id]
                    finished.append(out)
                deliveries.setdefault(stream.loop, []).append((stream, out))
            stops, self._front.to_stop = self._front.to_stop, []
            if batch.failed:
                error = EngineStepError(f"{batch.error}; the request was aborted")
                for rid in batch.failed:
                    stream = self._live.pop(rid, None)
                    self._front.abort(rid, 0.0)
                    future = self._admissions.pop(rid, None)
                    if future is not None:
                        settle.append((future, error))
                    if stream is not None:
                        deliveries.setdefault(stream.loop, []).append((stream, error))
        if stops:
            self._core.send(StopRequests(tuple(stops)))
        # Listeners first: a consumer that sees its request finish then finds it in /metrics.
        for stats in batch.stats:
            for listener in self.step_listeners:
                listener(stats)
        for out in finished:
            for listener in self.finished_listeners:
                listener(out)
        for future, error in settle:
            _call_soon(future.get_loop(), _settle, future, error)
        for loop, items in deliveries.items():
            _call_soon(loop, self._deliver, items)
        if batch.dead:
            self._fail_all(EngineDeadError(f"the engine cannot recover ({batch.error}); restart "
                                           f"the server"), batch.error)

    def _on_exit(self, reason: str) -> None:
        """The core stopped (shutdown, a crash, a dead process): fail what is left."""
        if self._dead:
            return   # a batch already said why
        if self._closing and not self._live and not self._admissions:
            log.info("%s", reason)
            return
        if not self._closing:
            log.error("%s; failing %d in-flight requests and refusing new ones", reason,
                      len(self._live))
        self._fail_all(EngineDeadError(f"{reason}; restart the server"), reason)

    def _fail_all(self, error: BaseException, reason: str) -> None:
        with self._lock:
            self._dead = True
            self.last_error = self.last_error if self.last_error is not None else error
            live, self._live = self._live, {}
            admissions, self._admissions = self._admissions, {}
            for rid in live:
                self._front.abort(rid, 0.0)
        for future in admissions.values():
            _call_soon(future.get_loop(), _settle, future, error)
        for rid, stream in live.items():
            _call_soon(stream.loop, self._deliver, [(stream, error)])

    def _deliver(self, items: list[tuple[RequestStream, object]]) -> None:
        """On a consumer loop: hand outputs (or errors) to their streams."""
        for stream, item in items:
            stream._put(item)
            if isinstance(item, BaseException) or item.finished:
                self._end(stream.request_id)

    # -- shutdown --------------------------------------------------------------------------------
    async def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; with `drain`, wait (at most `timeout` s) for in-flight ones to
        finish; fail whatever is left with EngineShuttingDownError; stop the core."""
        with self._lock:
            self._closing = True
        if drain and self.is_healthy:
            event = asyncio.Event()
            with self._lock:
                if self._inflight:
                    self._idle.append((asyncio.get_running_loop(), event))
                else:
                    event.set()
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("drain timed out after %.1f s with %d requests in flight; aborting "
                            "them", timeout, self.num_inflight)
        error = EngineShuttingDownError("server is shutting down; the request was aborted")
        with self._lock:
            left = dict(self._live)
            self._live.clear()
            admissions, self._admissions = self._admissions, {}
            for rid in left:
                self._front.abort(rid, time.monotonic())
        if left:
            self._core.send(AbortRequests(tuple(left)))
        for future in admissions.values():
            _call_soon(future.get_loop(), _settle, future, error)
        for stream in left.values():
            _call_soon(stream.loop, self._deliver, [(stream, error)])
        self._core.send(Shutdown())
        await asyncio.get_running_loop().run_in_executor(None, self._core.join, 30.0)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():   # the waiter was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """call_soon_threadsafe that tolerates a consumer loop that has already closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        log.debug("event loop closed; dropped a delivery to it")
