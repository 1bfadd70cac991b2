"""Memory behaviour of a timed region: peak footprint and allocator events.

On a GPU the interesting events are the caching allocator's: allocation requests (every tensor
a body creates: once warm, the cache serves them without cudaMalloc, so this is the count that
shows churn), device allocations (cudaMalloc)
and frees, allocation retries (the allocator had to free its cache and try again: the
'page faults' of a paged-vs-contiguous comparison), and fragmentation = 1 - allocated/reserved.
On the CPU the process's page faults and peak resident set are recorded too, but they rarely
move: freed heap is reused without returning to the OS, so a body that allocates and frees a
large workspace every run shows 0 transient bytes and 0 page faults once warm. What the CPU
*can* show is the churn itself: `count_allocations` counts the allocations and bytes that go
through torch's allocator during one run of the body (on the CPU from torch.profiler's memory
events, on a GPU from the caching allocator's counters), the same quantity on both devices.

`MemoryProbe` is entered around a region; `transient_peak_bytes` is the peak minus what was
already allocated when the region began — the workspace the body itself needed (the S×S score
matrix of naive attention, say), independent of the inputs that were resident before.
"""

from __future__ import annotations

import json
import re
import resource
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True)
class MemoryReport:
    device_type: str
    peak_bytes: int                 # GPU: peak allocated; CPU: peak resident set (VmHWM)
    transient_peak_bytes: int       # peak - bytes already in use at region start
    allocations: int | None = None      # allocation requests served by the caching allocator
    device_allocs: int | None = None    # cudaMalloc calls during the region
    device_frees: int | None = None
    alloc_retries: int | None = None
    fragmentation: float | None = None  # 1 - allocated/reserved at the region's peak state
    minor_page_faults: int | None = None
    major_page_faults: int | None = None
    # One run of the body, outside the timed region (see count_allocations).
    allocs_per_run: int | None = None
    alloc_bytes_per_run: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cuda_stat(stats: dict, *keys: str) -> int:
    for k in keys:
        if k in stats:
            return int(stats[k])
    return 0


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmHWM: peak resident set, VmRSS: current), in bytes."""
    try:
        m = re.search(rf"{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


def _reset_vm_hwm() -> None:
    """Linux resets the peak-RSS watermark when '5' is written to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class MemoryProbe:
    def __init__(self, device: torch.device):
        self.device = device
        self.report: MemoryReport | None = None

    def __enter__(self) -> "MemoryProbe":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_stats(self.device)
            self._start_alloc = torch.cuda.memory_allocated(self.device)
        else:
            _reset_vm_hwm()
            self._start_rss = _proc_status_bytes("VmRSS")
            self._start_ru = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            end = torch.cuda.memory_stats(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            reserved_peak = _cuda_stat(end, "reserved_bytes.all.peak")
            self.report = MemoryReport(
                device_type="cuda", peak_bytes=peak,
                transient_peak_bytes=max(0, peak - self._start_alloc),
                allocations=_cuda_stat(end, "allocation.all.allocated")
                - _cuda_stat(self._start, "allocation.all.allocated"),
                device_allocs=_cuda_stat(end, "num_device_alloc", "segment.all.allocated")
                - _cuda_stat(self._start, "num_device_alloc", "segment.all.allocated"),
                device_frees=_cuda_stat(end, "num_device_free", "segment.all.freed")
                - _cuda_stat(self._start, "num_device_free", "segment.all.freed"),
                alloc_retries=_cuda_stat(end, "num_alloc_retries")
                - _cuda_stat(self._start, "num_alloc_retries"),
                fragmentation=(1.0 - peak / reserved_peak) if reserved_peak else 0.0,
            )
        else:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            peak = _proc_status_bytes("VmHWM")
            self.report = MemoryReport(
                device_type="cpu", peak_bytes=peak,
                transient_peak_bytes=max(0, peak - self._start_rss),
                minor_page_faults=ru.ru_minflt - self._start_ru.ru_minflt,
                major_page_faults=ru.ru_majflt - self._start_ru.ru_majflt,
            )


@dataclass(frozen=True)
class AllocationCount:
    allocations: int      # allocation requests served by torch's allocator
    bytes: int            # bytes those requests asked for (freed or not)


def _cpu_allocations(fn: Callable[[], Any]) -> AllocationCount:
    """Counts torch.profiler's CPU memory events with a positive size (frees are negative).

    The events are read from the exported Chrome trace, the profiler's documented output; its
    per-operator memory columns are net of frees and nest, so they cannot count allocations.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text()).get("traceEvents", [])
    sizes = [e["args"].get("Bytes", 0) for e in events
             if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    positive = [b for b in sizes if b > 0]
    return AllocationCount(len(positive), int(sum(positive)))


def count_allocations(fn: Callable[[], Any], device: torch.device) -> AllocationCount:
    """Allocations and bytes requested through torch's allocator during one call of `fn`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        end = torch.cuda.memory_stats(device)
        delta = lambda key: _cuda_stat(end, key) - _cuda_stat(start, key)  # noqa: E731
        return AllocationCount(delta("allocation.all.allocated"),
                               delta("allocated_bytes.all.allocated"))
    return _cpu_allocations(fn)
