"""Profiles of a benchmark, taken after (never during) its timed measurements.

Modes:
- `none`: nothing.
- `minimal`: a torch.profiler pass over a few runs, summarised as the top kernels by device
  time (GPU) or top operators by self time (CPU), time by category (GEMM, attention, norm,
  elementwise, memcpy, other), and the allocator events of those runs.
- `full`: `minimal`, plus a Chrome/Perfetto trace, a CUDA memory snapshot (viewable at
  pytorch.org/memory_viz), NVTX ranges around every run, and the ncu/nsys command lines that
  profile the same target from outside the process.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from aisp.harness.benchmark import Benchmark
from aisp.harness.memory import MemoryProbe

PROFILE_MODES = ("none", "minimal", "full")
# Rows the profiler adds about itself (CUPTI buffer management), not work of the benchmark.
_PROFILER_OVERHEAD = ("Activity Buffer Request", "ProfilerStep")

# First match wins; attention precedes GEMM because fused attention kernels contain GEMMs.
_CATEGORIES: list[tuple[str, re.Pattern]] = [
    ("attention", re.compile(r"flash|fmha|attention|attn|sdpa|paged|_decode_kernel|"
                             r"merge_splits", re.I)),
    ("GEMM", re.compile(r"gemm|matmul|\bmm\b|aten::mm|bmm|addmm|cutlass|xmma|cublas|nvjet|"
                        r"wgmma|linear|_scaled_mm", re.I)),
    ("norm", re.compile(r"norm", re.I)),
    ("memcpy", re.compile(r"memcpy|memset|copy|store_kv|contiguous|clone|cat\b|aten::cat|index_put|"
                          r"gather|scatter", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|reduce|softmax|exp|add|mul|div|sub|"
                               r"where|fill|masked|silu|gelu|tanh|triu|tril|to_copy|_to_copy|"
                               r"rsqrt|pow|neg|cast", re.I)),
]


def categorize(kernel_name: str) -> str:
    for category, pattern in _CATEGORIES:
        if pattern.search(kernel_name):
            return category
    return "other"


def _device_time_us(evt: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def summarize(prof: Any, device: torch.device, top: int = 10) -> dict[str, Any]:
    """Top kernels and time by category from a finished torch.profiler session."""
    rows: list[tuple[str, float, int]] = []
    for evt in prof.key_averages():
        if device.type == "cuda":
            t = _device_time_us(evt)
            # Kernel and memcpy rows carry device self-time; operator rows only inherit it.
            if t > 0 and not evt.key.startswith(("aten::",) + _PROFILER_OVERHEAD):
                rows.append((evt.key, t, evt.count))
        elif evt.key.startswith("aten::") and evt.self_cpu_time_total > 0:
            rows.append((evt.key, float(evt.self_cpu_time_total), evt.count))
    total = sum(t for _, t, _ in rows) or 1.0
    rows.sort(key=lambda r: r[1], reverse=True)
    by_cat: dict[str, float] = {}
    for name, t, _ in rows:
        by_cat[categorize(name)] = by_cat.get(categorize(name), 0.0) + t
    return {
        "time_basis": "device kernel self time" if device.type == "cuda" else "operator self CPU time",
        "total_us": total,
        "top": [{"name": n, "total_us": t, "calls": c, "fraction": t / total,
                 "category": categorize(n)} for n, t, c in rows[:top]],
        "by_category": {k: {"total_us": v, "fraction": v / total}
                        for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
    }


def external_commands(target: str, out_dir: Path) -> list[str]:
    """Command lines that profile the same target with NVIDIA's tools (outside this process)."""
    base = f"python -m cli.aisp bench run --targets {target} --profile none --iterations 5 --warmup 2"
    return [
        f"nsys profile -t cuda,nvtx,osrt -o {out_dir}/nsys_{target.replace(':', '_')} {base}",
        f"ncu --nvtx --clock-control none --set full -o {out_dir}/ncu_{target.replace(':', '_')} "
        f"--launch-skip 20 --launch-count 20 {base}",
    ]


def profile_benchmark(bench: Benchmark, mode: str, device: torch.device, out_dir: Path,
                      row_name: str, target: str, iterations: int = 3) -> dict[str, Any]:
    """Profile `iterations` runs of an already set-up benchmark; returns a JSON-able summary."""
    if mode not in PROFILE_MODES:
        raise ValueError(f"unknown profile mode '{mode}'; choose one of {', '.join(PROFILE_MODES)}")
    if mode == "none":
        return {}
    full = mode == "full"
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    snapshot = full and device.type == "cuda"
    if snapshot:
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", row_name)
    with MemoryProbe(device) as probe:
        with profile(activities=activities, record_shapes=full, profile_memory=full) as prof:
            for i in range(iterations):
                rng = torch.cuda.nvtx.range(f"aisp/{safe}/run{i}") if device.type == "cuda" \
                    else nullcontext()
                with rng:
                    bench.run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    summary = summarize(prof, device)
    summary["iterations"] = iterations
    summary["allocator"] = probe.report.to_dict() if probe.report else {}
    if full:
        out_dir.mkdir(parents=True, exist_ok=True)
        trace = out_dir / f"trace_{safe}.json"
        prof.export_chrome_trace(str(trace))
        summary["chrome_trace"] = str(trace)
        if snapshot:
            snap = out_dir / f"memory_snapshot_{safe}.pickle"
            torch.cuda.memory._dump_snapshot(str(snap))
            torch.cuda.memory._record_memory_history(enabled=None)
            summary["memory_snapshot"] = str(snap)
            summary["external_commands"] = external_commands(target, out_dir)
        else:
            summary["memory_snapshot"] = None
            summary["notes"] = "memory snapshot and ncu/nsys need a CUDA device"
    return summary
