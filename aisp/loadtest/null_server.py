"""A trivially fast OpenAI-compatible streaming server, to measure the load generator alone.

Contract: `python -m aisp.loadtest.null_server [--port P] [--token-delay-ms D] ...` (or
`NullServerProcess(config)` as a context manager, which runs that command in a child process,
waits until it listens and stops it on exit) serves, on 127.0.0.1 by default:

  POST /v1/completions, /v1/chat/completions  streaming only: exactly `max_tokens` chunks (as
      with vLLM's ignore_eos), shaped as `aisp serve` shapes them (id, object, created, model,
      choices[0] with text or delta.content, logprobs, finish_reason, stop_reason; the last one
      finish_reason "length"), then a usage chunk when stream_options.include_usage, then
      `data: [DONE]`; one write per chunk. Pacing:
        token_delay_s = 0: each request's chunks are written back to back, as fast as the
            server can (they coalesce into few reads at the client: its ceiling);
        token_delay_s > 0: in steps, as an engine runs: every token_delay_s one chunk is
            written to every streaming request, so chunks arrive one per read and in bursts
            of one per stream, as from `aisp serve` (one token per request per decode step).
      A request starts streaming `first_token_delay_s` after it arrives (at the next step).
  GET /health; GET /v1/models with one card carrying `max_model_len` and `vocab_size`, so the
      runner's fit step has something to read.
  GET /stats[?since=T&until=U]: what it served so far (requests started and completed, chunks
      written, this server's CPU seconds) and, for the requests it received in [T, U), its own
      view of their timing: TTFT from receiving the request to writing its first chunk, and the
      gaps between its writes of consecutive chunks (`MetricStats`, as the client's stats).
      For that it keeps every chunk's write time (8 bytes a chunk) for as long as it runs.

Times are `time.perf_counter()` seconds. The benchmark compares them with the client's, which
needs one clock for both processes: perf_counter is CLOCK_MONOTONIC on Linux (system-wide);
the ready line carries the child's clock so the parent can check that (`shared_clock`).

It does no work per token beyond writing pre-encoded bytes, so a load generator pointed at it is
limited by itself (or by this server's single event loop: /stats shows its CPU use, and the
benchmark in capacity.py reports both). Requests it cannot serve (not streaming, no max_tokens)
get a 400 with an OpenAI error body. It is not a test double with faults: that is
tests/loadtest/fake_server.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from aisp.loadtest.stats import MetricStats

__all__ = ["NullServerConfig", "NullServerProcess", "make_app"]

_READY_PREFIX = "null server listening on "


@dataclass(frozen=True)
class NullServerConfig:
    """What the null server serves; delays in seconds, 0 = none."""

    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    model: str = "null-model"
    max_model_len: int = 32768
    vocab_size: int = 128256  # Llama 3's, so the H200 workload's token ids fit unchanged

    def __post_init__(self) -> None:
        if self.first_token_delay_s < 0 or self.token_delay_s < 0:
            raise ValueError(f"delays must be >= 0 s, got first_token_delay_s="
                             f"{self.first_token_delay_s} and token_delay_s={self.token_delay_s}")
        if self.max_model_len < 1 or self.vocab_size < 1:
            raise ValueError(f"max_model_len ({self.max_model_len}) and vocab_size "
                             f"({self.vocab_size}) must be >= 1")

    def args(self) -> list[str]:
        """The command-line flags that rebuild this config in a child process."""
        return ["--first-token-delay-ms", f"{self.first_token_delay_s * 1e3:g}",
                "--token-delay-ms", f"{self.token_delay_s * 1e3:g}", "--model", self.model,
                "--max-model-len", str(self.max_model_len), "--vocab-size", str(self.vocab_size)]


@dataclass
class _Counters:
    requests: int = 0
    completed: int = 0
    chunks: int = 0
    # Per streamed request: (time received, times of its chunk writes), for /stats windows.
    timelines: list[tuple[float, array]] = field(default_factory=list)

    def window(self, since: float, until: float) -> dict[str, Any]:
        """The server's view of the requests it received in [since, until)."""
        chosen = [(recv, w) for recv, w in self.timelines if since <= recv < until]
        ttft = MetricStats.of_seconds(w[0] - recv for recv, w in chosen if w)
        gaps = MetricStats.of_seconds(b - a for _, w in chosen for a, b in zip(w, w[1:]))
        return {"since": since, "until": until, "requests": len(chosen),
                "ttft": asdict(ttft), "itl": asdict(gaps)}


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class _Shapes:
    """Each endpoint's chunk bytes, encoded once."""

    config: NullServerConfig
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        # chat -> (first, middle, last, only) chunk: the first carries the role, the last the
        # finish_reason; `only` is both, for max_tokens = 1.
        self.encoded = {chat: (self._chunk(chat, True, None), self._chunk(chat, False, None),
                               self._chunk(chat, False, "length"),
                               self._chunk(chat, True, "length")) for chat in (False, True)}

    def _envelope(self, chat: bool, **rest: Any) -> dict[str, Any]:
        return {"id": "cmpl-null", "created": self.created, "model": self.config.model,
                "object": "chat.completion.chunk" if chat else "text_completion", **rest}

    def _chunk(self, chat: bool, first: bool, finish: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if chat:
            choice["delta"] = {"role": "assistant", "content": " tok"} if first else \
                {"content": " tok"}
        else:
            choice["text"] = " tok"
        choice.update(logprobs=None, finish_reason=finish, stop_reason=None)
        return _event(self._envelope(chat, choices=[choice]))

    def chunk(self, chat: bool, i: int, n: int) -> bytes:
        """Chunk i (0-based) of n."""
        first, middle, last, only = self.encoded[chat]
        return only if n == 1 else first if i == 0 else last if i == n - 1 else middle

    def usage(self, chat: bool, num_prompt: int, num_output: int) -> bytes:
        return _event(self._envelope(chat, choices=[], usage={
            "prompt_tokens": num_prompt, "completion_tokens": num_output,
            "total_tokens": num_prompt + num_output}))


@dataclass
class _Stream:
    """One request streaming in steps: its response and how far it has got."""

    resp: web.StreamResponse
    chat: bool
    num_chunks: int
    writes: array
    done: asyncio.Future
    num_written: int = 0


class _Stepper:
    """Writes one chunk to every streaming request per step, `interval_s` apart, as an engine
    step emits one token per running request. Runs while any request streams."""

    def __init__(self, interval_s: float, shapes: _Shapes, counters: _Counters):
        self.interval_s, self.shapes, self.counters = interval_s, shapes, counters
        self.active: list[_Stream] = []
        self.joining: list[_Stream] = []  # join at the next step
        self.task: asyncio.Task | None = None

    def add(self, s: _Stream) -> None:
        self.joining.append(s)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        next_step = time.perf_counter()
        while self.active or self.joining:
            self.active += self.joining
            self.joining = []
            still = []
            for s in self.active:
                s.writes.append(time.perf_counter())
                try:
                    await s.resp.write(self.shapes.chunk(s.chat, s.num_written, s.num_chunks))
                except (ConnectionError, RuntimeError) as e:  # the client went away
                    s.done.set_exception(e)
                    continue
                s.num_written += 1
                self.counters.chunks += 1
                if s.num_written < s.num_chunks:
                    still.append(s)
                else:
                    s.done.set_result(None)
            self.active = still
            # Fixed pace, like an engine whose steps take interval_s; a late step is not
            # followed by a burst of catch-up steps.
            next_step += self.interval_s
            delay = next_step - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_step = time.perf_counter()


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "BadRequestError",
                                        "code": 400}}, status=400)


def make_app(config: NullServerConfig) -> web.Application:
    """The aiohttp application (for in-process use; the benchmark runs it in a child)."""
    counters, shapes = _Counters(), _Shapes(config)
    stepper = _Stepper(config.token_delay_s, shapes, counters) if config.token_delay_s else None

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": config.model, "object": "model", "owned_by": "aisp",
            "max_model_len": config.max_model_len, "vocab_size": config.vocab_size}]})

    async def stats(request: web.Request) -> web.Response:
        out: dict[str, Any] = {"requests": counters.requests, "completed": counters.completed,
                               "chunks": counters.chunks, "cpu_s": time.process_time()}
        if "since" in request.query:
            try:
                since = float(request.query["since"])
                until = float(request.query.get("until", "inf"))
            except ValueError:
                return _bad_request(f"since and until are perf_counter seconds, got "
                                    f"{dict(request.query)}")
            out["window"] = counters.window(since, until)
        return web.json_response(out)

    async def stream(request: web.Request, chat: bool) -> web.StreamResponse:
        received = time.perf_counter()
        body = await request.json()
        counters.requests += 1
        n = body.get("max_tokens")
        if not body.get("stream") or not isinstance(n, int) or n < 1:
            return _bad_request(f"the null server streams only: send stream=true and "
                                f"max_tokens >= 1 (got stream={body.get('stream')!r}, "
                                f"max_tokens={n!r})")
        prompt = body["messages"][0]["content"] if chat else body.get("prompt", "")
        num_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        writes = array("d")
        counters.timelines.append((received, writes))
        if config.first_token_delay_s:
            await asyncio.sleep(config.first_token_delay_s)
        if stepper is not None:
            s = _Stream(resp, chat, n, writes, asyncio.get_running_loop().create_future())
            stepper.add(s)
            try:
                await s.done
            except (ConnectionError, RuntimeError):
                return resp
        else:
            for i in range(n):
                writes.append(time.perf_counter())
                await resp.write(shapes.chunk(chat, i, n))
                counters.chunks += 1
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(shapes.usage(chat, num_prompt, n))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        counters.completed += 1
        return resp

    async def completions(request: web.Request) -> web.StreamResponse:
        return await stream(request, chat=False)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await stream(request, chat=True)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _serve(config: NullServerConfig, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    h, p = runner.addresses[0][:2]
    print(f"{_READY_PREFIX}http://{h}:{p} at {time.perf_counter()!r}", flush=True)
    try:
        await asyncio.Event().wait()  # until the process is stopped
    finally:
        await runner.cleanup()


class NullServerProcess:
    """The null server in a child process: `with NullServerProcess(cfg) as srv: srv.url`."""

    def __init__(self, config: NullServerConfig | None = None, startup_timeout_s: float = 30.0):
        self.config = config or NullServerConfig()
        self.startup_timeout_s = startup_timeout_s
        self.url = ""
        self.shared_clock = False  # whether the child's perf_counter is this process's
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> "NullServerProcess":
        root = str(Path(__file__).resolve().parents[2])  # this checkout's aisp, not another
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "aisp.loadtest.null_server", "--port", "0",
             *self.config.args()], stdout=subprocess.PIPE, text=True, env=env)
        started = time.perf_counter()
        deadline = time.monotonic() + self.startup_timeout_s
        assert self._proc.stdout is not None
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()  # the child prints one line when it listens
            if line.startswith(_READY_PREFIX):
                url, _, clock = line[len(_READY_PREFIX):].partition(" at ")
                self.url = url.strip()
                self.shared_clock = started <= float(clock) <= time.perf_counter()
                return self
            if not line and self._proc.poll() is not None:
                break
        self.__exit__()
        raise RuntimeError(f"the null server did not start within {self.startup_timeout_s:g} s "
                           f"(exit status {self._proc.returncode}); run `python -m "
                           f"aisp.loadtest.null_server` to see why")

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stats(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """GET /stats, with the window [since, until) when given (see the module docstring)."""
        query = "" if since is None else f"?since={since!r}" + (
            "" if until is None else f"&until={until!r}")
        with urllib.request.urlopen(self.url + "/stats" + query, timeout=30) as resp:
            return json.loads(resp.read())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m aisp.loadtest.null_server",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--first-token-delay-ms", type=float, default=0.0)
    p.add_argument("--token-delay-ms", type=float, default=0.0)
    p.add_argument("--model", default=NullServerConfig.model)
    p.add_argument("--max-model-len", type=int, default=NullServerConfig.max_model_len)
    p.add_argument("--vocab-size", type=int, default=NullServerConfig.vocab_size)
    a = p.parse_args(argv)
    try:
        cfg = NullServerConfig(a.first_token_delay_ms / 1e3, a.token_delay_ms / 1e3, a.model,
                               a.max_model_len, a.vocab_size)
    except ValueError as e:
        p.error(str(e))
    try:
        asyncio.run(_serve(cfg, a.host, a.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
