"""The regional_compilation pair: whole-model vs regional compile, verified against each other
and float64, with cold/warm starts from child processes reported in the details."""

import torch

from aisp.harness.discovery import resolve_targets
from aisp.harness.runner import RunOptions, run_pairs
from aisp.hardware import detect
from tests.compile_support import needs_compiler

pytestmark = needs_compiler


def test_pair_verifies_and_reports_cold_and_warm_starts():
    torch._dynamo.reset()   # graphs are counted process-wide: start from none
    rows = run_pairs(resolve_targets("ch16:regional_compilation"), detect(), None,
                     RunOptions(iterations=2, warmup=0))
    assert [r.label for r in rows] == ["decode_d4x24", "mixed_d4x24_p2x6"]
    for row in rows:
        assert row.verified, row.error
        assert any(c.against.startswith("float64") for c in row.comparisons)
        base, opt = row.baseline.details, row.optimized.details
        assert base["compile"] == "full" and opt["compile"] == "regional"
        assert base["graphs"] == {"LlamaForCausalLM.forward": 1}
        assert opt["graphs"] == {"LlamaDecoderLayer.pre_attention": 2,
                                 "LlamaDecoderLayer.post_attention": 1}
        for d in (base, opt):
            assert d["recompiles_after_warmup"] == 0
            assert d["cold_cache"] == "cold" and d["cold_cache_dir_was_empty"]
            assert not d["cold_cache_warm"]
            assert d["warm_cache"] == "warm" and d["warm_cache_warm"]
            assert d["cold_start_s"] > 0 and d["warm_start_s"] > 0
