"""Chunked-prefill attention over the paged KV cache (per-sequence gather + torch SDPA).

Contract:
    paged_prefill_attention(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
                            out=None) -> out
      q                [num_tokens, num_q_heads, head_dim]: the NEW tokens of several sequences,
                       packed; sequence i owns rows query_start_loc[i] : query_start_loc[i+1]
      k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim]; the new tokens' K/V are
                       already stored (store_kv runs first)
      block_tables     int32 [num_seqs, max_blocks_per_seq]
      query_start_loc  int32 [num_seqs + 1], cumulative new-token counts starting at 0
      seq_lens         int32 [num_seqs]; tokens of each sequence in the cache INCLUDING new ones
      out              [num_tokens, num_q_heads, head_dim] in q's dtype; rows past
                       query_start_loc[-1] (batch padding) are zeroed

    Causality is bottom-right aligned: with q_len new tokens and seq_len cached ones, new token j
    sits at position seq_len - q_len + j and sees keys 0 .. that position. (SDPA's is_causal
    aligns top-left, which is only the same when q_len == seq_len; otherwise we pass
    causal_lower_right, which SDPA's flash / mem-efficient kernels handle without a dense mask.)

    This path gathers each sequence's blocks into a contiguous K/V and reads the lengths on the
    host (.tolist()): fine for prefill, which is compute-bound and not graph-captured. Decode,
    which is memory-bound and graphed, reads blocks in place (paged_attention.py).

    paged_prefill_attention_ref(...) is the obvious twin: explicit position mask, float32 math.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

__all__ = ["paged_prefill_attention", "paged_prefill_attention_ref"]


def _check_prefill_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
) -> None:
    """Shape checks from metadata (no device reads)."""
    if q.dim() != 3:
        raise ValueError(f"q must be [num_tokens, num_q_heads, head_dim]; got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [num_blocks, block_size, num_kv_heads, head_dim]; "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.shape[3] != q.shape[2]:
        raise ValueError(f"q head_dim {q.shape[2]} != cache head_dim {k_cache.shape[3]}")
    if q.shape[1] % k_cache.shape[2] != 0:
        raise ValueError(
            f"num_q_heads ({q.shape[1]}) must be a multiple of num_kv_heads ({k_cache.shape[2]}) for GQA"
        )
    num_seqs = seq_lens.shape[0]
    if seq_lens.dim() != 1 or query_start_loc.shape != (num_seqs + 1,):
        raise ValueError(
            f"query_start_loc must be [num_seqs + 1] and seq_lens [num_seqs]; got "
            f"{tuple(query_start_loc.shape)} and {tuple(seq_lens.shape)}"
        )
    if block_tables.dim() != 2 or block_tables.shape[0] < num_seqs:
        raise ValueError(
            f"block_tables must be [num_seqs={num_seqs}, max_blocks_per_seq]; got {tuple(block_tables.shape)}"
        )


def _host_lengths(
    q: torch.Tensor, block_tables: torch.Tensor, block_size: int, query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
) -> list[tuple[int, int, int]]:
    """(q_start, q_len, seq_len) per sequence, validated: one host sync for the whole call."""
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    if starts[0] != 0 or starts[-1] > q.shape[0]:
        raise ValueError(
            f"query_start_loc must start at 0 and end at <= num_tokens ({q.shape[0]}); "
            f"got {starts[0]} .. {starts[-1]}"
        )
    capacity = block_tables.shape[1] * block_size
    spans = []
    for i, seq_len in enumerate(lens):
        q_len = starts[i + 1] - starts[i]
        if q_len < 0 or q_len > seq_len:
            raise ValueError(
                f"sequence {i} has {q_len} new tokens but seq_len {seq_len}; seq_lens must count "
                f"cached + new tokens (>= the new ones) and query_start_loc must be non-decreasing"
            )
        if seq_len > capacity:
            raise ValueError(
                f"sequence {i} has seq_len {seq_len} but its block table holds at most {capacity} "
                f"tokens ({block_tables.shape[1]} blocks x {block_size}); widen block_tables"
            )
        spans.append((starts[i], q_len, seq_len))
    return spans


def _gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[seq_len, num_kv_heads, head_dim] copy of one sequence's cached tokens (prefill only)."""
    num_blocks = math.ceil(seq_len / cache.shape[1])
    blocks = block_table_row[:num_blocks].long()
    return cache[blocks].flatten(0, 1)[:seq_len]


def paged_prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prefill/extend attention for packed new tokens against their cached prefix, via SDPA."""
    _check_prefill_args(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"out must match q: shape {tuple(q.shape)}, {q.dtype} on {q.device}; got "
            f"{tuple(out.shape)}, {out.dtype} on {out.device}"
        )
    spans = _host_lengths(q, block_tables, k_cache.shape[1], query_start_loc, seq_lens)
    enable_gqa = q.shape[1] != k_cache.shape[2]
    for i, (start, q_len, seq_len) in enumerate(spans):
        if q_len == 0:
            continue
        # SDPA wants [batch, heads, tokens, head_dim].
        qi = q[start:start + q_len].transpose(0, 1).unsqueeze(0)
        ki = _gather_kv(k_cache, block_tables[i], seq_len).transpose(0, 1).unsqueeze(0)
        vi = _gather_kv(v_cache, block_tables[i], seq_len).transpose(0, 1).unsqueeze(0)
        if q_len == seq_len:  # no cached prefix: top-left and bottom-right causal coincide
            o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        else:
            mask = causal_lower_right(q_len, seq_len)
            o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale, enable_gqa=enable_gqa)
        out[start:start + q_len] = o[0].transpose(0, 1)
    used = spans[-1][0] + spans[-1][1] if spans else 0
    out[used:].zero_()  # padding rows: defined, never stale memory
    return out


def paged_prefill_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, scale: float,
) -> torch.Tensor:
    """Obvious twin: explicit key-position <= query-position mask, float32 softmax, per sequence."""
    _check_prefill_args(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
    group = q.shape[1] // k_cache.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    spans = _host_lengths(q, block_tables, k_cache.shape[1], query_start_loc, seq_lens)
    for i, (start, q_len, seq_len) in enumerate(spans):
        k = _gather_kv(k_cache, block_tables[i], seq_len).float().repeat_interleave(group, dim=1)
        v = _gather_kv(v_cache, block_tables[i], seq_len).float().repeat_interleave(group, dim=1)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        scores = torch.einsum("qhd,khd->hqk", q[start:start + q_len].float(), k) * scale
        scores = scores.masked_fill(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        out[start:start + q_len] = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v)
    return out.to(q.dtype)
