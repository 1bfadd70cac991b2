"""The model-layer seams: linears built through one factory with a linear method, layers that load
their own (fused) tensors, and the architecture registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aisp.model import load_model
from aisp.model.config import ARCHITECTURES
from aisp.model.layers import (Linear, LinearMethod, ParamLayout, UnquantizedLinearMethod,
                               make_linear, process_weights_after_loading)
from aisp.model.llama import LlamaForCausalLM
from aisp.model.loader import hf_state_dict, weight_targets
from aisp.model.presets import PRESETS, build_synthetic
from aisp.model.registry import LLAMA_WEIGHTS, MODEL_REGISTRY, get_architecture


class ScaledMethod(LinearMethod):
    """What an FP8 method from a serialized FP8 checkpoint looks like to the seams: the weight in
    its own dtype plus one scale per logical shard, both loaded from the checkpoint."""

    def __init__(self, weight_dtype: torch.dtype = torch.float16) -> None:
        self.weight_dtype = weight_dtype
        self.processed: list[Linear] = []

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, dtype):
        layer.register_parameter("weight", nn.Parameter(
            torch.zeros(sum(output_partition_sizes), input_size_per_partition, dtype=self.weight_dtype)))
        layer.set_layout("weight", ParamLayout.ROWS)
        layer.register_parameter("weight_scale", nn.Parameter(
            torch.ones(len(output_partition_sizes), dtype=torch.float32)))
        layer.set_layout("weight_scale", ParamLayout.PER_SHARD)

    def apply(self, layer, x):
        scale = torch.repeat_interleave(layer.weight_scale, torch.tensor(layer.output_sizes))
        return F.linear(x, layer.weight.to(x.dtype)) * scale.to(x.dtype) + (
            0 if layer.bias is None else layer.bias)

    def process_weights_after_loading(self, layer):
        self.processed.append(layer)


class QuantizeAtLoadMethod(UnquantizedLinearMethod):
    """What an FP8 method over a bf16 checkpoint looks like: loads the plain weight, then derives
    a per-shard scale in the post-load hook (derived parameters are not checkpoint tensors)."""

    def process_weights_after_loading(self, layer):
        amax = torch.stack([layer.shard_view("weight", s).abs().amax() for s in layer.shard_ids])
        layer.register_parameter("weight_scale", nn.Parameter(amax, requires_grad=False))
        layer.set_layout("weight_scale", ParamLayout.PER_SHARD)


def test_factory_builds_the_unquantized_methods_parameters():
    qkv = make_linear(16, [8, 4, 4], shard_ids=("q", "k", "v"), bias=True, dtype=torch.float16)
    assert isinstance(qkv.method, UnquantizedLinearMethod)
    assert dict((n, (tuple(p.shape), p.dtype)) for n, p in qkv.named_parameters()) == {
        "weight": ((16, 16), torch.float16), "bias": ((16,), torch.float16)}
    x = torch.randn(3, 16, dtype=torch.float16)
    torch.testing.assert_close(qkv(x), F.linear(x, qkv.weight, qkv.bias), rtol=0, atol=0)
    plain = make_linear(16, 5)
    assert plain.shard_ids == (None,) and plain.bias is None and plain.weight.shape == (5, 16)


def test_factory_builds_another_methods_parameters_and_its_loader_fills_them():
    method = ScaledMethod()
    layer = make_linear(8, [4, 2, 2], shard_ids=("q", "k", "v"), method=method, dtype=torch.float32)
    assert [(n, tuple(p.shape), p.dtype) for n, p in layer.named_parameters()] == [
        ("weight", (8, 8), torch.float16), ("weight_scale", (3,), torch.float32)]
    for i, s in enumerate(("q", "k", "v")):
        layer.weight_loader(layer.weight_scale, torch.tensor(0.5 + i), s)
    assert layer.weight_scale.tolist() == [0.5, 1.5, 2.5]
    # The checkpoint names of the scales follow the shards, like the weights'.
    with torch.device("meta"):
        model = LlamaForCausalLM(PRESETS["tiny"], dtype=torch.float32, linear_method=method)
    targets = weight_targets(model, LLAMA_WEIGHTS)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert targets[f"model.layers.0.self_attn.{name}.weight_scale"].shape == ()
    t = targets["model.layers.1.mlp.up_proj.weight_scale"]
    assert (t.module, t.param, t.shard_id) == ("layers.1.mlp.gate_up_proj", "weight_scale", "up")


def test_fused_layer_loaded_from_separate_tensors_is_their_concatenation():
    layer = make_linear(6, [4, 2, 2], shard_ids=("q", "k", "v"), bias=True)
    parts = {s: (torch.randn(n, 6), torch.randn(n)) for s, n in zip(("v", "q", "k"), (2, 4, 2))}
    with torch.no_grad():
        for s, (w, b) in parts.items():  # any order
            layer.weight_loader(layer.weight, w, s)
            layer.weight_loader(layer.bias, b, s)
    assert torch.equal(layer.weight, torch.cat([parts[s][0] for s in "qkv"]))
    assert torch.equal(layer.bias, torch.cat([parts[s][1] for s in "qkv"]))
    with pytest.raises(ValueError, match=r"weight shard 'k'.*\(3, 6\).*\(2, 6\)"):
        layer.weight_loader(layer.weight, torch.randn(3, 6), "k")
    with pytest.raises(ValueError, match=r"shard 'gate' is not one of this layer's shards \('q', 'k', 'v'\)"):
        layer.weight_loader(layer.weight, torch.randn(2, 6), "gate")


def test_checkpoint_qkv_and_gate_up_land_in_the_fused_parameters(tmp_path, make_hf_model):
    hf = make_hf_model("qwen2")  # q/k/v biases
    hf.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, "cpu", torch.float32)
    sd = hf.state_dict()
    for i in range(len(model.layers)):
        a, m, p = model.layers[i].self_attn, model.layers[i].mlp, f"model.layers.{i}."
        for kind in ("weight", "bias"):
            want = torch.cat([sd[f"{p}self_attn.{n}_proj.{kind}"] for n in "qkv"])
            assert torch.equal(getattr(a.qkv_proj, kind), want), (i, kind)
        assert torch.equal(m.gate_up_proj.weight, torch.cat([sd[f"{p}mlp.gate_proj.weight"],
                                                             sd[f"{p}mlp.up_proj.weight"]]))
    # and back: hf_state_dict splits the fused parameters into exactly HF's tensors
    ours = hf_state_dict(model)
    assert ours.keys() == {k for k in sd if k != "lm_head.weight"}  # qwen2 here is tied
    assert all(torch.equal(ours[k], sd[k]) for k in ours)


def test_load_model_runs_the_methods_post_load_hook(tmp_path, make_hf_model):
    hf = make_hf_model("llama")
    hf.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, "cpu", torch.float32, linear_method=QuantizeAtLoadMethod())
    qkv = model.layers[0].self_attn.qkv_proj
    sd = hf.state_dict()
    want = [sd[f"model.layers.0.self_attn.{n}_proj.weight"].abs().amax() for n in "qkv"]
    assert torch.equal(qkv.weight_scale, torch.stack(want))
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(linears) == 4 * len(model.layers) and all(hasattr(m, "weight_scale") for m in linears)


def test_synthetic_models_take_a_linear_method_and_run_its_hook():
    method = ScaledMethod(weight_dtype=torch.float32)
    model, _ = build_synthetic("tiny", "cpu", torch.float32, linear_method=method)
    assert len(method.processed) == 4 * len(model.layers)
    process_weights_after_loading(model)  # the hook is per call; the loader calls it once
    assert len(method.processed) == 8 * len(model.layers)


def test_registry_covers_every_parsed_architecture_and_names_them_when_asked_for_another():
    assert set(MODEL_REGISTRY) == set(ARCHITECTURES)
    assert get_architecture("Qwen3ForCausalLM").model_class is LlamaForCausalLM
    with pytest.raises(ValueError, match=r"architecture 'GPT2LMHeadModel' has no model here; supported: "
                                         r"LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                                         r"Qwen3ForCausalLM"):
        get_architecture("GPT2LMHeadModel")


def test_weight_mapping_names():
    assert LLAMA_WEIGHTS.hf_name("layers.3.self_attn.qkv_proj", "bias", "k") == \
        "model.layers.3.self_attn.k_proj.bias"
    assert LLAMA_WEIGHTS.hf_name("layers.0.mlp.gate_up_proj", "weight", "gate") == \
        "model.layers.0.mlp.gate_proj.weight"
    assert LLAMA_WEIGHTS.hf_name("lm_head", "weight") == "lm_head.weight"
    assert LLAMA_WEIGHTS.hf_name("embed_tokens", "weight") == "model.embed_tokens.weight"
    assert LLAMA_WEIGHTS.is_ignored("model.layers.12.self_attn.rotary_emb.inv_freq")
