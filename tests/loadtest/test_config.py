"""Config validation: errors name the value, the limit and the fix."""

import pytest

from aisp.loadtest.config import (ConfigError, LengthSpec, LoadTestConfig, SweepConfig,
                                  WorkloadConfig)


@pytest.mark.parametrize("kw, match", [
    ({}, "neither of concurrency and rate"),
    ({"concurrency": 2, "rate": 1.0}, "both of concurrency and rate.*--concurrency N"),
    ({"concurrency": 0}, "concurrency 0 is below 1"),
    ({"rate": -1.0}, "rate -1.0 req/s is not a positive"),
    ({"concurrency": 2, "burstiness": 0.5}, "closed loop.*drop them or use --rate"),
    ({"rate": 2.0, "arrival": "constant", "burstiness": 2.0}, "burstiness 2.0 applies"),
    ({"rate": 2.0, "duration_s": 10, "warmup_s": 10}, "warm-up 10 s.*shorter than the duration"),
    ({"rate": 2.0, "url": "127.0.0.1:8000"}, "no http:// or https:// scheme"),
    ({"concurrency": 4, "max_connections": 2}, "max_connections 2 is below concurrency 4"),
    ({"rate": 1.0, "stability_band": 0}, "stability band 0"),
    ({"rate": 1.0, "num_slices": 1}, "num_slices 1 is below 2"),
    ({"rate": 1.0, "slo_ttft_ms": -5}, "slo_ttft_ms -5"),
    ({"rate": 1.0, "endpoint": "chat"}, "token-id prompts.*--endpoint completions"),
    ({"rate": 1.0, "endpoint": "embeddings"}, "endpoint 'embeddings' is unknown"),
])
def test_bad_load_test_configs(kw, match):
    with pytest.raises(ConfigError, match=match):
        LoadTestConfig(**kw)


def test_workload_and_sweep_configs():
    with pytest.raises(ConfigError, match="needs input_len"):
        WorkloadConfig(kind="random", output_len=LengthSpec.fixed(3))
    with pytest.raises(ConfigError, match=r"token id range \[10, 10\)"):
        WorkloadConfig(input_len=LengthSpec.fixed(3), output_len=LengthSpec.fixed(3),
                       vocab_size=10, token_id_min=10)
    with pytest.raises(ConfigError, match="only read by the 'file'"):
        WorkloadConfig(input_len=LengthSpec.fixed(3), output_len=LengthSpec.fixed(3),
                       dataset_path="x.json")
    with pytest.raises(ConfigError, match="below the minimum of 1"):
        LengthSpec.fixed(0)
    with pytest.raises(ConfigError, match="not both or neither"):
        SweepConfig()
    with pytest.raises(ConfigError, match="0 < LOW < HIGH"):
        SweepConfig.parse_search("8:2")
    assert SweepConfig.parse_rates("1, 2,4").rates == (1.0, 2.0, 4.0)
    cfg = LoadTestConfig(rate=2.0, api_key="secret")
    assert cfg.to_dict()["api_key"] == "***" and cfg.connection_limit == 1024
    assert LoadTestConfig(concurrency=3).connection_limit == 3
