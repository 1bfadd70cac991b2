"""The paged attention backend the engine hands to the model for one step.

Contract (implements `aisp.model.attention_backend.AttentionBackend`):
- A step's flattened batch puts every decode token first, then the prefill chunks:

      tokens:  d0 d1 d2 | p0 p0 p0 p0 | p1 p1
               decodes    prefill chunk of request p0, then of p1
               (1 each)   (query_start_loc = [0, 4, 6] within the prefill part)

- Per layer, `forward` first writes the step's new K/V into the cache through `slot_mapping`
  (one flat slot per input token), then attends: decode queries through the paged decode kernel
  (K/V read in place, block by block), prefill queries against their whole cached sequence
  (prefix + the chunk just written) with a bottom-right causal mask.
- A windowed layer (the model passes its `sliding_window`) masks keys older than the window in
  both kernels, which skip the KV blocks wholly before it. The blocks stay allocated: nothing
  frees a request's blocks that fell out of the window (every layer would have to be windowed,
  and the prefix cache and preemption would have to know), so a windowed model holds its
  whole context's KV like any other; the window saves reads, not memory.
- `AttentionMetadata` is built once per step (plan once, run per layer: STYLE.md #5); the
  backend keeps no other state, so one model serves any number of engines.
- `kernels="triton"` uses the Triton kernels (CUDA, or the interpreter in tests); `"torch"`
  uses their plain-torch twins, which is what the engine picks on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisp.engine.kv_cache import KVCache
from aisp.kernels.kv_cache_ops import store_kv, store_kv_ref
from aisp.kernels.paged_attention import paged_decode_attention, paged_decode_attention_ref
from aisp.kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref

KERNEL_CHOICES = ("triton", "torch")


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor            # int64 [num_tokens]
    num_decode_tokens: int                # the first num_decode_tokens tokens are decodes
    decode_block_tables: torch.Tensor     # int32 [num_decodes, max_blocks]
    decode_context_lens: torch.Tensor     # int32 [num_decodes], including the new token
    prefill_block_tables: torch.Tensor    # int32 [num_prefills, max_blocks]
    prefill_query_start_loc: torch.Tensor  # int32 [num_prefills + 1], offsets in the prefill part
    prefill_seq_lens: torch.Tensor        # int32 [num_prefills], cached + new tokens
    prefill_max_query_len: int = 0        # host: the longest prefill chunk (sizes the kernel grid)

    @property
    def num_prefills(self) -> int:
        return self.prefill_seq_lens.shape[0]


class PagedAttention:
    def __init__(self, kv_cache: KVCache, metadata: AttentionMetadata, kernels: str = "triton"):
        if kernels not in KERNEL_CHOICES:
            raise ValueError(f"attention kernels '{kernels}' unknown; choose one of {KERNEL_CHOICES}")
        self.kv_cache = kv_cache
        self.meta = metadata
        triton = kernels == "triton"
        self._store = store_kv if triton else store_kv_ref
        self._decode = paged_decode_attention if triton else paged_decode_attention_ref
        self._prefill = paged_prefill_attention if triton else paged_prefill_attention_ref

    def forward(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, sliding_window: int | None = None) -> torch.Tensor:
        k_cache, v_cache = self.kv_cache.layer(layer_idx)
        m = self.meta
        self._store(k, v, k_cache, v_cache, m.slot_mapping)
        scale = q.shape[-1] ** -0.5
        nd = m.num_decode_tokens
        window = dict(sliding_window=sliding_window)
        if m.num_prefills == 0:
            return self._decode(q, k_cache, v_cache, m.decode_block_tables,
                                m.decode_context_lens, scale, **window)
        if nd == 0:
            return self._prefill(q, k_cache, v_cache, m.prefill_block_tables,
                                 m.prefill_query_start_loc, m.prefill_seq_lens, scale,
                                 m.prefill_max_query_len, **window)
        out = torch.empty_like(q)
        out[:nd] = self._decode(q[:nd], k_cache, v_cache, m.decode_block_tables,
                                m.decode_context_lens, scale, **window)
        out[nd:] = self._prefill(q[nd:], k_cache, v_cache, m.prefill_block_tables,
                                 m.prefill_query_start_loc, m.prefill_seq_lens, scale,
                                 m.prefill_max_query_len, **window)
        return out
