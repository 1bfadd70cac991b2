"""Triton paged decode attention vs its torch reference (CPU interpreter; bf16 / large on CUDA)."""

from __future__ import annotations

import math

import pytest
import torch

from aisp.kernels import paged_attention as pa
from aisp.kernels.paged_attention import (
    alloc_decode_workspace,
    choose_num_splits,
    decode_workspace_numel,
    paged_decode_attention,
    paged_decode_attention_ref,
)
from tests.kernels.paged_kv_helpers import TOLERANCES, make_paged_kv, randn, requires_cuda

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _run_and_compare(
    seq_lens: list[int], block_size: int, head_dim: int, num_q_heads: int, num_kv_heads: int,
    dtype: torch.dtype, num_splits: int | None, seed: int = 0, **kwargs,
) -> torch.Tensor:
    """Poison `out` with NaN, run the kernel, check every element was written and matches the ref."""
    kv = make_paged_kv(seq_lens, block_size, num_kv_heads, head_dim, dtype, DEVICE, seed=seed)
    q = randn(len(seq_lens), num_q_heads, head_dim, dtype=dtype, device=DEVICE, seed=seed + 1)
    scale = 1.0 / math.sqrt(head_dim)
    out = torch.full_like(q, float("nan"))
    got = paged_decode_attention(
        q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, scale,
        out=out, num_splits=num_splits, **kwargs,
    )
    assert got is out
    assert not out.isnan().any(), "some output elements were never written (or NaN cache slots leaked in)"
    want = paged_decode_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, scale)
    torch.testing.assert_close(out, want, **TOLERANCES[dtype])
    return out


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(2, 2), (4, 2), (4, 1)])  # GQA ratios 1, 2, 4
@pytest.mark.parametrize("head_dim", [16, 32, 64])
@pytest.mark.parametrize("block_size", [4, 16])
def test_decode_matches_reference(block_size, head_dim, num_q_heads, num_kv_heads, dtype, num_splits):
    # Lengths: a single token, exactly two blocks, and two ragged ones crossing tiles and splits.
    seq_lens = [1, 2 * block_size, 23, 37]
    _run_and_compare(seq_lens, block_size, head_dim, num_q_heads, num_kv_heads, dtype, num_splits)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_zero_length_rows_give_zeros(num_splits):
    # Padding rows of a graph batch have context_len 0: defined as zeros, never NaN.
    out = _run_and_compare([0, 5, 0, 19], 4, 16, 4, 2, torch.float32, num_splits)
    assert (out[0] == 0).all() and (out[2] == 0).all()


def test_decode_more_splits_than_tiles():
    # 8 splits over contexts of 1..33 tokens: most partitions are empty and must merge as nothing.
    _run_and_compare([1, 9, 33], 16, 32, 2, 1, torch.float16, num_splits=8)


def test_decode_strided_q_and_wide_group():
    # q sliced out of a fused qkv buffer (non-contiguous rows), 8 q heads per kv head.
    num_seqs, hq, hkv, d = 3, 8, 1, 32
    kv = make_paged_kv([7, 16, 30], 8, hkv, d, torch.float32, DEVICE)
    qkv = randn(num_seqs, (hq + 2 * hkv) * d, dtype=torch.float32, device=DEVICE, seed=5)
    q = qkv[:, : hq * d].view(num_seqs, hq, d)
    assert not q.is_contiguous()
    got = paged_decode_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.3, num_splits=2)
    want = paged_decode_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.3)
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])


def test_decode_uses_given_workspace_and_auto_splits(monkeypatch):
    # Pretend to be a 132-SM GPU so the heuristic splits; the caller's workspace caps the choice.
    monkeypatch.setattr(pa, "_sm_count", lambda device: 132)
    seq_lens, block_size, hq, hkv, d = [5, 40], 16, 4, 2, 16
    kv = make_paged_kv(seq_lens, block_size, hkv, d, torch.float32, DEVICE, spare_columns=62)
    max_ctx = kv.block_tables.shape[1] * block_size
    assert choose_num_splits(len(seq_lens), hkv, max_ctx, DEVICE) == 4
    workspace = torch.full((decode_workspace_numel(2, hq, d, 2),), float("nan"), device=DEVICE)
    q = randn(2, hq, d, dtype=torch.float32, device=DEVICE)
    got = paged_decode_attention(
        q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.25, workspace=workspace
    )
    want = paged_decode_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.25)
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])
    assert not workspace.isnan().any(), "auto splits should have filled the whole (2-split) workspace"


def test_choose_num_splits_heuristic(monkeypatch):
    if not torch.cuda.is_available():
        assert choose_num_splits(1, 8, 4096, "cpu") == 1  # the interpreter gains nothing from splits
    monkeypatch.setattr(pa, "_sm_count", lambda device: 132)
    assert choose_num_splits(64, 8, 4096, "cuda") == 1  # 512 programs already fill 132 SMs
    assert choose_num_splits(1, 8, 4096, "cuda") == 16  # bounded by >= 256 tokens per split
    assert choose_num_splits(1, 8, 300, "cuda") == 1  # too short to be worth a merge
    assert choose_num_splits(1, 1, 1 << 20, "cuda") == 32  # capped


def test_alloc_decode_workspace_covers_every_batch(monkeypatch):
    monkeypatch.setattr(pa, "_sm_count", lambda device: 132)
    ws = alloc_decode_workspace(16, 32, 8, 128, 8192, "cpu")
    for b in range(1, 17):
        splits = choose_num_splits(b, 8, 8192, "cpu")
        assert ws.numel() >= decode_workspace_numel(b, 32, 128, splits)
    assert ws.dtype == torch.float32


def test_decode_rejects_bad_inputs():
    kv = make_paged_kv([4], 4, 2, 16, torch.float32, DEVICE)
    q = randn(1, 4, 16, dtype=torch.float32, device=DEVICE)
    args = (kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.25)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_decode_attention(randn(1, 3, 16, dtype=torch.float32, device=DEVICE), *args)
    with pytest.raises(ValueError, match="share one dtype"):
        paged_decode_attention(q.half(), *args)
    with pytest.raises(ValueError, match="workspace"):
        paged_decode_attention(q, *args, num_splits=2, workspace=torch.empty(3, device=DEVICE))
    kv24 = make_paged_kv([4], 4, 1, 24, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="power of two"):
        paged_decode_attention(
            randn(1, 2, 24, dtype=torch.float32, device=DEVICE),
            kv24.k_cache, kv24.v_cache, kv24.block_tables, kv24.seq_lens, 0.2,
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter message")
def test_decode_on_cpu_without_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kv = make_paged_kv([4], 4, 1, 16, torch.float32)
    q = randn(1, 1, 16, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="CUDA.*TRITON_INTERPRET=1.*paged_decode_attention_ref"):
        paged_decode_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.25)


# ---- CUDA only: bf16, real head dims, long contexts, graph capture -------------------------------


@requires_cuda
@pytest.mark.parametrize("num_splits", [1, 4, None])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_cuda_real_shapes(block_size, head_dim, dtype, num_splits):
    seq_lens = [1, 17, block_size * 8, 1000, 2049, 3333]
    _run_and_compare(seq_lens, block_size, head_dim, 32, 8, dtype, num_splits)


@requires_cuda
@pytest.mark.parametrize("num_splits", [1, None])
def test_decode_cuda_large_batch(num_splits):
    # B=64, context ~4096, 32 q / 8 kv heads, head_dim 128, bf16: the serving shape.
    gen = torch.Generator().manual_seed(3)
    seq_lens = torch.randint(3800, 4097, (64,), generator=gen).tolist()
    seq_lens[0] = 4096
    _run_and_compare(seq_lens, 16, 128, 32, 8, torch.bfloat16, num_splits)


@requires_cuda
def test_decode_cuda_graph_capture_and_replay():
    # Fixed buffers, context lengths changed between replays: the graph must follow them.
    hq, hkv, d, bs = 32, 8, 128, 16
    kv = make_paged_kv([300, 2000, 64, 1500], bs, hkv, d, torch.bfloat16, DEVICE)
    q = randn(4, hq, d, dtype=torch.bfloat16, device=DEVICE)
    num_splits = 4
    out = torch.empty_like(q)
    ws = alloc_decode_workspace(4, hq, hkv, d, kv.block_tables.shape[1] * bs, DEVICE, num_splits=num_splits)
    lens = kv.seq_lens.clone()
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, lens, d**-0.5)
    paged_decode_attention(*args, out=out, num_splits=num_splits, workspace=ws)  # compile outside capture
    torch.cuda.synchronize()

    def captured_bytes(fn) -> tuple[torch.cuda.CUDAGraph, int]:
        graph = torch.cuda.CUDAGraph()
        before = torch.cuda.memory_allocated()
        with torch.cuda.graph(graph):
            fn()
        return graph, torch.cuda.memory_allocated() - before

    # torch's capture itself may keep ~1 KB (seen on torch 2.11, not for every graph): allow what a
    # capture of a plain in-place op keeps; out (32 KB) or the workspace would be far more.
    capture_overhead = captured_bytes(lambda: out.zero_())[1]
    graph, used = captured_bytes(
        lambda: paged_decode_attention(*args, out=out, num_splits=num_splits, workspace=ws)
    )
    assert used <= capture_overhead, f"decode allocated {used - capture_overhead} bytes during capture"
    for new_lens in ([300, 2000, 64, 1500], [1, 1999, 63, 700]):
        lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        want = paged_decode_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, lens, d**-0.5)
        torch.testing.assert_close(out, want, **TOLERANCES[torch.bfloat16])
