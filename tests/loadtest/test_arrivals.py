"""Arrival processes: Poisson rate within statistical tolerance; burstiness sets the CV."""

import itertools

import numpy as np
import pytest

from aisp.loadtest.arrivals import intervals, send_offsets


def gaps(n, **kw):
    return np.array(list(itertools.islice(intervals(**kw), n)))


def test_poisson_mean_rate_and_cv_within_tolerance():
    g = gaps(20000, rate=8.0, arrival="poisson", burstiness=1.0, seed=3)
    # Mean of 20000 exponential gaps: standard error 1/sqrt(n) = 0.7% of the mean; allow 4 SE.
    assert 1 / g.mean() == pytest.approx(8.0, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, abs=0.03)
    assert (g > 0).all()


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_changes_cv_not_the_mean(burstiness):
    g = gaps(20000, rate=5.0, burstiness=burstiness, seed=1)
    assert 1 / g.mean() == pytest.approx(5.0, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.05)


def test_burstier_means_more_variable():
    cvs = [np.std(x) / np.mean(x) for x in
           (gaps(5000, rate=2.0, burstiness=b, seed=0) for b in (0.5, 1.0, 2.0))]
    assert cvs[0] > cvs[1] > cvs[2]


def test_seeded_and_constant():
    assert np.array_equal(gaps(50, rate=3.0, seed=7), gaps(50, rate=3.0, seed=7))
    assert not np.array_equal(gaps(50, rate=3.0, seed=7), gaps(50, rate=3.0, seed=8))
    assert gaps(5, rate=4.0, arrival="constant").tolist() == [0.25] * 5
    assert send_offsets(4.0, "constant", 1.0, 0, 1.0) == [0.0, 0.25, 0.5, 0.75]
    offs = send_offsets(50.0, "poisson", 1.0, 0, 100.0)
    assert len(offs) == pytest.approx(5000, rel=0.05) and max(offs) < 100.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="rate"):
        next(intervals(0.0))
    with pytest.raises(ValueError, match="poisson or constant"):
        next(intervals(1.0, "uniform"))
