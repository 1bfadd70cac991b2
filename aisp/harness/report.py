"""Turn a run's rows into what people read: a rich table, a markdown report, a results JSON.

The results document carries everything needed to trust or reproduce a number: every timing
sample, work counts, measured ceilings, verification errors, the expectation verdict and the
provenance (date, commit, device, driver, versions, command).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from aisp.hardware import Ceilings, HardwareInfo
from aisp.harness.runner import RowResult, RunOptions, SideResult

RESULTS_SCHEMA = 1
_VERDICT_STYLE = {"ok": "green", "improved": "cyan", "regressed": "bold red", "new": "yellow",
                  "inconclusive": "yellow", "workload-changed": "yellow", "failed": "bold red"}


def _options(rows: list[RowResult], info: HardwareInfo, options: RunOptions) -> dict[str, Any]:
    """What the run was asked to do and what it did: the seed its inputs came from (drawn or
    given) and whether --cold-l2 was carried out on this device."""
    seeds = sorted({r.seed for r in rows if r.seed is not None})
    seed_used = options.seed if options.seed is not None else (seeds[0] if seeds else None)
    cold_applied, cold_reason = options.cold_l2_applied(info.device)
    return {"profile": options.profile, "iterations": options.iterations,
            "warmup": options.warmup,
            "seed_requested": None if options.seed_drawn else options.seed,
            "seed_used": seed_used, "seed_drawn": options.seed_drawn or options.seed is None,
            "cold_l2_requested": options.cold_l2, "cold_l2_applied": cold_applied,
            "cold_l2_reason": cold_reason}


def build_results(rows: list[RowResult], info: HardwareInfo, ceil: Ceilings | None,
                  options: RunOptions, provenance: dict[str, Any], targets: str) -> dict[str, Any]:
    return {
        "schema_version": RESULTS_SCHEMA,
        "targets": targets,
        "provenance": provenance,
        "hardware": info.to_dict(),
        "ceilings": ceil.to_dict() if ceil else None,
        "options": _options(rows, info, options),
        "rows": [r.to_dict() for r in rows],
    }


def run_dir_for(base: Path, targets: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", targets).strip("_")[:60] or "run"
    return base / f"{time.strftime('%Y%m%d-%H%M%S')}_{slug}"


def write_artifacts(results: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": run_dir / "results.json", "report": run_dir / "report.md"}
    paths["results"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["report"].write_text(render_markdown(results))
    return paths


def _flops(tflops: float) -> str:
    return f"{tflops:.3g} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.3g} GFLOP/s"


def _fmt_rate(rates: dict[str, float]) -> str:
    """The headline unit: FLOP/s for compute-bound work, else tokens/s, else GB/s."""
    if "tflops" in rates and rates.get("compute_bound", 1.0):
        return _flops(rates["tflops"])
    if "tokens_per_s" in rates:
        return f"{rates['tokens_per_s']:,.0f} tok/s"
    if "gbps" in rates:
        return f"{rates['gbps']:.3g} GB/s"
    if "tflops" in rates:
        return _flops(rates["tflops"])
    return "-"


def _ms(side: dict[str, Any] | SideResult) -> str:
    timing = side["timing"] if isinstance(side, dict) else (side.timing.to_dict() if side.timing else None)
    return f"{timing['median_ms']:.4g}" if timing else "-"


def _row_cells(row: dict[str, Any]) -> list[str]:
    b, o = row["baseline"], row["optimized"]
    speed = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
    rate = f"{_fmt_rate(b['rates'])} -> {_fmt_rate(o['rates'])}" if o["rates"] else "-"
    frac = o["rates"].get("roofline_fraction")
    ceiling = f"{frac:.1%}" if frac is not None else "-"
    if row["comparisons"]:
        worst = max(float(c["rel_error"]) for c in row["comparisons"])
        verified = ("yes" if row["verified"] else "NO") + f" ({worst:.1e})"
    else:
        verified = "NO"
    verdict = row["verdict"]
    return [row["key"], _ms(b), _ms(o), speed, rate, ceiling, verified,
            verdict.get("label", verdict["status"])]


HEADERS = ["pair", "base ms", "opt ms", "speed-up", "throughput base -> opt", "% roofline",
           "verified (err)", "vs expected"]


def _memory_text(mem: dict[str, Any]) -> str:
    """A side's memory numbers as measured on its device: on the CPU the resident-set probe
    rarely moves (freed heap is reused), so it is named for what it is, not 'transient peak'."""
    if not mem:
        return ""
    allocs = ""
    if mem.get("allocs_per_run") is not None:
        allocs = (f", {mem['allocs_per_run']:,} allocations per run "
                  f"({mem['alloc_bytes_per_run'] / 2**20:,.1f} MiB)")
    if mem.get("device_type") == "cpu":
        faults = (mem.get("minor_page_faults") or 0) + (mem.get("major_page_faults") or 0)
        return (f"{allocs}, resident-set growth {mem['transient_peak_bytes'] / 2**20:,.1f} MiB, "
                f"{faults:,} page faults")
    return f", transient peak {mem['transient_peak_bytes'] / 2**20:,.1f} MiB{allocs}"


def render_table(results: dict[str, Any]) -> Table:
    prov = results["provenance"]
    table = Table(title=f"aisp {results['targets']} on {prov['device']} "
                        f"({prov['hardware_key']}), torch {prov['torch']}", title_justify="left")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("pair", "vs expected") else "right",
                         no_wrap=h == "pair")
    for row in results["rows"]:
        cells = [escape(c) for c in _row_cells(row)]
        style = _VERDICT_STYLE.get(row["verdict"]["status"], "")
        cells[-1] = f"[{style}]{cells[-1]}[/]" if style else cells[-1]
        if not row["verified"]:
            cells[6] = f"[bold red]{cells[6]}[/]"
        table.add_row(*cells)
    return table


def render_markdown(results: dict[str, Any]) -> str:
    prov = results["provenance"]
    ceil = results.get("ceilings") or {}
    lines = [f"# aisp results: {results['targets']}", "",
             f"- date: {prov['date']}", f"- device: {prov['device']} (key `{prov['hardware_key']}`,"
             f" compute capability {prov.get('compute_capability')}, driver {prov.get('driver')})",
             f"- torch {prov['torch']}, triton {prov.get('triton')}, CUDA {prov.get('cuda')}, "
             f"python {prov.get('python')}", f"- git: `{prov['git_sha']}`",
             f"- command: `{prov['command']}`"]
    opts = results.get("options") or {}
    if "seed_used" in opts:
        how = "drawn" if opts.get("seed_drawn") else "given"
        lines.append(f"- seed: {opts['seed_used']} ({how}; rerun with `--seed {opts['seed_used']}`)")
    if opts.get("cold_l2_requested"):
        done = "applied" if opts.get("cold_l2_applied") else "NOT applied"
        lines.append(f"- cold L2: requested, {done} ({opts.get('cold_l2_reason')})")
    if ceil:
        lines.append(f"- measured ceilings: copy {ceil['copy_bytes_per_s'] / 1e9:,.0f} GB/s "
                     f"(read + write), {ceil['matmul_dtype']} matmul "
                     f"{ceil['matmul_flops_per_s'] / 1e12:,.1f} TFLOP/s")
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in results["rows"]:
        lines.append("| " + " | ".join(_row_cells(row)) + " |")
    lines.append("")
    for row in results["rows"]:
        lines.append(f"## {row['key']}")
        lines.append(f"- workload: `{json.dumps(row['workload'])}`")
        for role in ("baseline", "optimized"):
            side = row[role]
            t = side.get("timing")
            mem = side.get("memory") or {}
            if t:
                lines.append(f"- {role} `{side['module']}`: median {t['median_ms']:.4g} ms "
                             f"(p10 {t['p10_ms']:.4g}, p90 {t['p90_ms']:.4g}, n={len(t['samples_ms'])})"
                             + _memory_text(mem))
            if side.get("details"):
                lines.append(f"  - details: `{json.dumps(side['details'], default=str)}`")
            top = (side.get("profile") or {}).get("by_category")
            if top:
                cats = ", ".join(f"{k} {v['fraction']:.0%}" for k, v in top.items())
                lines.append(f"  - time by category: {cats}")
            if side.get("error"):
                lines.append(f"  - error: {side['error']}")
        if (row.get("verification") or {}).get("summary"):
            lines.append(f"- verified on: {row['verification']['summary']}")
        for c in row["comparisons"]:
            lines.append(f"- vs {c['against']}: rel error {float(c['rel_error']):.2e} "
                         f"(tolerance {c['tolerance']:.0e}) {'ok' if c['ok'] else 'FAILED'}")
        verdict = row["verdict"]
        lines.append(f"- expectation: {verdict.get('label', verdict['status'])}: "
                     f"{verdict['message']}")
        for note in row.get("notes") or []:
            lines.append(f"- note: {note}")
        if row.get("error"):
            lines.append(f"- error: {row['error']}")
        lines.append("")
    return "\n".join(lines)


def render_profile_summaries(results: dict[str, Any]) -> list[Table]:
    """One small table per profiled side: top kernels and their categories."""
    tables = []
    for row in results["rows"]:
        for role in ("baseline", "optimized"):
            prof = row[role].get("profile") or {}
            if not prof.get("top"):
                continue
            t = Table(title=escape(f"{row['key']} {role}: top by {prof['time_basis']}"),
                      title_justify="left")
            for h in ("kernel / op", "category", "calls", "time us", "share"):
                t.add_column(h, justify="left" if h in ("kernel / op", "category") else "right")
            for k in prof["top"][:8]:
                name = k["name"] if len(k["name"]) <= 70 else k["name"][:67] + "..."
                t.add_row(escape(name), k["category"], str(k["calls"]), f"{k['total_us']:.1f}",
                          f"{k['fraction']:.0%}")
            cats = ", ".join(f"{c} {v['fraction']:.0%}" for c, v in prof["by_category"].items())
            alloc = prof.get("allocator") or {}
            t.caption = f"by category: {cats}; allocator: " + ", ".join(
                f"{k}={v}" for k, v in alloc.items() if k not in ("device_type",) and v is not None)
            t.caption_justify = "left"
            tables.append(t)
    return tables
