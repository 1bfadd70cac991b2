"""Host-to-device copies that never make the host wait for the GPU.

Why: `torch.tensor(values, device="cuda")` copies from pageable memory with a blocking copy,
which synchronizes the stream: the host stalls until every kernel already queued has finished.
The engine builds each step's inputs while the previous step is still running on the GPU (async
scheduling), so one such call per step would undo the overlap. Staging through pinned memory
and copying with `non_blocking=True` queues the copy behind the running work and returns at
once; PyTorch's pinned-memory cache keeps each staging buffer alive until its copy has run, so
a buffer is never overwritten while the GPU still reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["to_device"]


def to_device(values: Sequence | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` (a list, nested lists or a CPU tensor) as a tensor on `device`, without a sync."""
    host = values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host if host.device == device else host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
