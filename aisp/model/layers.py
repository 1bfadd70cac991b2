"""The layers every decoder family here is built from, in one place.

Contract:
- Linear: `make_linear` (aisp.model.linear) is the only way to build a matmul layer; it takes a
  linear method (unquantized by default; FP8 and column/row-parallel next).
- `RMSNorm(dim, eps, dtype)`: `norm(x)` -> normed; `norm(x, residual)` -> (normed, x + residual),
  the add fused into the norm. Computed in float32 and cast back before the weight, as HF's
  LlamaRMSNorm.
- `SiluAndMul()`: [T, 2I] rows [gate | up] -> silu(gate) * up [T, I].
- `VocabEmbedding(vocab, hidden, dtype)`: token ids -> rows of `weight` [vocab, hidden].
- `LMHead(hidden, vocab, dtype)`: the untied output matrix `weight` [vocab, hidden]; a tied model
  has none and reads the embedding's weight (LlamaForCausalLM.lm_head_weight). It is not built
  through `make_linear`: its weight has the embedding's layout (vocab rows), so it stays
  unquantized and, under tensor parallelism, splits by vocabulary as the embedding does.
- Rotary: `RotaryEmbedding` and the `Rope` closure type (aisp.model.rope), re-exported here.
- The elementwise switch: a layer that can run either a fused Triton kernel or its plain-torch
  twin (aisp.kernels.fused_elementwise) declares a class attribute `elementwise_kernels =
  "torch"` and reads it in forward; `set_elementwise_kernels(root, kernels)` sets it on every
  such module under `root` at once (the one way to switch; LlamaForCausalLM's method calls it).
  "torch" is HF's math bit for bit; "triton" the fused kernels (CUDA, or the interpreter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aisp.kernels.fused_elementwise import rms_norm, rms_norm_ref, silu_and_mul, silu_and_mul_ref
from aisp.model.linear import (Linear, LinearMethod, ParamLayout, UnquantizedLinearMethod,
                               default_weight_loader, make_linear, process_weights_after_loading)
from aisp.model.rope import Rope, RotaryEmbedding

ELEMENTWISE_KERNELS = ("torch", "triton")

__all__ = [
    "ELEMENTWISE_KERNELS", "LMHead", "Linear", "LinearMethod", "ParamLayout", "RMSNorm", "Rope",
    "RotaryEmbedding", "SiluAndMul", "UnquantizedLinearMethod", "VocabEmbedding",
    "default_weight_loader", "make_linear", "process_weights_after_loading",
    "set_elementwise_kernels",
]


def set_elementwise_kernels(root: nn.Module, kernels: str) -> None:
    """Set `elementwise_kernels` on every module under `root` (itself included) that declares it."""
    if kernels not in ELEMENTWISE_KERNELS:
        raise ValueError(f"elementwise kernels {kernels!r} unknown; choose one of "
                         f"{', '.join(ELEMENTWISE_KERNELS)}")
    for module in root.modules():
        if hasattr(module, "elementwise_kernels"):
            module.elementwise_kernels = kernels


class RMSNorm(nn.Module):
    """RMSNorm in float32, cast back before the weight (HF's LlamaRMSNorm); see the module docstring."""

    elementwise_kernels: str = "torch"  # or "triton": set_elementwise_kernels sets it

    def __init__(self, dim: int, eps: float, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        norm = rms_norm if self.elementwise_kernels == "triton" else rms_norm_ref
        return norm(x, self.weight, self.eps, residual)


class SiluAndMul(nn.Module):
    """The gated MLP's activation: [T, 2I] rows [gate | up] -> silu(gate) * up."""

    elementwise_kernels: str = "torch"  # or "triton": set_elementwise_kernels sets it

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        act = silu_and_mul if self.elementwise_kernels == "triton" else silu_and_mul_ref
        return act(gate_up)


class VocabEmbedding(nn.Module):
    """Token ids -> rows of `weight` [vocab_size, hidden_size] (HF's nn.Embedding, no padding idx)."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype))
        nn.init.normal_(self.weight)  # nn.Embedding's init, for models built without a checkpoint

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.vocab_size}, {self.hidden_size}"


class LMHead(nn.Module):
    """The untied output projection `weight` [vocab_size, hidden_size]; logits = hidden @ weight^T."""

    def __init__(self, hidden_size: int, vocab_size: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype))
        nn.init.uniform_(self.weight, -hidden_size ** -0.5, hidden_size ** -0.5)  # nn.Linear's
