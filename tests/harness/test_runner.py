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
    assert [c.against for c in row.comparisons] == [
        "baseline", "float64 (baseline)", "float64 (optimized)",
        "rerun after timing (baseline, input set 0)", "rerun after timing (optimized, input set 0)"]
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


def test_the_drawn_seed_is_recorded_and_reproduces_the_run(tmp_path):
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    drawn = _run(tmp_path, "ch90")[0]
    assert isinstance(drawn.seed, int) and drawn.to_dict()["seed"] == drawn.seed
    again = _run(tmp_path, "ch90", seed=drawn.seed)[0]
    # Same inputs: the float64 comparison of the baseline lands on the very same error.
    assert again.seed == drawn.seed
    assert again.comparisons[1].rel_error == drawn.comparisons[1].rel_error


def test_seeded_options_keep_a_given_seed_and_draw_one_otherwise():
    given = RunOptions(seed=5).seeded()
    assert (given.seed, given.seed_drawn) == (5, False)
    drawn = RunOptions().seeded()
    assert isinstance(drawn.seed, int) and drawn.seed_drawn
    assert drawn.seeded() is drawn           # seeding twice keeps the first draw


def test_cold_l2_is_reported_as_not_applied_on_the_cpu():
    cpu = torch.device("cpu")
    assert RunOptions(cold_l2=True).cold_l2_applied(cpu) == \
        (False, "no GPU L2 to flush on the cpu; samples ran warm")
    assert RunOptions().cold_l2_applied(cpu)[0] is False
    assert RunOptions(cold_l2=True).cold_l2_applied(torch.device("cuda"))[0] is True


def test_notes_quote_the_measured_allocations_of_both_sides(tmp_path):
    # The optimized side multiplies in place into a buffer: fewer allocations per run.
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: (a @ x) + 0",
               {"": "lambda a, x: torch.mm(a, x, out=x.new_empty(0).resize_(64, 64))"})
    [row] = _run(tmp_path, "ch90", seed=1)
    b, o = row.baseline.memory, row.optimized.memory
    assert b.allocs_per_run >= 2 and b.alloc_bytes_per_run >= 2 * 64 * 64 * 4
    [alloc_note] = [n for n in row.notes if n.startswith("allocations per run")]
    assert f"baseline {b.allocs_per_run:,}" in alloc_note
    assert f"optimized {o.allocs_per_run:,}" in alloc_note
    assert row.metrics()["baseline_allocs_per_run"] == b.allocs_per_run
    # The resident-set/page-fault note quotes its numbers, or says plainly that it saw none.
    [res_note] = [n for n in row.notes if "page faults" in n]
    faults = [(m.minor_page_faults or 0) + (m.major_page_faults or 0) for m in (b, o)]
    if faults == [0, 0] and b.transient_peak_bytes == o.transient_peak_bytes == 0:
        assert "shows no difference" in res_note
    else:
        assert f"page faults baseline {faults[0]:,}, optimized {faults[1]:,}" in res_note
