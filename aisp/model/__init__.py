"""Llama-family decoders (Llama, Mistral, Qwen2, Qwen3): config, shared layers, the architecture
registry, loading, presets, tokenizers.

The model runs a flattened batch and takes its attention as an explicit `AttentionBackend`, so the
engine's paged backend and the cache-free `VarlenCausalAttention` drive the same module.
"""

from aisp.model.attention_backend import AttentionBackend, VarlenCausalAttention
from aisp.model.config import ModelConfig, RopeScaling
from aisp.model.llama import LlamaForCausalLM
from aisp.model.loader import hf_state_dict, load_model
from aisp.model.presets import PRESETS, ModelSource, build_synthetic, resolve_model, save_synthetic
from aisp.model.registry import MODEL_REGISTRY, get_architecture
from aisp.model.tokenizer import HFTokenizer, Tokenizer, byte_tokenizer, load_tokenizer

__all__ = [
    "AttentionBackend", "VarlenCausalAttention", "ModelConfig", "RopeScaling", "LlamaForCausalLM",
    "hf_state_dict", "load_model", "PRESETS", "ModelSource", "build_synthetic", "resolve_model",
    "save_synthetic", "MODEL_REGISTRY", "get_architecture", "HFTokenizer", "Tokenizer",
    "byte_tokenizer", "load_tokenizer",
]
