"""Results on disk: results JSON, per-request CSV, plots (plots.py), for one run or a sweep.

Contract: `write_results(result, out_dir)` writes `results.json` (config with the API key masked,
summary, per-slice medians, stability verdict, prefix-cache hit rate, workload, environment and
provenance), `requests.csv` (one row per request, times in seconds from the run start, latencies
in ms) and the PNG plots, and returns their paths by name. `write_sweep_results` writes
`sweep.json` and one such folder per point (`01_rate_<r>/`, in the order run). Reading these
files back needs only json/csv; nothing here is needed to interpret them.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aisp.loadtest.runner import LoadTestResult
from aisp.loadtest.sweep import SweepResult

CSV_COLUMNS = ("index", "measured", "send_s", "scheduled_s", "first_token_s", "end_s", "ttft_ms",
               "tpot_ms", "e2e_ms", "mean_itl_ms", "num_chunks", "output_tokens",
               "output_tokens_source", "requested_output_tokens", "prompt_tokens",
               "prompt_tokens_source", "group", "error_kind", "error_message")


def default_out_dir(root: str | Path = "artifacts") -> Path:
    return Path(root) / f"loadtest_{time.strftime('%Y%m%d-%H%M%S')}"


def result_to_dict(result: LoadTestResult) -> dict[str, Any]:
    c = result.config
    return {
        "config": c.to_dict(),
        "model": result.model,
        "health_path": result.health_path,
        "workload": result.workload,
        "window": {"warmup_s": c.warmup_s, "duration_s": c.duration_s,
                   "measured_window_s": result.summary.window_s,
                   "drain_s": result.finished - result.send_end},
        "summary": result.summary.to_dict(),
        "stability": result.stability.to_dict(),
        "prefix_cache": asdict(result.prefix_cache) if result.prefix_cache else None,
        "max_in_flight": result.max_in_flight,
        "stopped_early": result.stopped_early,
        "fitted": list(result.fitted),
        "environment": result.environment,
    }


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1e3:.3f}"


def _rel(x: float | None, t0: float) -> str:
    return "" if x is None else f"{x - t0:.6f}"


def write_csv(result: LoadTestResult, path: Path) -> None:
    t0 = result.run_start
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in result.records:
            itls = r.itls
            w.writerow([
                r.index, int(r.send_time >= result.measure_start), _rel(r.send_time, t0),
                _rel(r.scheduled_time, t0), _rel(r.first_token_time, t0), _rel(r.end_time, t0),
                _ms(r.ttft), _ms(r.tpot), _ms(r.e2e),
                _ms(sum(itls) / len(itls)) if itls else "", len(r.chunk_times), r.output_tokens,
                r.output_tokens_source, r.requested_output_tokens or "",
                "" if r.prompt_tokens is None else r.prompt_tokens, r.prompt_tokens_source or "",
                "" if r.group is None else r.group, r.error_kind or "", r.error_message or ""])


def write_results(result: LoadTestResult, out_dir: str | Path,
                  plots: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "requests": out / "requests.csv"}
    paths["results"].write_text(json.dumps(result_to_dict(result), indent=2, default=str) + "\n")
    write_csv(result, paths["requests"])
    if plots:
        from aisp.loadtest.plots import write_plots

        paths.update(write_plots(result, out))
    return paths


def _point_dir(i: int, rate: float) -> str:
    return f"{i + 1:02d}_rate_{rate:g}"


def sweep_to_dict(sweep: SweepResult) -> dict[str, Any]:
    return {
        "sweep": asdict(sweep.sweep),
        "best_rate": sweep.best_rate,
        "verdict": sweep.text,
        "points": [{"rate": p.rate, "attainment": p.attainment, "met": p.met,
                    "dir": _point_dir(i, p.rate), "summary": p.result.summary.to_dict(),
                    "stable": p.result.stability.stable} for i, p in enumerate(sweep.points)],
        "environment": sweep.points[0].result.environment if sweep.points else {},
    }


def write_sweep_results(sweep: SweepResult, out_dir: str | Path,
                        plots: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"sweep": out / "sweep.json"}
    paths["sweep"].write_text(json.dumps(sweep_to_dict(sweep), indent=2, default=str) + "\n")
    for i, p in enumerate(sweep.points):
        sub = _point_dir(i, p.rate)
        for name, path in write_results(p.result, out / sub, plots).items():
            paths[f"{sub}/{name}"] = path
    return paths
