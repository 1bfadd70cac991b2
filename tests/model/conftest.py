"""Tiny HF checkpoints written by transformers itself, shared by the model tests.

Each family gets the feature that distinguishes it: Llama with llama3 rope scaling (the band
boundaries fall inside the test lengths) and attention_bias (q/k/v and o biases), Qwen2 with q/k/v bias and tied embeddings, Qwen3 with
qk-norm and head_dim 32 != hidden/heads, Mistral with head_dim 8. All weights are re-drawn after
construction (norm weights around 1, biases nonzero) so a wrong mapping of any tensor shows up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)

FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(
        **COMMON, head_dim=16, rope_theta=10_000.0, tie_word_embeddings=False, attention_bias=True,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, rope_theta=1_000_000.0, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=32, rope_theta=1_000_000.0,
                                              tie_word_embeddings=False),
    "mistral": lambda: transformers.MistralConfig(**COMMON, head_dim=8, sliding_window=None),
}
ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
        "mistral": "MistralForCausalLM"}


def build_hf_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A random float32 HF model of `family`, with every tensor re-drawn (see module docstring)."""
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    config.architectures = [ARCH[family]]
    model = getattr(transformers, ARCH[family])(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def make_hf_model():
    """`build_hf_model` for tests that need their own HF model (fixtures, not imports of conftest)."""
    return build_hf_model


@pytest.fixture(scope="session", params=list(FAMILIES))
def hf_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[str, Path, torch.nn.Module]:
    """(family, folder written by save_pretrained, the HF model itself) for each family."""
    family = request.param
    model = build_hf_model(family)
    folder = tmp_path_factory.mktemp(f"hf-{family}")
    model.save_pretrained(folder)
    return family, folder, model
