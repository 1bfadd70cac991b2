"""Which outputs a row is verified on, and the comparisons that decide it.

A benchmark rotates through `config().input_sets` distinct input sets (call k after setup
computes on set k mod input_sets). Checking only the first output would let an implementation
that is right on set 0 and wrong on the others pass, so each side keeps, on the host:

    per_set[i]   the output of call i, for i < min(input_sets, MAX_CHECKED_SETS): each distinct
                 set once (the sets the timed runs cycle through), compared set by set with the
                 baseline's — same seed, same sets, same order;
    reference    the float64 answer for set 0, when the benchmark offers one;
    rerun        one output taken after the timed runs, compared with the same side's output
                 for the same set: the steady state the timer measured must still compute what
                 was verified (a cache or pool that drifts across calls fails here).

Outputs live on the host (one per checked set per side, plus the baseline's while its variants
run), so a GPU-sized row costs host memory of a few outputs, not device memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from aisp.harness.verify import Comparison, compare

# More distinct sets than this are verified on the first MAX_CHECKED_SETS (stated in the row).
MAX_CHECKED_SETS = 8


def to_host(x: Any) -> Any:
    """Kept outputs go to host memory: a live tensor inside a large cached GPU segment would
    pin the whole segment and distort the next side's reserved memory and fragmentation."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: to_host(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_host(v) for v in x)
    return x


class CountingRun:
    """`bench.run` with a count of calls since setup, so the input set of any call is known."""

    def __init__(self, run: Callable[[], Any], input_sets: int):
        self._run, self.input_sets, self.calls = run, input_sets, 0

    @property
    def next_set(self) -> int:
        return self.calls % self.input_sets

    def __call__(self) -> Any:
        self.calls += 1
        return self._run()


@dataclass
class SideOutputs:
    input_sets: int = 1
    per_set: list[Any] = field(default_factory=list)
    reference: Any = None
    rerun: Comparison | None = None
    rerun_set: int | None = None
    accuracy: Any = None            # the accuracy gate's evidence for this side, if it has one


def collect_per_set(run: CountingRun, device: torch.device) -> list[Any]:
    """Calls 0..k-1 right after setup: one host copy per checked input set."""
    outputs = []
    for _ in range(min(run.input_sets, MAX_CHECKED_SETS)):
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        outputs.append(to_host(out))
        del out
    return outputs


def check_rerun(run: CountingRun, outputs: SideOutputs, tolerance: float,
                allow_nonfinite: bool, role: str) -> None:
    """One more call after the timed runs (advanced to a checked set), against that set's first
    output from the same side."""
    while run.next_set >= len(outputs.per_set):
        run()
    outputs.rerun_set = run.next_set
    c = compare(to_host(run()), outputs.per_set[outputs.rerun_set], tolerance, "first output",
                allow_nonfinite)
    outputs.rerun = Comparison(c.ok, c.rel_error, c.tolerance,
                               f"rerun after timing ({role}, input set {outputs.rerun_set})",
                               c.message)


def compare_sets(out: list[Any], ref: list[Any], tolerance: float, against: str,
                 allow_nonfinite: bool) -> Comparison:
    """Set-by-set comparison; the worst set decides and a failure names its set."""
    worst: Comparison | None = None
    for i, (o, r) in enumerate(zip(out, ref)):
        c = compare(o, r, tolerance, against, allow_nonfinite)
        if not c.ok:
            return Comparison(False, c.rel_error, tolerance, against,
                              f"input set {i}: {c.message}")
        if worst is None or c.rel_error > worst.rel_error:
            worst = c
    return worst or Comparison(False, float("inf"), tolerance, against, "no outputs to compare")


def verify_outputs(base: SideOutputs, opt: SideOutputs, *, tol_pair: float, tol_base: float,
                   tol_opt: float, allow_nonfinite: bool) -> list[Comparison]:
    """Every comparison a row's `verified` depends on (see the module docstring)."""
    if base.input_sets != opt.input_sets:
        return [Comparison(False, float("inf"), tol_pair, "baseline",
                           f"the sides rotate through different numbers of input sets "
                           f"(baseline {base.input_sets}, optimized {opt.input_sets}): their "
                           f"outputs cannot be compared set by set")]
    checks = [compare_sets(opt.per_set, base.per_set, tol_pair, "baseline", allow_nonfinite)]
    if base.reference is not None:
        for role, side, tol in (("baseline", base, tol_base), ("optimized", opt, tol_opt)):
            c = compare(side.per_set[0], base.reference, tol, "float64", allow_nonfinite)
            checks.append(Comparison(c.ok, c.rel_error, c.tolerance, f"float64 ({role})",
                                     c.message))
    checks += [side.rerun for side in (base, opt) if side.rerun is not None]
    return checks


def describe_sample(base: SideOutputs, opt: SideOutputs) -> dict[str, Any]:
    """What the row was verified on, stored in results.json and printed in the report."""
    checked = len(opt.per_set)
    summary = f"{checked} of {base.input_sets} input set(s) compared with the baseline"
    if checked < base.input_sets:
        summary += f" (only the first {MAX_CHECKED_SETS} are checked)"
    if base.reference is not None:
        summary += "; set 0 with float64"
    summary += "; one run after the timed runs against each side's own output for its set"
    return {
        "input_sets": base.input_sets,
        "checked_against_baseline": list(range(checked)),
        "float64_reference": [0] if base.reference is not None else [],
        "rerun_after_timing": {"baseline": base.rerun_set, "optimized": opt.rerun_set},
        "summary": summary,
    }


def check_accuracy(gate: Any, base: SideOutputs, opt: SideOutputs) -> Comparison:
    """The pair's accuracy gate on both sides' evidence (aisp.harness.benchmark says how)."""
    missing = [role for role, side in (("baseline", base), ("optimized", opt))
               if side.accuracy is None]
    if missing:
        return Comparison(False, float("inf"), 0.0, "accuracy gate",
                          f"no accuracy evidence from the {' and '.join(missing)} side: every "
                          f"side of a gated pair sets the same accuracy_gate in its config()")
    return gate.judge(base.accuracy, opt.accuracy)
