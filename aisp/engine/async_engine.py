"""`AsyncLLMEngine`: one `LLMEngine` driven by one background thread, consumed from asyncio.

Contract:
- `LLMEngine` is not thread-safe, so exactly one thread (started by the constructor) owns it from
  then on: the caller hands the engine over and afterwards only reads its immutable attributes
  (config, tokenizer, max_model_len, model_config). Listeners (metrics) must be attached before.
- The thread's loop: drain a thread-safe inbox of commands (add, abort, stop), then `step()` once
  while the engine has work; with no work it blocks on the inbox, so an idle server burns no CPU.
- `add_request(...)` awaits admission on the engine thread and returns a `RequestStream`; an
  admission error (the engine's ValueError with the numbers) is raised here, before any output,
  so an HTTP layer can answer 400 before it sends headers. `generate(...)` is the same as an
  async generator: admission errors surface from its first `__anext__`, before the first yield.
- Outputs are the engine's deltas (`RequestOutput`), delivered to a per-request asyncio.Queue on
  the caller's event loop with `loop.call_soon_threadsafe` (one call per loop per step).
- A consumer that stops early (breaks, is cancelled, the client disconnects) must close the
  stream (`async with`, `aclose()`, or leaving `generate`): the request is then aborted on the
  engine thread, which frees its KV blocks before the next step.
- Failure: if `step()` raises, every in-flight request fails with `EngineStepError` (its consumer
  sees the exception instead of hanging) and is aborted; if the engine then reports no unfinished
  work, the thread keeps serving, otherwise the engine is marked dead (`is_healthy` False) and new
  requests are refused with `EngineDeadError`.
- `shutdown(drain)`: new requests are refused at once with `EngineShuttingDownError` ("server is
  shutting down"); with drain, in-flight requests run to completion (optionally bounded by a
  timeout), otherwise they fail with that error; then the thread stops.
- All `RequestStream`s of one request live on the event loop that created them; several loops may
  share one AsyncLLMEngine, but `shutdown` must be awaited on a running loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aisp.engine.engine import LLMEngine, RequestOutput
from aisp.engine.sampling_params import SamplingParams

__all__ = ["AsyncLLMEngine", "EngineDeadError", "EngineShuttingDownError", "EngineStepError",
           "RequestStream"]

log = logging.getLogger(__name__)


class EngineShuttingDownError(RuntimeError):
    """The server is shutting down: no new requests (or, without drain, no more output)."""


class EngineDeadError(RuntimeError):
    """The engine failed in a way it could not recover from; the process should be restarted."""


class EngineStepError(RuntimeError):
    """`LLMEngine.step()` raised while this request was in flight; the request was aborted."""


# -- commands from the event loop(s) to the engine thread ----------------------------------------
@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt: str | tuple[int, ...]
    params: SamplingParams
    priority: int
    arrival_time: float
    stream: "RequestStream"
    admitted: asyncio.Future


@dataclass(frozen=True)
class _Abort:
    request_id: str
    error: BaseException | None = None   # delivered to the consumer, if it is still listening


@dataclass(frozen=True)
class _Stop:
    pass


class RequestStream:
    """The deltas of one admitted request, as an async iterator that ends after the finished
    output. Close it (async with / aclose) to abort a request that has not finished."""

    def __init__(self, owner: "AsyncLLMEngine", request_id: str,
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
        """On the stream's loop: queue an output (or error) for the consumer."""
        self._queue.put_nowait(item)


class AsyncLLMEngine:
    """Asyncio front of one `LLMEngine`; see the module docstring for the threading contract."""

    def __init__(self, engine: LLMEngine, thread_name: str = "aisp-engine") -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue[_Add | _Abort | _Stop] = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}    # engine thread only: admitted, unfinished
        self._inflight: dict[str, RequestStream] = {}   # any loop, under _lock: not yet ended
        self._lock = threading.Lock()
        self._idle: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []  # drain waiters
        self._closing = False
        self._dead = False
        self.last_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    # -- state -----------------------------------------------------------------------------------
    @property
    def is_healthy(self) -> bool:
        """The engine thread is alive and the engine has not failed unrecoverably."""
        return self._thread.is_alive() and not self._dead

    @property
    def is_accepting(self) -> bool:
        """Healthy and not shutting down: new requests will be admitted."""
        return self.is_healthy and not self._closing

    @property
    def num_inflight(self) -> int:
        """Requests submitted and not yet ended (finished output consumed, failed or closed)."""
        with self._lock:
            return len(self._inflight)

    # -- requests --------------------------------------------------------------------------------
    async def add_request(self, prompt: str | Sequence[int], params: SamplingParams,
                          request_id: str | None = None, priority: int = 0,
                          arrival_time: float | None = None) -> RequestStream:
        """Admit one request and return its stream; raises the engine's ValueError when it can
        never be served, `EngineShuttingDownError` / `EngineDeadError` when nothing is admitted.
        `arrival_time` (time.monotonic) lets the server count the time before admission."""
        loop = asyncio.get_running_loop()
        rid = request_id or f"req-{uuid.uuid4().hex}"
        stream = RequestStream(self, rid, loop)
        admitted = loop.create_future()
        prompt = prompt if isinstance(prompt, str) else tuple(prompt)
        # Under the lock that `shutdown` takes to close admission: a request is either refused
        # here or queued ahead of shutdown's aborts and stop, never lost in between.
        with self._lock:
            self._check_accepting()
            if rid in self._inflight:
                raise ValueError(f"request id {rid!r} is already in flight; use a unique id")
            self._inflight[rid] = stream
            self._inbox.put(_Add(rid, prompt, params, priority,
                                 time.monotonic() if arrival_time is None else arrival_time,
                                 stream, admitted))
        try:
            await admitted
        except asyncio.CancelledError:
            stream.close()   # the caller left while waiting; abort if it was admitted meanwhile
            raise
        except BaseException:
            self._end(rid)
            raise
        return stream

    async def generate(self, prompt: str | Sequence[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's deltas until it finishes. Leaving early aborts the request once
        the generator is closed: use `contextlib.aclosing` (or `add_request` + `async with`)."""
        stream = await self.add_request(prompt, params, request_id)
        async with stream:
            async for out in stream:
                yield out

    def _check_accepting(self) -> None:
        if self._closing:
            raise EngineShuttingDownError("server is shutting down; it no longer accepts requests")
        if not self.is_healthy:
            raise EngineDeadError(f"the engine is not running (last error: {self.last_error!r}); "
                                  f"restart the server")

    def _abort(self, request_id: str) -> None:
        """From any thread: stop delivering and abort on the engine thread (frees its blocks)."""
        self._end(request_id)
        self._inbox.put(_Abort(request_id))

    def _end(self, request_id: str) -> None:
        with self._lock:
            self._inflight.pop(request_id, None)
            if self._inflight:
                return
            waiters, self._idle = self._idle, []
        for loop, event in waiters:
            _call_soon(loop, event.set)

    # -- shutdown --------------------------------------------------------------------------------
    async def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; with `drain`, wait (at most `timeout` s) for in-flight ones to
        finish; fail whatever is left with EngineShuttingDownError; stop the engine thread."""
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
                log.warning("drain timed out after %.1f s with %d requests in flight; aborting them",
                            timeout, self.num_inflight)
        with self._lock:
            left = list(self._inflight)
        error = EngineShuttingDownError("server is shutting down; the request was aborted")
        for rid in left:
            self._end(rid)
            self._inbox.put(_Abort(rid, error))
        self._inbox.put(_Stop())
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    # -- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while True:
            busy = not self._dead and engine.has_unfinished_requests()
            commands = [] if busy else [self._inbox.get()]   # idle: block, no spinning
            while True:
                try:
                    commands.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for cmd in commands:
                if isinstance(cmd, _Stop):
                    self._fail_all(EngineShuttingDownError("server is shutting down"))
                    return
                if isinstance(cmd, _Add):
                    self._handle_add(cmd)
                else:
                    self._handle_abort(cmd)
            if not self._dead and engine.has_unfinished_requests():
                self._step()

    def _handle_add(self, cmd: _Add) -> None:
        try:
            if self._dead:
                raise EngineDeadError(f"the engine failed ({self.last_error!r}); restart the server")
            self.engine.add_request(cmd.prompt, cmd.params, request_id=cmd.request_id,
                                    priority=cmd.priority, arrival_time=cmd.arrival_time)
        except Exception as e:  # ValueError: admission; anything else: reported to the caller
            _call_soon(cmd.stream.loop, _settle, cmd.admitted, e)
            return
        self._streams[cmd.request_id] = cmd.stream
        _call_soon(cmd.stream.loop, _settle, cmd.admitted, None)

    def _handle_abort(self, cmd: _Abort) -> None:
        stream = self._streams.pop(cmd.request_id, None)
        if stream is not None and cmd.error is not None:
            _call_soon(stream.loop, stream._put, cmd.error)
        if self._dead:
            return
        try:
            self.engine.abort([cmd.request_id])   # unknown or finished ids are skipped
        except Exception as e:
            self._mark_dead(e)
            self._fail_all(EngineDeadError(f"the engine failed: {e!r}"))

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:
            log.exception("engine step failed; failing %d in-flight requests", len(self._streams))
            self.last_error = e
            cause = None
            try:   # free the blocks first, so a consumer that sees the error sees them free
                self.engine.abort(list(self._streams))
                if self.engine.has_unfinished_requests():
                    raise RuntimeError("requests remain after aborting all in-flight ones")
            except Exception as e2:
                cause = e2
            if cause is not None:
                self._mark_dead(cause)   # before the consumers hear of it
            self._fail_all(EngineStepError(f"the engine step failed: {e!r}; the request was "
                                           f"aborted"))
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestOutput]]] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue  # its consumer left; the abort is already queued in the inbox
            if out.finished:
                del self._streams[out.request_id]
            by_loop.setdefault(stream.loop, []).append((stream, out))
        for loop, batch in by_loop.items():
            _call_soon(loop, self._deliver, batch)

    def _deliver(self, batch: list[tuple[RequestStream, RequestOutput]]) -> None:
        """On a consumer loop: hand one step's outputs to their streams."""
        for stream, out in batch:
            stream._put(out)
            if out.finished:
                self._end(stream.request_id)

    def _fail_all(self, error: BaseException) -> None:
        """Engine thread: every admitted request's consumer gets `error`; the streams end."""
        streams, self._streams = self._streams, {}
        for rid, stream in streams.items():
            self._end(rid)
            _call_soon(stream.loop, stream._put, error)

    def _mark_dead(self, error: BaseException) -> None:
        """Refuse new requests from now on (in-flight ones are failed by the caller)."""
        log.error("the engine cannot recover (%r); refusing new requests", error)
        self.last_error = error
        self._dead = True


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
