"""Run control: `run_load(config)` drives one load test and returns its `LoadTestResult`.

Contract, in order:
1. Build the workload (dataset errors surface here, before any network traffic).
2. Probe the server (GET /health, falling back to /v1/models on 404) and resolve the model name;
   a server that does not answer raises `ServerUnavailable` and nothing is sent. Read the
   model's card from /v1/models and fit the settings the user left at their defaults to it
   (fit.py: lengths within max_model_len, token ids within vocab_size); what was fitted is
   printed before sending, kept in the result (`fitted`), and the result's config is the one
   that was sent.
3. Scrape the prefix-cache counters from /metrics (when exposed).
4. Send for `duration_s` seconds: closed loop (`concurrency` workers, each sending its next
   request when its previous one ends, so at most N are ever in flight) or open loop (requests
   at the times of the arrival process, each in its own task, bounded by the connection limit).
   After ABORT_AFTER_CONNECTION_ERRORS connection errors in a row sending stops early, and the
   result's `stopped_early` says why (a dead server must not become a tight failure loop).
   Likewise when the first ABORT_AFTER_CLIENT_ERRORS requests to finish all got the same 4xx
   status (not 408/429, which can pass): the server refuses what this run sends (a wrong
   --model, prompts longer than its context), so the rest would fail the same way; the
   server's message is in `stopped_early`.
5. Stop sending; wait up to `drain_timeout_s` for in-flight requests, then cancel the rest and
   record them as `unfinished`.
6. Scrape /metrics again; compute statistics over requests sent after the warm-up (stats.py),
   the stability verdict over [warm-up end, sending end) (stability.py) and the run's
   prefix-cache hit rate (the counters' difference).

All timestamps come from `time.perf_counter()`; the result keeps the run's reference points
(`run_start`, `measure_start`, `send_end`) on that clock, so reports can show relative times.
"""

from __future__ import annotations

import asyncio
import platform
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from rich.markup import escape

from aisp.harness.provenance import command_line, git_sha
from aisp.loadtest.arrivals import intervals
from aisp.loadtest.client import endpoint_path, request_body, send_request
from aisp.loadtest.config import LoadTestConfig
from aisp.loadtest.fit import fit_workload
from aisp.loadtest.probe import (PrefixCacheCounters, discover_model, model_card, probe_health,
                                 scrape_prefix_cache)
from aisp.loadtest.records import RequestRecord
from aisp.loadtest.stability import StabilityVerdict, assess_stability
from aisp.loadtest.stats import Summary, summarize
from aisp.loadtest.workloads import RequestSpec, Workload, build_workload

_PROGRESS_PERIOD_S = 0.25
_RATE_WINDOW_S = 5.0
# A server that went away turns a closed loop into a tight loop of instant failures; after this
# many connection errors in a row (no success between them) sending stops and the result says so.
ABORT_AFTER_CONNECTION_ERRORS = 100
# The first this-many finished requests all refused with one 4xx status: stop (see the docstring).
ABORT_AFTER_CLIENT_ERRORS = 16
_TRANSIENT_4XX = ("http_408", "http_429")


@dataclass(frozen=True)
class PrefixCacheResult:
    """The server's prefix-cache counters over the run (after - before scrape)."""

    hits: float
    queries: float
    hit_rate: float | None  # None when the run made no queries
    source: str


@dataclass(frozen=True)
class LoadTestResult:
    config: LoadTestConfig
    model: str
    started_at: str  # UTC, ISO 8601
    health_path: str  # the probe that answered: /health or /v1/models
    workload: dict[str, Any]
    run_start: float  # perf_counter seconds
    measure_start: float  # run_start + warm-up
    send_end: float  # run_start + duration
    finished: float  # after the drain
    records: tuple[RequestRecord, ...]
    summary: Summary
    stability: StabilityVerdict
    prefix_cache: PrefixCacheResult | None
    max_in_flight: int
    stopped_early: str | None = None  # why sending stopped before the duration, if it did
    environment: dict[str, Any] = field(default_factory=dict)
    fitted: tuple[str, ...] = ()  # what was fitted to the server's model card, and why


class _Run:
    """The mutable state of one run: the request stream, records, what is in flight."""

    def __init__(self, config: LoadTestConfig, session: aiohttp.ClientSession, model: str,
                 workload: Workload):
        self.config, self.session, self.model = config, session, model
        self.url = config.base_url + endpoint_path(config.endpoint)
        self.stream = workload.requests()
        self.records: list[RequestRecord] = []
        self.num_in_flight = 0
        self.max_in_flight = 0
        self.next_index = 0
        self.consecutive_connection_errors = 0
        self.first_refusals: list[RequestRecord] = []  # while every finished request was refused
        self.watch_refusals = True
        self.stopped_early: str | None = None
        self.run_start = 0.0  # set when sending starts

    async def one(self, scheduled_time: float | None = None) -> None:
        spec: RequestSpec = next(self.stream)
        index, self.next_index = self.next_index, self.next_index + 1
        c = self.config
        body = request_body(c.endpoint, self.model, spec, c.temperature, c.ignore_eos)
        self.num_in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.num_in_flight)
        started = time.perf_counter()
        try:
            rec = await send_request(self.session, self.url, body, c.endpoint, spec, index,
                                     c.request_timeout_s, scheduled_time)
        except asyncio.CancelledError:
            self.records.append(RequestRecord(
                index, started, time.perf_counter(), requested_output_tokens=spec.max_tokens,
                scheduled_time=scheduled_time, error_kind="unfinished", group=spec.group,
                error_message=f"still running {c.drain_timeout_s:g} s after sending stopped "
                              f"(drain timeout); cancelled"))
            raise
        finally:
            self.num_in_flight -= 1
        self.records.append(rec)
        self._watch_refusals(rec)
        if rec.error_kind == "connection":
            self.consecutive_connection_errors += 1
            if (self.consecutive_connection_errors >= ABORT_AFTER_CONNECTION_ERRORS
                    and self.stopped_early is None):
                self.stopped_early = (
                    f"sending stopped {rec.end_time - self.run_start:.1f} s into the run after "
                    f"{ABORT_AFTER_CONNECTION_ERRORS} connection errors in a row (last: "
                    f"{rec.error_message}); is the server still up?")
        elif rec.ok:
            self.consecutive_connection_errors = 0

    def _watch_refusals(self, rec: RequestRecord) -> None:
        """Stop when the first ABORT_AFTER_CLIENT_ERRORS finished requests share one 4xx."""
        if not self.watch_refusals:
            return
        kind = rec.error_kind or ""
        first = self.first_refusals[0].error_kind if self.first_refusals else kind
        if not kind.startswith("http_4") or kind in _TRANSIENT_4XX or kind != first:
            self.watch_refusals = False   # a success or another kind of failure: judge no more
            return
        self.first_refusals.append(rec)
        if len(self.first_refusals) >= ABORT_AFTER_CLIENT_ERRORS and self.stopped_early is None:
            self.watch_refusals = False
            messages = {r.error_message for r in self.first_refusals}
            others = f" ({len(messages) - 1} other message(s) too)" if len(messages) > 1 else ""
            self.stopped_early = (
                f"sending stopped {rec.end_time - self.run_start:.1f} s into the run: the first "
                f"{ABORT_AFTER_CLIENT_ERRORS} requests all got HTTP {kind[5:]}, so the server "
                f"refuses what this run sends; its message: {self.first_refusals[0].error_message}"
                f"{others}")

    def sending(self, send_end: float) -> bool:
        return self.stopped_early is None and time.perf_counter() < send_end

    async def closed_loop(self, send_end: float) -> list[asyncio.Task]:
        async def worker() -> None:
            while self.sending(send_end):
                await self.one()

        assert self.config.concurrency is not None
        return [asyncio.create_task(worker()) for _ in range(self.config.concurrency)]

    async def open_loop(self, run_start: float, send_end: float) -> list[asyncio.Task]:
        c = self.config
        assert c.rate is not None
        tasks: list[asyncio.Task] = []
        t = run_start
        for gap in intervals(c.rate, c.arrival, c.burstiness, c.seed):
            if t >= send_end or self.stopped_early is not None:
                break
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(scheduled_time=t)))
            t += gap
        return tasks


def environment(config: LoadTestConfig, model: str) -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": command_line(), "url": config.base_url, "model": model,
            "endpoint": endpoint_path(config.endpoint), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "platform": platform.platform(),
            "aisp_git_sha": git_sha()}


def _progress_fields(run: _Run, now: float, run_start: float) -> dict[str, Any]:
    recent = sum(1 for r in run.records if r.end_time > now - _RATE_WINDOW_S)
    span = min(_RATE_WINDOW_S, max(now - run_start, 1e-3))
    return {"done": len(run.records), "errors": sum(1 for r in run.records if not r.ok),
            "in_flight": run.num_in_flight, "rps": recent / span}


async def _drive(run: _Run, config: LoadTestConfig, progress: bool,
                 console: Any) -> tuple[float, float]:
    """Send for the duration, drain, and return (run_start, finished)."""
    run_start = run.run_start = time.perf_counter()
    send_end = run_start + config.duration_s
    bar = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                       TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                       TextColumn("{task.fields[done]} done, [red]{task.fields[errors]} errors"),
                       TextColumn("{task.fields[in_flight]} in flight"),
                       TextColumn("{task.fields[rps]:.1f} req/s"), console=console)
        bar.start()
        task_id = bar.add_task("sending", total=config.duration_s,
                               **_progress_fields(run, run_start, run_start))

    async def update() -> None:
        while True:
            now = time.perf_counter()
            if bar is not None:
                desc = "sending" if now < send_end else "draining"
                bar.update(task_id, completed=min(now - run_start, config.duration_s),
                           description=desc, **_progress_fields(run, now, run_start))
            await asyncio.sleep(_PROGRESS_PERIOD_S)

    updater = asyncio.create_task(update())
    try:
        if config.closed_loop:
            tasks = await run.closed_loop(send_end)
        else:
            tasks = await run.open_loop(run_start, send_end)
        deadline = send_end + config.drain_timeout_s
        pending = {t for t in tasks if not t.done()}
        while pending and time.perf_counter() < deadline:
            _, pending = await asyncio.wait(pending, timeout=deadline - time.perf_counter())
        for t in pending:
            t.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finished = time.perf_counter()
        # send_request records every network/server failure itself; anything else is a bug
        # that must not vanish into a smaller request count.
        bugs = [o for o in outcomes if isinstance(o, Exception)]
        if bugs:
            raise bugs[0]
    finally:
        updater.cancel()
        await asyncio.gather(updater, return_exceptions=True)
        if bar is not None:
            bar.update(task_id, completed=config.duration_s, description="done",
                       **_progress_fields(run, time.perf_counter(), run_start))
            bar.stop()
    return run_start, finished


async def run_load(config: LoadTestConfig, progress: bool = True,
                   console: Any = None) -> LoadTestResult:
    """Run one load test against `config.url`; see the module docstring for the steps."""
    text_only = config.endpoint == "chat"
    workload = build_workload(config.workload, config.seed, text_only=text_only)
    auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    connector = aiohttp.TCPConnector(limit=config.connection_limit)
    async with aiohttp.ClientSession(connector=connector, headers=auth) as session:
        health_path = await probe_health(session, config.base_url)
        model = config.model or await discover_model(session, config.base_url)
        fit = fit_workload(config.workload, await model_card(session, config.base_url, model))
        if fit.workload != config.workload:
            config = replace(config, workload=fit.workload)
            workload = build_workload(config.workload, config.seed, text_only=text_only)
        if console is not None:
            for note in fit.notes:
                console.print(f"[yellow]fit:[/] {escape(note)}", highlight=False)
        env = environment(config, model)
        before = await scrape_prefix_cache(session, config.base_url)
        run = _Run(config, session, model, workload)
        run_start, finished = await _drive(run, config, progress, console)
        after = await scrape_prefix_cache(session, config.base_url) if before else None
    measure_start = run_start + config.warmup_s
    send_end = run_start + config.duration_s
    records = tuple(sorted(run.records, key=lambda r: r.send_time))
    return LoadTestResult(
        config=config, model=model, started_at=env["date"], health_path=health_path,
        workload=workload.info(), run_start=run_start, measure_start=measure_start,
        send_end=send_end, finished=finished, records=records,
        summary=summarize(records, measure_start, config.slo_ttft_ms, config.slo_tpot_ms),
        stability=assess_stability(list(records), run_start, measure_start, send_end,
                                   config.num_slices, config.stability_band,
                                   config.min_slice_requests),
        prefix_cache=_prefix_delta(before, after), max_in_flight=run.max_in_flight,
        stopped_early=run.stopped_early, environment=env, fitted=fit.notes)


def _prefix_delta(before: PrefixCacheCounters | None,
                  after: PrefixCacheCounters | None) -> PrefixCacheResult | None:
    if before is None or after is None or before.source != after.source:
        return None
    hits, queries = after.hits - before.hits, after.queries - before.queries
    return PrefixCacheResult(hits, queries, hits / queries if queries > 0 else None, after.source)
