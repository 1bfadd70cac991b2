"""ModelConfig parsing: both rope layouts, round trips through transformers, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from aisp.model import PRESETS, LlamaForCausalLM, ModelConfig, RopeScaling

# meta-llama/Llama-3.2-1B config.json as published on the Hub (transformers 4 layout).
HUB_LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
}


def tf5_layout(hub: dict) -> dict:
    """The same config as transformers 5 writes it: one rope_parameters dict, `dtype`."""
    d = {k: v for k, v in hub.items() if k not in ("rope_scaling", "rope_theta", "torch_dtype")}
    d["rope_parameters"] = {**hub["rope_scaling"], "rope_theta": hub["rope_theta"]}
    d["dtype"] = hub["torch_dtype"]
    return d


def test_both_rope_layouts_parse_to_the_same_config() -> None:
    hub = ModelConfig.from_hf(HUB_LLAMA_32_1B)
    tf5 = ModelConfig.from_hf(tf5_layout(HUB_LLAMA_32_1B))
    assert hub == tf5
    assert hub.rope_theta == 500000.0
    assert hub.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert hub.eos_token_ids == (128001,) and hub.dtype == "bfloat16" and hub.tie_word_embeddings


def test_transformers_reading_of_a_hub_config_parses_the_same() -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(**HUB_LLAMA_32_1B)
    assert ModelConfig.from_hf(json.loads(hf.to_json_string())) == ModelConfig.from_hf(HUB_LLAMA_32_1B)


def test_llama_preset_matches_the_published_config_except_special_ids() -> None:
    hub = ModelConfig.from_hf(HUB_LLAMA_32_1B)
    assert PRESETS["llama-3.2-1b"] == hub.replace(bos_token_id=256, eos_token_ids=(257,), pad_token_id=258)


def test_plain_rope_and_eos_list() -> None:
    d = {**tf5_layout(HUB_LLAMA_32_1B), "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
         "eos_token_id": [128001, 128009]}
    c = ModelConfig.from_hf(d)
    assert c.rope_scaling is None and c.rope_theta == 1e6 and c.eos_token_ids == (128001, 128009)


@pytest.mark.parametrize("name", list(PRESETS))
def test_to_hf_round_trips_through_transformers(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    config = PRESETS[name]
    d = config.to_hf()
    assert ModelConfig.from_hf(d) == config
    hf = transformers.AutoConfig.for_model(**d)
    assert type(hf).__name__.lower().startswith(config.model_type)
    assert ModelConfig.from_hf(json.loads(hf.to_json_string())) == config


def test_qwen2_always_biases_qkv_but_not_o() -> None:
    d = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1e6}
    c = ModelConfig.from_hf(d)
    assert c.attention_bias and not c.o_proj_bias and not c.qk_norm and c.head_dim == 8


MISTRAL_V01_STYLE = {"architectures": ["MistralForCausalLM"], "vocab_size": 64, "hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 512, "sliding_window": 16}


def test_sliding_window_no_longer_caps_the_context() -> None:
    # Mistral-v0.1 style: a 16-token window, 512 positions. The window is attention's business.
    c = ModelConfig.from_hf(MISTRAL_V01_STYLE)
    assert c.max_model_len == 512
    assert c.sliding_window == 16 and c.layer_sliding_windows == (16, 16)
    unwindowed = ModelConfig.from_hf({**MISTRAL_V01_STYLE, "sliding_window": None})
    assert unwindowed.layer_sliding_windows == (None, None)
    no_key = {k: v for k, v in MISTRAL_V01_STYLE.items() if k != "sliding_window"}
    assert ModelConfig.from_hf(no_key).sliding_window == 4096  # MistralConfig's default


def test_sliding_window_engine_context_is_the_full_one(tmp_path) -> None:
    # Before: "exceeds the model's context of 16 tokens" for any longer prompt.
    from aisp.engine.config import EngineConfig
    from aisp.engine.engine import LLMEngine
    from aisp.engine.sampling_params import SamplingParams
    from aisp.model import save_synthetic

    config = ModelConfig.from_hf({**MISTRAL_V01_STYLE, "vocab_size": 512, "dtype": "float32"})
    save_synthetic(config, tmp_path)
    engine = LLMEngine(EngineConfig(model=str(tmp_path), device="cpu", dtype="float32"))
    assert engine.max_model_len == 512
    assert [layer.self_attn.sliding_window for layer in engine.model.layers] == [16, 16]
    out = engine.generate([list(range(3, 43))], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    assert len(out[0].output_token_ids) == 2  # a 40-token prompt, past the window, runs


@pytest.mark.parametrize("family", ["Qwen2ForCausalLM", "Qwen3ForCausalLM"])
def test_qwen_windows_the_layers_transformers_windows(family: str) -> None:
    transformers = pytest.importorskip("transformers")
    base = {"architectures": [family], "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
            "max_position_embeddings": 512, "sliding_window": 8}
    cases = [
        ({}, (None,) * 4),                                           # use_sliding_window off
        ({"use_sliding_window": True, "max_window_layers": 28}, (None,) * 4),   # default: none >= 28
        ({"use_sliding_window": True, "max_window_layers": 1}, (None, 8, 8, 8)),
        ({"use_sliding_window": True, "max_window_layers": 0}, (8,) * 4),
        ({"use_sliding_window": True, "layer_types": ["sliding_attention", "full_attention"] * 2},
         (8, None, 8, None)),
    ]
    hf_class = getattr(transformers, family.replace("ForCausalLM", "Config"))
    for change, want in cases:
        d = {**base, **change}
        c = ModelConfig.from_hf(d)
        assert c.layer_sliding_windows == want, change
        assert c.max_model_len == 512
        # transformers' own reading of the same dict windows the same layers with the same size
        hf = hf_class(**{k: v for k, v in d.items() if k != "architectures"})
        hf_windows = tuple(hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types)
        assert hf_windows == want, change
        # and our config survives the trip through transformers' config class
        again = ModelConfig.from_hf(json.loads(hf_class(**c.to_hf()).to_json_string()))
        assert again == c, change


@pytest.mark.parametrize("arch, change, words", [
    ("Qwen2ForCausalLM", {"layer_types": ["sliding_attention", "full_attention"]}, "use_sliding_window"),
    ("Qwen3ForCausalLM", {"use_sliding_window": True, "layer_types": ["full_attention"]},
     "layer_types must hold"),
    ("Qwen2ForCausalLM", {"use_sliding_window": True, "layer_types": ["chunked_attention"] * 2},
     "layer_types must hold"),
    ("MistralForCausalLM", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
])
def test_window_configs_that_cannot_be_honoured_name_the_field(arch: str, change: dict, words: str) -> None:
    d = {"architectures": [arch], "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "sliding_window": 8, **change}
    with pytest.raises(ValueError, match=words):
        ModelConfig.from_hf(d)


def test_window_fields_are_validated_at_construction() -> None:
    base = ModelConfig.from_hf({**MISTRAL_V01_STYLE, "architectures": ["Qwen2ForCausalLM"],
                                "use_sliding_window": True, "max_window_layers": 1})
    assert base.layer_types == ("full_attention", "sliding_attention")
    with pytest.raises(ValueError, match="sliding_window must be a positive int"):
        base.replace(sliding_window=0)
    with pytest.raises(ValueError, match="sliding_window is None"):
        base.replace(sliding_window=None)
    with pytest.raises(ValueError, match="LlamaForCausalLM has no sliding-window"):
        ModelConfig.from_hf(HUB_LLAMA_32_1B).replace(sliding_window=16)
    with pytest.raises(ValueError, match="leave layer_types None"):
        ModelConfig.from_hf(MISTRAL_V01_STYLE).replace(layer_types=("full_attention", "sliding_attention"))


def test_unsupported_architecture_names_it_and_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as e:
        ModelConfig.from_hf({**HUB_LLAMA_32_1B, "architectures": ["GPT2LMHeadModel"]})
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert arch in str(e.value)


@pytest.mark.parametrize("change, words", [
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
    ({"rope_theta": 10000.0}, "disagree"),  # tf5 dict says 500000
    ({"num_key_value_heads": 5}, "multiple of num_key_value_heads (5)"),
])
def test_config_errors_name_the_value(change: dict, words: str) -> None:
    d = {**tf5_layout(HUB_LLAMA_32_1B), **change}
    if "rope_scaling" in change:
        del d["rope_parameters"]
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig.from_hf(d)


@pytest.mark.parametrize("name, published", [
    ("llama-3.2-1b", 1_235_814_400), ("llama-3-8b", 8_030_261_248), ("qwen3-0.6b", 596_049_920)])
def test_preset_parameter_counts_match_the_published_models(name: str, published: int) -> None:
    config = PRESETS[name]
    assert config.num_params() == published
    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == published
