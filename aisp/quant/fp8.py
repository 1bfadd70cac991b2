"""FP8 (float8 e4m3) weights and activations: quantization and the FP8 linear method.

Contract:
- `quantize_fp8(x, granularity)` -> (q, scale) with q = saturate(x / scale) in float8_e4m3fn and
  scale float32 = amax / 448 over the granularity's group: "tensor" (one scale), "row" (one per
  row: a weight's output channel, or an activation's token). An all-zero group gets scale 1
  rather than 0, so dequantizing never divides by zero. `dequantize_fp8(q, scale)` is
  q.float() * scale (scale broadcast over its group).
- `Fp8LinearMethod(weights="channel"|"tensor", activations="token"|"tensor")` is a
  `LinearMethod` (aisp.model.linear) that quantizes at load: `create_weights` makes the
  unquantized weight in the model's dtype (the checkpoint's tensors load into it as before),
  `process_weights_after_loading` replaces it by float8 `weight` [N, K] and float32
  `weight_scale` ([N, 1] per channel, [] per tensor), and `apply` quantizes each call's
  activations dynamically (per token: [T, 1], or per tensor) and multiplies with
  `torch._scaled_mm(x_q, w_q^T, scale_a, scale_b, out_dtype)`, which runs FP8 arithmetic on
  sm89+ GPUs (and has a CPU kernel in torch >= 2.6). Where `_scaled_mm` cannot take the shapes
  (K or N not a multiple of 16) or the device has no FP8 GEMM, `apply` dequantizes the weight
  and runs a plain matmul instead: the first time for a layer shape it logs that it did, so a
  fallback is never mistaken for FP8 speed. Its numbers are the same up to the GEMM's rounding.
- The output's dtype is the dtype the weight had before quantization (the model's compute
  dtype); a bias is added after the GEMM in that dtype.
- Pre-quantized FP8 checkpoints (compressed-tensors `weight_scale` / `input_scale`) are not
  read yet: a model is quantized from its bf16/fp32 weights at load.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aisp.model.linear import Linear, LinearMethod, UnquantizedLinearMethod

__all__ = ["FP8_DTYPE", "FP8_MAX", "Fp8LinearMethod", "QUANTIZATIONS", "dequantize_fp8",
           "linear_method_for", "quantize_fp8"]

log = logging.getLogger(__name__)
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)   # 448
GRANULARITIES = ("tensor", "row")


def quantize_fp8(x: torch.Tensor, granularity: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """Saturating e4m3 quantization of a 2-D tensor; see the module docstring."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} unknown; choose one of "
                         f"{', '.join(GRANULARITIES)}")
    if x.dim() != 2:
        raise ValueError(f"quantize_fp8 takes a 2-D tensor; got shape {tuple(x.shape)}")
    xf = x.float()
    amax = xf.abs().amax() if granularity == "tensor" else xf.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale.to(torch.float32)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


class Fp8LinearMethod(LinearMethod):
    """FP8 weights quantized at load, FP8 activations quantized per call (module docstring)."""

    def __init__(self, weights: str = "channel", activations: str = "token") -> None:
        if weights not in ("channel", "tensor"):
            raise ValueError(f"FP8 weight scales {weights!r} unknown; choose channel or tensor")
        if activations not in ("token", "tensor"):
            raise ValueError(f"FP8 activation scales {activations!r} unknown; choose token or "
                             f"tensor")
        self.weights, self.activations = weights, activations
        self._unquantized = UnquantizedLinearMethod()
        self._fallback_logged: set[tuple[int, int, str]] = set()

    @property
    def name(self) -> str:
        return f"fp8 (weights per {self.weights}, activations per {self.activations})"

    def create_weights(self, layer: Linear, input_size_per_partition: int,
                       output_partition_sizes: Sequence[int], dtype: torch.dtype | None) -> None:
        # The checkpoint's bf16/fp32 tensors load into an ordinary weight; quantized after.
        self._unquantized.create_weights(layer, input_size_per_partition, output_partition_sizes,
                                         dtype)

    def process_weights_after_loading(self, layer: Linear) -> None:
        weight = layer.weight.detach()
        layer.out_dtype = weight.dtype
        q, scale = quantize_fp8(weight, "row" if self.weights == "channel" else "tensor")
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        out_dtype = layer.out_dtype
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        n = layer.weight.shape[0]
        w_scale = layer.weight_scale
        if self._scaled_mm_takes(x2, n):
            xq, x_scale = quantize_fp8(x2, "row" if self.activations == "token" else "tensor")
            if w_scale.dim() == 2 and x_scale.dim() == 0:   # rowwise needs both as vectors
                x_scale = x_scale.expand(x2.shape[0], 1).contiguous()
            elif w_scale.dim() == 0 and x_scale.dim() == 2:
                w_scale = w_scale.expand(n, 1).contiguous()
            y = torch._scaled_mm(xq, layer.weight.t(), scale_a=x_scale,
                                 scale_b=w_scale.reshape(1, -1).contiguous() if w_scale.dim() == 2
                                 else w_scale,
                                 out_dtype=out_dtype)
        else:
            self._say_fallback(x2, n)
            y = F.linear(x2.to(out_dtype), dequantize_fp8(layer.weight, w_scale).to(out_dtype))
        if layer.bias is not None:
            y = y + layer.bias
        return y.reshape(*lead, n)

    @staticmethod
    def _scaled_mm_takes(x: torch.Tensor, n: int) -> bool:
        k = x.shape[1]
        if k % 16 or n % 16:
            return False
        if x.device.type == "cuda":
            return torch.cuda.get_device_capability(x.device) >= (8, 9)
        return hasattr(torch, "_scaled_mm")

    def _say_fallback(self, x: torch.Tensor, n: int) -> None:
        key = (x.shape[1], n, x.device.type)
        if key not in self._fallback_logged:
            self._fallback_logged.add(key)
            log.warning("FP8 linear %d -> %d on %s: torch._scaled_mm cannot take this shape or "
                        "device; running a dequantized matmul instead (FP8 storage, not FP8 "
                        "arithmetic)", x.shape[1], n, x.device.type)


# --quantization values -> the linear method each means (None: unquantized).
QUANTIZATIONS = {
    "none": None,
    "fp8": ("channel", "token"),
    "fp8-per-channel": ("channel", "token"),
    "fp8-per-tensor": ("tensor", "tensor"),
}


def linear_method_for(quantization: str | None) -> LinearMethod | None:
    """The linear method of a `--quantization` value; unknown values list the valid ones."""
    key = quantization or "none"
    if key not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} unknown; choose one of "
                         f"{', '.join(QUANTIZATIONS)}")
    spec = QUANTIZATIONS[key]
    return None if spec is None else Fp8LinearMethod(*spec)
