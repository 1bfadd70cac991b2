"""Is the load generator the limit? `run_load` against a server that costs nothing per token.

    python -m aisp.loadtest.capacity [--concurrency 64,128,192,256] [--rate R,...]
        [--token-delay-ms 10] [--ceiling-concurrency 64] [--duration 20] [--warmup 5]
        [--input-len 32:448] [--output-len 16:384] [--against-req-s 26.02]
        [--against-chunks-s 5323] [--json PATH]

Contract: for each token delay D it starts the null server (null_server.py) in a child process,
so server and generator do not share a GIL, and runs the real `run_load` (/v1/completions,
random token-id prompts, ignore_eos) against it at each load: a closed loop per --concurrency,
an open Poisson loop per --rate. D > 0: the server writes one chunk to every stream each D, as
an engine step does, so chunks arrive one per read, in bursts, as from `aisp serve`. D = 0:
each response is written back to back, its chunks coalesce into few reads, and a closed loop
saturates the generator; the ceiling point (--ceiling-concurrency, D = 0, run first) shows that
saturated rate, whose TTFT is the generator's own backlog. Per point, over the measured window
[run start + warm-up, sending end):

- rates sustained: successful requests that ended in the window and token chunks that
  arrived in it, per second (steady state; the runner's summary rates, whose window runs to
  the last measured request's end, are kept beside them);
- CPU: this process's CPU seconds per wall second (1.0 = one core, all one event loop can
  use), CPU microseconds per chunk, and the server's CPU (Linux /proc);
- whole records (`problems`): every request succeeded with exactly `max_tokens` token chunks,
  in order, and usage, and the server's counts of requests, completions and chunks written
  equal the client's; a generator that drops or miscounts fails here;
- timings against the server's own view of the same requests (TTFT from receipt to first
  write, gaps between writes; one clock, see null_server.py): the client's median TTFT may
  exceed the server's by `max_ttft_error_ms` and its median ITL differ by `max_itl_error_ms`.
  The excess is what the generator, the loopback and the server's own loop add, so it bounds
  the generator's error from above;
- the rates as multiples of reference rates, by default those of `aisp serve` in
  docs/results/h200.md (llama-3-8b, full_and_piecewise, commit 7421d25, concurrency 64, this
  same workload: input 32-448, output 16-384 tokens): 26.02 req/s and 5,323 output tok/s,
  one SSE chunk per token.

The verdict names the point with the highest min(request ratio, chunk ratio) among those with
whole records, no errors and correct timings, and says whether it reaches `target_ratio` (3x)
in both. Results are data with provenance (--json). Needs no GPU. (Past 400 lines: settings,
measurement and verdict of one benchmark read best together; its table is in report.py.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aisp.loadtest.config import ConfigError, LengthSpec, LoadTestConfig, WorkloadConfig
from aisp.loadtest.null_server import NullServerConfig, NullServerProcess
from aisp.loadtest.records import RequestRecord
from aisp.loadtest.runner import LoadTestResult, run_load
from aisp.loadtest.stats import MetricStats

# `aisp serve`, docs/results/h200.md, issue 9: full_and_piecewise at concurrency 64 (7421d25).
H200_REQ_S = 26.02
H200_CHUNKS_S = 5323.0
H200_WORKLOAD = ("32:448", "16:384")  # input, output tokens of that run
_CPU_SAMPLE_PERIOD_S = 0.2
_MAX_PROBLEMS = 5


@dataclass(frozen=True)
class CapacityConfig:
    """What to measure; validated when built (ConfigError names the value and the fix)."""

    concurrencies: tuple[int, ...] = (64, 128, 192, 256)
    rates: tuple[float, ...] = ()  # open-loop Poisson points, requests per second
    token_delays_s: tuple[float, ...] = (0.010,)
    ceiling_concurrency: int | None = 64  # one closed loop against D = 0 first; None: skip
    first_token_delay_s: float = 0.0
    duration_s: float = 20.0
    warmup_s: float = 5.0
    input_len: LengthSpec = LengthSpec.parse(H200_WORKLOAD[0], 0.0)
    output_len: LengthSpec = LengthSpec.parse(H200_WORKLOAD[1], 0.0)
    against_req_s: float = H200_REQ_S
    against_chunks_s: float = H200_CHUNKS_S
    target_ratio: float = 3.0
    # The timings count as correct when the client's medians exceed the server's own view of
    # the same requests by at most this much (TTFT) or differ by at most this much (ITL).
    max_ttft_error_ms: float = 5.0
    max_itl_error_ms: float = 1.0
    drain_timeout_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.concurrencies and not self.rates:
            raise ConfigError("no load to run: give --concurrency N[,N...] and/or --rate R[,R...]")
        if self.ceiling_concurrency is not None and self.ceiling_concurrency < 1:
            raise ConfigError(f"ceiling concurrency {self.ceiling_concurrency} is below 1; use "
                              f">= 1, or 0 on the command line to skip the ceiling point")
        if any(c < 1 for c in self.concurrencies) or any(r <= 0 for r in self.rates):
            raise ConfigError(f"concurrencies must be >= 1 and rates > 0, got "
                              f"{self.concurrencies} and {self.rates}")
        if not self.token_delays_s or any(d < 0 for d in self.token_delays_s):
            raise ConfigError(f"token delays must be >= 0 ms (at least one), got "
                              f"{[d * 1e3 for d in self.token_delays_s]}")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ConfigError(f"warm-up {self.warmup_s:g} s must be >= 0 and shorter than the "
                              f"duration {self.duration_s:g} s; lower --warmup")
        if min(self.against_req_s, self.against_chunks_s, self.target_ratio,
               self.max_ttft_error_ms, self.max_itl_error_ms) <= 0:
            raise ConfigError("--against-req-s, --against-chunks-s, --target-ratio and the "
                              "timing tolerances must be > 0")

    def points(self) -> list[tuple[float, list[tuple[int | None, float | None]]]]:
        """(token delay, [(concurrency, rate), ...]) in the order run: the ceiling point, then
        per delay the closed loops and the open ones."""
        loads = [(c, None) for c in self.concurrencies] + [(None, r) for r in self.rates]
        out: list[tuple[float, list[tuple[int | None, float | None]]]] = []
        if self.ceiling_concurrency is not None:
            out.append((0.0, [(self.ceiling_concurrency, None)]))
        return out + [(d, loads) for d in self.token_delays_s]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_len"], d["output_len"] = str(self.input_len), str(self.output_len)
        return d


@dataclass(frozen=True)
class PointResult:
    """One load against the null server, over the measured window (see the module docstring)."""

    load: str  # "concurrency 64" or "Poisson 80 req/s"
    concurrency: int | None
    rate: float | None
    token_delay_s: float
    window_s: float
    num_sent: int  # every request of the run, warm-up and drain included
    num_ok: int
    errors: dict[str, int]
    requests_per_s: float  # ok requests that ended in the window, per second
    chunks_per_s: float  # token chunks that arrived in the window, per second
    reported_requests_per_s: float | None  # the runner's summary (window to the last end)
    reported_output_tokens_per_s: float | None
    generator_cpu: float | None  # this process's CPU s per wall s over the window
    server_cpu: float | None  # the null server's (Linux /proc), None elsewhere
    client_ttft: MetricStats
    client_itl: MetricStats
    server_ttft: MetricStats | None  # None without a shared clock
    server_itl: MetricStats | None
    dispatch_lag: MetricStats | None  # open loop: send - scheduled
    problems: tuple[str, ...] = ()  # records that are not whole; empty when all are

    @property
    def step(self) -> str:
        return (f"step {self.token_delay_s * 1e3:g} ms" if self.token_delay_s
                else "back to back (ceiling)")

    @property
    def cpu_us_per_chunk(self) -> float | None:
        if self.generator_cpu is None or self.chunks_per_s <= 0:
            return None
        return self.generator_cpu / self.chunks_per_s * 1e6

    @property
    def clean(self) -> bool:
        return not self.problems and not self.errors and self.num_ok > 0

    def timing_errors(self, config: CapacityConfig) -> list[str]:
        """Why the client's timings do not match the server's view (empty: they match)."""
        if self.server_ttft is None or self.server_itl is None:
            return ["not checked: the server's clock is not this process's"]
        out = []
        c_ttft, s_ttft = self.client_ttft.median_ms, self.server_ttft.median_ms
        if c_ttft is not None and s_ttft is not None and \
                c_ttft - s_ttft > config.max_ttft_error_ms:
            out.append(f"TTFT median {c_ttft:.2f} ms at the client, {s_ttft:.2f} ms at the "
                       f"server (+{c_ttft - s_ttft:.2f} ms > {config.max_ttft_error_ms:g} ms)")
        c_itl, s_itl = self.client_itl.median_ms, self.server_itl.median_ms
        if c_itl is not None and s_itl is not None and \
                abs(c_itl - s_itl) > config.max_itl_error_ms:
            out.append(f"ITL median {c_itl:.2f} ms at the client, {s_itl:.2f} ms at the server "
                       f"(off by {abs(c_itl - s_itl):.2f} ms > {config.max_itl_error_ms:g} ms)")
        return out

    def ratios(self, config: CapacityConfig) -> tuple[float, float]:
        return (self.requests_per_s / config.against_req_s,
                self.chunks_per_s / config.against_chunks_s)

    def to_dict(self, config: CapacityConfig) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_us_per_chunk"] = self.cpu_us_per_chunk
        d["ratio_requests"], d["ratio_chunks"] = self.ratios(config)
        d["timing_errors"] = self.timing_errors(config)
        return d


@dataclass(frozen=True)
class CapacityResult:
    config: CapacityConfig
    points: tuple[PointResult, ...]
    environment: dict[str, Any] = field(default_factory=dict)

    def counts(self, p: PointResult) -> bool:
        """Whether a point may carry the verdict: whole records and correct timings."""
        return p.clean and not p.timing_errors(self.config)

    @property
    def best(self) -> PointResult | None:
        """The counting point with the highest min(request ratio, chunk ratio)."""
        ok = [p for p in self.points if self.counts(p)]
        return max(ok, key=lambda p: min(p.ratios(self.config)), default=None)

    @property
    def keeps_up(self) -> bool:
        best = self.best
        return best is not None and min(best.ratios(self.config)) >= self.config.target_ratio

    @property
    def verdict(self) -> str:
        c, best = self.config, self.best
        if best is None:
            return ("no point came back whole, error-free and with correct timings; see each "
                    "point's problems and timing errors")
        rq, rc = best.ratios(c)
        word = "reaches" if self.keeps_up else "does NOT reach"
        return (f"the generator {word} {c.target_ratio:g}x the reference in both rates with "
                f"correct timings: best {best.load}, {best.step}: "
                f"{best.requests_per_s:,.1f} req/s ({rq:.1f}x {c.against_req_s:g}) and "
                f"{best.chunks_per_s:,.0f} chunks/s ({rc:.1f}x {c.against_chunks_s:,.0f})")

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "verdict": self.verdict,
                "keeps_up": self.keeps_up,
                "points": [p.to_dict(self.config) for p in self.points],
                "environment": self.environment}


# -- measuring -----------------------------------------------------------------------------

def _process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) of another process, from Linux /proc; None elsewhere."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def _sample_cpu(samples: list[tuple[float, float, float | None]],
                      server_pid: int | None) -> None:
    while True:
        samples.append((time.perf_counter(), time.process_time(), _process_cpu_s(server_pid)))
        await asyncio.sleep(_CPU_SAMPLE_PERIOD_S)


def _cpu_over(samples: list[tuple[float, float, float | None]], start: float,
              end: float) -> tuple[float | None, float | None]:
    """(generator, server) CPU s per wall s between the samples nearest inside [start, end]."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return None, None
    (t0, c0, s0), (t1, c1, s1) = inside[0], inside[-1]
    server = (s1 - s0) / (t1 - t0) if s0 is not None and s1 is not None else None
    return (c1 - c0) / (t1 - t0), server


def check_records(records: tuple[RequestRecord, ...], served: dict[str, int]) -> list[str]:
    """Mismatches between the client's records and what the server says it served.

    `served` holds the server's counts over the run (requests, completed, chunks). Every
    successful request must carry exactly its `max_tokens` token chunks and report as many
    output tokens from usage; the totals must equal the server's.
    """
    problems = []
    ok = [r for r in records if r.ok]
    for r in ok:
        n = len(r.chunk_times)
        if n != r.requested_output_tokens or r.output_tokens != r.requested_output_tokens \
                or r.output_tokens_source != "usage":
            problems.append(f"request {r.index}: {n} token chunks and {r.output_tokens} output "
                            f"tokens (from {r.output_tokens_source}) for max_tokens "
                            f"{r.requested_output_tokens}")
        if any(b < a for a, b in zip(r.chunk_times, r.chunk_times[1:])) or (
                r.chunk_times and not r.send_time <= r.chunk_times[0] <= r.end_time):
            problems.append(f"request {r.index}: chunk times out of order or outside "
                            f"[send, end]")
    problems = problems[:_MAX_PROBLEMS] + ([f"... and {len(problems) - _MAX_PROBLEMS} more"]
                                           if len(problems) > _MAX_PROBLEMS else [])
    if len(ok) == len(records):  # with failures the server may have written unread chunks
        client = {"requests": len(records), "completed": len(ok),
                  "chunks": sum(len(r.chunk_times) for r in records)}
        problems += [f"the server counts {served[k]:,} {k}, the client's records {v:,}"
                     for k, v in client.items() if served[k] != v]
    return problems


async def _run_with_cpu(cfg: LoadTestConfig, server_pid: int | None, progress: bool,
                        console: Any) -> tuple[LoadTestResult, list]:
    samples: list[tuple[float, float, float | None]] = []
    sampler = asyncio.create_task(_sample_cpu(samples, server_pid))
    try:
        result = await run_load(cfg, progress=progress, console=console)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    return result, samples


def _load_config(c: CapacityConfig, url: str, concurrency: int | None,
                 rate: float | None) -> LoadTestConfig:
    wl = WorkloadConfig(kind="random", input_len=c.input_len, output_len=c.output_len,
                        vocab_size=NullServerConfig.vocab_size, defaulted=frozenset())
    return LoadTestConfig(url=url, endpoint="completions", workload=wl, concurrency=concurrency,
                          rate=rate, duration_s=c.duration_s, warmup_s=c.warmup_s,
                          drain_timeout_s=c.drain_timeout_s, seed=c.seed, ignore_eos=True)


def measure_point(c: CapacityConfig, server: NullServerProcess, concurrency: int | None,
                  rate: float | None, progress: bool = True, console: Any = None) -> PointResult:
    """One `run_load` against a running null server, judged as the module docstring says."""
    cfg = _load_config(c, server.url, concurrency, rate)
    before = server.stats()
    result, samples = asyncio.run(_run_with_cpu(cfg, server.pid, progress, console))
    start, end = result.measure_start, result.send_end
    after = server.stats(start, end) if server.shared_clock else server.stats()
    served = {k: after[k] - before[k] for k in ("requests", "completed", "chunks")}
    records, s = result.records, result.summary
    window = end - start
    num_done = sum(1 for r in records if r.ok and start <= r.end_time < end)
    num_chunks = sum(1 for r in records if r.ok for t in r.chunk_times if start <= t < end)
    gen_cpu, srv_cpu = _cpu_over(samples, start, end)
    srv_window = after.get("window")
    problems = check_records(records, served)
    if result.stopped_early:
        problems.append(result.stopped_early)
    return PointResult(
        load=f"concurrency {concurrency}" if concurrency is not None else f"Poisson {rate:g} req/s",
        concurrency=concurrency, rate=rate, token_delay_s=server.config.token_delay_s,
        window_s=window, num_sent=len(records), num_ok=sum(1 for r in records if r.ok),
        errors=dict(s.errors), requests_per_s=num_done / window, chunks_per_s=num_chunks / window,
        reported_requests_per_s=s.request_throughput,
        reported_output_tokens_per_s=s.output_token_throughput,
        generator_cpu=gen_cpu, server_cpu=srv_cpu, client_ttft=s.ttft, client_itl=s.itl,
        server_ttft=MetricStats(**srv_window["ttft"]) if srv_window else None,
        server_itl=MetricStats(**srv_window["itl"]) if srv_window else None,
        dispatch_lag=s.dispatch_lag, problems=tuple(problems))


def environment() -> dict[str, Any]:
    import aiohttp

    from aisp.harness.provenance import command_line, git_sha
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": command_line(), "aisp_git_sha": git_sha(),
            "python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None}


def run_capacity(c: CapacityConfig, progress: bool = True, console: Any = None,
                 on_point: Any = None) -> CapacityResult:
    """Every (token delay, load) point; `on_point(point)` is called as each one finishes."""
    points = []
    for delay, loads in c.points():
        srv_cfg = NullServerConfig(first_token_delay_s=c.first_token_delay_s,
                                   token_delay_s=delay)
        with NullServerProcess(srv_cfg) as server:
            for concurrency, rate in loads:
                p = measure_point(c, server, concurrency, rate, progress, console)
                points.append(p)
                if on_point is not None:
                    on_point(p)
    return CapacityResult(c, tuple(points), environment())


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} '{text}' is not a comma-separated list of numbers") from None


def config_from_args(a: argparse.Namespace) -> CapacityConfig:
    concurrencies = _floats(a.concurrency, "--concurrency") if a.concurrency else ()
    if any(x != int(x) for x in concurrencies):
        raise ConfigError(f"--concurrency '{a.concurrency}' must list whole numbers")
    return CapacityConfig(
        concurrencies=tuple(int(x) for x in concurrencies),
        rates=_floats(a.rate, "--rate") if a.rate else (),
        token_delays_s=tuple(d / 1e3 for d in _floats(a.token_delay_ms, "--token-delay-ms")),
        ceiling_concurrency=a.ceiling_concurrency or None,
        first_token_delay_s=a.first_token_delay_ms / 1e3, duration_s=a.duration,
        warmup_s=a.warmup, input_len=LengthSpec.parse(a.input_len, 0.0),
        output_len=LengthSpec.parse(a.output_len, 0.0),
        against_req_s=a.against_req_s, against_chunks_s=a.against_chunks_s,
        target_ratio=a.target_ratio, max_ttft_error_ms=a.max_ttft_error_ms,
        max_itl_error_ms=a.max_itl_error_ms, seed=a.seed)


def main(argv: list[str] | None = None) -> CapacityResult:
    from rich.console import Console

    from aisp.loadtest.report import print_capacity

    ap = argparse.ArgumentParser(prog="python -m aisp.loadtest.capacity",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="64,128,192,256", help="closed-loop points, "
                    "N[,N...] ('' for none)")
    ap.add_argument("--rate", default="", help="open-loop Poisson points, R[,R...] req/s")
    ap.add_argument("--token-delay-ms", default="10", help="the null server's step: one chunk "
                    "per stream every D ms, D[,D...]; 0 = back to back; one server per delay")
    ap.add_argument("--ceiling-concurrency", type=int, default=64, help="one closed loop "
                    "against D = 0 first, the saturated ceiling (0: skip)")
    ap.add_argument("--first-token-delay-ms", type=float, default=0.0)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of sending per point")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds left out of each point")
    ap.add_argument("--input-len", default=H200_WORKLOAD[0], help="prompt tokens, N or LOW:HIGH "
                    "(default: the H200 reference run's)")
    ap.add_argument("--output-len", default=H200_WORKLOAD[1], help="max_tokens, N or LOW:HIGH "
                    "(default: the H200 reference run's)")
    ap.add_argument("--against-req-s", type=float, default=H200_REQ_S, help="reference request "
                    "rate (default: aisp serve on the H200 at concurrency 64, h200.md)")
    ap.add_argument("--against-chunks-s", type=float, default=H200_CHUNKS_S, help="reference "
                    "chunk rate (default: that run's 5,323 output tok/s, one chunk per token)")
    ap.add_argument("--target-ratio", type=float, default=3.0)
    ap.add_argument("--max-ttft-error-ms", type=float, default=5.0, help="client TTFT median "
                    "minus the server's, at most (default 5)")
    ap.add_argument("--max-itl-error-ms", type=float, default=1.0, help="client ITL median vs "
                    "the server's, at most this far apart (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    try:
        c = config_from_args(a)
    except ConfigError as e:
        ap.error(str(e))

    def on_point(p: PointResult) -> None:
        rq, rc = p.ratios(c)
        console.print(f"{p.load}, {p.step}: "
                      f"{p.requests_per_s:,.1f} req/s ({rq:.1f}x), {p.chunks_per_s:,.0f} "
                      f"chunks/s ({rc:.1f}x), generator CPU {p.generator_cpu or 0:.2f}, "
                      f"{'whole' if p.clean else 'NOT whole'}, timings "
                      f"{'off' if p.timing_errors(c) else 'correct'}", highlight=False)

    result = run_capacity(c, progress=not a.no_progress, console=console, on_point=on_point)
    print_capacity(result, console)
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        console.print(f"results: {a.json}", highlight=False)
    return result


if __name__ == "__main__":
    main()
