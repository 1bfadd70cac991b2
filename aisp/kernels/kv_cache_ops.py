"""Writing new keys and values into the paged KV cache.

Contract:
    store_kv(k, v, k_cache, v_cache, slot_mapping) -> None
      k, v          [num_tokens, num_kv_heads, head_dim]   (any strides; e.g. slices of a fused qkv)
      k_cache,
      v_cache       [num_blocks, block_size, num_kv_heads, head_dim], same dtype as k / v
      slot_mapping  int64 (or int32) [num_tokens]; token t goes to flat slot
                    slot_mapping[t] = block_id * block_size + offset; -1 means "padding, skip".

    The cache is written in place; slots that no token maps to are never touched, so the -1
    padding rows of a CUDA-graph batch leave the cache as it was. The Triton path makes no host
    syncs and no allocations, so it can be captured in a CUDA graph. Slot values are not checked
    against the cache size (that would need a host sync); the block manager owns that invariant.

    store_kv_ref(...) is the plain-torch twin used by the tests and by CPU runs without Triton.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["store_kv", "store_kv_ref", "check_sliding_window"]


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_k_tok, stride_k_head, stride_k_dim,
    stride_v_tok, stride_v_head, stride_v_dim,
    stride_kc_block, stride_kc_off, stride_kc_head, stride_kc_dim,
    stride_vc_block, stride_vc_off, stride_vc_head, stride_vc_dim,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEADS_P2: tl.constexpr, DIM_P2: tl.constexpr,
):
    """One program per token: copy all its kv heads (a [HEADS_P2, DIM_P2] tile) into its slot."""
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot < 0:  # padding token of a graph batch: leave the cache untouched
        return
    block_id = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE

    heads = tl.arange(0, HEADS_P2)[:, None]
    dims = tl.arange(0, DIM_P2)[None, :]
    mask = (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)
    token64 = token.to(tl.int64)

    k = tl.load(k_ptr + token64 * stride_k_tok + heads * stride_k_head + dims * stride_k_dim, mask=mask)
    v = tl.load(v_ptr + token64 * stride_v_tok + heads * stride_v_head + dims * stride_v_dim, mask=mask)
    kc = k_cache_ptr + block_id * stride_kc_block + offset * stride_kc_off
    vc = v_cache_ptr + block_id * stride_vc_block + offset * stride_vc_off
    tl.store(kc + heads * stride_kc_head + dims * stride_kc_dim, k, mask=mask)
    tl.store(vc + heads * stride_vc_head + dims * stride_vc_dim, v, mask=mask)


def _check_store_args(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Shape/dtype checks on host metadata only (no device reads, so graph capture is safe)."""
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(
            f"k and v must both be [num_tokens, num_kv_heads, head_dim]; got k {tuple(k.shape)} "
            f"and v {tuple(v.shape)}; reshape the projections to that layout first"
        )
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [num_blocks, block_size, num_kv_heads, head_dim]; "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(
            f"new keys have (num_kv_heads, head_dim) = {tuple(k.shape[1:])} but the cache holds "
            f"{tuple(k_cache.shape[2:])}; allocate the cache with the model's kv head count and head dim"
        )
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(
            f"slot_mapping must be 1-D with one slot per token ({k.shape[0]} tokens); "
            f"got shape {tuple(slot_mapping.shape)}"
        )
    if slot_mapping.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"slot_mapping must be int64 (or int32); got {slot_mapping.dtype}")
    if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
        raise ValueError(
            f"new k/v dtype ({k.dtype}, {v.dtype}) must match the cache dtype ({k_cache.dtype}, "
            f"{v_cache.dtype}); a quantized cache needs its own store op with scales"
        )
    devices = {t.device for t in (k, v, k_cache, v_cache, slot_mapping)}
    if len(devices) != 1:
        raise ValueError(f"all store_kv tensors must be on one device; got {sorted(map(str, devices))}")


def require_triton_device(t: torch.Tensor, ref_name: str) -> None:
    """Triton runs on CUDA, or on the CPU only through its interpreter; say so instead of crashing."""
    if t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return
    raise RuntimeError(
        f"this Triton kernel needs a CUDA tensor (got device '{t.device}'); on the CPU set "
        f"TRITON_INTERPRET=1 before importing aisp.kernels (slow, for tests) or call {ref_name} instead"
    )


def check_sliding_window(sliding_window: int | None) -> int:
    """An attention window as the paged kernels take it: a positive int of tokens, or 0 for
    none (None -> 0). Shared by the decode and prefill kernels and their twins."""
    if sliding_window is None:
        return 0
    if isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1:
        raise ValueError(f"sliding_window must be a positive int (tokens) or None; got {sliding_window!r}")
    return sliding_window


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter one step's new K/V into the paged cache (Triton; in place, graph-safe)."""
    _check_store_args(k, v, k_cache, v_cache, slot_mapping)
    require_triton_device(k, "aisp.kernels.kv_cache_ops.store_kv_ref")
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
        HEADS_P2=triton.next_power_of_2(num_kv_heads), DIM_P2=triton.next_power_of_2(head_dim),
        num_warps=4 if num_kv_heads * head_dim >= 512 else 1,
    )


def store_kv_ref(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Plain-torch twin of store_kv (boolean indexing syncs the host: not for graphs)."""
    _check_store_args(k, v, k_cache, v_cache, slot_mapping)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    block_size = k_cache.shape[1]
    # Index by (block, offset) rather than a flattened view so any cache strides work.
    k_cache[slots // block_size, slots % block_size] = k[keep]
    v_cache[slots // block_size, slots % block_size] = v[keep]
