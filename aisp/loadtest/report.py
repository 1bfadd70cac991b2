"""The printed report (rich tables) of a run or a sweep.

Contract: `render_report(result)` returns rich renderables (run header, latency, throughput,
goodput, errors, stability slices + verdict, prefix cache, notes); `print_report` prints them.
`render_sweep` / `print_sweep_report` do the same for a sweep, `print_capacity` for the load
generator's capacity benchmark (capacity.py). Nothing is computed here that is
not already in the result: the report only formats it, so the JSON and the screen agree.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from aisp.loadtest.capacity import CapacityResult
from aisp.loadtest.runner import LoadTestResult
from aisp.loadtest.stats import MetricStats
from aisp.loadtest.sweep import SweepResult

# Open-loop sends later than this behind schedule mean the client, not the server, set the pace.
_LAG_WARN_MS = 10.0


def _f(v: float | None, fmt: str = ",.2f") -> str:
    return "-" if v is None else format(v, fmt)


def _kv_table(title: str, justify: str = "right") -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify=justify)  # type: ignore[arg-type]
    return t


def _arrival(result: LoadTestResult) -> str:
    c = result.config
    if c.closed_loop:
        return f"closed loop, concurrency {c.concurrency}"
    if c.arrival == "constant":
        return f"open loop, {c.rate:g} req/s constant"
    kind = "Poisson" if c.burstiness == 1.0 else f"gamma (burstiness {c.burstiness:g})"
    return f"open loop, {c.rate:g} req/s {kind}, seed {c.seed}"


def render_report(result: LoadTestResult) -> list[Any]:
    c, s = result.config, result.summary
    out: list[Any] = []
    head = _kv_table(f"load test: {escape(result.model)} at {c.base_url}", justify="left")
    head.add_row("endpoint", f"/v1/{'chat/completions' if c.endpoint == 'chat' else 'completions'}"
                             f" (health: {result.health_path})")
    head.add_row("workload", escape(result.workload["description"]))
    head.add_row("arrivals", _arrival(result))
    head.add_row("duration / warm-up", f"{c.duration_s:g} s / {c.warmup_s:g} s")
    head.add_row("requests", f"{s.num_sent} sent, {s.num_warmup} warm-up, {s.num_measured} "
                             f"measured: {s.num_ok} ok, {s.num_failed} failed")
    head.add_row("measured window", f"{s.window_s:.2f} s (warm-up end to last measured end)")
    head.add_row("max in flight", str(result.max_in_flight))
    out.append(head)
    for note in result.fitted:
        out.append(Text(f"fit: {note}", style="yellow"))
    if result.stopped_early:
        out.append(Text(result.stopped_early, style="bold red"))

    lat = Table(title="latency (ms, measured successful requests)", title_justify="left")
    for col in ("metric", "count", "mean", "median", "p90", "p99", "max"):
        lat.add_column(col, justify="left" if col == "metric" else "right")
    rows: list[tuple[str, MetricStats]] = [("TTFT", s.ttft), ("TPOT", s.tpot),
                                           ("ITL (per chunk)", s.itl), ("E2E", s.e2e)]
    for name, m in rows:
        lat.add_row(name, str(m.count), _f(m.mean_ms), _f(m.median_ms), _f(m.p90_ms),
                    _f(m.p99_ms), _f(m.max_ms))
    out.append(lat)

    thr = _kv_table("throughput (measured window)", justify="left")
    thr.add_row("requests / s", _f(s.request_throughput))
    unknown = f" ({s.num_input_tokens_unknown} prompts of unknown length left out)" \
        if s.num_input_tokens_unknown else ""
    thr.add_row("input tokens / s", _f(s.input_token_throughput) + unknown)
    thr.add_row("output tokens / s", _f(s.output_token_throughput))
    srcs = ", ".join(f"{v} from {'usage.completion_tokens' if k == 'usage' else 'chunk counts'}"
                     for k, v in sorted(s.output_tokens_source.items()))
    thr.add_row("output token counts", srcs or "-")
    if s.mean_tokens_per_chunk is not None:
        thr.add_row("tokens per content chunk", f"{s.mean_tokens_per_chunk:.2f} (ITL is per chunk;"
                                                 f" TPOT is per token)")
    out.append(thr)

    if s.goodput is not None:
        g = s.goodput
        good = _kv_table("goodput", justify="left")
        slos = [f"TTFT <= {g.slo_ttft_ms:g} ms" if g.slo_ttft_ms is not None else "",
                f"TPOT <= {g.slo_tpot_ms:g} ms" if g.slo_tpot_ms is not None else ""]
        good.add_row("SLOs", " and ".join(x for x in slos if x))
        share = "-" if g.attainment is None else f"{g.attainment:.1%}"
        good.add_row("requests meeting them", f"{g.num_requests} of {s.num_measured} ({share})")
        good.add_row("good requests / s", _f(g.requests_per_s))
        good.add_row("good output tokens / s", _f(g.output_tokens_per_s))
        out.append(good)

    if s.errors:
        err = Table(title="errors (measured requests)", title_justify="left")
        err.add_column("kind")
        err.add_column("count", justify="right")
        err.add_column("example")
        for kind, n in sorted(s.errors.items(), key=lambda kv: -kv[1]):
            err.add_row(kind, str(n), escape("; ".join(s.error_examples.get(kind, []))))
        out.append(err)

    st = result.stability
    sl = Table(title=f"stability: K={st.num_slices} slices by send time, band +-{st.band:.0%}",
               title_justify="left")
    for col in ("slice", "from s", "to s", "requests", "TTFT median ms", "TPOT median ms"):
        sl.add_column(col, justify="right")
    for x in st.slices:
        sl.add_row(str(x.index), f"{x.start_s:.1f}", f"{x.end_s:.1f}", str(x.num_requests),
                   _f(x.ttft_median_ms), _f(x.tpot_median_ms))
    out.append(sl)
    for v in (st.ttft, st.tpot):
        style = {True: "green", False: "bold red", None: "yellow"}[v.stable]
        out.append(Text(v.text, style=style))

    p = result.prefix_cache
    if p is None:
        out.append(Text("prefix cache: the server exposes no prefix-cache counters at /metrics",
                        style="dim"))
    else:
        rate = "-" if p.hit_rate is None else f"{p.hit_rate:.1%}"
        out.append(Text(f"prefix cache ({p.source}, whole run incl. warm-up): hit rate {rate} "
                        f"({p.hits:,.0f} of {p.queries:,.0f} queried tokens)"))

    w = result.workload
    if w.get("num_skipped"):
        reasons = ", ".join(f"{k}: {v}" for k, v in w["skipped_reasons"].items())
        out.append(Text(f"dataset: skipped {w['num_skipped']} malformed entries ({reasons})",
                        style="yellow"))
    if s.dispatch_lag is not None and (s.dispatch_lag.p99_ms or 0) > _LAG_WARN_MS:
        out.append(Text(f"client lag: p99 send was {s.dispatch_lag.p99_ms:.1f} ms behind the "
                        f"arrival schedule; the client may be the bottleneck", style="yellow"))
    if s.num_without_content:
        out.append(Text(f"{s.num_without_content} successful requests streamed no content (no "
                        f"TTFT)", style="yellow"))
    return out


def print_report(result: LoadTestResult, console: Console | None = None) -> None:
    console = console or Console()
    for r in render_report(result):
        console.print(r)


def render_sweep(sweep: SweepResult) -> list[Any]:
    t = Table(title=f"rate sweep (a rate passes when >= {sweep.sweep.slo_attainment:.0%} of its "
                    f"requests meet the SLOs)", title_justify="left")
    for col in ("rate req/s", "achieved req/s", "SLO attainment", "TTFT p99 ms", "TPOT p99 ms",
                "errors", "stable", "meets SLOs"):
        t.add_column(col, justify="right")
    for p in sorted(sweep.points, key=lambda p: p.rate):
        s = p.result.summary
        att = "-" if p.attainment is None else f"{p.attainment:.1%}"
        stable = {True: "yes", False: "no", None: "-"}[p.result.stability.stable]
        t.add_row(f"{p.rate:g}", _f(s.request_throughput), att, _f(s.ttft.p99_ms),
                  _f(s.tpot.p99_ms), str(s.num_failed), stable,
                  "[green]yes[/]" if p.met else "[red]no[/]")
    return [t, Text(sweep.text, style="bold")]


def print_sweep_report(sweep: SweepResult, console: Console | None = None) -> None:
    console = console or Console()
    for r in render_sweep(sweep):
        console.print(r)


def _stat(m: MetricStats | None, attr: str) -> str:
    return _f(getattr(m, attr) if m is not None else None)


def print_capacity(result: CapacityResult, console: Console | None = None) -> None:
    """The capacity table, each point's problems and timing errors, then the verdict."""
    console = console or Console()
    c = result.config
    t = Table(title=f"the load generator against the null server (/v1/completions, input "
                    f"{c.input_len}, output {c.output_len} tokens, {c.duration_s:g} s per point, "
                    f"the first {c.warmup_s:g} s left out)")
    for col in ("load", "step ms", "req/s (x ref)", "chunks/s (x ref)", "gen CPU",
                "µs CPU/chunk", "server CPU", "TTFT p50 ms client/server",
                "ITL p50 ms client/server", "ITL p99 ms client/server", "whole", "timings"):
        left = col in ("load", "whole", "timings")
        t.add_column(col, justify="left" if left else "right", no_wrap=col == "load")
    for p in result.points:
        rq, rc = p.ratios(c)
        whole = "yes" if p.clean else f"[red]no ({len(p.problems)} problems, {p.errors})[/]"
        step = f"{p.token_delay_s * 1e3:g}" if p.token_delay_s else "0 (ceiling)"
        t.add_row(p.load, step, f"{p.requests_per_s:,.1f} ({rq:.1f}x)",
                  f"{p.chunks_per_s:,.0f} ({rc:.1f}x)", _f(p.generator_cpu),
                  _f(p.cpu_us_per_chunk, ".1f"), _f(p.server_cpu),
                  f"{_stat(p.client_ttft, 'median_ms')} / {_stat(p.server_ttft, 'median_ms')}",
                  f"{_stat(p.client_itl, 'median_ms')} / {_stat(p.server_itl, 'median_ms')}",
                  f"{_stat(p.client_itl, 'p99_ms')} / {_stat(p.server_itl, 'p99_ms')}", whole,
                  "[red]off[/]" if p.timing_errors(c) else "correct")
    console.print(t)
    for p in result.points:
        where = f"{p.load}, {p.step}"
        for problem in p.problems:
            console.print(f"[red]{where}:[/] {problem}", highlight=False)
        for error in p.timing_errors(c):
            console.print(f"[yellow]{where}, timings:[/] {error}", highlight=False)
        if p.dispatch_lag is not None:
            console.print(f"{p.load}: dispatch lag (send - scheduled) median "
                          f"{_stat(p.dispatch_lag, 'median_ms')} ms, p99 "
                          f"{_stat(p.dispatch_lag, 'p99_ms')} ms", highlight=False)
    env = result.environment
    console.print(f"reference: {c.against_req_s:g} req/s and {c.against_chunks_s:,.0f} chunks/s "
                  f"(default: aisp serve on the H200, docs/results/h200.md); this machine: "
                  f"{env.get('cpu_affinity') or env.get('cpu_count')} CPUs", highlight=False)
    style = "green" if result.keeps_up else "red"
    console.print(f"[{style}]{result.verdict}[/]", highlight=False)
