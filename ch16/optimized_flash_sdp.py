"""Optimized flash_sdp: the same attention through scaled_dot_product_attention.

The backend (cuDNN, flash or memory-efficient on a GPU; flash or math on the CPU) is chosen by
timing each on the real inputs, and the choice is reported with the result: which backend wins
depends on the GPU, the shapes and the library versions, so it is measured, not assumed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.kernels.attention import SDPAAttention  # noqa: E402
from aisp.workloads.prefill_attention import prefill_attention_benchmarks  # noqa: E402


def get_benchmark():
    return prefill_attention_benchmarks(SDPAAttention, "optimized_flash_sdp")


if __name__ == "__main__":
    from aisp.cli import run_pair_main

    run_pair_main(__file__, sys.argv[1:])
