"""FP8 quantization and the FP8 linear method against float64 references, on the CPU kernels
torch has (`torch._scaled_mm` runs on the CPU in torch >= 2.6), with fresh random inputs."""

from __future__ import annotations

import logging

import pytest
import torch

from aisp.model.presets import build_synthetic
from aisp.quant.fp8 import (FP8_DTYPE, FP8_MAX, Fp8LinearMethod, dequantize_fp8,
                            linear_method_for, quantize_fp8)

# e4m3 keeps 3 mantissa bits: a normal value rounds to within 2^-4 of itself; below the
# smallest normal (2^-6 of the scale unit) the spacing is the subnormal step, 2^-9 units.
REL, SUBNORMAL = 2.0 ** -4, 2.0 ** -9


def _outliers(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x[torch.randint(0, rows, (4,), generator=g), torch.randint(0, cols, (4,), generator=g)] *= 40
    return x


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_round_trip_error_is_bounded_per_element(granularity):
    x = _outliers(48, 64, seed=1)
    q, scale = quantize_fp8(x, granularity)
    assert q.dtype == FP8_DTYPE and scale.dtype == torch.float32
    assert scale.shape == (() if granularity == "tensor" else (48, 1))
    back = dequantize_fp8(q, scale).double()
    bound = torch.maximum(x.abs() * REL, SUBNORMAL * scale.double())
    assert ((back - x).abs() <= bound + 1e-12).all()
    # The group's largest magnitude maps to the top of the range.
    amax = x.abs().amax() if granularity == "tensor" else x.abs().amax(dim=1, keepdim=True)
    assert torch.allclose(scale.double() * FP8_MAX, amax, rtol=1e-6)


def test_per_row_scales_keep_small_rows_precise_where_one_scale_cannot():
    x = torch.randn(2, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x[0] *= 1e6   # one loud row: under its scale the quiet row falls below e4m3's subnormals
    err = {g: ((dequantize_fp8(*quantize_fp8(x, g)).double() - x)[1].norm() / x[1].norm()).item()
           for g in ("tensor", "row")}
    assert err["row"] < REL and err["tensor"] > 0.5, err


def test_an_all_zero_group_has_scale_one_and_stays_zero():
    x = torch.zeros(3, 16)
    x[1] = 1.0
    q, scale = quantize_fp8(x, "row")
    assert scale[0].item() == 1.0 and (q[0].float() == 0).all()
    assert torch.equal(dequantize_fp8(q, scale)[1], torch.ones(16))


def test_bad_granularity_and_shape_are_refused():
    with pytest.raises(ValueError, match="granularity 'block' unknown"):
        quantize_fp8(torch.ones(2, 2), "block")
    with pytest.raises(ValueError, match="2-D"):
        quantize_fp8(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="quantization 'int4' unknown"):
        linear_method_for("int4")


def _fp8_layer(method: Fp8LinearMethod, n: int, k: int, seed: int, dtype=torch.float32):
    from aisp.model.linear import make_linear

    layer = make_linear(k, [n], bias=True, dtype=dtype, method=method)
    g = torch.Generator().manual_seed(seed)
    w = _outliers(n, k, seed).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(torch.randn(n, generator=g).to(dtype))
    method.process_weights_after_loading(layer)
    return layer, w.double()


@pytest.mark.parametrize("weights, activations", [("channel", "token"), ("tensor", "tensor"),
                                                  ("channel", "tensor"), ("tensor", "token")])
def test_fp8_linear_is_the_fp8_gemm_of_its_quantized_operands(weights, activations, caplog):
    method = Fp8LinearMethod(weights, activations)
    layer, w = _fp8_layer(method, n=48, k=64, seed=3)
    assert layer.weight.dtype == FP8_DTYPE and not layer.weight.requires_grad
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(4))
    with caplog.at_level(logging.WARNING, logger="aisp.quant.fp8"):
        y = layer(x)
    assert "dequantized matmul" not in caplog.text   # aligned shapes: the FP8 GEMM ran
    assert y.dtype == torch.float32 and y.shape == (5, 48)
    # Exactly what an FP8 GEMM computes: the quantized operands, multiplied in float64.
    xq, xs = quantize_fp8(x, "row" if activations == "token" else "tensor")
    ref = dequantize_fp8(xq, xs).double() @ dequantize_fp8(layer.weight, layer.weight_scale).double().T
    ref += layer.bias.double()
    assert torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-4)
    # And close to the unquantized layer: each operand is within 2^-4 of itself.
    exact = x.double() @ w.T + layer.bias.double()
    assert (y.double() - exact).norm() / exact.norm() < 0.08


def test_unaligned_shapes_fall_back_to_a_dequantized_matmul_and_say_so(caplog):
    method = Fp8LinearMethod()
    layer, w = _fp8_layer(method, n=40, k=24, seed=5)   # 24 is not a multiple of 16
    x = torch.randn(3, 24, generator=torch.Generator().manual_seed(6))
    with caplog.at_level(logging.WARNING, logger="aisp.quant.fp8"):
        y = layer(x)
        layer(x)
    assert caplog.text.count("dequantized matmul") == 1   # said once per shape
    ref = x.double() @ dequantize_fp8(layer.weight, layer.weight_scale).double().T
    assert torch.allclose(y.double(), ref + layer.bias.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantization", ["fp8-per-channel", "fp8-per-tensor"])
def test_a_model_built_with_fp8_linears_stays_close_to_the_unquantized_one(quantization):
    from aisp.model.attention_backend import VarlenCausalAttention

    ref_model, cfg = build_synthetic("tiny", "cpu", torch.float32, seed=0)
    fp8_model, _ = build_synthetic("tiny", "cpu", torch.float32, seed=0,
                                   linear_method=linear_method_for(quantization))
    linears = [m for m in fp8_model.modules() if hasattr(m, "weight_scale")]
    assert linears and all(m.weight.dtype == FP8_DTYPE for m in linears)
    ids = torch.randint(0, cfg.vocab_size, (12,), generator=torch.Generator().manual_seed(7))
    pos = torch.arange(12)

    def logits(model):
        with torch.inference_mode():
            return model.compute_logits(model(ids, pos, VarlenCausalAttention([0, 12])))

    want, got = logits(ref_model), logits(fp8_model)
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 0.1, rel
