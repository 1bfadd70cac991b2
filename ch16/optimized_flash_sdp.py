"""Optimized flash_sdp: the same attention through scaled_dot_product_attention.

The backend (cuDNN, flash or memory-efficient on a GPU; flash or math on the CPU) is chosen by
timing each on the real inputs, and the choice is reported with the result: which backend wins
depends on the GPU, the shapes and the library versions, so it is measured, not assumed.
"""

from aisp.kernels.attention import SDPAAttention
from aisp.workloads.prefill_attention import prefill_attention_benchmarks


def get_benchmark():
    return prefill_attention_benchmarks(SDPAAttention, "optimized_flash_sdp")
