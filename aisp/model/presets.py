"""Synthetic models: real architectures and shapes with random weights, and model resolution.

Contract:
- `PRESETS` maps a name to a `ModelConfig`. `tiny` and `tiny-qwen3` run CPU tests in seconds;
  `llama-3.2-1b`, `llama-3-8b` and `qwen3-0.6b` copy the published config.json numbers of those
  models (shapes, rope theta and llama3 scaling, qk-norm, tying, context length). One deliberate
  difference: bos/eos/pad are the byte tokenizer's ids (256/257/258), because a synthetic model
  ships with the byte tokenizer and its ids must agree with it.
- `build_synthetic(preset, device, dtype, seed)` allocates the model directly on `device` in
  `dtype` (meta construction, then in-place init: an 8B model never exists in CPU float32) with
  weights ~ N(0, 0.02) and norm weights 1, which gives finite, non-degenerate logits.
- `save_synthetic(preset, out_dir, seed)` writes an HF-layout folder (config.json,
  model.safetensors under HF tensor names, tokenizer.json, tokenizer_config.json,
  generation_config.json) that both `load_model` and transformers' `from_pretrained` load.
- `resolve_model(spec)` turns a preset name or a model folder into a `ModelSource` that loads
  model and tokenizer the same way for both, so callers never branch on where a model came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from aisp.model.config import ModelConfig, RopeScaling
from aisp.model.linear import LinearMethod, process_weights_after_loading
from aisp.model.llama import LlamaForCausalLM
from aisp.model.loader import hf_state_dict, load_model
from aisp.model.registry import get_architecture
from aisp.model.tokenizer import (BYTE_BOS_ID, BYTE_EOS_ID, BYTE_PAD_ID, BYTE_VOCAB_SIZE, HFTokenizer,
                                  byte_tokenizer, load_tokenizer, save_byte_tokenizer)

INIT_STD = 0.02
_BYTE_IDS = dict(bos_token_id=BYTE_BOS_ID, eos_token_ids=(BYTE_EOS_ID,), pad_token_id=BYTE_PAD_ID)

PRESETS: dict[str, ModelConfig] = {
    # Llama with llama3 rope scaling whose original length (64) is inside the context (512), so
    # the scaled band is exercised by short tests.
    "tiny": ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64),
        max_position_embeddings=512, tie_word_embeddings=False, dtype="float32", **_BYTE_IDS),
    # Qwen3 features at CPU size: qk-norm, head_dim (32) != hidden/heads (16), tied embeddings.
    "tiny-qwen3": ModelConfig(
        architecture="Qwen3ForCausalLM", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, max_position_embeddings=512,
        tie_word_embeddings=True, qk_norm=True, dtype="float32", **_BYTE_IDS),
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=128_256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling=RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192),
        max_position_embeddings=131_072, tie_word_embeddings=True, dtype="bfloat16", **_BYTE_IDS),
    # meta-llama/Meta-Llama-3-8B
    "llama-3-8b": ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=128_256, hidden_size=4096, intermediate_size=14_336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500_000.0, max_position_embeddings=8192,
        tie_word_embeddings=False, dtype="bfloat16", **_BYTE_IDS),
    # Qwen/Qwen3-0.6B
    "qwen3-0.6b": ModelConfig(
        architecture="Qwen3ForCausalLM", vocab_size=151_936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, max_position_embeddings=40_960,
        tie_word_embeddings=True, qk_norm=True, dtype="bfloat16", **_BYTE_IDS),
}


def get_preset(name: str) -> ModelConfig:
    """The preset's config, or an error that lists the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_synthetic(preset: str | ModelConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, seed: int = 0,
                    linear_method: LinearMethod | None = None) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Random-weight model of `preset` on `device` in `dtype` (default: the preset's dtype).

    The class is the registry's for the preset's architecture; the weights are drawn as a
    checkpoint's would be loaded, then the linear methods' post-load hook runs (as in load_model).
    """
    config = get_preset(preset) if isinstance(preset, str) else preset
    model_class = get_architecture(config.architecture).model_class
    model = model_class.empty(config, device, dtype or config.torch_dtype, linear_method=linear_method)
    init_weights(model, seed)
    process_weights_after_loading(model)
    return model, config


@torch.no_grad()
def init_weights(model: LlamaForCausalLM, seed: int) -> None:
    """In place: norm weights 1, everything else (biases too, so their path is exercised) N(0, 0.02).

    The generator lives on the parameters' device, so no weight is ever staged on the host.
    """
    device = model.embed_tokens.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, INIT_STD, generator=gen)


def save_synthetic(preset: str | ModelConfig, out_dir: str | Path, seed: int = 0,
                   dtype: torch.dtype | None = None) -> Path:
    """Write an HF-layout folder for `preset` (see module docstring); returns `out_dir`.

    The weights are built on the CPU in `dtype` (default: the preset's), so saving `llama-3-8b`
    needs ~16 GB of host memory in bfloat16; the file is not sharded.
    """
    config = get_preset(preset) if isinstance(preset, str) else preset
    if config.vocab_size < BYTE_VOCAB_SIZE:
        raise ValueError(f"vocab_size {config.vocab_size} cannot hold the byte tokenizer's "
                         f"{BYTE_VOCAB_SIZE} tokens; use vocab_size >= {BYTE_VOCAB_SIZE}")
    dtype = dtype or config.torch_dtype
    if dtype != config.torch_dtype:
        config = config.replace(dtype=str(dtype).removeprefix("torch."))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = build_synthetic(config, "cpu", dtype, seed)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", config.to_hf())
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": list(config.eos_token_ids),
                  "pad_token_id": config.pad_token_id}
    _write_json(out / "generation_config.json", generation)
    save_byte_tokenizer(out, model_max_length=config.max_model_len)
    return out


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a preset (random weights) or an HF folder on disk."""

    spec: str
    config: ModelConfig
    preset: str | None = None
    path: Path | None = None

    def load(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
             seed: int = 0, linear_method: LinearMethod | None = None
             ) -> tuple[LlamaForCausalLM, ModelConfig]:
        """The model on `device` in `dtype` (default: the config's), its linears through
        `linear_method` (None: unquantized); `seed` matters only for presets."""
        if self.path is not None:
            return load_model(self.path, device, dtype, linear_method=linear_method)
        return build_synthetic(self.config, device, dtype, seed, linear_method=linear_method)

    def tokenizer(self) -> HFTokenizer:
        """The folder's tokenizer.json, or the byte tokenizer for a preset."""
        return load_tokenizer(self.path) if self.path is not None else byte_tokenizer()


def resolve_model(spec: str) -> ModelSource:
    """A preset name or a model folder (with config.json) -> `ModelSource`; anything else is an error."""
    if spec in PRESETS:
        return ModelSource(spec=spec, config=PRESETS[spec], preset=spec)
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return ModelSource(spec=spec, config=ModelConfig.from_file(path), path=path)
    what = "a folder without config.json" if path.is_dir() else "neither a preset nor an existing folder"
    raise ValueError(f"model {spec!r} is {what}; pass a preset ({', '.join(PRESETS)}) or an HF model "
                     f"folder containing config.json and *.safetensors")


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
