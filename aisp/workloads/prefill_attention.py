"""Causal GQA prefill attention at Llama-3-8B head geometry: the flash_sdp pair's workload.

Shapes: 32 query heads, 8 KV heads, head dim 128 (Llama-3-8B). On a GPU, batch 4 at sequence
lengths 2k, 4k and 8k in bf16; on the CPU one short float32 sequence that runs in tens of
milliseconds on two cores, so CI and a newcomer without a GPU see the same comparison.

Work per run (per head, S queries):
- FLOPs count only the unmasked half: 4·D FLOPs (QKᵀ and PV) for each of S(S+1)/2 pairs.
  The naive path computes the masked half too; counting it would flatter it.
- Bytes: Q, K, V read once and O written once — the floor any implementation must move.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from aisp.hardware import detect
from aisp.harness.benchmark import BenchmarkConfig, Work
from aisp.kernels.attention import AttentionImpl, reference_causal_attention


@dataclass(frozen=True)
class PrefillAttentionShape:
    batch: int
    seq_len: int
    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128

    def __post_init__(self) -> None:
        if min(self.batch, self.seq_len, self.num_q_heads, self.num_kv_heads, self.head_dim) < 1:
            raise ValueError(f"all sizes must be positive: {self}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads ({self.num_q_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")

    @property
    def label(self) -> str:
        return f"b{self.batch}_s{self.seq_len}"


GPU_SHAPES = tuple(PrefillAttentionShape(batch=4, seq_len=s) for s in (2048, 4096, 8192))
CPU_SHAPES = (PrefillAttentionShape(batch=1, seq_len=256),)


def shapes_for_device(device_type: str) -> tuple[PrefillAttentionShape, ...]:
    return GPU_SHAPES if device_type == "cuda" else CPU_SHAPES


def attention_work(shape: PrefillAttentionShape, element_size: int) -> Work:
    s, d = shape.seq_len, shape.head_dim
    pairs = s * (s + 1) // 2
    flops = 4.0 * d * pairs * shape.batch * shape.num_q_heads
    q_o = 2 * shape.batch * shape.num_q_heads * s * d
    k_v = 2 * shape.batch * shape.num_kv_heads * s * d
    return Work(tokens=shape.batch * s, flops=flops, bytes=float((q_o + k_v) * element_size))


class PrefillAttentionBenchmark:
    """One shape, one implementation. Inputs are drawn from the seed the runner set, so both
    sides of the pair see the same numbers; several sets rotate so L2 cannot hold them."""

    def __init__(self, shape: PrefillAttentionShape, impl: AttentionImpl, name: str,
                 iterations: int | None = None, warmup: int | None = None):
        self.shape = shape
        self.impl = impl
        self.name = name
        self.label = shape.label
        self.info = detect()
        self.device = self.info.device
        self.dtype = self.info.compute_dtype
        self.scale = 1.0 / math.sqrt(shape.head_dim)
        gpu = self.device.type == "cuda"
        self._iterations = iterations or (30 if gpu else 20)
        self._warmup = warmup if warmup is not None else (5 if gpu else 3)
        self.inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._next = 0

    def config(self) -> BenchmarkConfig:
        return BenchmarkConfig(iterations=self._iterations, warmup=self._warmup,
                               sizes=asdict(self.shape), dtype=str(self.dtype).replace("torch.", ""),
                               input_sets=self._num_input_sets())

    def work(self) -> Work:
        return attention_work(self.shape, torch.empty((), dtype=self.dtype).element_size())

    def _num_input_sets(self) -> int:
        per_set = self.work().bytes
        l2 = self.info.l2_cache_bytes or 0
        return max(2, min(8, math.ceil(4 * l2 / per_set))) if per_set else 2

    def setup(self) -> None:
        gen = torch.Generator(device="cpu").manual_seed(torch.initial_seed())
        sh = self.shape
        self.inputs = []
        for _ in range(self._num_input_sets()):
            q = torch.randn(sh.batch, sh.num_q_heads, sh.seq_len, sh.head_dim, generator=gen)
            k = torch.randn(sh.batch, sh.num_kv_heads, sh.seq_len, sh.head_dim, generator=gen)
            v = torch.randn(sh.batch, sh.num_kv_heads, sh.seq_len, sh.head_dim, generator=gen)
            self.inputs.append(tuple(t.to(self.device, self.dtype) for t in (q, k, v)))
        self._next = 0
        self.impl.prepare(*self.inputs[0], self.scale)

    def run(self) -> torch.Tensor:
        q, k, v = self.inputs[self._next]
        self._next = (self._next + 1) % len(self.inputs)
        return self.impl(q, k, v, self.scale)

    def reference(self) -> torch.Tensor:
        return reference_causal_attention(*self.inputs[0], self.scale)

    def details(self) -> dict[str, Any]:
        return {"input_sets": len(self.inputs), **self.impl.details()}

    def teardown(self) -> None:
        self.inputs = []


def prefill_attention_benchmarks(impl_factory, name: str) -> list[PrefillAttentionBenchmark]:
    """One benchmark per shape of this hardware; `impl_factory()` makes a fresh implementation
    for each (implementations may keep per-shape autotuning state)."""
    device_type = detect().device_type
    return [PrefillAttentionBenchmark(shape, impl_factory(), name)
            for shape in shapes_for_device(device_type)]
