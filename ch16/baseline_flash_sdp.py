"""Baseline for flash_sdp: causal GQA prefill attention with the S×S scores materialised.

Matmul, mask, softmax, matmul — the attention most model code starts from. Its memory grows
with S² and its time goes to moving scores through memory. The workload (shapes, inputs, FLOPs,
reference) lives in aisp.workloads.prefill_attention and is shared with optimized_flash_sdp.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.kernels.attention import NaiveCausalAttention  # noqa: E402
from aisp.workloads.prefill_attention import prefill_attention_benchmarks  # noqa: E402


def get_benchmark():
    return prefill_attention_benchmarks(NaiveCausalAttention, "baseline_flash_sdp")


if __name__ == "__main__":
    from aisp.cli import run_pair_main

    run_pair_main(__file__, sys.argv[1:])
