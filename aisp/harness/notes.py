"""The notes printed under a row, derived from what the row measured.

A note is never a fixed claim about what a pair "shows": on the CPU a fixed note once said the
paged row showed "page faults, transient memory" while every run recorded 0 of both. Each note
here is built from the row's own numbers, so it can only say what was measured — including,
plainly, that a probe saw nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisp.harness.memory import MemoryReport

if TYPE_CHECKING:  # the runner imports this module; the row type is only annotated here
    from aisp.harness.runner import RowResult


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _allocations(base: MemoryReport, opt: MemoryReport) -> str | None:
    if base.allocs_per_run is None or opt.allocs_per_run is None:
        return None
    b, o = base.allocs_per_run, opt.allocs_per_run
    if b == o and base.alloc_bytes_per_run == opt.alloc_bytes_per_run:
        relation = "the same on both sides"
    elif o < b:
        relation = f"optimized makes {b - o:,} fewer"
    else:
        relation = f"optimized makes {o - b:,} more"
    return (f"allocations per run through torch's allocator: baseline {b:,} "
            f"({_mib(base.alloc_bytes_per_run or 0)}), optimized {o:,} "
            f"({_mib(opt.alloc_bytes_per_run or 0)}); {relation}")


def _cpu_residency(base: MemoryReport, opt: MemoryReport) -> str:
    faults = [(m.minor_page_faults or 0) + (m.major_page_faults or 0) for m in (base, opt)]
    transient = [base.transient_peak_bytes, opt.transient_peak_bytes]
    if faults == [0, 0] and transient == [0, 0]:
        return ("resident memory and page faults: 0 growth and 0 faults on both sides during "
                "the timed runs, so the CPU shows no difference there")
    return (f"during the timed runs: resident-set growth baseline {_mib(transient[0])}, "
            f"optimized {_mib(transient[1])}; page faults baseline {faults[0]:,}, "
            f"optimized {faults[1]:,}")


def _gpu_memory(base: MemoryReport, opt: MemoryReport) -> str:
    text = (f"transient peak during the timed runs: baseline {_mib(base.transient_peak_bytes)}, "
            f"optimized {_mib(opt.transient_peak_bytes)}")
    retries = (base.alloc_retries or 0, opt.alloc_retries or 0)
    if any(retries):
        text += f"; allocation retries baseline {retries[0]:,}, optimized {retries[1]:,}"
    return text


def row_notes(row: RowResult) -> list[str]:
    """The workloads' statements of what ran (each side's, if it gives one), then the memory
    numbers of both sides."""
    notes = []
    base_note, opt_note = row.baseline.details.get("note"), row.optimized.details.get("note")
    if base_note and base_note != opt_note:   # each side's own choices and costs, when it says
        notes.append(f"baseline: {base_note}")
    if opt_note:
        notes.append(str(opt_note) if not base_note or base_note == opt_note
                     else f"optimized: {opt_note}")
    base, opt = row.baseline.memory, row.optimized.memory
    if base is None or opt is None:
        return notes
    alloc = _allocations(base, opt)
    if alloc:
        notes.append(alloc)
    notes.append(_cpu_residency(base, opt) if base.device_type == "cpu" else _gpu_memory(base, opt))
    return notes
