"""The stability verdict: a steady run passes, a run whose later slices drift is named."""

import numpy as np
import pytest

from aisp.loadtest.records import RequestRecord
from aisp.loadtest.stability import assess_stability


def run(ttft_at, tpot_at, n=80, duration=40.0, tokens=11, seed=0):
    """n requests sent evenly over [0, duration); ttft/tpot (s) as functions of send time."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = duration * i / n
        ttft = ttft_at(t) * (1 + 0.05 * rng.standard_normal())
        tpot = tpot_at(t) * (1 + 0.05 * rng.standard_normal())
        chunks = tuple(t + ttft + k * tpot for k in range(tokens))
        out.append(RequestRecord(i, t, chunks[-1], chunks, tokens, "usage"))
    return out


def test_steady_run_is_stable_and_the_text_states_band_and_k():
    recs = run(lambda t: 0.050, lambda t: 0.010)
    v = assess_stability(recs, 0.0, 0.0, 40.0, num_slices=4, band=0.25, min_requests=5)
    assert v.ttft.stable is True and v.tpot.stable is True and v.stable is True
    assert [s.num_requests for s in v.slices] == [20, 20, 20, 20]
    assert v.slices[2].start_s == pytest.approx(20.0) and v.slices[2].end_s == pytest.approx(30.0)
    assert all(s.ttft_median_ms == pytest.approx(50.0, rel=0.1) for s in v.slices)
    for text in (v.ttft.text, v.tpot.text):
        assert "+-25%" in text and "K=4" in text


def test_later_slices_drifting_are_flagged_with_slice_metric_and_size():
    # TTFT doubles in the last quarter; TPOT steady.
    recs = run(lambda t: 0.050 if t < 30 else 0.100, lambda t: 0.010)
    v = assess_stability(recs, 0.0, 0.0, 40.0, num_slices=4, band=0.25, min_requests=5)
    assert v.ttft.stable is False and v.tpot.stable is True and v.stable is False
    [d] = v.ttft.drifts
    assert d.slice_index == 4 and d.start_s == pytest.approx(30.0)
    assert d.deviation == pytest.approx(1.0, abs=0.15)  # ~+100% against a ~50 ms median
    assert "UNSTABLE" in v.ttft.text and "slice 4" in v.ttft.text and "+-25%" in v.ttft.text
    assert "TPOT stable" in v.tpot.text


def test_a_wider_band_accepts_the_same_drift_and_tpot_drift_is_caught():
    recs = run(lambda t: 0.050, lambda t: 0.010 * (1 + t / 20))  # TPOT climbs to ~3x
    v = assess_stability(recs, 0.0, 0.0, 40.0, band=0.25)
    assert v.ttft.stable is True and v.tpot.stable is False
    assert {d.slice_index for d in v.tpot.drifts} >= {1, 4}
    assert assess_stability(recs, 0.0, 0.0, 40.0, band=5.0).tpot.stable is True


def test_warmup_excluded_and_sparse_slices_not_judged():
    recs = run(lambda t: 0.5 if t < 10 else 0.05, lambda t: 0.01)  # slow only during warm-up
    v = assess_stability(recs, 0.0, 10.0, 40.0, num_slices=3, band=0.25)
    assert v.stable is True and sum(s.num_requests for s in v.slices) == 60
    sparse = run(lambda t: 0.05, lambda t: 0.01, n=6)
    w = assess_stability(sparse, 0.0, 0.0, 40.0, num_slices=4, min_requests=5)
    assert w.ttft.stable is None and w.stable is None and "not judged" in w.ttft.text


def test_failed_requests_do_not_count():
    recs = run(lambda t: 0.05, lambda t: 0.01, n=40)
    recs += [RequestRecord(100 + i, 35.0, 35.1, error_kind="timeout") for i in range(10)]
    v = assess_stability(recs, 0.0, 0.0, 40.0)
    assert v.slices[3].num_requests == 10 and v.stable is True
