"""PNG plots of one run (matplotlib figures on Agg canvases: no display, no pyplot state).

Contract: `write_plots(result, out_dir)` writes three files and returns their paths by name:
- latency_cdf.png: empirical CDFs of TTFT, TPOT, ITL (per chunk gap) and E2E over measured
  requests, with the median and p99 marked;
- ttft_tpot_over_time.png: each request's TTFT and TPOT against its send time (warm-up
  requests grey, warm-up shaded), the stability slices' medians as segments and the overall
  median +- the stability band as dashed lines;
- throughput_over_time.png: output tokens/s in 1-second bins over the whole run (a request's
  tokens are spread evenly over its content chunks, since a chunk may carry several).
A plot without data says so in its panel instead of being left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aisp.loadtest.runner import LoadTestResult


def _figure(**kw) -> Figure:
    """A figure on its own Agg canvas: no pyplot state, no global backend switch."""
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def _cdf(ax, values_ms: list[float], title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of samples")
    if not values_ms:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        return
    v = np.sort(np.asarray(values_ms))
    ax.step(v, np.arange(1, v.size + 1) / v.size, where="post")
    for q, style in ((50, "--"), (99, ":")):
        x = float(np.percentile(v, q))
        ax.axvline(x, color="grey", linestyle=style, label=f"p{q} {x:.1f} ms")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def _over_time(ax, result: LoadTestResult, metric: str) -> None:
    t0 = result.run_start
    warm = result.measure_start - t0
    ax.set_title(f"{metric} per request over time")
    ax.set_xlabel("send time (s from start)")
    ax.set_ylabel(f"{metric} (ms)")
    if warm > 0:
        ax.axvspan(0, warm, color="grey", alpha=0.15, label="warm-up")
    pts = [(r.send_time - t0, v * 1e3, r.send_time >= result.measure_start)
           for r in result.records if (v := (r.ttft if metric == "TTFT" else r.tpot)) is not None]
    if not pts:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        return
    for measured, color, label in ((False, "lightgrey", "warm-up requests"),
                                   (True, "tab:blue", "requests")):
        xs = [p[0] for p in pts if p[2] == measured]
        ys = [p[1] for p in pts if p[2] == measured]
        if xs:
            ax.scatter(xs, ys, s=6, color=color, label=label)
    st = result.stability
    verdict = st.ttft if metric == "TTFT" else st.tpot
    for s in st.slices:
        m = s.ttft_median_ms if metric == "TTFT" else s.tpot_median_ms
        if m is not None:
            ax.hlines(m, s.start_s, s.end_s, color="tab:red", linewidth=2)
    if verdict.overall_median_ms is not None:
        med = verdict.overall_median_ms
        for y in (med * (1 - st.band), med * (1 + st.band)):
            ax.axhline(y, color="tab:red", linestyle="--", linewidth=0.8)
        ax.plot([], [], color="tab:red", linewidth=2,
                label=f"slice medians (band +-{st.band:.0%})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)


def _throughput(ax, result: LoadTestResult) -> None:
    t0 = result.run_start
    end = max(result.finished - t0, 1e-3)
    bins = np.append(np.arange(0.0, end, 1.0), end)  # 1-s bins; the last one may be shorter
    times: list[float] = []
    weights: list[float] = []
    for r in result.records:
        if r.ok and r.chunk_times:
            w = r.output_tokens / len(r.chunk_times)
            times.extend(t - t0 for t in r.chunk_times)
            weights.extend([w] * len(r.chunk_times))
    hist, _ = np.histogram(times, bins=bins, weights=weights)
    widths = np.diff(bins)
    ax.bar(bins[:-1], hist / widths, width=widths, align="edge", color="tab:green")
    warm = result.measure_start - t0
    if warm > 0:
        ax.axvspan(0, warm, color="grey", alpha=0.15, label="warm-up")
    ax.axvline(result.send_end - t0, color="black", linestyle="--", label="sending stops")
    ax.set_title("output token throughput")
    ax.set_xlabel("time (s from start)")
    ax.set_ylabel("output tokens / s")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def write_plots(result: LoadTestResult, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meas = [r for r in result.records if r.ok and r.send_time >= result.measure_start]
    paths = {}

    fig = _figure(figsize=(11, 8))
    axes = fig.subplots(2, 2)
    _cdf(axes[0, 0], [t * 1e3 for r in meas if (t := r.ttft) is not None], "TTFT")
    _cdf(axes[0, 1], [t * 1e3 for r in meas if (t := r.tpot) is not None], "TPOT")
    _cdf(axes[1, 0], [g * 1e3 for r in meas for g in r.itls], "ITL (gaps between chunks)")
    _cdf(axes[1, 1], [t * 1e3 for r in meas if (t := r.e2e) is not None], "E2E")
    fig.suptitle(f"latency CDFs: {result.model}, measured requests")
    fig.tight_layout()
    paths["latency_cdf"] = out / "latency_cdf.png"
    fig.savefig(paths["latency_cdf"], dpi=100)

    fig = _figure(figsize=(11, 8))
    axes = fig.subplots(2, 1, sharex=True)
    _over_time(axes[0], result, "TTFT")
    _over_time(axes[1], result, "TPOT")
    fig.tight_layout()
    paths["ttft_tpot_over_time"] = out / "ttft_tpot_over_time.png"
    fig.savefig(paths["ttft_tpot_over_time"], dpi=100)

    fig = _figure(figsize=(11, 4))
    ax = fig.subplots()
    _throughput(ax, result)
    fig.tight_layout()
    paths["throughput_over_time"] = out / "throughput_over_time.png"
    fig.savefig(paths["throughput_over_time"], dpi=100)
    return paths
