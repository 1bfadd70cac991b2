"""Verification must fail on NaN/inf unless declared, and must cover every rotated input set."""

import math

import pytest
import torch

from aisp.hardware import detect
from aisp.harness.discovery import resolve_targets
from aisp.harness.runner import RunOptions, run_pairs
from aisp.harness.verify import compare

from .toy_chapter import write_rotating_pair

NAN, INF = float("nan"), float("inf")


def _run(tmp_path, **opts):
    return run_pairs(resolve_targets("ch91", tmp_path), detect("cpu"), None,
                     RunOptions(**opts), root=tmp_path)


@pytest.mark.parametrize("out,ref", [
    (torch.zeros(4), torch.tensor([NAN, 1, 1, 1])),     # NaN in the reference only
    (torch.tensor([INF, 1, 1, 1]), torch.ones(4)),      # inf in the output only
    (torch.tensor([NAN, 1.0]), torch.tensor([NAN, 1.0])),  # the same NaN, but not declared
])
def test_nonfinite_values_fail_unless_declared(out, ref):
    c = compare(out, ref, 1e-4, "baseline")
    assert not c.ok and math.isinf(c.rel_error)
    assert "non-finite" in c.message and "allow_nonfinite" in c.message


def test_declared_nonfinite_values_must_match_position_for_position():
    ref = torch.tensor([NAN, -INF, 1.0, 2.0])
    assert compare(ref.clone(), ref, 1e-4, "baseline", allow_nonfinite=True).ok
    # Finite parts are still compared by norm.
    c = compare(torch.tensor([NAN, -INF, 1.0, 2.5]), ref, 1e-4, "baseline", allow_nonfinite=True)
    assert not c.ok and 0 < c.rel_error < 1
    for wrong in ([1.0, -INF, 1.0, 2.0], [NAN, INF, 1.0, 2.0], [NAN, 1.0, -INF, 2.0]):
        c = compare(torch.tensor(wrong), ref, 1e-4, "baseline", allow_nonfinite=True)
        assert not c.ok and "positions differ" in c.message


def test_a_nan_reference_fails_the_row(tmp_path):
    write_rotating_pair(tmp_path, "ch91", "mm", "lambda a, x, i, n: (a @ x) * float('nan')",
                        "lambda a, x, i, n: a @ x")
    [row] = _run(tmp_path)
    assert not row.verified and "non-finite" in row.error


def test_declared_nonfinite_pair_verifies_when_both_sides_agree(tmp_path):
    masked = ("lambda a, x, i, n: "
              "(a @ x).masked_fill(torch.eye(16, dtype=torch.bool), -float('inf'))")
    write_rotating_pair(tmp_path, "ch91", "mm", masked, masked, allow_nonfinite=True)
    [row] = _run(tmp_path)
    # float64 has no -inf diagonal: that comparison fails, so the row does; vs the baseline is ok.
    assert [c.ok for c in row.comparisons if c.against == "baseline"] == [True]
    assert not row.verified and "positions differ" in row.error


def test_a_side_wrong_on_one_rotated_set_only_fails(tmp_path):
    write_rotating_pair(tmp_path, "ch91", "mm", "lambda a, x, i, n: a @ x",
                        "lambda a, x, i, n: (a @ x) * (1.5 if i == 2 else 1.0)", input_sets=3)
    [row] = _run(tmp_path)
    assert not row.verified
    assert "input set 2" in row.error
    assert row.verification["checked_against_baseline"] == [0, 1, 2]
    assert row.verification["input_sets"] == 3


def test_a_side_that_drifts_during_the_timed_runs_fails(tmp_path):
    # Right for its first calls (the ones compared with the baseline), wrong later.
    write_rotating_pair(tmp_path, "ch91", "mm", "lambda a, x, i, n: a @ x",
                        "lambda a, x, i, n: (a @ x) * (1.0 if n <= 5 else 1.01)", input_sets=2)
    [row] = _run(tmp_path)
    assert not row.verified
    assert "rerun after timing (optimized" in row.error
    assert row.verification["rerun_after_timing"]["optimized"] in (0, 1)


def test_every_set_compared_when_correct(tmp_path):
    write_rotating_pair(tmp_path, "ch91", "mm",
                        "lambda a, x, i, n: (a.double() @ x.double()).float()",
                        "lambda a, x, i, n: a @ x", input_sets=3)
    [row] = _run(tmp_path, seed=4)
    assert row.verified, row.error
    assert "3 of 3 input set(s)" in row.verification["summary"]
