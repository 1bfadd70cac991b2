"""`EngineConfig`: everything that shapes one engine, frozen and validated at construction.

Every field is a switch of the one data path (STYLE.md #13): the attention kernels, the KV
cache size, the scheduler's budgets. `from_dict` rejects unknown keys, listing the valid names,
so a misspelt option is an error rather than a silently ignored flag.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from aisp.hardware import parse_device
from aisp.model.compile import check_compile_mode
from aisp.quant.fp8 import QUANTIZATIONS

@dataclass(frozen=True)
class GraphMode:
    """Which steps replay CUDA graphs (vLLM's CUDAGraphMode, as data rather than branches)."""

    name: str
    full_decode: bool      # decode-only steps replay one whole-step graph (aisp.engine.cuda_graphs)
    piecewise: bool        # other steps replay their dense pieces (aisp.engine.piecewise_graphs)
    capture: bool = True   # False: the same padded paths run eagerly (CPU tests)


GRAPH_MODES: dict[str, GraphMode] = {m.name: m for m in (
    GraphMode("none", full_decode=False, piecewise=False),
    GraphMode("full", full_decode=True, piecewise=False),
    GraphMode("piecewise", full_decode=False, piecewise=True),
    GraphMode("full_and_piecewise", full_decode=True, piecewise=True),
)}
# `cuda_graphs='auto'` on a GPU with the Triton kernels: vLLM's default mode.
DEFAULT_GPU_GRAPH_MODE = "full_and_piecewise"

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineConfig:
    model: str = "tiny"                      # preset name or HF model folder
    device: str | None = None                # cpu | cuda | cuda:N; None: cuda if available, else cpu
    dtype: str = "auto"                      # auto: bf16 on GPUs that have it, float32 on CPU
    seed: int = 0                            # weights of synthetic presets; default sampling
    block_size: int = 16                     # tokens per KV block
    num_kv_blocks: int | None = None         # explicit KV cache size; overrides the two below
    kv_cache_memory_fraction: float = 0.85   # GPU: of the memory free after weights
    cpu_kv_cache_bytes: int = 512 << 20      # CPU: KV cache budget
    max_model_len: int | None = None         # None: the model's context (capped to fit the cache)
    max_num_batched_tokens: int = 2048       # token budget per step
    max_num_seqs: int = 256                  # requests running at once
    policy: str = "fcfs"                     # fcfs | priority
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    kv_cache_watermark: float = 0.01         # of the KV blocks, kept free when admitting (>= 1 block if > 0)
    attention_kernels: str = "auto"          # auto | triton | torch (reference twins)
    cuda_graphs: str = "auto"                # auto | none | full | piecewise | full_and_piecewise (GRAPH_MODES)
    graph_capture: str = "auto"              # auto (capture on a GPU) | off: graph paths run eagerly on their buffers
    cuda_graph_max_tokens: int | None = None  # largest piecewise bucket; None: max_num_batched_tokens
    async_scheduling: str = "auto"           # auto (on for a GPU) | on | off: plan step N+1 while N runs
    compile: str = "none"                    # none | regional | full (aisp.model.compile)
    quantization: str = "none"               # none | fp8 | fp8-per-channel | fp8-per-tensor (aisp.quant.fp8)

    def __post_init__(self) -> None:
        if self.device:
            parse_device(self.device, "device", check_available=False)  # 'tpu' fails here
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype '{self.dtype}' unknown; choose one of {', '.join(DTYPES)}")
        if self.attention_kernels not in ("auto", "triton", "torch"):
            raise ValueError(f"attention_kernels '{self.attention_kernels}' unknown; choose auto, "
                             f"triton or torch")
        if self.cuda_graphs != "auto" and self.cuda_graphs not in GRAPH_MODES:
            raise ValueError(f"cuda_graphs '{self.cuda_graphs}' unknown; choose auto or one of "
                             f"{', '.join(GRAPH_MODES)}")
        if self.graph_capture not in ("auto", "off"):
            raise ValueError(f"graph_capture '{self.graph_capture}' unknown; choose auto (capture "
                             f"on a GPU) or off (run the graph paths eagerly on their padded "
                             f"buffers, as the CPU tests do)")
        if self.async_scheduling not in ("auto", "on", "off"):
            raise ValueError(f"async_scheduling '{self.async_scheduling}' unknown; choose auto, on "
                             f"(plan the next step while the GPU runs this one) or off")
        check_compile_mode(self.compile)
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization '{self.quantization}' unknown; choose one of "
                             f"{', '.join(QUANTIZATIONS)} (fp8 = fp8-per-channel: weights per "
                             f"output channel, activations per token)")
        for name in ("block_size", "max_num_batched_tokens", "max_num_seqs", "cpu_kv_cache_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} is {value!r}; it must be a positive integer")
        for name in ("num_kv_blocks", "max_model_len", "cuda_graph_max_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} is {value!r}; it must be a positive integer or None")
        w = self.kv_cache_watermark
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < 1:
            raise ValueError(f"kv_cache_watermark is {w!r}; it must be a fraction in [0, 1) of the "
                             f"KV blocks kept free when admitting a request (0.01 = 1%; 0 = off)")
        if not 0 < self.kv_cache_memory_fraction <= 1:
            raise ValueError(f"kv_cache_memory_fraction is {self.kv_cache_memory_fraction}; it must "
                             f"lie in (0, 1]")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EngineConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown engine option(s) {unknown}; valid names are {names}")
        return cls(**values)

    def resolve_device(self) -> torch.device:
        """The device to run on; a GPU that torch does not see is a DeviceError (a ValueError)."""
        if self.device:
            return parse_device(self.device, "device")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    def resolve_cuda_graphs(self, device: torch.device, kernels: str) -> GraphMode:
        """The graph mode to run (see GRAPH_MODES); `auto` is DEFAULT_GPU_GRAPH_MODE on a GPU
        with the Triton kernels, else none. Capturing needs CUDA; whole-step (full) graphs also
        need the Triton kernels, since the torch twins of attention read sizes on the host.
        `graph_capture='off'` runs the same padded-buffer paths eagerly, on any device."""
        name = self.cuda_graphs
        if name == "auto":
            name = DEFAULT_GPU_GRAPH_MODE if device.type == "cuda" and kernels == "triton" \
                else "none"
        mode = GRAPH_MODES[name]
        capture = self.graph_capture == "auto" and name != "none"
        if capture and device.type != "cuda":
            raise ValueError(f"cuda_graphs='{name}' captures CUDA graphs, but this engine runs on "
                             f"{device}; use cuda_graphs='none' (or graph_capture='off' to run "
                             f"the same padded pieces eagerly, as the CPU tests do)")
        if capture and mode.full_decode and kernels != "triton":
            raise ValueError(f"cuda_graphs='{name}' captures whole decode steps, which needs the "
                             f"Triton kernels (kernels are {kernels}); use 'piecewise' or 'none'")
        return dataclasses.replace(mode, capture=capture)

    def resolve_async_scheduling(self, device: torch.device) -> bool:
        """On a GPU the host plans step N+1 while step N runs; a CPU computes as it launches, so
        there is nothing to overlap and outputs would only arrive a step later."""
        if self.async_scheduling == "auto":
            return device.type == "cuda"
        return self.async_scheduling == "on"

    def resolve_kernels(self, device: torch.device, head_dim: int) -> str:
        """Triton on a GPU; on the CPU the torch twins (the interpreter is for tests only).

        An explicit 'triton' on the CPU is an error unless TRITON_INTERPRET=1 is set (Triton
        then runs its kernels in the interpreter: slow, float32/float16, what the tests use; the
        same switch that `aisp.kernels.kv_cache_ops.require_triton_device` reads per call).
        The Triton decode kernel tiles head_dim with tl.dot, so it needs a power of two >= 16;
        `auto` falls back to the twins for other models, an explicit 'triton' is an error.
        """
        if (self.attention_kernels == "triton" and device.type != "cuda"
                and os.environ.get("TRITON_INTERPRET") != "1"):
            raise ValueError(f"attention_kernels='triton' needs a CUDA device, but this engine "
                             f"runs on {device}; on a CPU use 'torch' or 'auto' (the torch twins "
                             f"of every kernel). Triton runs on a CPU only in its interpreter, "
                             f"for tests: TRITON_INTERPRET=1 set before aisp is imported")
        supported = head_dim >= 16 and head_dim & (head_dim - 1) == 0
        if self.attention_kernels == "triton" and not supported:
            raise ValueError(f"attention_kernels='triton' needs head_dim to be a power of two "
                             f">= 16, but this model's head_dim is {head_dim}; use 'auto' or "
                             f"'torch'")
        if self.attention_kernels != "auto":
            return self.attention_kernels
        return "triton" if device.type == "cuda" and supported else "torch"
