"""Load-test statistics with vLLM's definitions, computed from `RequestRecord`s only.

Contract: `summarize(records, measure_start, ...)` is a pure function. A request is MEASURED when
it was sent at or after `measure_start` (= run start + warm-up); warm-up requests are counted
as such and appear in nothing else. Over measured, successful requests:

  TTFT  = first content chunk - send
  TPOT  = (E2E - TTFT) / (output tokens - 1), per request; requests with < 2 tokens are left out
  ITL   = every gap between consecutive content chunks, pooled over requests. A chunk may carry
          several tokens, so mean ITL can exceed TPOT; `mean_tokens_per_chunk` says by how much.
  E2E   = end of stream - send

each as mean / median / p90 / p99 / min / max in ms (numpy's linear-interpolation percentiles).
Throughputs divide by the measured window: from `measure_start` to the last end of a measured
request. Goodput counts successful measured requests whose TTFT <= slo_ttft_ms and TPOT <=
slo_tpot_ms (each only when given; a request with < 2 tokens has no TPOT and passes that SLO;
a request without content has no TTFT and fails a TTFT SLO). Errors are counted by kind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from aisp.loadtest.records import RequestRecord

_EXAMPLES_PER_KIND = 3


@dataclass(frozen=True)
class MetricStats:
    count: int
    mean_ms: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None

    @classmethod
    def of_seconds(cls, values: Iterable[float]) -> "MetricStats":
        a = np.asarray(list(values), dtype=np.float64) * 1e3
        if a.size == 0:
            return cls(0)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(int(a.size), float(a.mean()), float(p50), float(p90), float(p99),
                   float(a.min()), float(a.max()))


@dataclass(frozen=True)
class Goodput:
    slo_ttft_ms: float | None
    slo_tpot_ms: float | None
    num_requests: int  # measured requests that succeeded and met every given SLO
    num_output_tokens: int
    requests_per_s: float | None
    output_tokens_per_s: float | None
    attainment: float | None  # num_requests / measured requests (failures count as misses)


@dataclass(frozen=True)
class Summary:
    num_sent: int
    num_warmup: int
    num_measured: int
    num_ok: int
    num_failed: int
    num_without_content: int  # succeeded but streamed no content (e.g. an immediate EOS)
    window_s: float
    num_input_tokens: int
    num_input_tokens_unknown: int  # successful requests whose prompt length nobody reported
    num_output_tokens: int
    request_throughput: float | None  # successful measured requests per second (as vLLM)
    input_token_throughput: float | None
    output_token_throughput: float | None
    ttft: MetricStats
    tpot: MetricStats
    itl: MetricStats
    e2e: MetricStats
    mean_tokens_per_chunk: float | None  # over requests whose token count came from usage
    output_tokens_source: dict[str, int]
    goodput: Goodput | None
    errors: dict[str, int]
    error_examples: dict[str, list[str]] = field(default_factory=dict)
    dispatch_lag: MetricStats | None = None  # open loop: send - scheduled

    def to_dict(self) -> dict:
        return asdict(self)


def measured(records: Sequence[RequestRecord], measure_start: float) -> list[RequestRecord]:
    return [r for r in records if r.send_time >= measure_start]


def meets_slo(r: RequestRecord, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    if not r.ok:
        return False
    if slo_ttft_ms is not None:
        ttft = r.ttft
        if ttft is None or ttft * 1e3 > slo_ttft_ms:
            return False
    if slo_tpot_ms is not None:
        tpot = r.tpot
        if tpot is not None and tpot * 1e3 > slo_tpot_ms:
            return False
    return True


def _per_s(x: float, window_s: float) -> float | None:
    return x / window_s if window_s > 0 else None


def summarize(records: Sequence[RequestRecord], measure_start: float,
              slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> Summary:
    meas = measured(records, measure_start)
    ok = [r for r in meas if r.ok]
    window = max((r.end_time for r in meas), default=measure_start) - measure_start
    n_out = sum(r.output_tokens for r in ok)
    n_in = sum(r.prompt_tokens for r in ok if r.prompt_tokens is not None)
    errors = Counter(r.error_kind for r in meas if r.error_kind is not None)
    examples: dict[str, list[str]] = {}
    for r in meas:
        if r.error_kind is not None and r.error_message:
            ex = examples.setdefault(r.error_kind, [])
            if r.error_message not in ex and len(ex) < _EXAMPLES_PER_KIND:
                ex.append(r.error_message)
    usage = [r for r in ok if r.output_tokens_source == "usage" and r.chunk_times]
    per_chunk = (sum(r.output_tokens for r in usage) / sum(len(r.chunk_times) for r in usage)
                 if usage else None)
    goodput = None
    if slo_ttft_ms is not None or slo_tpot_ms is not None:
        good = [r for r in meas if meets_slo(r, slo_ttft_ms, slo_tpot_ms)]
        good_tokens = sum(r.output_tokens for r in good)
        goodput = Goodput(slo_ttft_ms, slo_tpot_ms, len(good), good_tokens,
                          _per_s(len(good), window), _per_s(good_tokens, window),
                          len(good) / len(meas) if meas else None)
    lags = [r.send_time - r.scheduled_time for r in meas if r.scheduled_time is not None]
    return Summary(
        num_sent=len(records), num_warmup=len(records) - len(meas), num_measured=len(meas),
        num_ok=len(ok), num_failed=len(meas) - len(ok),
        num_without_content=sum(1 for r in ok if not r.chunk_times),
        window_s=window, num_input_tokens=n_in,
        num_input_tokens_unknown=sum(1 for r in ok if r.prompt_tokens is None),
        num_output_tokens=n_out,
        request_throughput=_per_s(len(ok), window),
        input_token_throughput=_per_s(n_in, window),
        output_token_throughput=_per_s(n_out, window),
        ttft=MetricStats.of_seconds(t for r in ok if (t := r.ttft) is not None),
        tpot=MetricStats.of_seconds(t for r in ok if (t := r.tpot) is not None),
        itl=MetricStats.of_seconds(g for r in ok for g in r.itls),
        e2e=MetricStats.of_seconds(t for r in ok if (t := r.e2e) is not None),
        mean_tokens_per_chunk=per_chunk,
        output_tokens_source=dict(Counter(r.output_tokens_source for r in ok)),
        goodput=goodput, errors=dict(errors), error_examples=examples,
        dispatch_lag=MetricStats.of_seconds(lags) if lags else None)
