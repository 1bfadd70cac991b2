"""Model variants to compare for accuracy: one model, one engine switch changed per entry.

A `Variant` names a way to load the same model (a preset's seeded random weights, or a model
folder's checkpoint) so that two variants differ only in that switch. Today's entries are the
compute dtypes `float32`, `bfloat16` and `float16`. The engine's FP8 linear methods
(`fp8-per-channel`, `fp8-per-tensor`) are the next entries: each is one more
`register_variant(Variant(...))` whose `load` builds the model with that linear method; nothing
that compares variants branches on a name (STYLE.md #20).

For a preset, every dtype variant is built in float32 from the seed and then cast, so the
variants share one set of weights (random init drawn directly in bfloat16 would be other
numbers); a folder's checkpoint is loaded straight into the dtype, as the engine loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from aisp.model.presets import ModelSource

Loader = Callable[[ModelSource, torch.device, int], Any]   # (source, device, seed) -> model


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    load: Loader


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name!r} is already registered")
    VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The registered variant, or an error that lists the valid names."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; variants: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def _dtype_loader(dtype: torch.dtype) -> Loader:
    def load(source: ModelSource, device: torch.device, seed: int) -> Any:
        if source.path is not None:
            model, _ = source.load(device, dtype)
            return model
        model, _ = source.load(device, torch.float32, seed)
        return model.to(dtype)       # the rope cache stays float32 (RotaryEmbedding._apply)
    return load


for _name, _dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16),
                      ("float16", torch.float16)):
    register_variant(Variant(_name, f"weights and activations in {_name}", _dtype_loader(_dtype)))
