"""Baseline for flash_sdp: causal GQA prefill attention with the S×S scores materialised.

Matmul, mask, softmax, matmul — the attention most model code starts from. Its memory grows
with S² and its time goes to moving scores through memory. The workload (shapes, inputs, FLOPs,
reference) lives in aisp.workloads.prefill_attention and is shared with optimized_flash_sdp.py.
"""

from aisp.kernels.attention import NaiveCausalAttention
from aisp.workloads.prefill_attention import prefill_attention_benchmarks


def get_benchmark():
    return prefill_attention_benchmarks(NaiveCausalAttention, "baseline_flash_sdp")
