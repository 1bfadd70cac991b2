"""Decode attention over the paged KV cache (Triton), with a flash-decoding split-K variant.

Contract:
    paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale,
                           out=None, num_splits=None, workspace=None, sliding_window=None) -> out
      q             [num_seqs, num_q_heads, head_dim]   one query token per sequence
      k_cache,
      v_cache       [num_blocks, block_size, num_kv_heads, head_dim], same dtype as q
      block_tables  int32 [num_seqs, max_blocks_per_seq]; entries past a sequence's
                    cdiv(context_len, block_size) blocks are never read (may hold garbage / -1)
      context_lens  int32 [num_seqs]; tokens in the cache including the current one
                    (0 is allowed for padding rows of a graph batch and yields zeros). Must be
                    <= max_blocks_per_seq * block_size: not checked, that would need a host sync
      out           [num_seqs, num_q_heads, head_dim] in q's dtype; every element is written
      sliding_window None (or 0): full causal attention. A positive int w: the query (at position
                    context_len - 1) sees only the last w keys, positions context_len - w ..
                    context_len - 1 (transformers' `kv_idx > q_idx - sliding_window`). The
                    kernel's key loop starts at the window, so the blocks before it are never
                    read (their block-table entries may be stale); w is a compile-time constant
                    (one variant per model window), and None compiles the unwindowed loop.

    Kernel shape: one program per (sequence, kv head, split) handles the whole GQA group of q
    heads, so each K/V tile is read once per group and fed to tensor cores (the group is padded to
    16 rows, the smallest tl.dot tile). Tokens are visited in tiles of TILE_N that may span
    several cache blocks: each token's physical block comes from the block table, so K/V are
    read in place and block_size is independent of the tile size. Softmax is online (running
    max / sum in fp32, exp2 domain); accumulation is fp32 for every input dtype.

    Split-K (flash-decoding): with num_splits > 1 each sequence's attended span (the whole
    context, or its window) is cut into num_splits partitions of whole TILE_N tiles computed in
    parallel; each writes a partial (max, sum, acc) into a float32 workspace and a second kernel
    merges them. num_splits=None picks it from occupancy
    (num_seqs * num_kv_heads vs SM count) and the block table's capacity (or the window, if
    smaller); see choose_num_splits.

    Graph safety: no .item(), no host syncs; with out and workspace given nothing is allocated.
    Size the workspace once with alloc_decode_workspace (or decode_workspace_numel) for the
    largest batch and context the graphs will see.

    paged_decode_attention_ref(...) is the plain-torch twin (gathers each sequence; float32 math).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from aisp.kernels.kv_cache_ops import check_sliding_window, require_triton_device

__all__ = [
    "paged_decode_attention",
    "paged_decode_attention_ref",
    "choose_num_splits",
    "decode_workspace_numel",
    "alloc_decode_workspace",
]

_LOG2E = 1.4426950408889634
_MIN_SPLIT_TOKENS = 256  # below this a partition's fixed cost (q load, merge) outweighs the parallelism
_MAX_SPLITS = 32
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Eager (mixed) steps pad the block table to their own longest sequence and pick their own split
# count: no compiled variant per value class of those (seconds each, inside a served step).
@triton.jit(do_not_specialize=["num_splits", "stride_bt_seq"])
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, ws_m_ptr, ws_l_ptr, ws_acc_ptr,
    qk_scale, num_q_heads, num_splits,
    stride_q_seq, stride_q_head, stride_q_dim,
    stride_kc_block, stride_kc_off, stride_kc_head, stride_kc_dim,
    stride_vc_block, stride_vc_off, stride_vc_head, stride_vc_dim,
    stride_bt_seq, stride_bt_blk,
    stride_o_seq, stride_o_head, stride_o_dim,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr, IS_SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr,
):
    """One (sequence, kv head, split): online softmax over that split's tokens for the q group."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)

    # Keys attended: [first, context_len). With a window only the last WINDOW of them, so the
    # loop below never visits (nor reads the block-table entries of) the blocks before it:
    #   keys:  0 ......... first ........ context_len - 1 (the query's own position)
    #          skipped     |<-- WINDOW -->|
    first = 0
    if WINDOW > 0:
        first = tl.maximum(context_len - WINDOW, 0)
    # Partition of [first, context_len) in TILE_N multiples; trailing splits of short spans are
    # empty. Every tile starts inside the span, so it holds at least one valid token.
    tokens_per_split = tl.cdiv(tl.cdiv(context_len - first, num_splits), TILE_N) * TILE_N
    lo = first + split * tokens_per_split
    hi = tl.minimum(lo + tokens_per_split, context_len)

    g = tl.arange(0, GROUP_P2)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, TILE_N)
    g_mask = g < GROUP
    q_heads = kv_head * GROUP + g
    q = tl.load(
        q_ptr + seq * stride_q_seq + q_heads[:, None] * stride_q_head + d[None, :] * stride_q_dim,
        mask=g_mask[:, None], other=0.0,
    )

    m_i = tl.full([GROUP_P2], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_P2], tl.float32)
    acc = tl.zeros([GROUP_P2, HEAD_DIM], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    k_head = k_cache_ptr + kv_head * stride_kc_head
    v_head = v_cache_ptr + kv_head * stride_vc_head

    for start in range(lo, hi, TILE_N):
        tok = start + n
        tok_mask = tok < hi
        # Masked so block-table entries past the context (garbage, -1) are never read.
        block = tl.load(bt_row + (tok // BLOCK_SIZE) * stride_bt_blk, mask=tok_mask, other=0)
        block = block.to(tl.int64)
        offset = tok % BLOCK_SIZE
        k_rows = block * stride_kc_block + offset * stride_kc_off
        v_rows = block * stride_vc_block + offset * stride_vc_off
        k = tl.load(k_head + k_rows[:, None] + d[None, :] * stride_kc_dim, mask=tok_mask[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(tok_mask[None, :], s, float("-inf"))
        # Every tile holds at least one valid token, so m_new is finite and alpha never NaN.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_head + v_rows[:, None] + d[None, :] * stride_vc_dim, mask=tok_mask[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if IS_SPLIT:
        ws_row = (seq * num_q_heads + q_heads) * num_splits + split
        tl.store(ws_m_ptr + ws_row, m_i, mask=g_mask)
        tl.store(ws_l_ptr + ws_row, l_i, mask=g_mask)
        tl.store(ws_acc_ptr + ws_row[:, None] * HEAD_DIM + d[None, :], acc, mask=g_mask[:, None])
    else:
        o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # context_len 0 -> zeros, not NaN
        o_ptrs = out_ptr + seq * stride_o_seq + q_heads[:, None] * stride_o_head + d[None, :] * stride_o_dim
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])


@triton.jit(do_not_specialize=["num_splits"])
def _merge_splits_kernel(
    out_ptr, ws_m_ptr, ws_l_ptr, ws_acc_ptr,
    num_q_heads, num_splits,
    stride_o_seq, stride_o_head, stride_o_dim,
    HEAD_DIM: tl.constexpr, SPLITS_P2: tl.constexpr,
):
    """One (sequence, q head): rescale each split's partial by exp2(m_split - m_max) and sum."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, SPLITS_P2)
    d = tl.arange(0, HEAD_DIM)
    s_mask = s < num_splits
    rows = (seq * num_q_heads + head) * num_splits + s
    m = tl.load(ws_m_ptr + rows, mask=s_mask, other=float("-inf"))
    l = tl.load(ws_l_ptr + rows, mask=s_mask, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # all splits empty (context_len 0)
    w = tl.exp2(m - m_max)
    l_total = tl.sum(w * l, 0)
    acc = tl.load(ws_acc_ptr + rows[:, None] * HEAD_DIM + d[None, :], mask=s_mask[:, None], other=0.0)
    o = tl.sum(acc * w[:, None], 0) / tl.where(l_total == 0.0, 1.0, l_total)
    o_ptrs = out_ptr + seq * stride_o_seq + head * stride_o_head + d * stride_o_dim
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    """SMs of a CUDA device; 1 elsewhere (the interpreter gains nothing from splitting)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_context_len: int, device: torch.device | str
) -> int:
    """Split-K factor: enough programs for ~2 waves of SMs, but >= _MIN_SPLIT_TOKENS per split.

    Uses only host-side sizes (never the device context lengths), so the choice is graph-safe;
    the kernel itself leaves partitions empty when a sequence is shorter than the bound.
    Returns a power of two so few kernel variants get compiled.
    """
    programs = num_seqs * num_kv_heads
    sms = _sm_count(torch.device(device))
    if programs >= sms or max_context_len < 2 * _MIN_SPLIT_TOKENS:
        return 1
    splits = min(triton.cdiv(2 * sms, programs), max_context_len // _MIN_SPLIT_TOKENS, _MAX_SPLITS)
    return 1 << (splits.bit_length() - 1)


def decode_workspace_numel(num_seqs: int, num_q_heads: int, head_dim: int, num_splits: int) -> int:
    """Float32 elements of split-K scratch: per (seq, q head, split) a max, a sum and head_dim accs."""
    return num_seqs * num_q_heads * num_splits * (head_dim + 2)


def alloc_decode_workspace(
    max_num_seqs: int, num_q_heads: int, num_kv_heads: int, head_dim: int, max_context_len: int,
    device: torch.device | str, num_splits: int | None = None,
) -> torch.Tensor:
    """Allocate a workspace large enough for every batch size <= max_num_seqs.

    With num_splits=None it covers whatever choose_num_splits picks for any batch up to
    max_num_seqs at max_context_len (fewer sequences get more splits, so take the max product).
    """
    def splits_for(b: int) -> int:
        if num_splits is not None:
            return num_splits
        return choose_num_splits(b, num_kv_heads, max_context_len, device)

    numel = max(
        decode_workspace_numel(b, num_q_heads, head_dim, splits_for(b)) for b in range(1, max_num_seqs + 1)
    )
    return torch.empty(numel, dtype=torch.float32, device=device)


def _check_decode_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor,
) -> None:
    """Shape/dtype checks on host metadata only (graph-safe)."""
    if q.dim() != 3:
        raise ValueError(f"q must be [num_seqs, num_q_heads, head_dim]; got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [num_blocks, block_size, num_kv_heads, head_dim]; "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    num_seqs, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"q head_dim {head_dim} != cache head_dim {k_cache.shape[3]}")
    if num_q_heads % num_kv_heads != 0:
        raise ValueError(
            f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads}) for GQA"
        )
    if q.dtype not in _SUPPORTED_DTYPES or q.dtype != k_cache.dtype or q.dtype != v_cache.dtype:
        raise ValueError(
            f"q, k_cache and v_cache must share one dtype among float16/bfloat16/float32; got "
            f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"block_tables must be [num_seqs={num_seqs}, max_blocks_per_seq]; got {tuple(block_tables.shape)}"
        )
    if context_lens.shape != (num_seqs,):
        raise ValueError(f"context_lens must be [num_seqs={num_seqs}]; got {tuple(context_lens.shape)}")
    for name, t in (("block_tables", block_tables), ("context_lens", context_lens)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 (int64 also works); got {t.dtype}")
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, context_lens)}
    if len(devices) != 1:
        raise ValueError(f"all attention tensors must be on one device; got {sorted(map(str, devices))}")


def _tile_n(device: torch.device) -> int:
    """Tokens per inner-loop tile: 64 on GPUs (two 16 KB fp16 K/V tiles at head_dim 128);
    16 in the interpreter so the tiny test contexts still cross several tiles and splits."""
    return 64 if device.type == "cuda" else 16


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, out: torch.Tensor | None = None,
    num_splits: int | None = None, workspace: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Single-token decode attention reading K/V blocks in place (Triton; graph-safe)."""
    _check_decode_args(q, k_cache, v_cache, block_tables, context_lens)
    window = check_sliding_window(sliding_window)
    require_triton_device(q, "aisp.kernels.paged_attention.paged_decode_attention_ref")
    num_seqs, num_q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(
            f"head_dim {head_dim} is not supported: the kernel needs a power of two >= 16 "
            f"(tl.dot tile); use paged_decode_attention_ref for this model"
        )
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"out must match q: shape {tuple(q.shape)}, {q.dtype} on {q.device}; got "
            f"{tuple(out.shape)}, {out.dtype} on {out.device}"
        )
    if num_seqs == 0:
        return out

    per_split = decode_workspace_numel(num_seqs, num_q_heads, head_dim, 1)
    if num_splits is None:
        span = block_tables.shape[1] * block_size  # host sizes only: the same at capture and replay
        if window:
            span = min(span, window)
        num_splits = choose_num_splits(num_seqs, num_kv_heads, span, q.device)
        if workspace is not None:  # never exceed the caller's buffer: fewer splits beat an error
            num_splits = max(1, min(num_splits, workspace.numel() // per_split))
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1; got {num_splits}")

    group = num_q_heads // num_kv_heads
    common = dict(
        GROUP=group, GROUP_P2=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, TILE_N=_tile_n(q.device), IS_SPLIT=num_splits > 1,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", WINDOW=window,
        num_warps=4, num_stages=2,
    )
    strides = (*q.stride(), *k_cache.stride(), *v_cache.stride(), *block_tables.stride(), *out.stride())
    qk_scale = scale * _LOG2E
    grid = (num_seqs, num_kv_heads, num_splits)

    if num_splits == 1:
        _decode_kernel[grid](
            q, k_cache, v_cache, block_tables, context_lens, out, out, out, out,
            qk_scale, num_q_heads, 1, *strides, **common,
        )
        return out

    needed = per_split * num_splits
    if workspace is None:
        workspace = torch.empty(needed, dtype=torch.float32, device=q.device)
    elif workspace.dtype != torch.float32 or workspace.device != q.device or workspace.numel() < needed:
        raise ValueError(
            f"workspace must be float32 on {q.device} with >= {needed} elements for {num_seqs} seqs x "
            f"{num_splits} splits; got {workspace.dtype} on {workspace.device} with {workspace.numel()}; "
            f"size it with alloc_decode_workspace or pass fewer num_splits"
        )
    rows = num_seqs * num_q_heads * num_splits
    ws_m, ws_l, ws_acc = workspace[:rows], workspace[rows:2 * rows], workspace[2 * rows:needed]
    _decode_kernel[grid](
        q, k_cache, v_cache, block_tables, context_lens, out, ws_m, ws_l, ws_acc,
        qk_scale, num_q_heads, num_splits, *strides, **common,
    )
    _merge_splits_kernel[(num_seqs, num_q_heads)](
        out, ws_m, ws_l, ws_acc, num_q_heads, num_splits, *out.stride(),
        HEAD_DIM=head_dim, SPLITS_P2=max(2, triton.next_power_of_2(num_splits)), num_warps=4,
    )
    return out


def paged_decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, sliding_window: int | None = None,
) -> torch.Tensor:
    """Obvious twin: gather each sequence's blocks, float32 softmax attention, cast back to q's
    dtype. With a window w, the keys are positions n - w .. n - 1 (an explicit mask)."""
    _check_decode_args(q, k_cache, v_cache, block_tables, context_lens)
    window = check_sliding_window(sliding_window)
    num_seqs, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.zeros(num_seqs, num_q_heads, head_dim, dtype=torch.float32, device=q.device)
    for i, n in enumerate(context_lens.tolist()):
        if n == 0:
            continue  # padding row: defined as zeros, like the kernel
        blocks = block_tables[i, : math.ceil(n / block_size)].long()
        k = k_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:n].float().repeat_interleave(group, dim=1)
        v = v_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:n].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[i].float(), k) * scale
        if window:
            k_pos = torch.arange(n, device=q.device)
            scores = scores.masked_fill(k_pos[None, :] <= (n - 1) - window, float("-inf"))
        out[i] = torch.einsum("hn,nhd->hd", scores.softmax(dim=-1), v)
    return out.to(q.dtype)
