"""The flash_sdp pair: each implementation against float64 math, and the pair through the runner."""

import math

import pytest
import torch

from aisp.hardware import detect
from aisp.harness.discovery import resolve_targets
from aisp.harness.runner import RunOptions, run_pairs
from aisp.harness.verify import compare
from aisp.kernels.attention import NaiveCausalAttention, SDPAAttention, reference_causal_attention
from aisp.workloads.prefill_attention import PrefillAttentionShape, attention_work


@pytest.mark.parametrize("hq,hkv,s,d", [(4, 4, 33, 16), (8, 2, 64, 32), (6, 1, 17, 8)])
@pytest.mark.parametrize("impl", [NaiveCausalAttention, SDPAAttention])
def test_implementations_match_float64(impl, hq, hkv, s, d):
    g = torch.Generator().manual_seed(hq * 100 + s)
    q, k, v = (torch.randn(2, h, s, d, generator=g) for h in (hq, hkv, hkv))
    scale = 1 / math.sqrt(d)
    attn = impl()
    attn.prepare(q, k, v, scale)
    out = attn(q, k, v, scale)
    assert compare(out, reference_causal_attention(q, k, v, scale), 1e-5, "float64").ok


def test_a_non_causal_result_is_caught():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 32, 16, generator=g) for _ in range(3))
    bidirectional = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    c = compare(bidirectional, reference_causal_attention(q, k, v, 0.25), 1e-4, "float64")
    assert not c.ok and c.rel_error > 0.1


def test_sdpa_reports_its_backend_choice():
    q, k, v = torch.randn(1, 8, 64, 32), torch.randn(1, 2, 64, 32), torch.randn(1, 2, 64, 32)
    attn = SDPAAttention()
    attn.prepare(q, k, v, 0.2)
    d = attn.details()
    assert d["backend"] in ("flash_attention", "math", "cudnn_attention", "efficient_attention")
    assert d["backend"] in {c.split("+")[0] for c in d["candidates_ms"]}


def test_work_counts_only_the_causal_half():
    w = attention_work(PrefillAttentionShape(batch=1, seq_len=4, num_q_heads=2, num_kv_heads=1,
                                             head_dim=8), element_size=2)
    assert w.flops == 4 * 8 * (4 * 5 // 2) * 2
    assert w.bytes == (2 * 2 * 4 * 8 + 2 * 1 * 4 * 8) * 2
    assert w.tokens == 4


def test_shape_validation():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        PrefillAttentionShape(batch=1, seq_len=8, num_q_heads=6, num_kv_heads=4)


def test_pair_verifies_on_this_machine():
    rows = run_pairs(resolve_targets("ch16:flash_sdp"), detect(), None,
                     RunOptions(iterations=2, warmup=0))
    assert rows  # one row per workload size of this hardware
    for row in rows:
        assert row.verified, row.error
        assert row.speedup > 0
        assert row.optimized.details["backend"]
        assert row.workload["num_q_heads"] == 32 and row.workload["head_dim"] == 128
        # Every rotated input set was compared with the baseline, not only the first.
        sets = row.optimized.details["input_sets"]
        assert row.verification["checked_against_baseline"] == list(range(sets))
