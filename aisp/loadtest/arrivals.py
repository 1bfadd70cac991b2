"""Open-loop arrival processes: seeded streams of gaps between request sends.

Contract: `intervals(rate, arrival, burstiness, seed)` yields the gap (seconds) before each next
request, forever; the same arguments give the same gaps. The runner sends the first request at
the start and each later one after the next gap, whatever the server is doing (open loop).

- constant: every gap is 1 / rate.
- poisson (with gamma burstiness, as vLLM's benchmark): gaps ~ Gamma(shape=b, scale=1/(rate*b)).
  The mean gap is 1 / rate for every b; the coefficient of variation is 1 / sqrt(b). b = 1 is
  exponential gaps (a Poisson process); b < 1 is burstier; b > 1 is more regular.

Closed loop (a fixed number of workers) needs no arrival process; the runner implements it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

_BATCH = 1024


def gamma_gaps(rng: np.random.Generator, rate: float, burstiness: float, n: int) -> np.ndarray:
    """n gaps with mean 1/rate and coefficient of variation 1/sqrt(burstiness)."""
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)


def intervals(rate: float, arrival: str = "poisson", burstiness: float = 1.0,
              seed: int = 0) -> Iterator[float]:
    if rate <= 0:
        raise ValueError(f"rate {rate} req/s must be positive")
    if arrival == "constant":
        while True:
            yield 1.0 / rate
    if arrival != "poisson":
        raise ValueError(f"arrival '{arrival}' is unknown; use poisson or constant")
    rng = np.random.default_rng([seed, 4])
    while True:
        yield from gamma_gaps(rng, rate, burstiness, _BATCH).tolist()


def send_offsets(rate: float, arrival: str, burstiness: float, seed: int,
                 duration_s: float) -> list[float]:
    """Send times (seconds from the start) within [0, duration_s): 0, g1, g1 + g2, ..."""
    out: list[float] = []
    t = 0.0
    for gap in intervals(rate, arrival, burstiness, seed):
        if t >= duration_s:
            return out
        out.append(t)
        t += gap
    return out  # unreachable: intervals() is endless
