"""Triton paged decode attention vs its torch reference (CPU interpreter; bf16 / large on CUDA)."""

from __future__ import annotations

import math

import pytest
import torch

from aisp.kernels import paged_attention as pa
from aisp.kernels.attention import reference_causal_attention
from aisp.kernels.paged_attention import (
    alloc_decode_workspace,
    choose_num_splits,
    decode_workspace_numel,
    paged_decode_attention,
    paged_decode_attention_ref,
)
from tests.kernels.paged_kv_helpers import (TOLERANCES, drop_blocks_before, make_paged_kv, randn,
                                            requires_cuda)

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


# ---- sliding window -------------------------------------------------------------------------------


def _window_run(seq_lens, block_size, window, dtype, num_splits, hq=4, hkv=2, head_dim=16, seed=0):
    """Kernel (on a cache whose blocks before each window are gone) vs twin (on the whole cache)."""
    kv = make_paged_kv(seq_lens, block_size, hkv, head_dim, dtype, DEVICE, seed=seed)
    q = randn(len(seq_lens), hq, head_dim, dtype=dtype, device=DEVICE, seed=seed + 1)
    scale = 1.0 / math.sqrt(head_dim)
    # The query at position n - 1 sees keys n - window .. n - 1: blocks wholly before are skipped.
    dropped = drop_blocks_before(kv, [n - window for n in seq_lens])
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(q, dropped.k_cache, dropped.v_cache, dropped.block_tables, kv.seq_lens,
                           scale, out=out, num_splits=num_splits, sliding_window=window)
    assert not out.isnan().any(), "a block before the window was read, or an output left unwritten"
    want = paged_decode_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, scale,
                                      sliding_window=window)
    torch.testing.assert_close(out, want, **TOLERANCES[dtype])
    return q, kv, out


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [1, 3, "block", 13, 1000])  # < block, == block, > every context
@pytest.mark.parametrize("block_size", [4, 16])
def test_decode_window_matches_reference(block_size, window, dtype, num_splits):
    window = block_size if window == "block" else window
    # One token, exactly two blocks, ragged lengths, and 70 tokens over 5..18 blocks.
    _window_run([1, 2 * block_size, 23, 37, 70], block_size, window, dtype, num_splits)


def test_decode_window_with_more_splits_than_the_window_has_tiles():
    # 8 splits of a 5-token window: the partition covers only the window, most splits are empty.
    _window_run([0, 3, 40, 90], 4, 5, torch.float32, num_splits=8)  # and a padding row (0)


def test_decode_window_twin_matches_float64_math():
    # The twin against float64 masked softmax over the whole sequence (aisp.kernels.attention's
    # reference, a different mask construction), keeping the last row: the decode query's.
    seq_len, block_size, hq, hkv, d, window = 29, 4, 4, 2, 16, 6
    kv = make_paged_kv([seq_len], block_size, hkv, d, torch.float32, DEVICE, seed=7)
    q_full = randn(seq_len, hq, d, dtype=torch.float32, device=DEVICE, seed=8)
    blocks = kv.block_tables[0, : math.ceil(seq_len / block_size)].long()
    k = kv.k_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)[None]
    v = kv.v_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)[None]
    exact = reference_causal_attention(q_full.transpose(0, 1)[None], k, v, 0.3, sliding_window=window)
    got = paged_decode_attention_ref(q_full[-1:], kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens,
                                     0.3, sliding_window=window)
    torch.testing.assert_close(got[0].double(), exact[0, :, -1], atol=1e-6, rtol=1e-6)
    full = paged_decode_attention_ref(q_full[-1:], kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.3)
    assert (full - got).abs().max() > 1e-2, "the window must change the answer here"


def test_decode_window_rejects_bad_values():
    kv = make_paged_kv([4], 4, 2, 16, torch.float32, DEVICE)
    q = randn(1, 4, 16, dtype=torch.float32, device=DEVICE)
    for bad in (0, -2, 2.5, True):
        for fn in (paged_decode_attention, paged_decode_attention_ref):
            with pytest.raises(ValueError, match="sliding_window must be a positive int"):
                fn(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.25, sliding_window=bad)


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


@requires_cuda
@pytest.mark.parametrize("num_splits", [1, 4, None])
@pytest.mark.parametrize("window", [1, 16, 100, 4096])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_cuda_window_real_shapes(dtype, window, num_splits):
    # Llama-3-8B heads, contexts up to 3,333 tokens in 16-token blocks: windows inside one block,
    # of one block, of many, and longer than most contexts; blocks before the window dropped.
    _window_run([1, 17, 128, 1000, 2049, 3333], 16, window, dtype, num_splits, hq=32, hkv=8,
                head_dim=128)


@requires_cuda
def test_decode_cuda_window_graph_capture_and_replay():
    # Windowed decode captured once, replayed with other context lengths: the window start moves
    # with the device-side lengths. Each new length stays within that sequence's own blocks.
    hq, hkv, d, bs, window = 32, 8, 128, 16, 256
    kv = make_paged_kv([300, 2000, 64, 1500], bs, hkv, d, torch.bfloat16, DEVICE)
    q = randn(4, hq, d, dtype=torch.bfloat16, device=DEVICE)
    out = torch.empty_like(q)
    lens = kv.seq_lens.clone()
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, lens, d**-0.5)
    ws = alloc_decode_workspace(4, hq, hkv, d, kv.block_tables.shape[1] * bs, DEVICE, num_splits=2)
    paged_decode_attention(*args, out=out, num_splits=2, workspace=ws, sliding_window=window)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_decode_attention(*args, out=out, num_splits=2, workspace=ws, sliding_window=window)
    for new_lens in ([300, 2000, 64, 1500], [1, 1999, 57, 700]):
        lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        want = paged_decode_attention_ref(*args, sliding_window=window)
        torch.testing.assert_close(out, want, **TOLERANCES[torch.bfloat16])
