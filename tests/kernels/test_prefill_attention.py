"""Chunked-prefill attention: SDPA path vs reference, and prefix-prefill == full causal attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aisp.kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref
from tests.kernels.paged_kv_helpers import TOLERANCES, make_paged_kv, randn, requires_cuda

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _packed(
    q_lens: list[int], seq_lens: list[int], block_size: int, num_q_heads: int, num_kv_heads: int,
    head_dim: int, dtype: torch.dtype, pad: int = 0,
):
    """Paged cache holding seq_lens tokens per sequence, plus packed queries for the last q_lens."""
    kv = make_paged_kv(seq_lens, block_size, num_kv_heads, head_dim, dtype, DEVICE)
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    q = randn(starts[-1] + pad, num_q_heads, head_dim, dtype=dtype, device=DEVICE, seed=9)
    query_start_loc = torch.tensor(starts, dtype=torch.int32, device=DEVICE)
    return kv, q, query_start_loc


# Prefill tolerances vs the float32 reference: SDPA's own fp16 kernels add one more rounding
# of the scores/probabilities than the decode kernel does, so fp16 gets a bit more room.
PREFILL_TOLERANCES = {**TOLERANCES, torch.float16: dict(atol=4e-3, rtol=4e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(2, 2), (4, 2), (4, 1)])
@pytest.mark.parametrize("block_size", [4, 16])
def test_prefill_matches_reference(block_size, num_q_heads, num_kv_heads, dtype):
    # No prefix (q_len == seq_len), a cached prefix, a single new token, a chunk ending on a block edge.
    q_lens = [9, 5, 1, 2 * block_size]
    seq_lens = [9, 21, 14, 3 * block_size]
    kv, q, qsl = _packed(q_lens, seq_lens, block_size, num_q_heads, num_kv_heads, 32, dtype)
    seq_lens_t = kv.seq_lens
    scale = 1 / math.sqrt(32)
    got = paged_prefill_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, seq_lens_t, scale)
    want = paged_prefill_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, seq_lens_t, scale)
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, **PREFILL_TOLERANCES[dtype])


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
        got = fn(q_new, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, scale)
        torch.testing.assert_close(got, full[seq_len - q_len:], **TOLERANCES[dtype])


def test_prefill_zeroes_padding_rows_and_writes_out():
    kv, q, qsl = _packed([3, 4], [3, 10], 4, 2, 1, 16, torch.float32, pad=2)
    out = torch.full_like(q, float("nan"))
    got = paged_prefill_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, 0.25, out=out)
    assert got is out and not out.isnan().any()
    assert (out[7:] == 0).all()


def test_prefill_rejects_more_new_tokens_than_seq_len():
    kv, q, qsl = _packed([5], [5], 4, 2, 1, 16, torch.float32)
    short = torch.tensor([4], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="5 new tokens but seq_len 4"):
        paged_prefill_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, short, 0.25)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(32, 8), (8, 8)])
def test_prefill_cuda_real_shapes(num_q_heads, num_kv_heads, dtype):
    q_lens = [512, 1, 300, 2048]
    seq_lens = [512, 1800, 4000, 2048 + 16 * 7]
    kv, q, qsl = _packed(q_lens, seq_lens, 16, num_q_heads, num_kv_heads, 128, dtype)
    scale = 128**-0.5
    got = paged_prefill_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, scale)
    want = paged_prefill_attention_ref(q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.seq_lens, scale)
    torch.testing.assert_close(got, want, **PREFILL_TOLERANCES[dtype])
