"""Command-line options that map to one `EngineConfig` field and appear on several commands
(`aisp generate`, `aisp serve`): defined once, so their spelling and help cannot drift apart."""

from __future__ import annotations

import typer

COMPILE_OPTION = typer.Option(
    "none", "--compile", help="none, regional (each decoder layer's two halves, one compiled "
                              "region for all layers) or full (the whole model).")
QUANTIZATION_OPTION = typer.Option(
    "none", "--quantization", help="none, fp8 (= fp8-per-channel: FP8 weights with a scale per "
                                   "output channel, activations per token) or fp8-per-tensor; "
                                   "weights are quantized at load.")
