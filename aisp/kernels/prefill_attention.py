"""Chunked-prefill attention over the paged KV cache (Triton, varlen, K/V read in place).

Contract:
    paged_prefill_attention(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
                            max_query_len, out=None, sliding_window=None) -> out
      q                [num_tokens, num_q_heads, head_dim]: the NEW tokens of several sequences,
                       packed; sequence i owns rows query_start_loc[i] : query_start_loc[i+1].
                       Any token/head strides (e.g. a slice of a fused qkv projection)
      k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim], q's dtype; the new
                       tokens' K/V are already stored (store_kv runs first)
      block_tables     int32 [>= num_seqs, max_blocks_per_seq]; entries past a sequence's
                       cdiv(seq_len, block_size) blocks are never read (may hold garbage / -1)
      query_start_loc  int32 [num_seqs + 1], cumulative new-token counts starting at 0 (device)
      seq_lens         int32 [num_seqs]; tokens of each sequence in the cache INCLUDING new ones
      max_query_len    HOST int >= every sequence's new-token count; sizes the grid only
      out              [num_tokens, num_q_heads, head_dim] in q's dtype; every element is
                       written, rows past query_start_loc[-1] (batch padding) with zeros
      sliding_window   None (or 0): full causal. A positive int w: the token at position p
                       sees keys p - w < j <= p only (transformers' sliding-window mask,
                       `kv_idx > q_idx - sliding_window`); a compile-time constant, and None
                       compiles the unwindowed kernel.

    Causality is bottom-right aligned: with q_len new tokens and seq_len cached ones, new token j
    sits at position seq_len - q_len + j and sees keys 0 .. that position:

        keys:     0 1 2 3 4 5 6 7        seq_len 8, q_len 3 (a prefix of 5 was cached)
        token 0:  x x x x x x . .        at position 5
        token 1:  x x x x x x x .        at position 6
        token 2:  x x x x x x x x        at position 7

    With a window w = 3 the same chunk sees only the last 3 keys up to its own position, and
    key tiles wholly before the window of a program's first query are never visited (nor their
    block-table entries read):

        keys:     0 1 2 3 4 5 6 7
        token 0:  . . . x x x . .        at position 5: keys 3 4 5
        token 1:  . . . . x x x .
        token 2:  . . . . . x x x

    Not checked, since that would need a host sync (paged_prefill_attention_ref checks them):
    q_len <= seq_len, seq_len <= max_blocks_per_seq * block_size, max_query_len >= every q_len
    (a longer sequence would get rows silently left unwritten).

    Kernel shape: one launch, grid (num_seqs + 1, q tiles, num_kv_heads). A program takes a tile
    of new tokens of one sequence for the whole GQA group of its kv head, folded token-major into
    the rows of one tl.dot (row r = token r // group, q head r % group), so each K/V tile is read
    once per group. It walks key tiles of TILE_N tokens from 0 (with a window: from the tile
    holding its first query's first key) to its last query's position, each
    key's physical block taken from the block table; online softmax in fp32 (exp2 domain), fp32
    accumulation, the causal mask applied only on tiles that reach the diagonal. Programs whose
    tile lies past their sequence's q_len exit at once. The extra sequence index num_seqs zeroes
    the padding rows, reading query_start_loc[-1] on the device. Tile sizes are picked from host
    sizes (head_dim, max_query_len): see _GPU_TILES.

    Graph safety: no .item(), no host syncs; with out given nothing is allocated. The grid
    depends only on host sizes (num_seqs, max_query_len, num_kv_heads).

    paged_prefill_attention_ref(...) is the obvious twin: per-sequence gather on the host,
    explicit position mask, float32 math; it validates the lengths (one host sync per call).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from aisp.kernels.kv_cache_ops import check_sliding_window, require_triton_device

__all__ = ["paged_prefill_attention", "paged_prefill_attention_ref"]

_LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _attend_key_tile(
    acc, m_i, l_i, q, q_pos, start, kv_start, kv_end, bt_row, k_head, v_head, qk_scale,
    stride_bt_blk, stride_kc_block, stride_kc_off, stride_kc_dim,
    stride_vc_block, stride_vc_off, stride_vc_dim,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
    DIAGONAL: tl.constexpr, DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr,
):
    """Fold key tokens start .. start + TILE_N into the running (acc, max, sum) of every row.

    WINDOW > 0 masks, in this tile, keys at or before q_pos - WINDOW (the tile reaches back past
    some row's window); 0 leaves the tile unmasked on that side."""
    n = start + tl.arange(0, TILE_N)
    d = tl.arange(0, HEAD_DIM)
    # Masked so block-table entries past the context (garbage, -1) and their cache slots are
    # never read (only diagonal tiles reach past kv_end; on the others the mask costs ~nothing).
    n_mask = n < kv_end
    if WINDOW > 0:  # nor the keys before every row's window (their blocks may be reused)
        n_mask = n_mask & (n >= kv_start)
    block = tl.load(bt_row + (n // BLOCK_SIZE) * stride_bt_blk, mask=n_mask, other=0).to(tl.int64)
    offset = n % BLOCK_SIZE
    k_rows = block * stride_kc_block + offset * stride_kc_off
    k = tl.load(k_head + k_rows[:, None] + d[None, :] * stride_kc_dim, mask=n_mask[:, None], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if DIAGONAL:  # also drops keys >= kv_end: every row's q_pos < kv_end
        s = tl.where(n[None, :] <= q_pos[:, None], s, float("-inf"))
    if WINDOW > 0:
        s = tl.where(n[None, :] > q_pos[:, None] - WINDOW, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if WINDOW > 0:
        # A row may have seen no key yet (its window starts past this tile): keep its max at
        # -inf but shift by 0, so alpha = exp2(-inf) = 0 and p = 0 instead of NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        # Every row saw key 0 in the first tile (no row is masked out entirely before that),
        # so m_new is finite and alpha is never NaN.
        m_shift = m_new
    alpha = tl.exp2(m_i - m_shift)
    p = tl.exp2(s - m_shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v_rows = block * stride_vc_block + offset * stride_vc_off
    v = tl.load(v_head + v_rows[:, None] + d[None, :] * stride_vc_dim, mask=n_mask[:, None], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


# Batch sizes and the block table's padded width change from step to step; Triton would compile
# a variant per "== 1 / divisible by 16" class of each (seconds each, inside a served step).
@triton.jit(do_not_specialize=["num_seqs", "num_tokens", "stride_bt_seq"])
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr, out_ptr,
    qk_scale, num_seqs, num_tokens,
    stride_q_tok, stride_q_head, stride_q_dim,
    stride_kc_block, stride_kc_off, stride_kc_head, stride_kc_dim,
    stride_vc_block, stride_vc_off, stride_vc_head, stride_vc_dim,
    stride_bt_seq, stride_bt_blk,
    stride_o_tok, stride_o_head, stride_o_dim,
    GROUP: tl.constexpr, BLOCK_R: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WINDOW: tl.constexpr,
):
    """One (sequence, q tile, kv head): causal attention for TOKENS new tokens x GROUP q heads."""
    TOKENS: tl.constexpr = BLOCK_R // GROUP  # new tokens per program; rows past TOKENS * GROUP idle
    seq = tl.program_id(0)
    num_q_tiles = tl.num_programs(1)
    # Tiles in reverse: the last tiles of long sequences see the most keys, so they start first.
    q_tile = num_q_tiles - 1 - tl.program_id(1)
    kv_head = tl.program_id(2)

    r = tl.arange(0, BLOCK_R)
    d = tl.arange(0, HEAD_DIM)
    row_tok = r // GROUP
    row_ok = row_tok < TOKENS
    heads = kv_head * GROUP + r % GROUP
    out_cols = heads[:, None] * stride_o_head + d[None, :] * stride_o_dim

    if seq == num_seqs:  # the padding program: zero rows query_start_loc[-1] .. num_tokens
        used = tl.load(query_start_loc_ptr + num_seqs)
        zeros = tl.zeros([BLOCK_R, HEAD_DIM], out_ptr.dtype.element_ty)
        for first in range(used + q_tile * TOKENS, num_tokens, num_q_tiles * TOKENS):
            tok = first + row_tok
            o_ptrs = out_ptr + tok.to(tl.int64)[:, None] * stride_o_tok + out_cols
            tl.store(o_ptrs, zeros, mask=(row_ok & (tok < num_tokens))[:, None])
        return

    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    tile_start = q_tile * TOKENS
    if tile_start >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix = seq_len - q_len

    #   keys:  0 ........ diag_start ....... first_pos ... last_pos (= kv_end - 1)
    #          unmasked tiles          | diagonal tiles (causal mask)
    first_pos = prefix + tile_start
    kv_end = prefix + tl.minimum(tile_start + TOKENS, q_len)
    diag_start = (first_pos // TILE_N) * TILE_N
    # Idle rows (past q_len or past TOKENS * GROUP) mirror the last query: finite, never stored.
    q_pos = tl.minimum(first_pos + row_tok, kv_end - 1)
    tok = q_start + tile_start + row_tok
    row_valid = row_ok & (tile_start + row_tok < q_len)
    q_rows = tok.to(tl.int64)[:, None] * stride_q_tok
    q = tl.load(
        q_ptr + q_rows + heads[:, None] * stride_q_head + d[None, :] * stride_q_dim,
        mask=row_valid[:, None], other=0.0,
    )

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    k_head = k_cache_ptr + kv_head * stride_kc_head
    v_head = v_cache_ptr + kv_head * stride_vc_head
    # With a window, key tiles are split once more (all TILE_N-aligned):
    #   skipped | window-masked | unmasked | diagonal (causal, and window-masked too)
    #   0 ..... lo ............ win_end .. diag_start ........ kv_end
    # lo: the tile holding the first query's first key; win_end: past the first key every row
    # sees (the last query's, last_pos - WINDOW + 1), capped at diag_start.
    kv_start = 0
    lo = 0
    win_end = 0
    if WINDOW > 0:
        kv_start = tl.maximum(first_pos - WINDOW + 1, 0)
        lo = (kv_start // TILE_N) * TILE_N
        win_end = tl.minimum(tl.cdiv(tl.maximum(kv_end - WINDOW, 0), TILE_N) * TILE_N, diag_start)
        for start in range(lo, win_end, TILE_N):
            acc, m_i, l_i = _attend_key_tile(
                acc, m_i, l_i, q, q_pos, start, kv_start, kv_end, bt_row, k_head, v_head, qk_scale,
                stride_bt_blk, stride_kc_block, stride_kc_off, stride_kc_dim,
                stride_vc_block, stride_vc_off, stride_vc_dim,
                HEAD_DIM, BLOCK_SIZE, TILE_N, False, DOT_PRECISION, WINDOW,
            )
    for start in range(win_end, diag_start, TILE_N):
        acc, m_i, l_i = _attend_key_tile(
            acc, m_i, l_i, q, q_pos, start, kv_start, kv_end, bt_row, k_head, v_head, qk_scale,
            stride_bt_blk, stride_kc_block, stride_kc_off, stride_kc_dim,
            stride_vc_block, stride_vc_off, stride_vc_dim,
            HEAD_DIM, BLOCK_SIZE, TILE_N, False, DOT_PRECISION, 0,
        )
    for start in range(diag_start, kv_end, TILE_N):
        acc, m_i, l_i = _attend_key_tile(
            acc, m_i, l_i, q, q_pos, start, kv_start, kv_end, bt_row, k_head, v_head, qk_scale,
            stride_bt_blk, stride_kc_block, stride_kc_off, stride_kc_dim,
            stride_vc_block, stride_vc_off, stride_vc_dim,
            HEAD_DIM, BLOCK_SIZE, TILE_N, True, DOT_PRECISION, WINDOW,
        )

    o = acc / l_i[:, None]
    o_ptrs = out_ptr + tok.to(tl.int64)[:, None] * stride_o_tok + out_cols
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])


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


def _check_kernel_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, max_query_len: int,
) -> None:
    """What the Triton kernel needs beyond the shapes: dtypes, head_dim, one device, a host int."""
    if q.dtype not in _SUPPORTED_DTYPES or q.dtype != k_cache.dtype or q.dtype != v_cache.dtype:
        raise ValueError(
            f"q, k_cache and v_cache must share one dtype among float16/bfloat16/float32; got "
            f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    head_dim = q.shape[2]
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(
            f"head_dim {head_dim} is not supported: the kernel needs a power of two from 16 (the "
            f"smallest tl.dot tile) to 256 (its tiles are tuned up to there); use "
            f"paged_prefill_attention_ref for this model"
        )
    for name, t in (("block_tables", block_tables), ("query_start_loc", query_start_loc),
                    ("seq_lens", seq_lens)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 (int64 also works); got {t.dtype}")
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)}
    if len(devices) != 1:
        raise ValueError(f"all attention tensors must be on one device; got {sorted(map(str, devices))}")
    if isinstance(max_query_len, bool) or not isinstance(max_query_len, int) or max_query_len < 0:
        raise ValueError(
            f"max_query_len must be a non-negative host int (the longest new-token count of the "
            f"batch, known from the step's plan); got {max_query_len!r}"
        )


# (rows, keys per tile, warps, stages) by head dim, for short and long chunks, measured on an
# H200 in bf16 with 32 q / 8 kv heads (aisp.kernels.bench_prefill cases). Long chunks favour
# big tiles (more reuse of each K/V tile); short ones waste less work on the masked diagonal
# with small ones. Rows x head_dim stays <= 32K fp32 accumulators (<= 128 registers a thread).
_GPU_TILES = {  # head_dim bound: (short, long)
    64: ((64, 32, 4, 3), (128, 64, 8, 3)),
    128: ((128, 32, 4, 3), (256, 64, 8, 3)),
    256: ((128, 32, 8, 2), (128, 64, 8, 2)),
}
_LONG_CHUNK = 1024  # new tokens; at 1024 both shapes tie


def _tile_config(group: int, head_dim: int, max_query_len: int, device: torch.device) -> dict:
    """Rows per program (tokens x group) and keys per tile, warps, pipeline depth.

    Picked from host sizes only, so a captured graph replays with the same choice. In the
    interpreter 16 x 16, so the tiny test sequences cross several q tiles and key tiles. Rows are
    at least the group (one token per program) and at least 16 (the smallest tl.dot tile).
    """
    if device.type == "cuda":
        short, long = _GPU_TILES[min(b for b in _GPU_TILES if head_dim <= b)]
        rows, tile_n, warps, stages = long if max_query_len >= _LONG_CHUNK else short
    else:
        rows, tile_n, warps, stages = 16, 16, 4, 1
    return dict(BLOCK_R=max(rows, triton.next_power_of_2(group)), TILE_N=tile_n,
                num_warps=warps, num_stages=stages)


def paged_prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, scale: float, max_query_len: int,
    out: torch.Tensor | None = None, sliding_window: int | None = None,
) -> torch.Tensor:
    """Prefill/extend attention for packed new tokens against their paged cache (one launch)."""
    _check_prefill_args(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
    window = check_sliding_window(sliding_window)
    _check_kernel_args(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, max_query_len)
    require_triton_device(q, "aisp.kernels.prefill_attention.paged_prefill_attention_ref")
    num_tokens, num_q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"out must match q: shape {tuple(q.shape)}, {q.dtype} on {q.device}; got "
            f"{tuple(out.shape)}, {out.dtype} on {out.device}"
        )
    if num_tokens == 0:
        return out

    group = num_q_heads // num_kv_heads
    config = _tile_config(group, head_dim, max_query_len, q.device)
    tokens_per_program = config["BLOCK_R"] // group
    # No sequence has more new tokens than the batch, so a generous max_query_len costs nothing.
    num_q_tiles = max(1, triton.cdiv(min(max_query_len, num_tokens), tokens_per_program))
    num_seqs = seq_lens.shape[0]
    grid = (num_seqs + 1, num_q_tiles, num_kv_heads)  # + 1: the padding program
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
        scale * _LOG2E, num_seqs, num_tokens,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *block_tables.stride(), *out.stride(),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", WINDOW=window, **config,
    )
    return out


def _host_lengths(
    q: torch.Tensor, block_tables: torch.Tensor, block_size: int, query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor, max_query_len: int | None,
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
        if max_query_len is not None and q_len > max_query_len:
            raise ValueError(
                f"sequence {i} has {q_len} new tokens but max_query_len is {max_query_len}; pass "
                f"the longest new-token count of the batch (the Triton kernel would skip rows)"
            )
        spans.append((starts[i], q_len, seq_len))
    return spans


def _gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[seq_len, num_kv_heads, head_dim] copy of one sequence's cached tokens (reference only)."""
    num_blocks = math.ceil(seq_len / cache.shape[1])
    blocks = block_table_row[:num_blocks].long()
    return cache[blocks].flatten(0, 1)[:seq_len]


def paged_prefill_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, scale: float,
    max_query_len: int | None = None, sliding_window: int | None = None,
) -> torch.Tensor:
    """Obvious twin: explicit key-position <= query-position mask (and, with a window w,
    key-position > query-position - w), float32 softmax, per sequence.

    Takes the kernel's arguments so callers can swap the two; it needs no max_query_len (it
    reads the lengths on the host) but, when given, checks it covers every sequence.
    """
    _check_prefill_args(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
    window = check_sliding_window(sliding_window)
    group = q.shape[1] // k_cache.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    spans = _host_lengths(q, block_tables, k_cache.shape[1], query_start_loc, seq_lens, max_query_len)
    for i, (start, q_len, seq_len) in enumerate(spans):
        k = _gather_kv(k_cache, block_tables[i], seq_len).float().repeat_interleave(group, dim=1)
        v = _gather_kv(v_cache, block_tables[i], seq_len).float().repeat_interleave(group, dim=1)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        scores = torch.einsum("qhd,khd->hqk", q[start:start + q_len].float(), k) * scale
        hidden = k_pos[None, :] > q_pos[:, None]
        if window:
            hidden |= k_pos[None, :] <= q_pos[:, None] - window
        scores = scores.masked_fill(hidden[None], float("-inf"))
        out[start:start + q_len] = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v)
    return out.to(q.dtype)
