"""Does the optimized side compute the same function as the baseline?

Outputs are compared by the norm-wise relative error ‖out − ref‖ / ‖ref‖ in float64, which is
insensitive to a few large elements and cannot be gamed by a small max-abs on tiny values. The
per-dtype tolerances below sit well above rounding noise and far below what a wrong result
gives (a non-causal mask or a dropped head lands at 0.1–1):

- float64: 1e-10 — differences are reassociation only.
- float32: 1e-4  — reassociation over long reductions (softmax over thousands of keys).
- tf32:    2e-3  — 10-bit mantissa matmuls.
- float16: 5e-3  — 10-bit mantissa storage of scores/probabilities.
- bfloat16: 2e-2 — 7-bit mantissa; a naive path that rounds probabilities to bf16 before the
  second matmul lands around 5e-3 to 1e-2 against an fp32-accumulating flash kernel.
- float8: 1e-1  — 3-bit mantissa (e4m3).

Outputs may be tensors, or tuples/lists/dicts of them (compared leaf by leaf), or plain values
(compared for equality — token ids must match exactly).

NaN and inf fail on either side: a NaN in the reference makes ‖out − ref‖ NaN, and NaN compared
with a tolerance is silently "not greater", which once let any output pass against a broken
reference. A workload that legitimately produces them (masked rows of -inf, say) declares
`allow_nonfinite`; then NaN and ±inf must sit at the same positions on both sides and only the
finite elements are compared by norm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

TOLERANCES: dict[str, float] = {
    "float64": 1e-10,
    "float32": 1e-4,
    "tf32": 2e-3,
    "float16": 5e-3,
    "bfloat16": 2e-2,
    "float8": 1e-1,
}


def tolerance_for(dtype: str | torch.dtype) -> float:
    name = str(dtype).replace("torch.", "")
    if name.startswith("float8"):
        name = "float8"
    if name not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype '{name}'; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[name]


@dataclass(frozen=True)
class Comparison:
    ok: bool
    rel_error: float          # worst leaf's ‖a − b‖/‖b‖ (0 for exact-equal non-tensors)
    tolerance: float
    against: str              # 'baseline' or 'float64'
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if math.isinf(d["rel_error"]) or math.isnan(d["rel_error"]):
            d["rel_error"] = str(d["rel_error"])
        return d


def _leaves(x: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(x, dict):
        return [leaf for k in sorted(x) for leaf in _leaves(x[k], f"{prefix}.{k}")]
    if isinstance(x, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in x):
        return [leaf for i, v in enumerate(x) for leaf in _leaves(v, f"{prefix}[{i}]")]
    return [(prefix or "output", x)]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 on `out`'s device; inf when either side is not finite."""
    a = out.detach().to(dtype=torch.float64)
    b = ref.detach().to(device=a.device, dtype=torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf
    denom = torch.linalg.vector_norm(b).item()
    num = torch.linalg.vector_norm(a - b).item()
    return num / denom if denom > 0 else num


def _count_nonfinite(x: torch.Tensor) -> str:
    return f"{int(torch.isnan(x).sum())} NaN, {int(torch.isinf(x).sum())} inf"


def _nonfinite_problem(key: str, a: torch.Tensor, b: torch.Tensor, allow: bool) -> str | None:
    """Why the non-finite values of `a` (output) and `b` (reference) fail, or None if they don't."""
    a = a.detach().to(dtype=torch.float64)
    b = b.detach().to(device=a.device, dtype=torch.float64)
    if torch.isfinite(a).all() and torch.isfinite(b).all():
        return None
    if not allow:
        return (f"{key}: non-finite values (output {_count_nonfinite(a)}; reference "
                f"{_count_nonfinite(b)}); if the workload expects them, set "
                f"allow_nonfinite=True in its BenchmarkConfig")
    same_nan = torch.equal(torch.isnan(a), torch.isnan(b))
    inf_a, inf_b = torch.isinf(a), torch.isinf(b)
    same_inf = torch.equal(inf_a, inf_b) and torch.equal(a[inf_a], b[inf_b])
    if same_nan and same_inf:
        return None
    return (f"{key}: NaN/inf positions differ (output {_count_nonfinite(a)}; reference "
            f"{_count_nonfinite(b)}); allow_nonfinite requires them to match element for element")


def _finite_part(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The elements finite on both sides (after `_nonfinite_problem` found the rest matching)."""
    keep = torch.isfinite(a) & torch.isfinite(b.to(a.device))
    return a[keep], b.to(a.device)[keep]


def compare(out: Any, ref: Any, tolerance: float, against: str,
            allow_nonfinite: bool = False) -> Comparison:
    """Compare `out` with `ref` leaf by leaf; the worst leaf decides.

    Non-finite values on either side fail, unless `allow_nonfinite` (see the module docstring).
    """
    a_leaves, b_leaves = _leaves(out), _leaves(ref)
    if [k for k, _ in a_leaves] != [k for k, _ in b_leaves]:
        return Comparison(False, math.inf, tolerance, against,
                          f"output structure differs: {[k for k, _ in a_leaves]} vs "
                          f"{[k for k, _ in b_leaves]}")
    worst, msg = 0.0, ""
    for (key, a), (_, b) in zip(a_leaves, b_leaves):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape:
                return Comparison(False, math.inf, tolerance, against,
                                  f"{key}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
            problem = _nonfinite_problem(key, a, b, allow_nonfinite)
            if problem:
                return Comparison(False, math.inf, tolerance, against, problem)
            if allow_nonfinite:
                a, b = _finite_part(a, b)
            err = rel_error(a, b)
            if err > worst or math.isinf(err):
                worst, msg = err, f"{key}: rel error {err:.3g} (tolerance {tolerance:.1g})"
        elif a != b:
            return Comparison(False, math.inf, tolerance, against, f"{key}: {a!r} != {b!r}")
    ok = worst <= tolerance
    return Comparison(ok, worst, tolerance, against, "" if ok else msg)
