"""The benchmark protocol every target implements.

A target module exposes `get_benchmark()`, returning one `Benchmark` (or a list of them, one per
workload size, each with a distinct `label`). The runner drives it as:

    setup()                      build inputs (seeded by the runner), load weights, autotune
    run() x input_sets           one output per distinct input set: the outputs verified
    run() x warmup, run() x N    timed; run() is the whole timed body and returns its output
    run()                        one more, after timing: checked against the same set's output
    teardown()                   free everything

Contract for `run()`: it must be deterministic given the seed set before `setup()`, and the
k-th call after `setup()` must compute on input set k mod `config().input_sets` (a benchmark
that rotates through several sets so caches do not flatter repeated runs declares how many).
Both sides of a pair draw the same sets from the same seed, so the runner compares their
outputs set by set, and knows which set any later call computed on.

`reference()` is optional: when a float64 answer for the first input set is cheap, returning it
lets the runner check both sides of a pair against exact math, not only against each other.

Accuracy gate (optional): a pair whose optimization changes numerics on purpose (a lower
precision, FP8 weights) may pass the output comparison at its dtype's tolerance and still cost
accuracy. Its config sets `accuracy_gate` (an `AccuracyGate`, e.g. aisp.eval.gate.PerplexityGate)
and each side offers `accuracy_model()`, the model its `run()` uses. After `setup()` the runner
asks the gate for each side's evidence (`gate.evidence(model)`, kept on the host), and after both
sides it appends `gate.judge(baseline_evidence, optimized_evidence)` to the row's comparisons: a
gate exceeded fails the row exactly as a wrong output does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aisp.harness.verify import Comparison


@dataclass(frozen=True)
class Work:
    """What one `run()` does, in physical units, so reports show rates and roofline fractions.

    `flops` counts useful arithmetic (causal attention counts only the unmasked half), and
    `bytes` the fewest bytes that must cross device memory (each input read once, each output
    written once) — so a slow implementation cannot look efficient by doing extra work.
    """

    tokens: int = 0
    flops: float = 0.0
    bytes: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0 or self.flops < 0 or self.bytes < 0:
            raise ValueError(f"work counts must be non-negative, got {self}")


@dataclass(frozen=True)
class BenchmarkConfig:
    """How to time one benchmark and what it computes on.

    `sizes` describes the workload (shapes, dtype) and is stored with every result and
    expectation, so a number is never separated from what produced it.
    """

    iterations: int = 30
    warmup: int = 5
    sizes: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    # ‖out − ref‖/‖ref‖ allowed between the two sides of a pair and against float64
    tolerance: float | None = None
    notes: str = ""
    # Distinct input sets run() rotates through (call k computes on set k mod input_sets).
    input_sets: int = 1
    # NaN/inf in the outputs are expected (e.g. fully masked rows); they must then match
    # position for position. Off by default: a non-finite value is a failing output.
    allow_nonfinite: bool = False
    # Compares the models behind the two sides (see the module docstring); None: no gate.
    accuracy_gate: AccuracyGate | None = None

    def __post_init__(self) -> None:
        if self.input_sets < 1:
            raise ValueError(f"input_sets must be >= 1, got {self.input_sets}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


@runtime_checkable
class AccuracyGate(Protocol):
    """Judges the accuracy of a pair's optimized model against its baseline model."""

    def evidence(self, model: Any) -> Any:
        """What `judge` needs from one side's model (host data: the model is gone by then)."""
        ...

    def judge(self, baseline: Any, optimized: Any) -> Comparison:
        """ok=False when the optimized side's evidence exceeds the gate's bound."""
        ...


@runtime_checkable
class Benchmark(Protocol):
    """One side of a pair (or a lone target). `label` names the workload size when a target
    returns several; `details()` may report choices made in setup (e.g. the SDPA backend)."""

    name: str
    label: str

    def setup(self) -> None: ...

    def run(self) -> Any: ...

    def teardown(self) -> None: ...

    def config(self) -> BenchmarkConfig: ...

    def work(self) -> Work: ...


def optional_reference(bench: Benchmark) -> Any | None:
    """The float64 answer for the first input set, if the benchmark offers one."""
    fn = getattr(bench, "reference", None)
    return fn() if callable(fn) else None


def accuracy_model(bench: Benchmark) -> Any:
    """The model behind `bench.run()`, for an accuracy gate; an error if the side has none."""
    fn = getattr(bench, "accuracy_model", None)
    if not callable(fn):
        raise TypeError(f"{type(bench).__name__} has an accuracy_gate in its config but no "
                        f"accuracy_model() method returning the model its run() uses")
    return fn()


def optional_details(bench: Benchmark) -> dict[str, Any]:
    fn = getattr(bench, "details", None)
    return dict(fn()) if callable(fn) else {}
