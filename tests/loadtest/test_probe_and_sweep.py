"""Prometheus text parsing for prefix-cache counters; the sweep's bisection search."""

import asyncio
from dataclasses import replace

import pytest

import aisp.loadtest.sweep as sweep_mod
from aisp.loadtest.config import ConfigError, LoadTestConfig, SweepConfig
from aisp.loadtest.probe import parse_samples, parse_samples_fallback, prefix_counters
from aisp.loadtest.sweep import run_sweep

from .test_outputs import fake_result

VLLM_TEXT = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B"} 4096.0
vllm:prefix_cache_queries_total{engine="1",model_name="meta-llama/Llama-3.1-8B"} 1024.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="meta-llama/Llama-3.1-8B"} 2048.0
vllm:prefix_cache_hits_total{engine="1",model_name="meta-llama/Llama-3.1-8B"} 512.0
vllm:num_requests_running{model_name="a b} c"} 3
"""


@pytest.mark.parametrize("parse", [parse_samples, parse_samples_fallback])
def test_vllm_counters_are_summed_over_label_sets(parse):
    samples = parse(VLLM_TEXT)
    c = prefix_counters(samples)
    assert c is not None and c.source == "vllm:prefix_cache_hits_total"
    assert (c.hits, c.queries) == (2560.0, 5120.0)
    assert samples["vllm:num_requests_running"] == 3.0  # a label value with '} ' inside


def test_aisp_names_win_and_absent_counters_give_none():
    text = ('aisp:prefix_cache_hits_total{model_name="m"} 5\n'
            'aisp:prefix_cache_queries_total{model_name="m"} 10 1700000000000\n')
    assert prefix_counters(parse_samples_fallback(text)).hits == 5.0
    assert prefix_counters(parse_samples(text + VLLM_TEXT)).source.startswith("aisp:")
    assert prefix_counters(parse_samples("# nothing here\nup 1\n")) is None


def test_bisection_search_over_rates(monkeypatch):
    capacity = 11.0  # the fake system meets the SLO below 11 req/s
    calls = []

    async def fake_run_load(cfg, progress=True, console=None):
        calls.append(cfg.rate)
        base = fake_result()
        good = replace(base.summary.goodput, attainment=1.0 if cfg.rate <= capacity else 0.3)
        return replace(base, config=cfg, summary=replace(base.summary, goodput=good))

    monkeypatch.setattr(sweep_mod, "run_load", fake_run_load)
    cfg = LoadTestConfig(rate=1.0, slo_ttft_ms=100)
    res = asyncio.run(run_sweep(cfg, SweepConfig(search_low=2, search_high=18, search_steps=3),
                                progress=False))
    assert calls == [2, 18, 10, 14, 12]
    assert res.best_rate == 10 and "10 req/s" in res.text
    calls.clear()
    res = asyncio.run(run_sweep(cfg, SweepConfig(search_low=12, search_high=18), progress=False))
    assert calls == [12] and res.best_rate is None and "no tested rate" in res.text
    with pytest.raises(ConfigError, match="give --slo-ttft-ms"):
        asyncio.run(run_sweep(LoadTestConfig(rate=1.0), SweepConfig(rates=(1.0,))))
