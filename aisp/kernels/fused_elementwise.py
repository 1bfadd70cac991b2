"""The elementwise work of a decoder layer, fused: residual add + RMSNorm, in-place RoPE, SiLU·mul.

Contract:
    rms_norm(x, weight, eps, residual=None) -> normed, or (normed, summed) with a residual
      x         [T, H], or [T, num_heads, head_dim] for Qwen3's per-head q/k norm; the rows are
                all leading dims; last dim contiguous, any token/head strides (a view of the
                fused qkv output works); T may be 0
      weight    [H] (x's last dim), x's dtype
      residual  x's shape and dtype, same layout rules as x
      summed  = (x + residual) rounded to x.dtype                       (HF: hidden + attn_out)
      normed  = weight * (s * rsqrt(mean(s * s) + eps)).to(x.dtype),
                s = summed (or x) in float32                             (HF's LlamaRMSNorm)
      Both outputs are new contiguous tensors of x's shape.

    rotary_(q, k, cos_sin_cache, positions) -> (q, k), rotated IN PLACE
      q [T, Hq, D], k [T, Hk, D]  one dtype; last dim contiguous, any token/head strides (views
                                  of the fused qkv output: v, beside them, is never touched)
      cos_sin_cache               float32 [max_positions, 2 * D], rows cos | sin at full head_dim
                                  (aisp.model.rope.RotaryEmbedding's buffer)
      positions                   int64 (or int32) [T], any order; not range-checked (that needs
                                  a host sync): callers keep them below max_positions
      x <- x * cos + rotate_half(x) * sin in float32, rounded to x's dtype; rotate_half is HF's
      non-interleaved layout ([x1, x2] -> [-x2, x1], dim i pairs with i + D/2).

    silu_and_mul(gate_up) -> out
      gate_up [T, 2I] rows [gate | up]; last dim contiguous, any row stride
      out     [T, I] = silu(gate) * up with torch's roundings: silu in float32 rounded to the
              dtype, then the product in float32 rounded again (what F.silu(gate) * up does).

    The twins rms_norm_ref, rotary_ref and silu_and_mul_ref are those formulas in plain torch and
    the ONLY definition of them: the model's torch path (aisp/model/layers.py, rope.py) calls them.
    rotary_ref returns new tensors instead of rotating in place; its core, apply_rotary(x, cos,
    sin), serves callers that gather cos/sin once per forward (gather_cos_sin) for many layers.

    Kernels vs twins (what tests/kernels/test_fused_elementwise.py asserts):
      rotary_       bit-exact in every dtype: the same cache values, and float32 mul/add rounded
                    one op at a time as torch does (FMA contraction is switched off).
      rms_norm      the sum of squares is reduced in another order and rsqrt is another
                    implementation, so the float32 normaliser differs in its last bits: a few
                    float32 ulp; in 16-bit dtypes a rare flip of one rounding (<= 2 ulp after the
                    weight multiply, almost every element bit-exact).
      silu_and_mul  bit-exact on GPUs: libdevice's expf is the expf torch's kernel calls, and the
                    division is IEEE-rounded. The interpreter cannot run libdevice and uses tl.exp
                    (numpy's exp): the same tolerances as rms_norm there.

    Graph safety: no host syncs, no .item(); the only allocations are the outputs (torch.empty,
    which a CUDA-graph capture serves from its pool). Host-side checks read metadata only.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.language.extra import libdevice

from aisp.kernels.kv_cache_ops import require_triton_device

__all__ = [
    "rms_norm", "rms_norm_ref",
    "rotary_", "rotary_ref", "apply_rotary", "gather_cos_sin", "rotate_half",
    "silu_and_mul", "silu_and_mul_ref",
]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SILU_BLOCK = 1024  # columns per silu_and_mul program: 14336-wide rows become 14 tiles per token
# Triton fixes at decoration time whether kernels are compiled or interpreted (tests/conftest.py).
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _num_warps(elements_per_program: int, most: int = 8) -> int:
    """About 8-16 elements per thread (vectorised 16-byte loads), at least one warp."""
    return min(max(elements_per_program // 256, 1), most)


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16; got {t.dtype}")


def _check_last_dim_contiguous(**tensors: torch.Tensor) -> None:
    """The kernels address rows by stride but read each row as one contiguous run."""
    for name, t in tensors.items():
        if t.numel() and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride 1); got strides "
                             f"{tuple(t.stride())}; pass a view of a row-major buffer or .contiguous()")


def _check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        found = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"{op}: all tensors must be on one device; got {found}")


# -- residual add + RMSNorm ----------------------------------------------------------------------

@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr,
    stride_x_outer, stride_x_inner, stride_r_outer, stride_r_inner,
    eps,
    NUM_INNER: tl.constexpr, H: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    """One program per row. A row is x[outer, inner, :] (inner is the head of a per-head norm)."""
    row = tl.program_id(0).to(tl.int64)
    outer = row // NUM_INNER
    inner = row % NUM_INNER
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    dtype = out_ptr.dtype.element_ty

    x = tl.load(x_ptr + outer * stride_x_outer + inner * stride_x_inner + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + outer * stride_r_outer + inner * stride_r_inner + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(dtype)  # torch rounds the sum to the dtype
        tl.store(sum_ptr + row * H + cols, x, mask=mask)
    xf = x.to(tl.float32)
    mean_sq = tl.math.div_rn(tl.sum(xf * xf, axis=0), H)  # IEEE division, as torch's mean
    # HF casts the normalised row to the dtype BEFORE the weight multiply; the float32 product of
    # two 16-bit values is exact, so rounding it once reproduces torch's 16-bit multiply.
    normed = (xf * tl.math.rsqrt(mean_sq + eps)).to(dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * H + cols, (w * normed).to(dtype), mask=mask)


def _check_rms_norm_args(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    """Shapes and dtypes from host metadata only (graph-capture safe); shared by kernel and twin."""
    if x.dim() not in (2, 3):
        raise ValueError(f"rms_norm takes x [num_tokens, hidden] or [num_tokens, num_heads, head_dim]; "
                         f"got shape {tuple(x.shape)}")
    _check_float("x", x)
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"weight must be [{x.shape[-1]}] (x's last dim); got {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight dtype {weight.dtype} must match x's {x.dtype}; load the norm weights "
                         f"in the activation dtype")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual must match x: {tuple(x.shape)} {x.dtype}; got "
                         f"{tuple(residual.shape)} {residual.dtype}")


def _row_strides(t: torch.Tensor) -> tuple[int, int]:
    """(outer, inner) strides of the rows of a 2-D [T, H] or 3-D [T, heads, D] tensor."""
    return (t.stride(0), 0) if t.dim() == 2 else (t.stride(0), t.stride(1))


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm, fused with the residual add before it when `residual` is given (Triton; graph-safe)."""
    _check_rms_norm_args(x, weight, residual)
    tensors = {"x": x, "weight": weight} | ({} if residual is None else {"residual": residual})
    _check_last_dim_contiguous(**tensors)
    _check_same_device("rms_norm", **tensors)
    require_triton_device(x, "aisp.kernels.fused_elementwise.rms_norm_ref")
    normed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = None if residual is None else torch.empty_like(normed)
    hidden = x.shape[-1]
    num_inner = 1 if x.dim() == 2 else x.shape[1]
    num_rows = x.shape[0] * num_inner
    if num_rows:
        block = triton.next_power_of_2(hidden)
        res = x if residual is None else residual  # unused pointer when there is no residual
        _rms_norm_kernel[(num_rows,)](
            x, res, weight, normed, normed if summed is None else summed,
            *_row_strides(x), *_row_strides(res), eps,
            NUM_INNER=num_inner, H=hidden, BLOCK=block, HAS_RESIDUAL=residual is not None,
            num_warps=_num_warps(block),
        )
    return normed if summed is None else (normed, summed)


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch twin of rms_norm: HF's LlamaRMSNorm, after `x + residual` when one is given."""
    _check_rms_norm_args(x, weight, residual)
    if residual is not None:
        x = x + residual
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    normed = weight * xf.to(x.dtype)
    return normed if residual is None else (normed, x)


# -- rotary position embedding -------------------------------------------------------------------

@triton.jit
def _rotate_heads(
    base_ptr, stride_head, cos1, cos2, sin1, sin2,
    NUM_HEADS: tl.constexpr, HEADS_P2: tl.constexpr, HALF: tl.constexpr, HALF_P2: tl.constexpr,
):
    """Rotate one token's NUM_HEADS heads in place: a [HEADS_P2, HALF_P2] tile per half."""
    heads = tl.arange(0, HEADS_P2)[:, None]
    dims = tl.arange(0, HALF_P2)[None, :]
    mask = (heads < NUM_HEADS) & (dims < HALF)
    ptr1 = base_ptr + heads * stride_head + dims
    ptr2 = ptr1 + HALF
    x1 = tl.load(ptr1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr2, mask=mask, other=0.0).to(tl.float32)
    # x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1]: term by term as torch does.
    out1 = x1 * cos1 + (-x2) * sin1
    out2 = x2 * cos2 + x1 * sin2
    dtype = base_ptr.dtype.element_ty
    tl.store(ptr1, out1.to(dtype), mask=mask)
    tl.store(ptr2, out2.to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cache_ptr, pos_ptr,
    stride_q_tok, stride_q_head, stride_k_tok, stride_k_head, stride_cache_pos,
    NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr, Q_HEADS_P2: tl.constexpr,
    K_HEADS_P2: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, HALF_P2: tl.constexpr,
):
    """One program per token: look up its cos/sin row once, rotate all its q heads and k heads."""
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_P2)[None, :]
    dmask = dims < HALF
    # The cache row is [cos (D) | sin (D)]; each half of a head has its own D/2 slice of both.
    cos_row = cache_ptr + pos * stride_cache_pos
    sin_row = cos_row + HEAD_DIM
    cos1 = tl.load(cos_row + dims, mask=dmask, other=0.0)
    cos2 = tl.load(cos_row + HALF + dims, mask=dmask, other=0.0)
    sin1 = tl.load(sin_row + dims, mask=dmask, other=0.0)
    sin2 = tl.load(sin_row + HALF + dims, mask=dmask, other=0.0)
    _rotate_heads(q_ptr + token * stride_q_tok, stride_q_head, cos1, cos2, sin1, sin2,
                  NUM_Q_HEADS, Q_HEADS_P2, HALF, HALF_P2)
    _rotate_heads(k_ptr + token * stride_k_tok, stride_k_head, cos1, cos2, sin1, sin2,
                  NUM_K_HEADS, K_HEADS_P2, HALF, HALF_P2)


def _check_rotary_args(q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
                       positions: torch.Tensor) -> None:
    """Shapes and dtypes from host metadata only (graph-capture safe); shared by kernel and twin."""
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must be [num_tokens, num_heads, head_dim] with the same num_tokens and "
                         f"head_dim; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    head_dim = q.shape[2]
    if head_dim % 2:
        raise ValueError(f"rotary head_dim must be even; got {head_dim}")
    _check_float("q", q)
    if k.dtype != q.dtype:
        raise ValueError(f"q and k must share a dtype; got q {q.dtype}, k {k.dtype}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != 2 * head_dim:
        raise ValueError(f"cos_sin_cache must be [max_positions, 2 * head_dim = {2 * head_dim}] (cos | sin); "
                         f"got {tuple(cos_sin_cache.shape)}; build it with the model's head_dim")
    if cos_sin_cache.dtype != torch.float32:
        raise ValueError(f"cos_sin_cache must be float32 (a 16-bit table loses angle precision); "
                         f"got {cos_sin_cache.dtype}")
    if positions.shape != (q.shape[0],) or positions.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"positions must be int64 (or int32) [{q.shape[0]}], one per token; got "
                         f"{positions.dtype} {tuple(positions.shape)}")


def rotary_(q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
            positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of q and k in place, one launch for both (Triton; graph-safe). Returns (q, k)."""
    _check_rotary_args(q, k, cos_sin_cache, positions)
    _check_last_dim_contiguous(q=q, k=k, cos_sin_cache=cos_sin_cache)
    _check_same_device("rotary_", q=q, k=k, cos_sin_cache=cos_sin_cache, positions=positions)
    require_triton_device(q, "aisp.kernels.fused_elementwise.rotary_ref")
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    if num_tokens == 0:
        return q, k
    q_heads_p2 = triton.next_power_of_2(num_q_heads)
    half_p2 = triton.next_power_of_2(head_dim // 2)
    _rotary_kernel[(num_tokens,)](
        q, k, cos_sin_cache, positions,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        NUM_Q_HEADS=num_q_heads, NUM_K_HEADS=num_k_heads, Q_HEADS_P2=q_heads_p2,
        K_HEADS_P2=triton.next_power_of_2(num_k_heads), HEAD_DIM=head_dim, HALF=head_dim // 2,
        HALF_P2=half_p2, num_warps=_num_warps(q_heads_p2 * half_p2, most=4),
        enable_fp_fusion=False,  # torch rounds each mul and add: an FMA would round once
    )
    return q, k


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dim: the rotation partner of HF's non-interleaved layout."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def gather_cos_sin(cos_sin_cache: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos and sin [num_tokens, 1, head_dim] for `positions`, broadcasting over heads."""
    cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
    return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated by per-token cos/sin [T, 1, D]; float32 math, result (new) in x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def rotary_ref(q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch twin of rotary_; returns NEW rotated tensors and leaves q and k as they were."""
    _check_rotary_args(q, k, cos_sin_cache, positions)
    cos, sin = gather_cos_sin(cos_sin_cache, positions)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


# -- SiLU-gated product --------------------------------------------------------------------------

@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr, out_ptr, stride_in_tok, stride_out_tok,
    INTERMEDIATE: tl.constexpr, BLOCK: tl.constexpr, LIBDEVICE_EXP: tl.constexpr,
):
    """One program per (token, BLOCK-column tile) of the output."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE
    dtype = out_ptr.dtype.element_ty
    row = gate_up_ptr + token * stride_in_tok
    gate = tl.load(row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(row + INTERMEDIATE + cols, mask=mask, other=0.0).to(tl.float32)
    # torch's silu is gate / (1 + expf(-gate)) in float32; tl.exp is a faster ex2 approximation
    # that differs in the last bits, so compiled kernels call libdevice's expf (same as torch's).
    if LIBDEVICE_EXP:
        exp_neg = libdevice.exp(-gate)
    else:
        exp_neg = tl.exp(-gate)
    # F.silu rounds to the dtype, then `* up` multiplies in float32 and rounds again.
    silu = tl.math.div_rn(gate, 1.0 + exp_neg).to(dtype).to(tl.float32)
    tl.store(out_ptr + token * stride_out_tok + cols, (silu * up).to(dtype), mask=mask)


def _check_silu_and_mul_args(gate_up: torch.Tensor) -> None:
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"gate_up must be [num_tokens, 2 * intermediate] ([gate | up] rows); got "
                         f"{tuple(gate_up.shape)}")
    _check_float("gate_up", gate_up)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of a fused [gate | up] projection output (Triton; graph-safe)."""
    _check_silu_and_mul_args(gate_up)
    _check_last_dim_contiguous(gate_up=gate_up)
    require_triton_device(gate_up, "aisp.kernels.fused_elementwise.silu_and_mul_ref")
    num_tokens, width = gate_up.shape
    intermediate = width // 2
    out = torch.empty(num_tokens, intermediate, dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens == 0 or intermediate == 0:
        return out
    block = min(_SILU_BLOCK, triton.next_power_of_2(intermediate))
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(intermediate, block))](
        gate_up, out, gate_up.stride(0), out.stride(0),
        INTERMEDIATE=intermediate, BLOCK=block, LIBDEVICE_EXP=not _INTERPRETED,
        num_warps=_num_warps(block, most=4),
        enable_fp_fusion=False,  # keep torch's separate roundings
    )
    return out


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """Plain-torch twin of silu_and_mul: F.silu(gate) * up."""
    _check_silu_and_mul_args(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
