"""The architecture registry: an HF `architectures` name -> its model class and weight mapping.

Contract:
- `MODEL_REGISTRY[name]` is a `ModelArchitecture(model_class, weights)`; `get_architecture(name)`
  returns it, or raises a ValueError naming the architecture and listing the supported ones.
  A new family is a new entry here (and its config parsing in aisp.model.config), never an
  `if` in the loader or the engine.
- A model class provides `__init__(config, dtype=None, linear_method=None)`, `empty(config,
  device, dtype, linear_method=None)`, `materialize(device)` (meta -> storage on `device`),
  `forward(input_ids, positions, attn)`, `compute_logits(hidden)`, `set_elementwise_kernels`,
  `lm_head_weight`; its parameters' owners (linears through `make_linear`) know how to take
  their checkpoint tensors (`weight_loader`).
- `WeightMapping` turns one of our parameters (and, for a fused layer, a shard id) into the HF
  checkpoint name it is stored under: HF nests the decoder body under `prefix` ("model.")
  except the names in `top_level` (lm_head); a fused layer's shards are separate HF modules
  (`stacked`: q_proj/k_proj/v_proj -> qkv_proj shards q/k/v, gate_proj/up_proj -> gate_up_proj
  shards gate/up); `ignored` are patterns of HF tensors with no parameter (derived buffers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from aisp.model.config import ARCHITECTURES
from aisp.model.linear import ShardId
from aisp.model.llama import LlamaForCausalLM


@dataclass(frozen=True)
class StackedWeight:
    """HF module `hf` (the last part of its name) is shard `shard_id` of our fused module `ours`."""

    hf: str
    ours: str
    shard_id: ShardId


@dataclass(frozen=True)
class WeightMapping:
    prefix: str = "model."
    top_level: tuple[str, ...] = ("lm_head.",)
    stacked: tuple[StackedWeight, ...] = ()
    ignored: tuple[str, ...] = ()  # regexes (fullmatch) of HF names that are skipped

    def hf_name(self, module_name: str, param_name: str, shard_id: ShardId = None) -> str:
        """Our module path + parameter (+ shard) -> the HF tensor name."""
        if shard_id is not None:
            parent, _, leaf = module_name.rpartition(".")
            hf_leaf = next((s.hf for s in self.stacked if s.ours == leaf and s.shard_id == shard_id), None)
            if hf_leaf is None:
                raise KeyError(f"no HF name for shard {shard_id!r} of {module_name}: add a StackedWeight")
            module_name = f"{parent}.{hf_leaf}" if parent else hf_leaf
        name = f"{module_name}.{param_name}"
        return name if name.startswith(self.top_level) else self.prefix + name

    def is_ignored(self, hf_name: str) -> bool:
        return any(re.fullmatch(p, hf_name) for p in self.ignored)


# Llama, Mistral, Qwen2 and Qwen3 checkpoints share these names (Qwen3 adds q_norm/k_norm, which
# map one to one; biases map like weights).
LLAMA_WEIGHTS = WeightMapping(
    stacked=(StackedWeight("q_proj", "qkv_proj", "q"), StackedWeight("k_proj", "qkv_proj", "k"),
             StackedWeight("v_proj", "qkv_proj", "v"),
             StackedWeight("gate_proj", "gate_up_proj", "gate"),
             StackedWeight("up_proj", "gate_up_proj", "up")),
    # Old Llama checkpoints saved this buffer; it is recomputed from config.json.
    ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
)


@dataclass(frozen=True)
class ModelArchitecture:
    model_class: type[nn.Module]
    weights: WeightMapping


MODEL_REGISTRY: dict[str, ModelArchitecture] = {
    "LlamaForCausalLM": ModelArchitecture(LlamaForCausalLM, LLAMA_WEIGHTS),
    "MistralForCausalLM": ModelArchitecture(LlamaForCausalLM, LLAMA_WEIGHTS),
    "Qwen2ForCausalLM": ModelArchitecture(LlamaForCausalLM, LLAMA_WEIGHTS),
    "Qwen3ForCausalLM": ModelArchitecture(LlamaForCausalLM, LLAMA_WEIGHTS),
}
# config.py parses exactly the families registered here (it cannot import the models).
assert set(MODEL_REGISTRY) == set(ARCHITECTURES), "registry and config.ARCHITECTURES disagree"


def get_architecture(name: str) -> ModelArchitecture:
    """The registry entry for HF architecture `name`, or an error listing the supported ones."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"architecture {name!r} has no model here; supported: "
                         f"{', '.join(MODEL_REGISTRY)} (a new family is a new MODEL_REGISTRY entry "
                         f"in aisp/model/registry.py)")
    return MODEL_REGISTRY[name]
