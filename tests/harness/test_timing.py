import time

import numpy as np
import pytest
import torch

from aisp.harness.timing import TimingStats, percentile, time_callable


def test_warmup_is_untimed_and_every_sample_kept():
    calls = []

    def body():
        calls.append(1)
        time.sleep(0.002)

    stats = time_callable(body, iterations=7, warmup=3, device=torch.device("cpu"))
    assert len(calls) == 10
    assert len(stats.samples_ms) == 7
    assert min(stats.samples_ms) >= 2.0           # the sleep is inside the timed region
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.min_ms == min(stats.samples_ms) and stats.max_ms == max(stats.samples_ms)


def test_real_cpu_workload_scales_with_size():
    a_small, a_big = torch.randn(64, 64), torch.randn(512, 512)
    small = time_callable(lambda: a_small @ a_small, iterations=15, warmup=2, device=torch.device("cpu"))
    big = time_callable(lambda: a_big @ a_big, iterations=15, warmup=2, device=torch.device("cpu"))
    # 512x more FLOPs: the fastest samples must order correctly even on a busy machine (the
    # minimum is what interference from other processes cannot lower).
    assert big.min_ms > small.min_ms


@pytest.mark.parametrize("q", [0, 10, 50, 90, 100])
def test_percentile_matches_numpy(q):
    values = sorted(np.random.default_rng(q).normal(size=37).tolist())
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_stats_from_samples_and_spread():
    s = TimingStats.from_samples([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.median_ms == 3.0
    assert s.rel_spread == pytest.approx((s.p90_ms - s.p10_ms) / 6.0)
    with pytest.raises(ValueError):
        TimingStats.from_samples([])


def test_before_each_runs_outside_each_sample():
    order = []
    time_callable(lambda: order.append("run"), iterations=3, warmup=1, device=torch.device("cpu"),
                  before_each=lambda: order.append("flush"))
    assert order == ["run", "flush", "run", "flush", "run", "flush", "run"]
