"""Whole-model vs regional `torch.compile`: the regional_compilation pair's workload.

Both sides compile the same model (aisp.model.compile) and differ only in the mode: the
baseline compiles the whole forward (`full`), the optimized side each decoder layer's two
halves around attention, one compiled region reused by every layer (`regional`). What regional
compilation buys is start-up time, not step time, so:

- `run()`, the timed body, is one steady-state engine step through the compiled model with the
  engine's paged attention (aisp.workloads.model_step): a decode step, or a mixed step of
  decodes and prefill chunks; it returns the step's logits (last token of every sequence),
  which the harness compares between the sides and with a float64 recomputation of the step.
  Speed-up ~1 is the expected result here (the issue's target: within 5%).
- `details()` reports the start-up: cold start (a fresh child process with an empty
  TORCHINDUCTOR_CACHE_DIR: spawn, imports, model build, compile and the first forward of both
  step shapes; aisp.workloads.compile_start) and warm start (the same, on the folder the cold
  start filled), each with the measured cache state; the in-process compile seconds; the
  compiled graph count and the recompiles seen after warm-up (must be 0). The two child starts
  run once per side and process (both step shapes share them).

Sizes: on a GPU the `llama-3-8b` preset (all 32 layers, bf16): a decode step of 64 sequences
with 512 cached tokens each, and a mixed step of those 64 decodes plus two 128-token prefill
chunks. On the CPU the `tiny` preset in float32 at 4 decodes x 24 cached tokens (+ 2 x 6
prefill tokens): compile dominates there, seconds per start.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from aisp.engine.config import EngineConfig
from aisp.hardware import detect
from aisp.harness.benchmark import BenchmarkConfig, Work
from aisp.model.compile import CompileWatch, apply_compile, compiled_graphs_of, recompiles
from aisp.model.presets import build_synthetic, get_preset
from aisp.workloads.compile_start import StartSpec, cold_and_warm_start
from aisp.workloads.decoder_cost import DecoderCost
from aisp.workloads.model_step import Step, StepShape, build_step, reference_logits


@dataclass(frozen=True)
class CompileWorkload:
    model: str
    num_layers: int | None       # None: the preset's
    steps: tuple[StepShape, ...]


GPU_WORKLOAD = CompileWorkload("llama-3-8b", None,
                               (StepShape(64, 512),
                                StepShape(64, 512, num_prefills=2, prefill_len=128)))
CPU_WORKLOAD = CompileWorkload("tiny", None,
                               (StepShape(4, 24), StepShape(4, 24, num_prefills=2, prefill_len=6)))


@functools.lru_cache(maxsize=None)
def measured_start(spec: StartSpec) -> dict[str, dict[str, Any]]:
    """Cold and warm start of `spec`, measured once per process (both step shapes share it)."""
    return cold_and_warm_start(spec)


# ‖logits − float64‖ / ‖float64‖ of an eager bf16 step at llama-3-8b shapes, measured on a CPU
# (2026-12-01, StepShape(8, 64, 1, 8)): 0.8% at 1 layer, 1.5% at 4, 2.2% at 8, 3.2% at 16 —
# bf16 rounding of a random-weight residual stream, growing ~sqrt(layers), so ~4.6% at 32:
# above the harness's generic bf16 2e-2. Compiled code rounds elsewhere (Inductor keeps fused
# intermediates in float32), hence the margin; a wrong mask or KV history lands near 1.
TOLERANCES = {torch.bfloat16: 8e-2}


class RegionalCompilationBenchmark:
    def __init__(self, workload: CompileWorkload, shape: StepShape, mode: str, name: str,
                 measure_start: bool = True):
        self.workload, self.shape, self.mode, self.name = workload, shape, mode, name
        self.label = shape.label
        self.measure_start = measure_start
        self.info_hw = detect()
        self.device, self.dtype = self.info_hw.device, self.info_hw.compute_dtype
        gpu = self.device.type == "cuda"
        self._iterations, self._warmup = (20, 3) if gpu else (10, 2)
        self.model = self.step = None
        self.start: dict[str, dict[str, Any]] = {}

    def config(self) -> BenchmarkConfig:
        w = self.workload
        return BenchmarkConfig(
            iterations=self._iterations, warmup=self._warmup,
            sizes=dict(model=w.model,
                       num_layers=w.num_layers or get_preset(w.model).num_hidden_layers,
                       **self.shape.to_dict()),
            dtype=str(self.dtype).replace("torch.", ""),
            tolerance=TOLERANCES.get(self.dtype),
            notes="steady-state step time; the gain of regional compilation is cold start "
                  "(details: cold_start_s, warm_start_s)")

    def _config(self):  # noqa: ANN202
        config = get_preset(self.workload.model)
        if self.workload.num_layers is not None:
            config = config.replace(num_hidden_layers=self.workload.num_layers)
        return config

    def setup(self) -> None:
        config = self._config()
        self.kernels = EngineConfig().resolve_kernels(self.device, config.head_dim)
        with torch.inference_mode():
            self.model, config = build_synthetic(config, self.device, self.dtype,
                                                 seed=torch.initial_seed() % 2**31)
            self.model.set_elementwise_kernels(self.kernels)
            self.step: Step = build_step(self.shape, config, self.device, self.dtype,
                                         seed=torch.initial_seed() % 2**31)
            info = apply_compile(self.model, self.mode)
            watch = CompileWatch(self.model, info)
            with watch:
                self.step.logits(self.model, self.kernels)
            self.compile_info = watch.result()
        if self.measure_start:
            spec = StartSpec(model=self.workload.model, mode=self.mode, device=str(self.device),
                             dtype=str(self.dtype).replace("torch.", ""),
                             num_layers=self.workload.num_layers,
                             shapes=tuple((s.num_decodes, s.context_len, s.num_prefills,
                                           s.prefill_len) for s in self.workload.steps))
            self.start = measured_start(spec)

    @torch.inference_mode()
    def run(self) -> torch.Tensor:
        return self.step.logits(self.model, self.kernels)

    def reference(self) -> torch.Tensor:
        return reference_logits(self.model, self.step)

    def work(self) -> Work:
        spec = self.step.kv_cache.spec
        cost = DecoderCost.of(self.model, spec.bytes_per_token)
        s = self.shape
        pairs = s.kv_tokens_read()
        return Work(tokens=s.num_tokens,
                    flops=float(cost.flops(s.num_tokens, s.num_seqs, pairs)),
                    bytes=float(cost.step_bytes(s.num_tokens, pairs)))

    def details(self) -> dict[str, Any]:
        info = self.compile_info
        d: dict[str, Any] = {
            "compile": self.mode, "regions": list(info.regions),
            "elementwise_kernels": info.elementwise_kernels, "attention_kernels": self.kernels,
            "in_process_first_forward_s": info.compile_s, "in_process_cache": info.cache,
            "graphs": compiled_graphs_of(self.model),   # process-wide, per region
            "graphs_compiled_in_setup": info.graphs_compiled,
            "recompiles_after_warmup": recompiles(self.model, info),
            "model": f"{self.workload.model} ({self._config().num_hidden_layers} layers)",
        }
        for when in ("cold", "warm"):
            r = self.start.get(when)
            if r is None:
                continue
            d[f"{when}_start_s"] = r["start_to_first_output_s"]
            d[f"{when}_first_forwards_s"] = r["first_forwards_s"]
            d[f"{when}_cache"] = r["cache"]
            d[f"{when}_cache_warm"] = r["cache_warm"]
            d[f"{when}_cache_dir_was_empty"] = r["cache_dir_was_empty"]
        starts = "; ".join(f"{w} start {d[f'{w}_start_s']:.1f} s ({d[f'{w}_cache']} cache, of which "
                           f"{d[f'{w}_first_forwards_s']:.1f} s compiling first forwards)"
                           for w in ("cold", "warm") if f"{w}_start_s" in d)
        d["note"] = (f"compile {self.mode}, measured in fresh child processes: {starts}; "
                     f"{d['recompiles_after_warmup']} recompiles after warm-up")
        return d

    def teardown(self) -> None:
        self.model = self.step = None


def regional_compilation_benchmarks(mode: str, name: str) -> list[RegionalCompilationBenchmark]:
    workload = GPU_WORKLOAD if detect().device_type == "cuda" else CPU_WORKLOAD
    return [RegionalCompilationBenchmark(workload, shape, mode, name) for shape in workload.steps]
