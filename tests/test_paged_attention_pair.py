"""The paged_attention pair: both providers against float64, the pair through the runner, and
the standalone entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aisp.hardware import detect
from aisp.harness.discovery import resolve_targets
from aisp.harness.runner import RunOptions, run_pairs
from aisp.harness.verify import compare
from aisp.workloads.paged_decode import (ContiguousKV, DecodeInputs, PagedDecodeShape, PagedKV,
                                         reference_decode)

ROOT = Path(__file__).resolve().parents[1]


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: Triton interprets


@pytest.mark.parametrize("provider", [ContiguousKV, lambda: PagedKV("torch"),
                                      lambda: PagedKV("triton")])
def test_providers_match_float64(provider):
    torch.manual_seed(5)
    shape = PagedDecodeShape(batch=3, min_context=5, max_context=40, steps=3, num_q_heads=4,
                             num_kv_heads=2, head_dim=16, block_size=4)
    inp = DecodeInputs(shape, DEVICE, torch.float32)
    p = provider()
    p.prepare(inp, shape)
    first = p.run()
    assert compare(first, reference_decode(inp, shape), 1e-4, "float64").ok
    # Runs are independent: a second run starts from the same histories.
    assert torch.equal(p.run(), first)
    d = p.details()
    assert d["kv_bytes_used"] <= d["kv_bytes_reserved"]


def test_paged_details_report_block_waste():
    torch.manual_seed(0)
    shape = PagedDecodeShape(batch=2, min_context=3, max_context=3, steps=1, num_q_heads=2,
                             num_kv_heads=1, head_dim=16, block_size=4)
    p = PagedKV("torch")
    p.prepare(DecodeInputs(shape, DEVICE, torch.float32), shape)
    # 4 tokens per sequence fill exactly one 4-token block: no waste.
    assert p.details()["kv_waste_pct"] == 0.0


def test_pair_verifies_and_reports_memory_behaviour():
    rows = run_pairs(resolve_targets("ch16:paged_attention"), detect(), None,
                     RunOptions(iterations=2, warmup=0))
    for row in rows:
        assert row.verified, row.error
        assert row.optimized.details["kv_allocations_per_run"] == 0
        assert row.baseline.details["kv_allocations_per_run"] > 0
        assert row.baseline.memory is not None and row.optimized.memory is not None
        # The notes quote what was measured: allocations through torch's allocator on both
        # sides, never a fixed claim that the row shows page faults or transient memory.
        notes = " ".join(row.notes)
        assert "shows the allocator behaviour" not in notes
        assert f"baseline {row.baseline.memory.allocs_per_run:,} (" in notes
        assert f"optimized {row.optimized.memory.allocs_per_run:,} (" in notes
        assert row.baseline.memory.allocs_per_run >= row.baseline.details["kv_allocations_per_run"]


def test_standalone_entry_point_prints_the_comparison(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "ch16/optimized_paged_attention.py", "--iterations", "2",
                        "--warmup", "0", "--json", str(out), "--artifacts-dir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "paged_attention[" in r.stdout
    assert [row["key"].split("[")[0] for row in json.loads(out.read_text())["rows"]] == \
        ["paged_attention"] * len(json.loads(out.read_text())["rows"])
