"""`KVCache`: the preallocated paged K and V tensors, and how many blocks fit in a memory budget.

Contract:
- Per layer l, `k_cache[l]` and `v_cache[l]` are `[num_blocks, block_size, num_kv_heads, head_dim]`
  on one device and dtype: the layout `aisp.kernels.kv_cache_ops.store_kv` writes and the paged
  attention kernels read. Flat slot s is `[s // block_size, s % block_size]`, the same slot the
  BlockManager's `slot_mapping` computes.
- All layers live in ONE allocation (`[2, num_layers, num_blocks, ...]`) viewed per layer, so the
  cache is one contiguous region: one malloc, and a tensor whose address never changes (a CUDA
  graph captured over it stays valid).
- The memory is `torch.empty`: it is a cache, and every slot is written (store_kv) before it is
  read (attention reads only positions < num_computed_tokens + new tokens of this step).
- Sizing: an explicit `num_blocks`, or `KVCache.from_memory`, which takes `memory_fraction` of the
  device's FREE memory (`torch.cuda.mem_get_info`; call it after the weights are loaded and the
  activation peak is measured, so "free" already excludes them) or, on the CPU, an explicit
  `budget_bytes`. Either way it raises a ValueError when the budget cannot hold one request of
  `max_model_len` tokens, saying how many bytes were available and how many are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["KVCache", "KVCacheSpec", "kv_cache_bytes_per_block"]


def kv_cache_bytes_per_block(
    num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> int:
    """Bytes one block costs across all layers: K and V, block_size tokens, every kv head."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * dtype.itemsize


@dataclass(frozen=True)
class KVCacheSpec:
    """Shape and dtype of the paged cache; everything but the number of blocks."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype = torch.float16

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KVCacheSpec.{name} is {value!r}; it must be a positive integer")
        if not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"KVCacheSpec.dtype is {self.dtype!r}; pass a torch.dtype such as torch.float16")

    @property
    def bytes_per_block(self) -> int:
        return kv_cache_bytes_per_block(self.num_layers, self.num_kv_heads, self.head_dim, self.block_size, self.dtype)

    @property
    def bytes_per_token(self) -> int:
        return self.bytes_per_block // self.block_size

    def num_blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_blocks_for_budget(self, budget_bytes: int, max_model_len: int) -> int:
        """Blocks that fit in `budget_bytes`; ValueError if not even one max-length request fits."""
        if max_model_len < 1:
            raise ValueError(f"max_model_len is {max_model_len!r}; it must be a positive number of tokens")
        num_blocks = max(0, int(budget_bytes)) // self.bytes_per_block
        need = self.num_blocks_for_tokens(max_model_len)
        if num_blocks < need:
            raise ValueError(
                f"the KV-cache budget of {_fmt_bytes(budget_bytes)} holds {num_blocks:,} blocks "
                f"({num_blocks * self.block_size:,} tokens) but one request of max_model_len="
                f"{max_model_len:,} tokens needs {need:,} blocks ({_fmt_bytes(need * self.bytes_per_block)} "
                f"at {self.bytes_per_token:,} bytes/token); raise the budget (memory_fraction / "
                f"budget_bytes), lower max_model_len, or use a smaller KV dtype"
            )
        return num_blocks


class KVCache:
    """Per-layer paged K/V tensors in one preallocated buffer."""

    def __init__(self, spec: KVCacheSpec, num_blocks: int, device: torch.device | str = "cpu") -> None:
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks is {num_blocks!r}; the KV cache needs at least one block")
        self.spec = spec
        self.num_blocks = num_blocks
        self.device = torch.device(device)
        shape = (2, spec.num_layers, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        self._buffer = torch.empty(shape, dtype=spec.dtype, device=self.device)
        # Views, not copies: kernels write through them into the one buffer.
        self.k_cache: list[torch.Tensor] = list(self._buffer[0].unbind(0))
        self.v_cache: list[torch.Tensor] = list(self._buffer[1].unbind(0))

    @classmethod
    def from_memory(
        cls,
        spec: KVCacheSpec,
        *,
        max_model_len: int,
        device: torch.device | str = "cpu",
        memory_fraction: float = 0.9,
        budget_bytes: int | None = None,
    ) -> KVCache:
        """Size the cache from a byte budget: explicit, or memory_fraction of free CUDA memory."""
        device = torch.device(device)
        if budget_bytes is None:
            if device.type != "cuda":
                raise ValueError(
                    f"cannot size the KV cache from free memory on device '{device}' (only CUDA "
                    f"reports it); pass budget_bytes=... (e.g. 1 << 30) or build KVCache(spec, num_blocks)"
                )
            if not 0.0 < memory_fraction <= 1.0:
                raise ValueError(f"memory_fraction is {memory_fraction!r}; it must lie in (0, 1]")
            free_bytes, _total = torch.cuda.mem_get_info(device)
            budget_bytes = int(free_bytes * memory_fraction)
        num_blocks = spec.num_blocks_for_budget(budget_bytes, max_model_len)
        return cls(spec, num_blocks, device)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_cache, v_cache) of one layer, each [num_blocks, block_size, num_kv_heads, head_dim]."""
        return self.k_cache[index], self.v_cache[index]

    @property
    def block_size(self) -> int:
        return self.spec.block_size

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.spec.block_size

    @property
    def nbytes(self) -> int:
        return self._buffer.numel() * self._buffer.element_size()

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"KVCache(layers={s.num_layers}, blocks={self.num_blocks}x{s.block_size}, "
            f"kv_heads={s.num_kv_heads}, head_dim={s.head_dim}, dtype={s.dtype}, "
            f"device={self.device}, {_fmt_bytes(self.nbytes)})"
        )


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
