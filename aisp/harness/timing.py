"""One correct timer for everything aisp measures.

- Device work is asynchronous: on CUDA each sample is bracketed by CUDA events recorded on the
  current stream and read after one synchronize at the end, so host overhead between samples is
  not counted but launch overhead inside the body is. On the CPU a monotonic host clock is used.
- Warm-up runs first (compilation, autotuning, allocator growth stay out of the numbers).
- Optionally the L2 is flushed before each sample (writing a buffer twice its size) so that a
  small working set does not report cache speed as memory speed.
- Every sample is kept; statistics are median, p10, p90, min, max. Means are not reported as
  the headline: a single descheduling spike moves a mean, not a median.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class TimingStats:
    samples_ms: tuple[float, ...]
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> "TimingStats":
        if not samples_ms:
            raise ValueError("no timing samples")
        s = sorted(samples_ms)
        return cls(samples_ms=tuple(samples_ms), median_ms=percentile(s, 50),
                   p10_ms=percentile(s, 10), p90_ms=percentile(s, 90), min_ms=s[0], max_ms=s[-1])

    @property
    def rel_spread(self) -> float:
        """Half the p10–p90 width relative to the median: this run's noise, used to decide
        whether a change against expectations is real."""
        return (self.p90_ms - self.p10_ms) / (2 * self.median_ms) if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        d["rel_spread"] = self.rel_spread
        return d


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class L2Flusher:
    """Evicts the GPU's L2 between samples by writing a buffer twice its size."""

    def __init__(self, device: torch.device, l2_bytes: int | None):
        size = 2 * (l2_bytes or 64 << 20)
        self._buf = torch.empty(size // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self._buf.fill_(1)


def time_callable(fn: Callable[[], Any], *, iterations: int, warmup: int,
                  device: torch.device, before_each: Callable[[], None] | None = None,
                  on_sample: Callable[[int], None] | None = None) -> TimingStats:
    """Run `fn` `warmup` times untimed, then `iterations` times timed, and return the stats.

    `before_each` runs outside the timed region before every sample (L2 flush, input rotation
    by the caller). `on_sample(i)` lets a caller drive a progress bar.
    """
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        for i in range(iterations):
            if before_each is not None:
                before_each()
            starts[i].record()
            fn()
            ends[i].record()
            if on_sample is not None:
                on_sample(i)
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        samples = []
        for i in range(iterations):
            if before_each is not None:
                before_each()
            t0 = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if on_sample is not None:
                on_sample(i)
    return TimingStats.from_samples(samples)
