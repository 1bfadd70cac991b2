"""Triton paged prefill attention vs its float32 twin (CPU interpreter; bf16, real shapes and
CUDA-graph capture on a GPU), and prefix-prefill == full causal attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aisp.kernels import prefill_attention as pfa
from aisp.kernels.attention import reference_causal_attention
from aisp.kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref
from tests.kernels.paged_kv_helpers import (TOLERANCES, drop_blocks_before, make_paged_kv, randn,
                                            requires_cuda)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _packed(
    q_lens: list[int], seq_lens: list[int], block_size: int, num_q_heads: int, num_kv_heads: int,
    head_dim: int, dtype: torch.dtype, pad: int = 0, seed: int = 0,
):
    """Paged cache holding seq_lens tokens per sequence, plus packed queries for the last q_lens."""
    kv = make_paged_kv(seq_lens, block_size, num_kv_heads, head_dim, dtype, DEVICE, seed=seed)
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    q = randn(starts[-1] + pad, num_q_heads, head_dim, dtype=dtype, device=DEVICE, seed=seed + 9)
    query_start_loc = torch.tensor(starts, dtype=torch.int32, device=DEVICE)
    return kv, q, query_start_loc


def _run_and_compare(kv, q, qsl, max_query_len: int, scale: float, num_used: int) -> torch.Tensor:
    """Poison `out` with NaN, run the kernel, check every element was written and matches the twin."""
    out = torch.full_like(q, float("nan"))
    got = paged_prefill_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, scale,
                                  max_query_len, out=out)
    assert got is out
    assert not out.isnan().any(), "some output elements were never written (or NaN cache slots leaked in)"
    assert (out[num_used:] == 0).all(), "padding rows must be zeroed"
    want = paged_prefill_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, scale)
    torch.testing.assert_close(out, want, **TOLERANCES[q.dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(2, 2), (4, 2), (4, 1)])  # GQA ratios 1, 2, 4
@pytest.mark.parametrize("head_dim", [16, 32, 64])
@pytest.mark.parametrize("block_size", [4, 16])
def test_prefill_matches_reference(block_size, head_dim, num_q_heads, num_kv_heads, dtype):
    # No prefix (q_len == seq_len), a cached prefix, a single new token, a chunk ending on a block
    # edge, and 20 new tokens after a prefix of 7: in the interpreter a program holds 16 rows
    # (16 / group tokens) and key tiles hold 16 tokens, so this crosses several q and key tiles,
    # with diagonal tiles that do not start on a q-tile edge. max_query_len is larger than needed.
    q_lens = [9, 5, 1, block_size, 20]
    seq_lens = [9, 21, 14, 2 * block_size, 27]
    kv, q, qsl = _packed(q_lens, seq_lens, block_size, num_q_heads, num_kv_heads, head_dim, dtype, pad=3)
    _run_and_compare(kv, q, qsl, max(q_lens) + 3, 1 / math.sqrt(head_dim), sum(q_lens))


def test_prefill_non_power_of_two_group_and_empty_sequence():
    # 6 q heads per kv head: 16 rows hold 2 tokens (12 rows) and 4 idle rows. A sequence with no
    # new tokens (q_len 0) in the middle of the batch writes nothing and breaks nothing.
    q_lens = [13, 0, 7]
    seq_lens = [13, 8, 30]
    kv, q, qsl = _packed(q_lens, seq_lens, 4, 12, 2, 16, torch.float32, pad=1, seed=3)
    _run_and_compare(kv, q, qsl, 13, 0.25, sum(q_lens))


def test_prefill_strided_q_from_fused_qkv():
    # q sliced out of a fused qkv projection: token stride (hq + 2 hkv) * d, not hq * d.
    hq, hkv, d = 4, 2, 32
    q_lens, seq_lens = [6, 17], [10, 17]
    kv = make_paged_kv(seq_lens, 8, hkv, d, torch.float32, DEVICE, seed=5)
    qkv = randn(sum(q_lens), (hq + 2 * hkv) * d, dtype=torch.float32, device=DEVICE, seed=6)
    q = qkv[:, : hq * d].view(-1, hq, d)
    assert not q.is_contiguous()
    qsl = torch.tensor([0, 6, 23], dtype=torch.int32, device=DEVICE)
    _run_and_compare(kv, q, qsl, 17, 0.2, sum(q_lens))


@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(2, 2), (4, 1)])
def test_prefix_prefill_equals_full_causal_attention(num_q_heads, num_kv_heads):
    # Attending from the last q_len rows with a cached prefix must equal running ordinary causal
    # attention over the whole sequence and keeping those rows (bottom-right alignment).
    seq_len, q_len, block_size, head_dim = 29, 11, 4, 16
    dtype = torch.float32
    kv = make_paged_kv([seq_len], block_size, num_kv_heads, head_dim, dtype, DEVICE)
    q_full = randn(seq_len, num_q_heads, head_dim, dtype=dtype, device=DEVICE, seed=4)
    blocks = kv.block_tables[0, : math.ceil(seq_len / block_size)].long()
    k = kv.k_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)
    v = kv.v_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)
    group = num_q_heads // num_kv_heads
    full = F.scaled_dot_product_attention(
        q_full.transpose(0, 1), k.repeat_interleave(group, 0), v.repeat_interleave(group, 0), is_causal=True
    ).transpose(0, 1)

    q_new = q_full[seq_len - q_len:]
    qsl = torch.tensor([0, q_len], dtype=torch.int32, device=DEVICE)
    scale = 1 / math.sqrt(head_dim)
    for fn in (paged_prefill_attention, paged_prefill_attention_ref):
        got = fn(q_new, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, scale, q_len)
        torch.testing.assert_close(got, full[seq_len - q_len:], **TOLERANCES[dtype])


def test_prefill_all_padding_and_no_tokens():
    # A batch whose sequences bring no new tokens: every row is padding and comes back zero.
    kv, q, qsl = _packed([0, 0], [3, 5], 4, 2, 1, 16, torch.float32, pad=5)
    out = torch.full_like(q, float("nan"))
    paged_prefill_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, 0.25, 0, out=out)
    assert (out == 0).all()
    empty = q[:0]
    got = paged_prefill_attention(empty, kv.k_cache, kv.v_cache, kv.block_tables, qsl[:1] * 0,
                                  kv.seq_lens[:0], 0.25, 0)
    assert got.shape == empty.shape


def test_prefill_rejects_bad_arguments():
    kv, q, qsl = _packed([5], [5], 4, 2, 1, 16, torch.float32)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, 0.25)
    with pytest.raises(ValueError, match="max_query_len must be a non-negative host int"):
        paged_prefill_attention(*args, torch.tensor(5))
    for head_dim in (24, 512):
        kvd, qd, qsld = _packed([5], [5], 4, 2, 1, head_dim, torch.float32)
        with pytest.raises(ValueError, match=f"head_dim {head_dim} is not supported"):
            paged_prefill_attention(qd, kvd.k_cache, kvd.v_cache, kvd.block_tables, qsld, kvd.seq_lens,
                                    0.25, 5)
    with pytest.raises(ValueError, match="share one dtype"):
        paged_prefill_attention(q.half(), *args[1:], 5)
    with pytest.raises(ValueError, match="out must match q"):
        paged_prefill_attention(*args, 5, out=torch.empty_like(q[:, :1]))


def test_reference_checks_the_lengths_the_kernel_cannot():
    # The kernel trusts these (checking needs a host sync); its twin, which syncs anyway, checks.
    kv, q, qsl = _packed([5], [5], 4, 2, 1, 16, torch.float32)
    short = torch.tensor([4], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="5 new tokens but seq_len 4"):
        paged_prefill_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, short, 0.25)
    with pytest.raises(ValueError, match="5 new tokens but max_query_len is 4"):
        paged_prefill_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, 0.25, 4)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("head_dim", [16, 64, 128, 256])
def test_tile_config_rows_hold_the_whole_group(head_dim, device):
    # A program's rows are tokens x group: a group wider than the default rows still gets a token.
    # (Only reads host sizes, so "cuda" is fine to ask about without a GPU.)
    for max_query_len in (1, 4096):
        cfg = pfa._tile_config(128, head_dim, max_query_len, torch.device(device))
        assert cfg["BLOCK_R"] // 128 >= 1


# --------------------------------------------------------------------------- sliding window


def _window_compare(kv, q, qsl, q_lens, max_query_len: int, window: int, scale: float) -> torch.Tensor:
    """Kernel on a cache whose blocks before each chunk's window are gone vs twin on the whole cache."""
    seq_lens = kv.seq_lens.tolist()
    # The chunk's first query (position seq_len - q_len) sees keys from that - window + 1 on.
    dropped = drop_blocks_before(kv, [n - m - window + 1 for n, m in zip(seq_lens, q_lens)])
    out = torch.full_like(q, float("nan"))
    paged_prefill_attention(q, dropped.k_cache, dropped.v_cache, dropped.block_tables, qsl, kv.seq_lens,
                            scale, max_query_len, out=out, sliding_window=window)
    assert not out.isnan().any(), "a block before the window was read, or an output left unwritten"
    assert (out[sum(q_lens):] == 0).all(), "padding rows must be zeroed"
    want = paged_prefill_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, scale,
                                       sliding_window=window)
    torch.testing.assert_close(out, want, **TOLERANCES[q.dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [1, 3, "block", 13, 1000])  # < block, == block, > every context
@pytest.mark.parametrize("block_size", [4, 16])
def test_prefill_window_matches_reference(block_size, window, dtype):
    # Whole prompts, chunks after a cached prefix (chunked prefill), one new token, a chunk on a
    # block edge, and 30 new tokens after 40 cached ones over many blocks; in the interpreter a
    # program holds 8 tokens (group 2) and key tiles 16, so windows start mid-tile, inside the
    # program's own queries (window < 8) and several tiles back.
    window = block_size if window == "block" else window
    q_lens = [9, 5, 1, block_size, 20, 30]
    seq_lens = [9, 21, 14, 2 * block_size, 27, 70]
    kv, q, qsl = _packed(q_lens, seq_lens, block_size, 4, 2, 16, dtype, pad=3)
    _window_compare(kv, q, qsl, q_lens, max(q_lens) + 3, window, 0.25)


@pytest.mark.parametrize("window", [2, 7])
def test_prefill_window_wide_group(window):
    # 8 q heads per kv head: 2 tokens per 16-row program, so many programs start inside a window.
    q_lens, seq_lens = [13, 6], [13, 31]
    kv, q, qsl = _packed(q_lens, seq_lens, 4, 8, 1, 16, torch.float32, pad=1, seed=3)
    _window_compare(kv, q, qsl, q_lens, 13, window, 0.25)


@pytest.mark.parametrize("window", [1, 5, 16])
def test_prefill_window_twin_matches_float64_math(window):
    # Chunks of a 37-token sequence after prefixes of 0, 11 and 36 tokens: the twin's rows equal
    # float64 windowed causal attention over the whole sequence (a different mask construction).
    seq_len, block_size, hq, hkv, d = 37, 4, 4, 2, 16
    kv = make_paged_kv([seq_len], block_size, hkv, d, torch.float32, DEVICE, seed=4)
    q_full = randn(seq_len, hq, d, dtype=torch.float32, device=DEVICE, seed=5)
    blocks = kv.block_tables[0, : math.ceil(seq_len / block_size)].long()
    k = kv.k_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)[None]
    v = kv.v_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)[None]
    exact = reference_causal_attention(q_full.transpose(0, 1)[None], k, v, 0.3, sliding_window=window)
    exact = exact[0].transpose(0, 1)  # [seq_len, hq, d]
    for q_len in (seq_len, seq_len - 11, 1):
        qsl = torch.tensor([0, q_len], dtype=torch.int32, device=DEVICE)
        got = paged_prefill_attention_ref(q_full[seq_len - q_len:], kv.k_cache, kv.v_cache, kv.block_tables,
                                          qsl, kv.seq_lens, 0.3, sliding_window=window)
        torch.testing.assert_close(got.double(), exact[seq_len - q_len:], atol=1e-6, rtol=1e-6)
    full = paged_prefill_attention_ref(q_full, kv.k_cache, kv.v_cache, kv.block_tables,
                                       torch.tensor([0, seq_len], dtype=torch.int32), kv.seq_lens, 0.3)
    assert (full[-1].double() - exact[-1]).abs().max() > 1e-2, "the window must change the answer here"


def test_prefill_window_rejects_bad_values():
    kv, q, qsl = _packed([5], [5], 4, 2, 1, 16, torch.float32)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, 0.25, 5)
    for fn in (paged_prefill_attention, paged_prefill_attention_ref):
        with pytest.raises(ValueError, match="sliding_window must be a positive int"):
            fn(*args, sliding_window=0)


# --------------------------------------------------------------------------- GPU only


def _real_batch(dtype: torch.dtype):
    """8 sequences of 1..1100 new tokens, some after a cached prefix; Llama-3-8B heads. The
    1100-token chunk puts max_query_len past _LONG_CHUNK, so the long-chunk tiles run."""
    q_lens = [128, 700, 333, 1, 512, 250, 64, 1100]
    prefixes = [0, 0, 90, 1023, 16 * 5, 7, 300, 0]
    seq_lens = [n + p for n, p in zip(q_lens, prefixes)]
    kv, q, qsl = _packed(q_lens, seq_lens, 16, 32, 8, 128, dtype, pad=5, seed=11)
    return kv, q, qsl, q_lens


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_cuda_real_shapes(dtype):
    kv, q, qsl, q_lens = _real_batch(dtype)
    _run_and_compare(kv, q, qsl, max(q_lens), 128**-0.5, sum(q_lens))


@requires_cuda
def test_prefill_cuda_graph_capture_and_replay():
    # Captured once, replayed after new values are written into the same buffers (STYLE.md #5):
    # the graph must read lengths and block tables from the device, never baked-in host copies.
    dtype, scale = torch.bfloat16, 128**-0.5
    kv, q, qsl, q_lens = _real_batch(dtype)
    out = torch.empty_like(q)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, scale, max(q_lens))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        paged_prefill_attention(*args, out=out)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_prefill_attention(*args, out=out)

    # New batch in the same buffers: shorter chunks, other prefixes, other blocks, fresh data.
    new_q_lens = [300, 2, 700, 0, 128, 31, 500, 1]
    new_prefixes = [16, 900, 0, 200, 5, 64, 0, 333]
    new_seq_lens = [n + p for n, p in zip(new_q_lens, new_prefixes)]
    fresh, _, fresh_qsl = _packed(new_q_lens, new_seq_lens, 16, 32, 8, 128, dtype, seed=12)
    assert fresh.k_cache.shape[0] <= kv.k_cache.shape[0]
    assert fresh.block_tables.shape[1] <= kv.block_tables.shape[1]
    kv.k_cache[: fresh.k_cache.shape[0]].copy_(fresh.k_cache)
    kv.v_cache[: fresh.v_cache.shape[0]].copy_(fresh.v_cache)
    kv.block_tables.fill_(-1)
    kv.block_tables[:, : fresh.block_tables.shape[1]].copy_(fresh.block_tables)
    kv.seq_lens.copy_(fresh.seq_lens)
    qsl.copy_(fresh_qsl)
    q.normal_()
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    used = sum(new_q_lens)
    assert not out.isnan().any() and (out[used:] == 0).all()
    want = paged_prefill_attention_ref(*args[:7])
    torch.testing.assert_close(out, want, **TOLERANCES[dtype])


@requires_cuda
@pytest.mark.parametrize("window", [1, 16, 100, 4096])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_cuda_window_real_shapes(dtype, window):
    # Llama-3-8B heads, chunks of 1..1100 tokens after prefixes of up to 1023 (both tile
    # configurations), windows inside one block to longer than every sequence.
    kv, q, qsl, q_lens = _real_batch(dtype)
    _window_compare(kv, q, qsl, q_lens, max(q_lens), window, 128**-0.5)
