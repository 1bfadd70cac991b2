"""Baseline for paged_attention: decode with a contiguous KV tensor per sequence.

Every step each sequence's K and V grow by torch.cat — a fresh allocation and a full copy of
the history — and its one query attends through SDPA. The workload (mixed-length sequences,
steps, FLOPs and bytes, float64 reference) lives in aisp.workloads.paged_decode.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.workloads.paged_decode import ContiguousKV, paged_decode_benchmarks  # noqa: E402


def get_benchmark():
    return paged_decode_benchmarks(ContiguousKV, "baseline_paged_attention")


if __name__ == "__main__":
    from aisp.cli import run_pair_main

    run_pair_main(__file__, sys.argv[1:])
