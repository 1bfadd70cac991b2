"""Decode attention over many sequences of mixed lengths: the paged_attention pair's workload.

One `run()` is `steps` decode steps for `batch` sequences of one attention layer at Llama-3-8B
head geometry (32 query heads, 8 KV heads, head dim 128). Each step brings one new token per
sequence: its K/V are appended to that sequence's history and its query attends to all of it.

The two providers differ only in where the history lives:
- `ContiguousKV` (baseline): one tensor per sequence, grown by concatenation every step — a
  new allocation and a full copy of the history each time, then SDPA per sequence.
- `PagedKV` (optimized): a preallocated pool of fixed-size blocks, blocks of a sequence
  scattered through it; new K/V written in place through the slot mapping, and the paged
  decode kernel reads blocks through the block table (Triton on a GPU; on a CPU the torch twins,
  which gather — reported as such, since there is no paged kernel to run there).

Both start each run from the same initial histories (the paged pool is simply overwritten past
the initial lengths), so runs are independent and the first run of each is comparable.
`details()` reports KV bytes used vs reserved (waste) for each and the KV allocations each
design makes per run by construction; what the allocator actually served (every allocation of
the body, not only the KV's), transient memory and page faults are measured by the harness.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from aisp.hardware import detect
from aisp.harness.benchmark import BenchmarkConfig, Work
from aisp.kernels.kv_cache_ops import store_kv, store_kv_ref
from aisp.kernels.paged_attention import paged_decode_attention, paged_decode_attention_ref


@dataclass(frozen=True)
class PagedDecodeShape:
    batch: int
    min_context: int
    max_context: int
    steps: int
    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16

    @property
    def label(self) -> str:
        return f"b{self.batch}_ctx{self.min_context}-{self.max_context}"


GPU_SHAPES = (PagedDecodeShape(batch=64, min_context=256, max_context=4096, steps=8),)
CPU_SHAPES = (PagedDecodeShape(batch=8, min_context=16, max_context=256, steps=4),)


class DecodeInputs:
    """Seeded histories and per-step new tokens, shared by both providers."""

    def __init__(self, shape: PagedDecodeShape, device: torch.device, dtype: torch.dtype):
        gen = torch.Generator().manual_seed(torch.initial_seed())
        s = shape
        self.context_lens = torch.randint(s.min_context, s.max_context + 1, (s.batch,),
                                          generator=gen).tolist()
        mk = lambda *dims: torch.randn(*dims, generator=gen).to(device, dtype)  # noqa: E731
        # history[i]: [ctx_i, Hkv, D]; per step: q [B, Hq, D], k/v [B, Hkv, D]
        self.k_hist = [mk(n, s.num_kv_heads, s.head_dim) for n in self.context_lens]
        self.v_hist = [mk(n, s.num_kv_heads, s.head_dim) for n in self.context_lens]
        self.q = mk(s.steps, s.batch, s.num_q_heads, s.head_dim)
        self.k_new = mk(s.steps, s.batch, s.num_kv_heads, s.head_dim)
        self.v_new = mk(s.steps, s.batch, s.num_kv_heads, s.head_dim)


class ContiguousKV:
    """Baseline: per-sequence contiguous K/V, reallocated by torch.cat at every step."""

    name = "contiguous"

    def prepare(self, inp: DecodeInputs, shape: PagedDecodeShape) -> None:
        # [Hkv, ctx, D]: the layout SDPA reads; the histories are never mutated, so every run
        # starts again from them.
        self.k0 = [k.transpose(0, 1).contiguous() for k in inp.k_hist]
        self.v0 = [v.transpose(0, 1).contiguous() for v in inp.v_hist]
        self.inp, self.shape = inp, shape
        self.peak_used = 0

    def run(self) -> torch.Tensor:
        s, inp = self.shape, self.inp
        ks, vs = list(self.k0), list(self.v0)
        outs = []
        for t in range(s.steps):
            step_out = []
            for i in range(s.batch):
                ks[i] = torch.cat([ks[i], inp.k_new[t, i].unsqueeze(1)], dim=1)
                vs[i] = torch.cat([vs[i], inp.v_new[t, i].unsqueeze(1)], dim=1)
                # One query attends to every key: no causal mask (is_causal would align top-left).
                o = F.scaled_dot_product_attention(inp.q[t, i][None, :, None], ks[i][None],
                                                   vs[i][None], enable_gqa=True)
                step_out.append(o[0, :, 0])
            outs.append(torch.stack(step_out))
        return torch.stack(outs)

    def details(self) -> dict[str, Any]:
        s = self.shape
        tokens = sum(self.inp.context_lens) + s.batch * s.steps
        used = tokens * 2 * s.num_kv_heads * s.head_dim * self.inp.q.element_size()
        # Exact-size tensors hold no slack; the cost is the churn: a new K and V tensor (and a
        # full copy of the history) per sequence per step, counted here by construction.
        return {"kv_layout": "contiguous per sequence, torch.cat each step",
                "kv_bytes_used": used, "kv_bytes_reserved": used, "kv_waste_pct": 0.0,
                "kv_allocations_per_run": 2 * s.batch * s.steps}

    def release(self) -> None:
        self.k0 = self.v0 = self.inp = None


class PagedKV:
    """Optimized: a block pool written in place and read through block tables."""

    name = "paged"

    def __init__(self, kernels: str = "auto"):
        self.kernels = kernels

    def prepare(self, inp: DecodeInputs, shape: PagedDecodeShape) -> None:
        s, dev = shape, inp.q.device
        self.inp, self.shape = inp, shape
        triton = self.kernels == "triton" or (self.kernels == "auto" and dev.type == "cuda")
        self.triton = triton
        self._store = store_kv if triton else store_kv_ref
        self._decode = paged_decode_attention if triton else paged_decode_attention_ref
        bs = s.block_size
        final = [n + s.steps for n in inp.context_lens]
        blocks_per_seq = [math.ceil(n / bs) for n in final]
        num_blocks = sum(blocks_per_seq)
        # Scatter each sequence's blocks through the pool, as a long-running server would.
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(1)).tolist()
        tables, start = [], 0
        for nb in blocks_per_seq:
            tables.append(perm[start:start + nb])
            start += nb
        width = max(blocks_per_seq)
        self.block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                         dtype=torch.int32, device=dev)
        self.k_cache = torch.empty(num_blocks, bs, s.num_kv_heads, s.head_dim,
                                   dtype=inp.q.dtype, device=dev)
        self.v_cache = torch.empty_like(self.k_cache)
        for i, n in enumerate(inp.context_lens):
            slots = self._slots(tables[i], range(n))
            store_kv_ref(inp.k_hist[i], inp.v_hist[i], self.k_cache, self.v_cache, slots)
        # Per-step metadata prepared once (what a runner writes into persistent buffers).
        self.slot_mapping = [self._slot_step(tables, t) for t in range(s.steps)]
        self.context_lens = [torch.tensor([n + t + 1 for n in inp.context_lens],
                                          dtype=torch.int32, device=dev) for t in range(s.steps)]
        self.num_blocks = num_blocks

    def _slots(self, table: list[int], positions) -> torch.Tensor:
        bs = self.shape.block_size
        return torch.tensor([table[p // bs] * bs + p % bs for p in positions],
                            dtype=torch.int64, device=self.inp.q.device)

    def _slot_step(self, tables: list[list[int]], t: int) -> torch.Tensor:
        bs = self.shape.block_size
        pos = [n + t for n in self.inp.context_lens]
        return torch.tensor([tables[i][p // bs] * bs + p % bs for i, p in enumerate(pos)],
                            dtype=torch.int64, device=self.inp.q.device)

    def run(self) -> torch.Tensor:
        s, inp = self.shape, self.inp
        scale = s.head_dim ** -0.5
        outs = []
        for t in range(s.steps):
            self._store(inp.k_new[t], inp.v_new[t], self.k_cache, self.v_cache,
                        self.slot_mapping[t])
            outs.append(self._decode(inp.q[t], self.k_cache, self.v_cache, self.block_tables,
                                     self.context_lens[t], scale))
        return torch.stack(outs)

    def details(self) -> dict[str, Any]:
        s = self.shape
        tokens = sum(self.inp.context_lens) + s.batch * s.steps
        per_token = 2 * s.num_kv_heads * s.head_dim * self.inp.q.element_size()
        reserved = self.num_blocks * s.block_size * per_token
        return {"kv_layout": f"block pool, {s.block_size}-token blocks",
                "kernels": "triton" if self.triton else "torch reference (gathers; Triton "
                                                         "needs CUDA)",
                "kv_bytes_used": tokens * per_token, "kv_bytes_reserved": reserved,
                "kv_waste_pct": 100.0 * (1 - tokens * per_token / reserved),
                "kv_allocations_per_run": 0,
                **({} if self.triton else {"note": (
                    "without CUDA the paged side runs the torch twins, which gather each "
                    "sequence's blocks every step: this row does not time the paged kernel")})}

    def release(self) -> None:
        self.k_cache = self.v_cache = self.block_tables = self.inp = None
        self.slot_mapping = self.context_lens = []


def reference_decode(inp: DecodeInputs, shape: PagedDecodeShape) -> torch.Tensor:
    """float64: every step's query against its full history, per sequence."""
    s = shape
    group = s.num_q_heads // s.num_kv_heads
    out = torch.empty(s.steps, s.batch, s.num_q_heads, s.head_dim, dtype=torch.float64,
                      device=inp.q.device)
    for i in range(s.batch):
        k = torch.cat([inp.k_hist[i], inp.k_new[:, i]]).double().repeat_interleave(group, 1)
        v = torch.cat([inp.v_hist[i], inp.v_new[:, i]]).double().repeat_interleave(group, 1)
        n0 = inp.context_lens[i]
        for t in range(s.steps):
            n = n0 + t + 1
            scores = torch.einsum("hd,nhd->hn", inp.q[t, i].double(), k[:n]) / math.sqrt(s.head_dim)
            out[t, i] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v[:n])
    return out


class PagedDecodeBenchmark:
    def __init__(self, shape: PagedDecodeShape, provider, name: str):
        self.shape, self.provider, self.name, self.label = shape, provider, name, shape.label
        self.info = detect()
        self.device, self.dtype = self.info.device, self.info.compute_dtype
        gpu = self.device.type == "cuda"
        self._iterations, self._warmup = (20, 3) if gpu else (5, 1)

    def config(self) -> BenchmarkConfig:
        return BenchmarkConfig(iterations=self._iterations, warmup=self._warmup,
                               sizes=asdict(self.shape),
                               dtype=str(self.dtype).replace("torch.", ""))

    def work(self) -> Work:
        s = self.shape
        elt = torch.empty((), dtype=self.dtype).element_size()
        ctx = [n + t + 1 for n in self.inputs.context_lens for t in range(s.steps)]
        kv_read = sum(ctx) * 2 * s.num_kv_heads * s.head_dim * elt
        small = s.steps * s.batch * (2 * s.num_q_heads + 2 * s.num_kv_heads) * s.head_dim * elt
        return Work(tokens=s.batch * s.steps, flops=4.0 * s.head_dim * s.num_q_heads * sum(ctx),
                    bytes=float(kv_read + small))

    def setup(self) -> None:
        self.inputs = DecodeInputs(self.shape, self.device, self.dtype)
        self.provider.prepare(self.inputs, self.shape)

    def run(self) -> torch.Tensor:
        return self.provider.run()

    def reference(self) -> torch.Tensor:
        return reference_decode(self.inputs, self.shape)

    def details(self) -> dict[str, Any]:
        return self.provider.details()

    def teardown(self) -> None:
        self.provider.release()
        self.inputs = None


def paged_decode_benchmarks(provider_factory, name: str) -> list[PagedDecodeBenchmark]:
    shapes = GPU_SHAPES if detect().device_type == "cuda" else CPU_SHAPES
    return [PagedDecodeBenchmark(shape, provider_factory(), name) for shape in shapes]
