"""Quantization: FP8 weights and activations (aisp.quant.fp8)."""
