import torch

from aisp.hardware import detect
from aisp.harness.discovery import resolve_targets
from aisp.harness.runner import RunOptions, run_pairs

from .toy_chapter import write_pair


def _run(tmp_path, spec, **opts):
    return run_pairs(resolve_targets(spec, tmp_path), detect("cpu"), None,
                     RunOptions(**opts), root=tmp_path)


def test_correct_pair_verifies_with_speedup(tmp_path):
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: (a.double() @ x.double()).float()",
               {"": "lambda a, x: a @ x"})
    [row] = _run(tmp_path, "ch90", seed=3)
    assert row.verified and row.error is None
    assert [c.against for c in row.comparisons] == ["baseline", "float64 (baseline)",
                                                    "float64 (optimized)"]
    assert all(c.rel_error < 1e-6 for c in row.comparisons)
    assert row.speedup == row.baseline.timing.median_ms / row.optimized.timing.median_ms
    assert len(row.optimized.timing.samples_ms) == 5
    assert row.optimized.rates["tflops"] > 0 and row.optimized.rates["tokens_per_s"] > 0
    assert row.verdict.status == "new"


def test_wrong_optimized_result_fails_whatever_its_speed(tmp_path):
    # Off by 1% everywhere: small, but far beyond float32's 1e-4 tolerance.
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: (a @ x) * 1.01"})
    [row] = _run(tmp_path, "ch90")
    assert not row.verified
    assert row.verdict.status == "failed"
    assert "rel error 0.01" in row.error


def test_nan_output_fails(tmp_path):
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: a @ x",
               {"": "lambda a, x: (a @ x).index_fill(0, torch.tensor([3]), float('nan'))"})
    [row] = _run(tmp_path, "ch90")
    assert not row.verified


def test_failing_target_is_reported_and_others_go_on(tmp_path):
    write_pair(tmp_path, "ch90", "broken", "lambda a, x: a @ x",
               {"": "lambda a, x: (_ for _ in ()).throw(RuntimeError('kernel exploded'))"})
    write_pair(tmp_path, "ch90", "fine", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    rows = {r.key: r for r in _run(tmp_path, "ch90")}
    assert "kernel exploded" in rows["broken"].error and not rows["broken"].verified
    assert rows["fine"].verified


def test_variants_and_labels_each_get_a_row_against_one_baseline(tmp_path):
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: a @ x",
               {"": "lambda a, x: a @ x", "t": "lambda a, x: (x.T @ a.T).T"}, labels=("s1", "s2"))
    rows = _run(tmp_path, "ch90")
    assert [r.key for r in rows] == ["mm[s1]", "mm_t[s1]", "mm[s2]", "mm_t[s2]"]
    assert rows[0].baseline is rows[1].baseline        # the baseline is measured once per size
    assert all(r.verified for r in rows)


def test_same_seed_same_inputs_fresh_seed_otherwise(tmp_path):
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    torch.manual_seed(0)
    r1 = _run(tmp_path, "ch90", seed=11)[0]
    r2 = _run(tmp_path, "ch90", seed=11)[0]
    assert r1.comparisons[1].rel_error == r2.comparisons[1].rel_error
