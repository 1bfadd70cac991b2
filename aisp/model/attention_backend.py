"""The attention seam between the model and whoever owns the KV data, plus a cache-free backend.

Contract:
- The model computes q, k, v for a flattened batch, applies q/k-norm and RoPE, then calls
  `attn.forward(layer_idx, q, k, v, sliding_window=w)` with q [num_tokens, num_q_heads, head_dim]
  and k, v [num_tokens, num_kv_heads, head_dim] and expects [num_tokens, num_q_heads, head_dim]
  back. `w` is that layer's window (ModelConfig.layer_sliding_windows), None for full causal
  attention: the window is the model's property, the backend applies it. With a window, a query
  at position p sees the keys at positions j with p - w < j <= p (w keys, itself included), as
  transformers' `sliding_window_overlay` (masking_utils.py, v5.x: `kv_idx > q_idx - sliding_window`).
- The backend owns everything else about attention: the softmax scale (head_dim ** -0.5), which
  keys each query sees (causality, sequence boundaries), and any KV cache (a paged backend writes
  k/v into its blocks by `slot_mapping` and reads the history through block tables).
- The backend is passed explicitly into every forward; nothing lives in module globals, so two
  engines (or a test and an engine) can run the same model side by side.

`VarlenCausalAttention` serves several independent sequences packed back to back with no cache
(prefill of whole prompts, reference checks, full-recompute decoding):

    cu_seqlens = [0,       3,          7, 8]
    tokens     =  a0 a1 a2 | b0 b1 b2 b3 | c0
    each query attends to its own sequence's keys at positions <= its own (and, with a
    window w, > its own - w).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from aisp.kernels.kv_cache_ops import check_sliding_window


@runtime_checkable
class AttentionBackend(Protocol):
    """Attention for one forward pass; called once per decoder layer (see module docstring)."""

    def forward(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                sliding_window: int | None = None) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] (post-RoPE) -> [T, Hq, D] in q's dtype."""
        ...


class VarlenCausalAttention:
    """Causal GQA attention over packed, independent sequences, no KV cache, via torch SDPA.

    Each sequence's queries and keys start at the same position, so SDPA's top-left-aligned
    `is_causal=True` mask is exactly the causal mask here. (It would be wrong for a query chunk
    that continues cached keys; that case belongs to a cache-aware backend.) A windowed layer
    passes an explicit boolean mask instead (never both: SDPA would not combine them).
    """

    def __init__(self, cu_seqlens: torch.Tensor | list[int]) -> None:
        bounds = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else list(cu_seqlens)
        if not bounds or bounds[0] != 0 or any(b < a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens must start at 0 and never decrease (cumulative sequence "
                             f"lengths, num_seqs + 1 entries); got {bounds}")
        # Host-side copy made once per forward pass, not once per layer: slicing by Python ints
        # avoids a device sync in each of the num_layers calls.
        self._spans = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        self.num_tokens = bounds[-1]

    @classmethod
    def from_seq_lens(cls, seq_lens: list[int]) -> VarlenCausalAttention:
        """Convenience: build from per-sequence lengths instead of cumulative offsets."""
        bounds = [0]
        for n in seq_lens:
            bounds.append(bounds[-1] + n)
        return cls(bounds)

    def forward(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                sliding_window: int | None = None) -> torch.Tensor:
        window = check_sliding_window(sliding_window)
        if q.shape[0] != self.num_tokens:
            raise ValueError(f"layer {layer_idx}: q has {q.shape[0]} tokens but cu_seqlens covers "
                             f"{self.num_tokens}; build the backend from the same batch as input_ids")
        scale = q.shape[-1] ** -0.5
        out = torch.empty_like(q)
        for start, end in self._spans:
            # [L, H, D] -> [1, H, L, D]; enable_gqa lets SDPA broadcast kv heads without copies.
            qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            gqa = ks.shape[1] != qs.shape[1]
            if window and end - start > window:
                pos = torch.arange(end - start, device=q.device)
                dist = pos[:, None] - pos[None, :]          # query position - key position
                visible = (dist >= 0) & (dist < window)    # p - window < j <= p
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible, scale=scale,
                                                   enable_gqa=gqa)
            else:  # no window, or a sequence inside it: plain causal
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                   enable_gqa=gqa)
            out[start:end] = o.squeeze(0).transpose(0, 1)
        return out
