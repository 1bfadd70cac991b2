"""Optimized paged_attention: a preallocated block pool and the Triton paged decode kernel.

New K/V are written in place through the slot mapping; the kernel reads each sequence's blocks
where they lie through its block table (no gather, no per-step allocation). Run it standalone to
compare with the baseline: `python ch16/optimized_paged_attention.py --profile minimal`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.workloads.paged_decode import PagedKV, paged_decode_benchmarks  # noqa: E402


def get_benchmark():
    return paged_decode_benchmarks(PagedKV, "optimized_paged_attention")


if __name__ == "__main__":
    from aisp.cli import run_pair_main

    run_pair_main(__file__, sys.argv[1:])
