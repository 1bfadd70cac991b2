"""Shared builders for the kernel tests (imported as tests.kernels.paged_kv_helpers).

A random paged KV cache: every sequence gets its blocks from a shuffled pool (non-contiguous,
out of order), unused block-table entries hold -1 (a kernel that reads them would index out of
bounds), and every cache slot that belongs to no sequence (free blocks, the tail of each last
block) holds NaN, so a kernel that lets an unmasked slot into its math returns NaN instead of a
plausible number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 / large shapes)"
)

# Per-dtype tolerances for kernel-vs-reference comparisons (reference math is float32).
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),  # same math, different summation order (ieee dot)
    torch.float16: dict(atol=2e-3, rtol=2e-3),  # output rounding to fp16 plus P cast to fp16 before P@V
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),  # bf16 has 8 mantissa bits: ~4e-3 relative per rounding
}


@dataclass
class PagedKV:
    """A per-layer paged cache plus the block tables of the sequences that live in it."""

    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks_per_seq], unused entries -1
    seq_lens: torch.Tensor  # int32 [num_seqs]


def make_paged_kv(
    seq_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
    device: str = "cpu", spare_blocks: int = 3, spare_columns: int = 2, seed: int = 0,
) -> PagedKV:
    """Random cache holding len(seq_lens) sequences in shuffled, non-contiguous blocks."""
    gen = torch.Generator().manual_seed(seed)
    needed = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(needed) + spare_blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(needed, default=0) + spare_columns
    block_tables = torch.full((len(seq_lens), width), -1, dtype=torch.int32)
    for i, (n, nb) in enumerate(zip(seq_lens, needed)):
        blocks = [perm.pop() for _ in range(nb)]
        block_tables[i, :nb] = torch.tensor(blocks, dtype=torch.int32)
        for j, b in enumerate(blocks):
            used = min(block_size, n - j * block_size)
            k_cache[b, :used] = torch.randn(used, num_kv_heads, head_dim, generator=gen).to(dtype)
            v_cache[b, :used] = torch.randn(used, num_kv_heads, head_dim, generator=gen).to(dtype)
    return PagedKV(
        k_cache.to(device), v_cache.to(device), block_tables.to(device),
        torch.tensor(seq_lens, dtype=torch.int32, device=device),
    )


def randn(*shape: int, dtype: torch.dtype, device: str = "cpu", seed: int = 1) -> torch.Tensor:
    """Seeded standard-normal data (never zeros), generated in fp32 then cast."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)


def drop_blocks_before(kv: PagedKV, first_key: list[int]) -> PagedKV:
    """A copy of `kv` in which each sequence's blocks wholly before its `first_key` (the first
    position any of its queries may see, with a sliding window) are gone: block-table entry -1
    and every slot of the block NaN. A kernel that skips those blocks gives the same answer as
    on `kv`; one that reads a block-table entry or a slot there indexes out of bounds or
    returns NaN."""
    block_size = kv.k_cache.shape[1]
    k_cache, v_cache, tables = kv.k_cache.clone(), kv.v_cache.clone(), kv.block_tables.clone()
    for i, first in enumerate(first_key):
        for j in range(max(0, first) // block_size):
            b = int(tables[i, j])
            k_cache[b] = float("nan")
            v_cache[b] = float("nan")
            tables[i, j] = -1
    return PagedKV(k_cache, v_cache, tables, kv.seq_lens)
