"""Engine metrics through a real Prometheus text parser, with values that follow the work done."""

from prometheus_client.parser import text_string_to_metric_families

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.metrics import EngineMetrics
from aisp.engine.sampling_params import SamplingParams


def _samples(metrics: EngineMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name")))] = s.value
    return out


def test_metrics_follow_requests_and_aborts():
    engine = LLMEngine(EngineConfig(model="tiny", device="cpu", max_num_seqs=4))
    metrics = EngineMetrics(model_name="tiny").attach(engine)
    before = _samples(metrics)
    assert before[("aisp:kv_cache_capacity_tokens", ())] == engine.kv_cache.capacity_tokens
    assert before[("aisp:generation_tokens_total", ())] == 0

    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    outs = engine.generate([[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16]], params)
    s = _samples(metrics)
    assert s[("aisp:generation_tokens_total", ())] == 30
    assert s[("aisp:prompt_tokens_total", ())] == sum(len(o.prompt_token_ids) for o in outs)
    assert s[("aisp:request_success_total", (("finished_reason", "length"),))] == 5
    assert s[("aisp:time_to_first_token_seconds_count", ())] == 5
    assert s[("aisp:inter_token_latency_seconds_count", ())] == 5 * 5
    assert s[("aisp:request_time_per_output_token_seconds_count", ())] == 5
    assert s[("aisp:e2e_request_latency_seconds_count", ())] == 5
    ttft_sum = sum(o.metrics.ttft for o in outs)
    assert abs(s[("aisp:time_to_first_token_seconds_sum", ())] - ttft_sum) < 1e-9
    assert s[("aisp:num_requests_running", ())] == 0 and s[("aisp:num_requests_waiting", ())] == 0
    assert 0 <= s[("aisp:kv_cache_usage_perc", ())] <= 1

    rid = engine.add_request([1, 2, 3], params)
    engine.step()
    assert _samples(metrics)[("aisp:num_requests_running", ())] == 1
    engine.abort([rid])
    s = _samples(metrics)
    assert s[("aisp:request_success_total", (("finished_reason", "abort"),))] == 1
    assert s[("aisp:e2e_request_latency_seconds_count", ())] == 6


def test_prefix_cache_counters_move():
    engine = LLMEngine(EngineConfig(model="tiny", device="cpu", block_size=4))
    metrics = EngineMetrics().attach(engine)
    shared = list(range(20, 40))
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    engine.generate([shared + [1]], params)
    engine.generate([shared + [2]], params)
    s = _samples(metrics)
    assert s[("aisp:prefix_cache_hits_total", ())] >= 16
    assert s[("aisp:prefix_cache_queries_total", ())] >= s[("aisp:prefix_cache_hits_total", ())]
