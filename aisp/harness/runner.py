"""Run pairs: measure each side, verify the optimized output, judge against expectations.

For every pair and workload size (`label`):

    baseline: setup -> one run per input set (kept for verification) -> float64 reference if
              offered -> warm-up -> timed runs under a MemoryProbe -> one rerun checked against
              its first output -> one run counting allocations -> profile (optional) -> teardown
    each optimized variant: the same, with the same seed, so its input sets are the
              baseline's; then compared set by set with the baseline's outputs and with float64
              (aisp.harness.verification says what is sampled), and, when the pair's config
              has an accuracy gate, the two sides' models judged by it (evidence taken right
              after setup; aisp.harness.benchmark).

A row is *verified* only when every comparison passed. Speed-up = baseline median / optimized
median from this one run. A side that raises is recorded with its error and the run goes on
with the next pair: one broken target must not hide the others' results.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import secrets
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from aisp.hardware import Ceilings, HardwareInfo
from aisp.harness import expectations as exp
from aisp.harness.benchmark import (Benchmark, BenchmarkConfig, Work, accuracy_model,
                                    optional_details, optional_reference)
from aisp.harness.discovery import Pair, load_benchmarks
from aisp.harness.memory import MemoryProbe, MemoryReport, count_allocations
from aisp.harness.notes import row_notes
from aisp.harness.profiling import PROFILE_MODES, profile_benchmark
from aisp.harness.timing import L2Flusher, TimingStats, time_callable
from aisp.harness.verification import (CountingRun, SideOutputs, check_accuracy, check_rerun,
                                       collect_per_set, describe_sample, to_host, verify_outputs)
from aisp.harness.verify import Comparison, tolerance_for


@dataclass(frozen=True)
class RunOptions:
    profile: str = "none"
    iterations: int | None = None     # None: each benchmark's own config()
    warmup: int | None = None
    seed: int | None = None           # None: a fresh random seed; see seeded()
    cold_l2: bool = False             # requested; see cold_l2_applied()
    artifacts_dir: Path | None = None
    seed_drawn: bool = False          # True when seeded() drew `seed` (no --seed given)

    def __post_init__(self) -> None:
        if self.profile not in PROFILE_MODES:
            raise ValueError(f"unknown profile '{self.profile}'; choose one of "
                             f"{', '.join(PROFILE_MODES)}")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {self.iterations}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")

    def seeded(self) -> "RunOptions":
        """These options with the seed fixed: the one given, or a fresh draw. `run_pairs` runs
        only on seeded options, so the seed recorded with a run is always the one its inputs
        came from, and a failing run can be repeated with --seed."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=secrets.randbits(31), seed_drawn=True)

    def cold_l2_applied(self, device: torch.device) -> tuple[bool, str]:
        """Whether --cold-l2 is carried out on `device`, and why not when it is not."""
        if not self.cold_l2:
            return False, "not requested"
        if device.type != "cuda":
            return False, f"no GPU L2 to flush on the {device.type}; samples ran warm"
        return True, "L2 flushed before every sample"


class ProgressHook(Protocol):
    def side_started(self, description: str, total: int) -> None: ...
    def sample_done(self) -> None: ...
    def side_finished(self) -> None: ...


class _NoProgress:
    def side_started(self, description: str, total: int) -> None: ...
    def sample_done(self) -> None: ...
    def side_finished(self) -> None: ...


@dataclass
class SideResult:
    module: str                      # 'baseline_flash_sdp', 'optimized_flash_sdp_cudnn', ...
    dtype: str = ""
    timing: TimingStats | None = None
    memory: MemoryReport | None = None
    work: Work = field(default_factory=Work)
    rates: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "dtype": self.dtype,
                "timing": self.timing.to_dict() if self.timing else None,
                "memory": self.memory.to_dict() if self.memory else None,
                "work": {"tokens": self.work.tokens, "flops": self.work.flops,
                         "bytes": self.work.bytes},
                "rates": self.rates, "details": self.details, "profile": self.profile,
                "error": self.error}


@dataclass
class RowResult:
    key: str                         # expectation key: 'flash_sdp[b4_s4096]'
    target: str                      # 'ch16:flash_sdp'
    chapter: str
    label: str
    workload: dict[str, Any]
    baseline: SideResult
    optimized: SideResult
    comparisons: list[Comparison] = field(default_factory=list)
    verified: bool = False
    speedup: float | None = None
    speedup_rel_noise: float = 0.0
    verdict: exp.Verdict = field(default_factory=lambda: exp.Verdict("failed"))
    error: str | None = None
    seed: int | None = None          # the seed both sides' inputs were drawn from
    verification: dict[str, Any] = field(default_factory=dict)  # what was compared
    notes: list[str] = field(default_factory=list)  # derived from the measured numbers

    def metrics(self) -> dict[str, Any]:
        """The numbers stored in an expectations entry."""
        m: dict[str, Any] = {}
        for role, side in (("baseline", self.baseline), ("optimized", self.optimized)):
            if side.timing:
                m[f"{role}_median_ms"] = round(side.timing.median_ms, 6)
            m.update({f"{role}_{k}": round(v, 6) for k, v in side.rates.items()})
            if side.memory:
                m[f"{role}_transient_peak_bytes"] = side.memory.transient_peak_bytes
                if side.memory.allocs_per_run is not None:
                    m[f"{role}_allocs_per_run"] = side.memory.allocs_per_run
                    m[f"{role}_alloc_bytes_per_run"] = side.memory.alloc_bytes_per_run
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "target": self.target, "chapter": self.chapter,
                "label": self.label, "workload": self.workload,
                "baseline": self.baseline.to_dict(), "optimized": self.optimized.to_dict(),
                "comparisons": [c.to_dict() for c in self.comparisons],
                "verified": self.verified, "speedup": self.speedup,
                "speedup_rel_noise": self.speedup_rel_noise,
                "verdict": self.verdict.to_dict(), "metrics": self.metrics(), "error": self.error,
                "seed": self.seed, "verification": self.verification, "notes": self.notes}


def rates_for(work: Work, median_ms: float, ceil: Ceilings | None) -> dict[str, float]:
    """Throughput in physical units and the fraction of the roofline reached.

    The roofline floor is max(flops / matmul ceiling, bytes / copy ceiling); the fraction is
    floor / measured time, so 1.0 means the run was as fast as the hardware allows.
    """
    s = median_ms / 1e3
    r: dict[str, float] = {}
    if s <= 0:
        return r
    if work.tokens:
        r["tokens_per_s"] = work.tokens / s
    if work.flops:
        r["tflops"] = work.flops / s / 1e12
    if work.bytes:
        r["gbps"] = work.bytes / s / 1e9
    if ceil and (work.flops or work.bytes):
        t_compute = work.flops / ceil.matmul_flops_per_s
        t_memory = work.bytes / ceil.copy_bytes_per_s
        r["roofline_fraction"] = max(t_compute, t_memory) / s
        r["compute_bound"] = float(t_compute >= t_memory)
    return r


def _error_text(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


@dataclass
class _Measured:
    side: SideResult
    outputs: SideOutputs = field(default_factory=SideOutputs)


def measure_side(bench: Benchmark, module: str, *, seed: int, options: RunOptions,
                 info: HardwareInfo, ceil: Ceilings | None, want_reference: bool,
                 target: str, row_key: str, progress: ProgressHook, role: str) -> _Measured:
    side = SideResult(module=module)
    out = _Measured(side)
    device = info.device
    torch.manual_seed(seed)
    try:
        cfg = bench.config()
        side.dtype = cfg.dtype
        iterations = options.iterations or cfg.iterations
        warmup = cfg.warmup if options.warmup is None else options.warmup
        bench.setup()
        try:
            run = CountingRun(bench.run, cfg.input_sets)
            out.outputs = SideOutputs(cfg.input_sets, collect_per_set(run, device))
            if want_reference:
                out.outputs.reference = to_host(optional_reference(bench))
            if cfg.accuracy_gate is not None:    # before timing: the model as setup left it
                out.outputs.accuracy = to_host(cfg.accuracy_gate.evidence(accuracy_model(bench)))
            for _ in range(warmup):
                run()
            # Drop what setup and autotuning cached, then let one run re-reserve only what the
            # body needs: reserved memory and fragmentation then describe the steady state.
            _free_device_memory(device)
            run()
            flusher = L2Flusher(device, info.l2_cache_bytes) \
                if options.cold_l2_applied(device)[0] else None
            progress.side_started(f"{row_key} {module}", iterations)
            with MemoryProbe(device) as probe:
                side.timing = time_callable(run, iterations=iterations, warmup=0,
                                            device=device, before_each=flusher,
                                            on_sample=lambda _i: progress.sample_done())
            progress.side_finished()
            check_rerun(run, out.outputs, cfg.tolerance or tolerance_for(cfg.dtype),
                        cfg.allow_nonfinite, role)
            allocs = count_allocations(run, device)
            side.memory = dataclasses.replace(probe.report, allocs_per_run=allocs.allocations,
                                              alloc_bytes_per_run=allocs.bytes)
            side.work = bench.work()
            side.rates = rates_for(side.work, side.timing.median_ms, ceil)
            side.details = optional_details(bench)
            if options.profile != "none":
                prof_dir = (options.artifacts_dir or Path("artifacts")) / "profiles"
                side.profile = profile_benchmark(bench, options.profile, device, prof_dir,
                                                 f"{row_key}_{module}", target)
        finally:
            bench.teardown()
            # Hand the side's cached blocks back, so the next side's allocator numbers
            # (reserved memory, fragmentation) describe that side alone.
            _free_device_memory(device)
    except Exception as e:  # noqa: BLE001 - a failing target is reported, the run goes on
        side.error = _error_text(e)
        progress.side_finished()
    return out


def _row_key(pair: Pair, variant: str, label: str) -> str:
    return variant + (f"[{label}]" if label else "")


def _verify(row: RowResult, base: _Measured, opt: _Measured, base_cfg: BenchmarkConfig,
            opt_cfg: BenchmarkConfig) -> None:
    # NaN/inf pass only when the workload declares them on both sides (it is one workload).
    allow = base_cfg.allow_nonfinite and opt_cfg.allow_nonfinite
    tol = opt_cfg.tolerance
    row.comparisons = verify_outputs(
        base.outputs, opt.outputs,
        tol_pair=tol or max(tolerance_for(row.baseline.dtype), tolerance_for(row.optimized.dtype)),
        tol_base=tol or tolerance_for(row.baseline.dtype),
        tol_opt=tol or tolerance_for(row.optimized.dtype), allow_nonfinite=allow)
    gate = opt_cfg.accuracy_gate or base_cfg.accuracy_gate
    if gate is not None:
        row.comparisons.append(check_accuracy(gate, base.outputs, opt.outputs))
    row.verification = describe_sample(base.outputs, opt.outputs)
    if gate is not None:
        row.verification["summary"] += "; the accuracy gate on both sides' models"
    row.verified = all(c.ok for c in row.comparisons)
    if not row.verified:
        row.error = "; ".join(f"vs {c.against}: {c.message}" for c in row.comparisons if not c.ok)


def run_pairs(pairs: list[Pair], info: HardwareInfo, ceil: Ceilings | None,
              options: RunOptions, progress: ProgressHook | None = None,
              root: Path | None = None) -> list[RowResult]:
    """Measure every pair (each workload size, each optimized variant) and judge the rows."""
    progress = progress or _NoProgress()
    options = options.seeded()
    seed = options.seed
    rows: list[RowResult] = []
    for pair in pairs:
        chapter_dir = (root or pair.baseline.parent.parent) / pair.chapter
        try:
            expected = exp.load(exp.expectations_path(chapter_dir, info.key), info.key)["pairs"]
        except exp.ExpectationsError:
            raise  # a broken expectations file stops the run: the user must fix it
        try:
            baselines = load_benchmarks(pair.baseline)
            variants = [(p, load_benchmarks(p)) for p in pair.optimized]
        except Exception as e:  # noqa: BLE001
            err = _error_text(e)
            rows.append(RowResult(key=pair.name, target=pair.target, chapter=pair.chapter,
                                  label="", workload={}, baseline=SideResult(pair.baseline.stem,
                                  error=err), optimized=SideResult(pair.optimized[0].stem),
                                  error=f"could not load the pair: {err}", seed=seed))
            continue
        for base_bench in baselines:
            label = getattr(base_bench, "label", "") or ""
            base = measure_side(base_bench, pair.baseline.stem, seed=seed, options=options,
                                info=info, ceil=ceil, want_reference=True, target=pair.target,
                                row_key=_row_key(pair, pair.name, label), progress=progress,
                                role="baseline")
            workload = dict(base_bench.config().sizes, dtype=base_bench.config().dtype)
            for opt_path, opt_benches in variants:
                variant = pair.variant_name(opt_path)
                key = _row_key(pair, variant, label)
                match = [b for b in opt_benches if (getattr(b, "label", "") or "") == label]
                row = RowResult(key=key, target=pair.target, chapter=pair.chapter, label=label,
                                workload=workload, baseline=base.side,
                                optimized=SideResult(opt_path.stem), seed=seed)
                rows.append(row)
                if not match:
                    row.error = f"{opt_path.name} has no workload labelled '{label}'"
                    continue
                opt = measure_side(match[0], opt_path.stem, seed=seed, options=options,
                                   info=info, ceil=ceil, want_reference=False,
                                   target=pair.target, row_key=key, progress=progress,
                                   role="optimized")
                row.optimized = opt.side
                if base.side.error or opt.side.error:
                    row.error = base.side.error or opt.side.error
                else:
                    _verify(row, base, opt, base_bench.config(), match[0].config())
                    b, o = base.side.timing, opt.side.timing
                    row.speedup = b.median_ms / o.median_ms
                    row.speedup_rel_noise = math.hypot(b.rel_spread, o.rel_spread)
                row.verdict = exp.judge(expected.get(key), verified=row.verified,
                                        speedup=row.speedup,
                                        speedup_rel_noise=row.speedup_rel_noise,
                                        workload=workload)
                row.notes = row_notes(row)
                del opt
                _free_device_memory(info.device)
            del base
            _free_device_memory(info.device)
    return rows
