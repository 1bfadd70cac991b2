"""`--quantization fp8*` through the engine: the weights are float8 after load, the model's
first greedy tokens agree with the unquantized engine on most random prompts (a random-weight
model has small logit margins, so a few near-ties flip: stated bound below), and a bad value is
refused with the valid ones."""

from __future__ import annotations

import pytest
import torch

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.sampling_params import SamplingParams
from aisp.quant.fp8 import FP8_DTYPE

FIRST = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 500, (32, 8), generator=g).tolist()


@pytest.fixture(scope="module")
def reference(prompts):
    return [o.output_token_ids for o in
            LLMEngine(EngineConfig(model="tiny", device="cpu")).generate(prompts, FIRST)]


# Measured on the CPU (torch 2.13, tiny preset, seed 0): per-channel 30/32, per-tensor 31/32.
@pytest.mark.parametrize("quantization, at_least", [("fp8", 28), ("fp8-per-tensor", 24)])
def test_fp8_engine_agrees_on_most_first_tokens(prompts, reference, quantization, at_least):
    engine = LLMEngine(EngineConfig(model="tiny", device="cpu", quantization=quantization))
    linears = [m for m in engine.model.modules() if hasattr(m, "weight_scale")]
    assert len(linears) == 4 * engine.model_config.num_hidden_layers   # qkv, o, gate-up, down
    assert all(m.weight.dtype == FP8_DTYPE for m in linears)
    assert engine.model.lm_head.weight.dtype == torch.float32   # LM head stays unquantized
    got = [o.output_token_ids for o in engine.generate(prompts, FIRST)]
    agree = sum(g == w for g, w in zip(got, reference))
    assert agree >= at_least, f"{agree}/32 first tokens equal"


def test_an_unknown_quantization_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="quantization 'int4' unknown; choose one of none, fp8, "
                                         "fp8-per-channel, fp8-per-tensor"):
        EngineConfig(quantization="int4")
