"""What the report says about a CPU run: seed, sample, verdict label and measured memory."""

from aisp.hardware import detect
from aisp.harness.discovery import resolve_targets
from aisp.harness.provenance import provenance
from aisp.harness.report import build_results, render_markdown
from aisp.harness.runner import RunOptions, run_pairs

from .toy_chapter import write_pair


def test_cpu_report_names_what_was_measured(tmp_path):
    write_pair(tmp_path, "ch90", "mm", "lambda a, x: a @ x", {"": "lambda a, x: a @ x"})
    info = detect("cpu")
    options = RunOptions(cold_l2=True).seeded()
    rows = run_pairs(resolve_targets("ch90", tmp_path), info, None, options, root=tmp_path)
    results = build_results(rows, info, None, options, provenance(info), "ch90")
    md = render_markdown(results)
    assert f"- seed: {options.seed} (drawn; rerun with `--seed {options.seed}`)" in md
    assert "- cold L2: requested, NOT applied (no GPU L2 to flush on the cpu" in md
    assert "- verified on: 1 of 1 input set(s) compared with the baseline" in md
    # On the CPU the probe is named for what it reads, next to the allocator counts.
    assert "transient peak" not in md
    mem = rows[0].baseline.memory
    assert f"{mem.allocs_per_run:,} allocations per run" in md and "resident-set growth" in md
    assert all(f"- note: {n}" in md for n in rows[0].notes)


def test_row_notes_give_each_sides_own_note():
    from aisp.harness.notes import row_notes
    from aisp.harness.runner import RowResult, SideResult

    def row(base_note, opt_note):
        return RowResult(key="p[x]", target="ch:p", chapter="ch", label="x", workload={},
                         baseline=SideResult("baseline_p", details={"note": base_note}),
                         optimized=SideResult("optimized_p", details={"note": opt_note}))

    assert row_notes(row("cold start 30 s", "cold start 4 s")) == [
        "baseline: cold start 30 s", "optimized: cold start 4 s"]
    assert row_notes(row(None, "only mine")) == ["only mine"]
    assert row_notes(row("same", "same")) == ["same"]
