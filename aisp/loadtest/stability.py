"""Stability verdict: did TTFT and TPOT hold steady over the measured window?

Contract: `assess_stability` is pure. The measured window [window_start, window_end) (warm-up
end to the end of sending) is cut into K equal time slices; each successful measured request
falls in the slice of its SEND time. For each metric (TTFT, TPOT) a slice is judged only when
it holds at least `min_requests` values; each judged slice's median is compared with the overall
median of the metric (all measured values). The metric is STABLE when every judged slice median
lies within +-band of the overall median, UNSTABLE otherwise (the verdict names each drifting
slice, its time range, its median and its deviation), and NOT JUDGED when fewer than two slices
could be judged. Every verdict text states the band and K.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from aisp.loadtest.records import RequestRecord


@dataclass(frozen=True)
class SliceStats:
    index: int  # 1-based
    start_s: float  # from the run start
    end_s: float
    num_requests: int
    ttft_median_ms: float | None  # None: fewer than min_requests values
    tpot_median_ms: float | None


@dataclass(frozen=True)
class Drift:
    slice_index: int
    start_s: float
    end_s: float
    median_ms: float
    deviation: float  # slice median / overall median - 1


@dataclass(frozen=True)
class MetricVerdict:
    metric: str
    stable: bool | None  # None: not judged
    overall_median_ms: float | None
    num_judged_slices: int
    drifts: tuple[Drift, ...]
    text: str


@dataclass(frozen=True)
class StabilityVerdict:
    band: float
    num_slices: int
    min_requests: int
    slice_s: float
    slices: tuple[SliceStats, ...]
    ttft: MetricVerdict
    tpot: MetricVerdict

    @property
    def stable(self) -> bool | None:
        """True when both are stable, False when either drifted, None when neither judged."""
        verdicts = [v.stable for v in (self.ttft, self.tpot) if v.stable is not None]
        return None if not verdicts else all(verdicts)

    @property
    def text(self) -> str:
        return f"{self.ttft.text}\n{self.tpot.text}"

    def to_dict(self) -> dict:
        return {**asdict(self), "stable": self.stable, "text": self.text}


def _median_ms(values: list[float]) -> float | None:
    return float(np.median(values)) * 1e3 if values else None


def _judge(metric: str, overall: list[float], per_slice: list[list[float]],
           slices: list[SliceStats], band: float, k: int, min_requests: int,
           slice_s: float) -> MetricVerdict:
    rule = f"band +-{band:.0%}, K={k} slices of {slice_s:.1f} s, >= {min_requests} requests each"
    overall_ms = _median_ms(overall)
    judged = [(s, _median_ms(v)) for s, v in zip(slices, per_slice) if len(v) >= min_requests]
    if len(judged) < 2 or overall_ms is None:
        return MetricVerdict(metric, None, overall_ms, len(judged), (),
                             f"{metric} not judged: {len(judged)} of {k} slices have enough "
                             f"requests ({rule}); run longer or at a higher load")
    drifts = []
    for s, m in judged:
        assert m is not None
        dev = m / overall_ms - 1 if overall_ms > 0 else (0.0 if m == 0 else float("inf"))
        if abs(dev) > band:
            drifts.append(Drift(s.index, s.start_s, s.end_s, m, dev))
    if not drifts:
        return MetricVerdict(metric, True, overall_ms, len(judged), (),
                             f"{metric} stable: all {len(judged)} judged slice medians within "
                             f"+-{band:.0%} of the overall median {overall_ms:.2f} ms ({rule})")
    parts = "; ".join(f"slice {d.slice_index} ({d.start_s:.1f}-{d.end_s:.1f} s) median "
                      f"{d.median_ms:.2f} ms is {d.deviation:+.0%}" for d in drifts)
    return MetricVerdict(metric, False, overall_ms, len(judged), tuple(drifts),
                         f"{metric} UNSTABLE: {parts} vs the overall median {overall_ms:.2f} ms "
                         f"({rule})")


def assess_stability(records: list[RequestRecord], run_start: float, window_start: float,
                     window_end: float, num_slices: int = 4, band: float = 0.25,
                     min_requests: int = 5) -> StabilityVerdict:
    if window_end <= window_start:
        raise ValueError(f"empty stability window [{window_start}, {window_end})")
    k = num_slices
    width = (window_end - window_start) / k
    ttfts: list[list[float]] = [[] for _ in range(k)]
    tpots: list[list[float]] = [[] for _ in range(k)]
    counts = [0] * k
    for r in records:
        if not r.ok or not window_start <= r.send_time < window_end:
            continue
        i = min(int((r.send_time - window_start) / width), k - 1)
        counts[i] += 1
        if (t := r.ttft) is not None:
            ttfts[i].append(t)
        if (t := r.tpot) is not None:
            tpots[i].append(t)
    slices = []
    for i in range(k):
        lo = window_start - run_start + i * width
        slices.append(SliceStats(
            i + 1, lo, lo + width, counts[i],
            _median_ms(ttfts[i]) if len(ttfts[i]) >= min_requests else None,
            _median_ms(tpots[i]) if len(tpots[i]) >= min_requests else None))
    all_ttft = [t for s in ttfts for t in s]
    all_tpot = [t for s in tpots for t in s]
    return StabilityVerdict(
        band, k, min_requests, width, tuple(slices),
        _judge("TTFT", all_ttft, ttfts, slices, band, k, min_requests, width),
        _judge("TPOT", all_tpot, tpots, slices, band, k, min_requests, width))
