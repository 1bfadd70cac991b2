"""Rotary position embedding (RoPE) for flattened batches, HF "rotate_half" convention.

Contract:
- `rope_inv_freq(head_dim, theta, scaling)` returns the per-pair inverse frequencies in float32,
  with Llama-3.1 frequency scaling when `scaling` is given (same math as transformers'
  `_compute_llama3_parameters`, so HF checkpoints reproduce).
- `RotaryEmbedding` holds one cos|sin cache of shape [max_positions, 2 * head_dim] in float32 (a
  non-persistent buffer: derived from config, never loaded from or saved to a checkpoint).
- `RotaryEmbedding.for_positions(positions)` is called once per forward and returns
  `rope(q, k) -> (q, k)` for every layer, rotating q [num_tokens, num_q_heads, head_dim] and
  k [num_tokens, num_kv_heads, head_dim] by each token's own position (1-D `positions`, one per
  flattened token) in float32, results in the input dtype. `elementwise_kernels` picks how:
  "torch" gathers cos/sin once there and returns new tensors (`apply_rotary`); "triton" rotates
  q and k in place from the whole cache, one launch per layer (`rotary_`). `forward(positions,
  q, k)` is the same for a single call. The formulas live in aisp.kernels.fused_elementwise.
- The halves layout is non-interleaved: dimension i pairs with i + head_dim/2 (HF's rotate_half),
  not (2i, 2i+1) as in Meta's original checkpoints; HF-converted weights assume this layout.
- Positions are not range-checked on the forward path (that would cost a device sync per step);
  callers keep positions below `max_positions` (the engine checks prompt lengths up front).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from aisp.kernels.fused_elementwise import apply_rotary, gather_cos_sin, rotary_
from aisp.model.config import RopeScaling

# What `RotaryEmbedding.for_positions` returns: (q, k) -> rotated (q, k) for one forward's positions.
Rope = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in float32, llama3-scaled when `scaling` is set."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    if scaling is None:
        return inv_freq
    # Llama 3.1: wavelengths shorter than original_len/high_freq_factor keep their frequency,
    # those longer than original_len/low_freq_factor are divided by `factor`, and the band in
    # between is interpolated linearly in original_len/wavelength.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin cache for positions [0, max_positions) and its application to q and k."""

    cos_sin_cache: torch.Tensor
    elementwise_kernels: str = "torch"  # or "triton"; aisp.model.layers.set_elementwise_kernels sets it

    def __init__(self, head_dim: int, max_positions: int, theta: float,
                 scaling: RopeScaling | None = None) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even; got {head_dim}")
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.theta = theta
        self.scaling = scaling
        # Built on the default device (a `with torch.device(...)` context puts it on the target).
        self.register_buffer("cos_sin_cache", self._compute_cache(None), persistent=False)

    def _compute_cache(self, device: torch.device | str | None) -> torch.Tensor:
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling, device=device)
        t = torch.arange(self.max_positions, dtype=torch.float32, device=inv_freq.device)
        freqs = torch.outer(t, inv_freq)  # [max_positions, head_dim // 2]
        # Both halves of a head share a frequency (rotate_half layout); store cos and sin at full
        # head_dim so a lookup is one gather with no per-layer concatenation.
        emb = torch.cat((freqs, freqs), dim=-1)
        return torch.cat((emb.cos(), emb.sin()), dim=-1)  # [max_positions, 2 * head_dim]

    def reset_cache(self) -> None:
        """Recompute the cache in place on its current device (after `to_empty` left it garbage)."""
        self.cos_sin_cache = self._compute_cache(self.cos_sin_cache.device)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """Keep the cache float32 through `model.to(bfloat16)`, which casts every floating buffer.

        A bf16 cos/sin table loses about three digits of angle, visible as drift at long
        positions; recomputing in float32 on the new device keeps it exact.
        """
        super()._apply(fn, recurse)
        if self.cos_sin_cache.dtype != torch.float32 and self.cos_sin_cache.device.type != "meta":
            self.reset_cache()
        return self

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and sin [num_tokens, 1, head_dim] for `positions`; look up once per forward."""
        return gather_cos_sin(self.cos_sin_cache, positions)

    def for_positions(self, positions: torch.Tensor) -> Rope:
        """`rope(q, k) -> (q, k)` at `positions`, built once per forward and applied in every layer.

        The torch path gathers cos/sin here, once, and returns new tensors; the Triton path keeps
        the whole cache and the positions and rotates q and k in place (their buffer, usually the
        fused qkv output, is overwritten).
        """
        if self.elementwise_kernels == "triton":
            cache = self.cos_sin_cache
            return lambda q, k: rotary_(q, k, cache, positions)
        cos, sin = self.cos_sin(positions)
        return lambda q, k: (apply_rotary(q, cos, sin), apply_rotary(k, cos, sin))

    def forward(self, positions: torch.Tensor, q: torch.Tensor,
                k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.for_positions(positions)(q, k)
