"""An engine that cannot run says so at construction, naming the value, the limit and the fix:
an unknown or absent device, Triton kernels on a CPU, and a context limit (max_model_len) whose
admission errors name what set it (the KV cache, --max-model-len or the model)."""

from __future__ import annotations

import pytest
import torch

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.sampling_params import SamplingParams
from aisp.model.presets import save_synthetic


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:x", "cpu:1", "gpu"])
def test_an_unknown_device_is_refused_at_construction(device):
    with pytest.raises(ValueError, match=rf"device '{device}' is not a device aisp runs on; "
                                          r"valid: cpu, cuda, cuda:N"):
        EngineConfig(model="tiny", device=device)


def test_a_gpu_that_is_not_there_is_a_value_error_not_a_traceback():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    config = EngineConfig(model="tiny", device="cuda:1")   # the spelling is fine...
    with pytest.raises(ValueError, match="'cuda:1' was asked for, but torch sees no CUDA GPU.*use cpu"):
        LLMEngine(config)                                  # ...this machine has none


def test_triton_kernels_on_a_cpu_are_refused_before_the_weights_are_read(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    folder = save_synthetic("tiny", tmp_path / "m", seed=0)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])       # reading them would fail differently
    with pytest.raises(ValueError, match=r"attention_kernels='triton' needs a CUDA device.*on a "
                                         r"CPU use 'torch' or 'auto'.*TRITON_INTERPRET=1"):
        LLMEngine(EngineConfig(model=str(folder), device="cpu", attention_kernels="triton"))


def test_triton_on_a_cpu_under_the_interpreter_is_allowed(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    config = EngineConfig(model="tiny", device="cpu", attention_kernels="triton")
    assert config.resolve_kernels(torch.device("cpu"), head_dim=16) == "triton"


def _prompt(n: int) -> list[int]:
    return [(7 * i) % 200 + 3 for i in range(n)]


def test_a_kv_cache_cap_names_num_kv_blocks_not_the_model():
    eng = LLMEngine(EngineConfig(model="tiny", device="cpu", num_kv_blocks=1, block_size=16))
    assert eng.max_model_len == 16
    with pytest.raises(ValueError) as e:
        eng.add_request(_prompt(40))
    msg = str(e.value)
    assert "prompt has 40 tokens; max_model_len is 16 tokens (capped by the KV cache: " \
           "--num-kv-blocks 1 x --block-size 16; raise --num-kv-blocks, the model's context " \
           "is 512)" in msg, msg
    with pytest.raises(ValueError, match=r"max_tokens \(20\) = 30 exceeds the max_model_len of 16 "
                                         r"tokens \(capped by the KV cache: --num-kv-blocks 1"):
        eng.add_request(_prompt(10), SamplingParams(max_tokens=20))


def test_the_limit_names_max_model_len_or_the_model_when_they_set_it():
    eng = LLMEngine(EngineConfig(model="tiny", device="cpu", num_kv_blocks=64, max_model_len=32))
    with pytest.raises(ValueError, match=r"max_model_len is 32 tokens \(set by --max-model-len\)"):
        eng.add_request(_prompt(40))
    eng = LLMEngine(EngineConfig(model="tiny", device="cpu", num_kv_blocks=64))
    assert eng.max_model_len == 512
    with pytest.raises(ValueError, match=r"max_model_len is 512 tokens \(the model's context: "
                                         r"max_position_embeddings in tiny's config\)"):
        eng.add_request(_prompt(600))


def test_an_explicit_max_model_len_over_a_limit_names_both_flags():
    with pytest.raises(ValueError, match=r"max_model_len 33 exceeds the KV cache's 32 tokens "
                                         r"\(--num-kv-blocks 2 x --block-size 16\); lower "
                                         r"--max-model-len or raise --num-kv-blocks"):
        LLMEngine(EngineConfig(model="tiny", device="cpu", num_kv_blocks=2, max_model_len=33))
    with pytest.raises(ValueError, match=r"max_model_len 1,000 exceeds 512 tokens .*"
                                         r"max_position_embeddings.*at most 512"):
        LLMEngine(EngineConfig(model="tiny", device="cpu", num_kv_blocks=64, max_model_len=1000))
