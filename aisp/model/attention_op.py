"""Attention as one opaque op with a forward context: the cut that `torch.compile` keeps.

Contract:
- `with attention_context(backend): ...` makes `backend` (an `AttentionBackend`) the attention
  of every `aisp::attention` call made inside the block, on this thread. The caller enters it
  around one forward pass (STYLE.md #6); contexts nest, and leaving one restores the outer.
- `torch.ops.aisp.attention(q, k, v, layer_idx, sliding_window) -> out` runs
  `backend.forward(layer_idx, q, k, v, sliding_window=...)` on the context's backend and returns
  its output as a new contiguous tensor [T, Hq, D] in q's dtype. Called outside any context it
  raises, naming the fix.
- `OPAQUE_ATTENTION` is an `AttentionBackend` whose every call is that op. A model traced by
  `torch.compile` with it as its backend sees attention as a single node: Dynamo does not trace
  the backend's Python (its metadata, its host-side branches on batch composition, its KV
  cache), so a new step's metadata never causes a recompile, and the op's real body runs at
  every call of the compiled code with whatever backend the caller's context holds.

Why this is safe for the KV cache, which the op writes (the paged backend stores the step's
K/V before it attends) without declaring it: the op's output is always consumed (the layer's
o_proj reads it), so the compiler cannot drop it; the store and the read of one layer happen
inside one call, so nothing can be scheduled between them; each layer reads only the cache
slots its own call wrote or earlier steps wrote, and layer l + 1's q depends on layer l's output,
so the calls stay in layer order; no two calls have equal arguments, so none is merged with
another. The fake (meta) implementation returns `q.new_empty(q.shape)`: contiguous, like the
real output, so Inductor's view of the strides matches what runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from aisp.model.attention_backend import AttentionBackend

_BACKEND: ContextVar[AttentionBackend | None] = ContextVar("aisp_attention_backend", default=None)


@contextmanager
def attention_context(backend: AttentionBackend) -> Iterator[AttentionBackend]:
    """Make `backend` the attention of `aisp::attention` calls inside the block (see module doc)."""
    token = _BACKEND.set(backend)
    try:
        yield backend
    finally:
        _BACKEND.reset(token)


def current_backend() -> AttentionBackend:
    backend = _BACKEND.get()
    if backend is None:
        raise RuntimeError("aisp::attention was called outside an attention context; run the "
                           "forward pass inside `with attention_context(backend):` "
                           "(aisp.model.attention_op), as LlamaForCausalLM.forward does when "
                           "compiled")
    return backend


@torch.library.custom_op("aisp::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
              sliding_window: int | None) -> torch.Tensor:
    out = current_backend().forward(layer_idx, q, k, v, sliding_window=sliding_window)
    # Contiguous, as the fake implementation promises the compiler. (Backends return new
    # tensors; a custom op must never return a view of an input.)
    return out.contiguous()


@attention.register_fake
def _attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                    sliding_window: int | None) -> torch.Tensor:
    return q.new_empty(q.shape)


class OpaqueAttention:
    """An `AttentionBackend` calling `aisp::attention`: the real backend comes from the context."""

    def forward(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                sliding_window: int | None = None) -> torch.Tensor:
        return torch.ops.aisp.attention(q, k, v, layer_idx, sliding_window)


OPAQUE_ATTENTION = OpaqueAttention()
