"""The piece_graphs pair: real engine steps through the runner, eager vs piecewise, verified
against each other, with the paths and launch counts the rows report."""

import subprocess
import sys
from pathlib import Path

import torch

from aisp.hardware import detect
from aisp.harness.discovery import resolve_targets
from aisp.harness.runner import RunOptions, run_pairs
from aisp.workloads.engine_step import EngineStepBenchmark, StepShape

ROOT = Path(__file__).resolve().parents[1]


def test_the_planned_step_is_the_shape_it_claims():
    shape = StepShape("mixed", "tiny", "float32", num_decodes=5, context_len=9,
                      num_prefill_tokens=7, iterations=1, warmup=0)
    torch.manual_seed(3)
    bench = EngineStepBenchmark("t", shape, cuda_graphs="none")
    bench.setup()
    try:
        plan = bench.plan
        decodes = [s for s in plan.scheduled_requests if s.is_decode]
        assert [s.start_position for s in decodes] == [8] * 5
        assert plan.total_num_scheduled_tokens == 12
        first = bench.run()
        assert first.shape == (6, 512) and torch.isfinite(first).all()
        assert torch.equal(bench.run(), first)     # the same plan, the same KV writes
        assert bench.work().tokens == 12
    finally:
        bench.teardown()


def test_pair_verifies_and_each_side_takes_its_path():
    rows = run_pairs(resolve_targets("ch16:piece_graphs"), detect(), None,
                     RunOptions(iterations=2, warmup=0, seed=11))
    assert {r.label for r in rows} == {"decode_b8", "mixed_b8_p40"}
    for row in rows:
        assert row.verified, row.error
        base, opt = row.baseline.details, row.optimized.details
        assert base["path"] == "eager" and opt["path"] == "piecewise", (base, opt)
        if not torch.cuda.is_available():
            assert opt["graph_capture"] is False and "nothing is captured" in opt["note"]
            assert base["launches_per_step"]["aten_ops"] > 0


def test_pair_runs_standalone(tmp_path):
    r = subprocess.run([sys.executable, "ch16/optimized_piece_graphs.py", "--iterations", "2",
                        "--warmup", "0", "--artifacts-dir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "piece_graphs[mixed_b8_p40]" in r.stdout
