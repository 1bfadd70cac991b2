"""Rate sweep: which open-loop request rates meet the SLOs, and the highest that does.

Contract: `run_sweep(config, sweep)` runs one full `run_load` per rate (each with its own warm-up,
duration and, unless a nonce is fixed, its own salt, so one rate cannot warm the prefix cache for
the next) and judges each: a rate MEETS the SLOs when the fraction of its measured requests that
succeeded and met every given SLO is at least `sweep.slo_attainment`. Explicit rates run in the
given order; a search runs LOW, then HIGH, then bisects `search_steps` times between the highest
passing and the lowest failing rate (this assumes attainment falls as the rate rises; a run
where that does not hold is still reported point by point). `best_rate` is the highest rate that
met the SLOs, or None.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from aisp.loadtest.config import LoadTestConfig, SweepConfig, check_sweepable
from aisp.loadtest.runner import LoadTestResult, run_load


@dataclass(frozen=True)
class SweepPoint:
    rate: float
    attainment: float | None  # None: nothing was measured
    met: bool
    result: LoadTestResult


@dataclass(frozen=True)
class SweepResult:
    sweep: SweepConfig
    points: tuple[SweepPoint, ...]

    @property
    def best_rate(self) -> float | None:
        return max((p.rate for p in self.points if p.met), default=None)

    @property
    def text(self) -> str:
        slos = self.points[0].result.config if self.points else None
        what = ""
        if slos is not None:
            parts = [f"TTFT <= {slos.slo_ttft_ms:g} ms" if slos.slo_ttft_ms else "",
                     f"TPOT <= {slos.slo_tpot_ms:g} ms" if slos.slo_tpot_ms else ""]
            what = " and ".join(p for p in parts if p)
        goal = f"{self.sweep.slo_attainment:.0%} of requests with {what}"
        if self.best_rate is None:
            return f"no tested rate met the SLOs ({goal})"
        return f"highest rate meeting the SLOs ({goal}): {self.best_rate:g} req/s"


def _point(rate: float, result: LoadTestResult, sweep: SweepConfig) -> SweepPoint:
    g = result.summary.goodput
    attainment = g.attainment if g is not None else None
    met = attainment is not None and attainment >= sweep.slo_attainment
    return SweepPoint(rate, attainment, met, result)


async def run_sweep(config: LoadTestConfig, sweep: SweepConfig, progress: bool = True,
                    console: Any = None) -> SweepResult:
    """Run the sweep; `config` must be open loop (its rate is replaced per point)."""
    check_sweepable(config)
    if config.closed_loop:
        raise ValueError("a rate sweep is open loop; build the config with rate=..., not "
                         "concurrency")
    points: list[SweepPoint] = []

    async def measure(rate: float) -> SweepPoint:
        if console is not None and progress:
            console.print(f"[bold]sweep:[/] rate {rate:g} req/s")
        result = await run_load(replace(config, rate=rate), progress=progress, console=console)
        point = _point(rate, result, sweep)
        points.append(point)
        return point

    if sweep.rates:
        for rate in sweep.rates:
            await measure(rate)
    else:
        assert sweep.search_low is not None and sweep.search_high is not None
        lo, hi = sweep.search_low, sweep.search_high
        if (await measure(lo)).met and not (await measure(hi)).met:
            for _ in range(sweep.search_steps):
                mid = (lo + hi) / 2
                if (await measure(mid)).met:
                    lo = mid
                else:
                    hi = mid
    return SweepResult(sweep, tuple(points))
