"""Allocation counts through torch's allocator, and notes that quote only measured numbers."""

import torch

from aisp.harness.memory import MemoryReport, count_allocations
from aisp.harness.notes import row_notes
from aisp.harness.runner import RowResult, SideResult

CPU = torch.device("cpu")


def test_cpu_allocations_are_counted_one_by_one():
    c = count_allocations(lambda: [torch.empty(1000) for _ in range(5)], CPU)
    assert (c.allocations, c.bytes) == (5, 5 * 4000)
    buf = torch.empty(1000)
    c = count_allocations(lambda: buf.copy_(buf), CPU)     # in place: nothing allocated
    assert (c.allocations, c.bytes) == (0, 0)


def _row(base: MemoryReport, opt: MemoryReport, note: str | None = None) -> RowResult:
    return RowResult(key="p", target="ch0:p", chapter="ch0", label="", workload={},
                     baseline=SideResult("baseline_p", memory=base),
                     optimized=SideResult("optimized_p", memory=opt,
                                          details={"note": note} if note else {}))


def _cpu(allocs, nbytes, transient=0, faults=0):
    return MemoryReport("cpu", peak_bytes=1 << 30, transient_peak_bytes=transient,
                        minor_page_faults=faults, major_page_faults=0,
                        allocs_per_run=allocs, alloc_bytes_per_run=nbytes)


def test_a_cpu_that_saw_no_faults_says_so_plainly():
    notes = row_notes(_row(_cpu(64, 8 << 20), _cpu(4, 1 << 20), note="the torch twins ran"))
    assert notes[0] == "the torch twins ran"
    assert notes[1] == ("allocations per run through torch's allocator: baseline 64 (8.0 MiB), "
                        "optimized 4 (1.0 MiB); optimized makes 60 fewer")
    assert "0 growth and 0 faults on both sides" in notes[2] and "no difference" in notes[2]
    assert not any("page faults, transient memory" in n for n in notes)


def test_measured_faults_and_growth_are_quoted():
    [_, note] = row_notes(_row(_cpu(3, 100, transient=2 << 20, faults=512), _cpu(9, 900)))
    assert note == ("during the timed runs: resident-set growth baseline 2.0 MiB, optimized "
                    "0.0 MiB; page faults baseline 512, optimized 0")


def test_gpu_notes_quote_transient_peaks():
    gpu = lambda t, r: MemoryReport("cuda", peak_bytes=t, transient_peak_bytes=t,  # noqa: E731
                                    alloc_retries=r, allocs_per_run=2, alloc_bytes_per_run=64)
    [alloc, mem] = row_notes(_row(gpu(4 << 20, 3), gpu(1 << 20, 0)))
    assert alloc.endswith("the same on both sides")
    assert mem == ("transient peak during the timed runs: baseline 4.0 MiB, optimized 1.0 MiB; "
                   "allocation retries baseline 3, optimized 0")
