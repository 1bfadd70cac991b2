"""Real engine steps through the engine's runner, one graph mode per side: the piece_graphs pair.

The workload is two steps of one engine state, built through the real scheduler:
- `decode`: N requests, each decoding one token at context C (a decode-only step);
- `mixed`: the same N decodes plus one new request's whole prompt of P tokens (a mixed
  prefill + decode step, the kind that cannot replay a whole-step graph).

`run()` is `ModelRunner.logits(plan)`: the step's forward (embedding to final norm, attention
with its KV store) and the LM head over the sampling rows, returning their float32 logits, which
is what the harness compares between the sides (bf16 tolerance on a GPU). The plan is the same
on every call, so repeated runs write the same KV slots with the same values. Both sides build
the same engine from the same seed and differ in `cuda_graphs` alone.

Reported per side (`details()`): the graph path the step took, what capture cost (graphs,
seconds, pool memory), and the launches one step makes, counted from a torch.profiler trace:
on a GPU, host-side kernel launches and graph launches, plus the kernels the device ran; on a
CPU there are no launches, so the count is of the aten ops the step dispatched.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from typing import Any

import torch

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.plan import SchedulerOutput
from aisp.engine.sampling_params import SamplingParams
from aisp.hardware import detect
from aisp.harness.benchmark import BenchmarkConfig, Work
from aisp.workloads.decoder_cost import DecoderCost, causal_pairs


@dataclass(frozen=True)
class StepShape:
    label: str
    model: str
    dtype: str
    num_decodes: int
    context_len: int          # each decode's context, including its new token
    num_prefill_tokens: int   # the mixed step's new prompt (0: decode-only)
    iterations: int
    warmup: int


def shapes(device_type: str) -> list[StepShape]:
    """GPU: the 8B preset at the issue's mixed step (256 decodes + 512 prefill tokens) and its
    decode-only step; CPU: the tiny preset, seconds on two cores."""
    if device_type == "cuda":
        return [StepShape("decode_b256", "llama-3-8b", "bfloat16", 256, 256, 0, 50, 10),
                StepShape("mixed_b256_p512", "llama-3-8b", "bfloat16", 256, 256, 512, 50, 10)]
    return [StepShape("decode_b8", "tiny", "float32", 8, 24, 0, 20, 3),
            StepShape("mixed_b8_p40", "tiny", "float32", 8, 24, 40, 20, 3)]


def _build_plan(engine: LLMEngine, shape: StepShape, seed: int) -> SchedulerOutput:
    """Prefill N requests to context C - 1 through real steps, then plan one step: their
    decodes plus (mixed) a new prompt of P tokens, scheduled together by the scheduler."""
    g = torch.Generator().manual_seed(seed)
    vocab = engine.model_config.vocab_size
    eos = engine.scheduler.eos_token_ids
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)  # never reached

    def prompt(n: int) -> list[int]:
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        return [t if t not in eos else (t + 1) % vocab for t in ids]

    for _ in range(shape.num_decodes):
        engine.add_request(prompt(shape.context_len - 1), params)
    while any(r.num_output_tokens == 0 for r in engine.scheduler.requests.values()):
        engine.step()
    if shape.num_prefill_tokens:
        engine.add_request(prompt(shape.num_prefill_tokens), params)
    plan = engine.scheduler.schedule()
    decodes = [s for s in plan.scheduled_requests if s.is_decode]
    prefills = [s for s in plan.scheduled_requests if not s.is_decode]
    assert len(decodes) == shape.num_decodes and all(
        s.start_position == shape.context_len - 1 for s in decodes), "decodes at context C"
    assert sum(s.num_scheduled_tokens for s in prefills) == shape.num_prefill_tokens, \
        "the whole prompt in this step"
    return plan


def count_launches(fn, device: torch.device) -> dict[str, int]:
    """Launches of one call of `fn`, from a torch.profiler trace (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.events()
    if device.type != "cuda":
        return {"aten_ops": sum(1 for e in events if e.name.startswith("aten::")
                                and e.cpu_parent is None)}
    names = [e.name for e in events]
    return {"kernel_launches": sum(1 for n in names if "LaunchKernel" in n),
            "graph_launches": sum(1 for n in names if "GraphLaunch" in n),
            "device_kernels": sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                                  and "memcpy" not in e.name.lower()
                                  and "memset" not in e.name.lower())}


class EngineStepBenchmark:
    """One side of the piece_graphs pair at one `StepShape` (see the module docstring)."""

    def __init__(self, name: str, shape: StepShape, cuda_graphs: str):
        self.name, self.label, self.shape, self.cuda_graphs = name, shape.label, shape, cuda_graphs
        self.device = detect().device
        self.engine: LLMEngine | None = None
        self.plan: SchedulerOutput | None = None

    def config(self) -> BenchmarkConfig:
        s = self.shape
        return BenchmarkConfig(iterations=s.iterations, warmup=s.warmup, dtype=s.dtype,
                               sizes={"model": s.model, "num_decodes": s.num_decodes,
                                      "context_len": s.context_len,
                                      "num_prefill_tokens": s.num_prefill_tokens},
                               notes="one engine step through ModelRunner.logits")

    def setup(self) -> None:
        s = self.shape
        seed = int(torch.initial_seed()) % (1 << 31)
        tokens = s.num_decodes + s.num_prefill_tokens
        # Every request's blocks, plus headroom for admission's watermark and lookahead.
        needed = -(-(s.context_len + 1) // 16) * s.num_decodes + -(-s.num_prefill_tokens // 16)
        blocks = int(needed * 1.05) + 16
        on_gpu = self.device.type == "cuda"
        self.engine = LLMEngine(EngineConfig(
            model=s.model, device=str(self.device), dtype=s.dtype, seed=0, block_size=16,
            num_kv_blocks=blocks, max_num_seqs=s.num_decodes + 1,
            # A budget that prefills every request in one step, so all decode at context C;
            # graphs are captured only up to the measured step's size.
            max_num_batched_tokens=max(tokens, s.num_decodes * s.context_len),
            cuda_graph_max_tokens=tokens, enable_prefix_caching=False, async_scheduling="off",
            cuda_graphs=self.cuda_graphs, graph_capture="auto" if on_gpu else "off"))
        self.plan = _build_plan(self.engine, s, seed)

    def run(self) -> torch.Tensor:
        logits, _, self._path = self.engine.runner.logits(self.plan)
        return logits

    def teardown(self) -> None:
        self.engine = self.plan = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def work(self) -> Work:
        s = self.shape
        cost = DecoderCost.of(self.engine.model, self.engine.kv_cache.spec.bytes_per_token)
        tokens = s.num_decodes + s.num_prefill_tokens
        logits = s.num_decodes + (1 if s.num_prefill_tokens else 0)
        pairs = s.num_decodes * s.context_len + causal_pairs(0, s.num_prefill_tokens)
        kv_read = s.num_decodes * s.context_len + s.num_prefill_tokens  # each K/V read once
        return Work(tokens=tokens, flops=cost.flops(tokens, logits, pairs),
                    bytes=cost.step_bytes(tokens, kv_read))

    def details(self) -> dict[str, Any]:
        runner = self.engine.runner
        d: dict[str, Any] = {"cuda_graphs": self.engine.graph_mode.name,
                             "graph_capture": self.engine.graph_mode.capture,
                             "path": getattr(self, "_path", None),
                             "launches_per_step": count_launches(self.run, self.device)}
        for key, graphs in (("piecewise", runner.piecewise_graphs),
                            ("full_decode", runner.decode_graphs)):
            if graphs is not None:
                d[key] = dataclasses.asdict(graphs.info)
        counts = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in d["launches_per_step"].items())
        d["note"] = f"{self.cuda_graphs} ({d['path']} path): {counts} per step"
        if self.cuda_graphs != "none" and not self.engine.graph_mode.capture:
            d["note"] += ("; without CUDA nothing is captured: the same padded pieces run "
                          "eagerly, so this row measures padding and copies, not graph replay")
        elif d.get("piecewise"):
            p = d["piecewise"]
            d["note"] += (f"; {p['num_graphs']:,} graphs over {p['num_buckets']} sizes captured in "
                          f"{p['capture_s']:.1f} s, pool {p['pool_bytes'] / 2**20:,.0f} MiB")
        return d


def benchmarks(name: str, cuda_graphs: str) -> list[EngineStepBenchmark]:
    return [EngineStepBenchmark(name, s, cuda_graphs) for s in shapes(detect().device_type)]
