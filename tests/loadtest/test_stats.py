"""Statistics on hand-built timelines: exact TTFT, TPOT, ITL, E2E, warm-up exclusion, goodput."""

import pytest

from aisp.loadtest.records import RequestRecord
from aisp.loadtest.stats import MetricStats, meets_slo, summarize


def rec(index, send, chunks, end, tokens=None, **kw):
    """A successful request; `tokens` given = usage.completion_tokens, else chunk counting."""
    if tokens is None:
        return RequestRecord(index, send, end, tuple(chunks), len(chunks), "chunks", **kw)
    return RequestRecord(index, send, end, tuple(chunks), tokens, "usage", **kw)


def test_one_request_exact_values_and_tpot_differs_from_itl_for_multi_token_chunks():
    # Sent at 10.0; chunks at +100, +150, +250, +300 ms; 6 tokens (two chunks carried 2 each).
    r = rec(0, 10.0, [10.100, 10.150, 10.250, 10.300], 10.300, tokens=6, prompt_tokens=32,
            prompt_tokens_source="usage")
    assert r.ttft == pytest.approx(0.100)
    assert r.e2e == pytest.approx(0.300)
    assert r.tpot == pytest.approx((0.300 - 0.100) / (6 - 1))  # 40 ms per token
    assert r.itls == pytest.approx([0.050, 0.100, 0.050])
    s = summarize([r], measure_start=10.0)
    assert s.ttft.count == 1 and s.ttft.median_ms == pytest.approx(100.0)
    assert s.tpot.mean_ms == pytest.approx(40.0)
    assert s.itl.count == 3 and s.itl.mean_ms == pytest.approx(200.0 / 3)
    assert s.itl.mean_ms > s.tpot.mean_ms  # chunk gaps are not token gaps here
    assert s.mean_tokens_per_chunk == pytest.approx(1.5)
    assert s.e2e.max_ms == pytest.approx(300.0)
    assert s.output_tokens_source == {"usage": 1}
    assert s.window_s == pytest.approx(0.300)
    assert s.output_token_throughput == pytest.approx(6 / 0.300)
    assert s.input_token_throughput == pytest.approx(32 / 0.300)


def test_chunk_counting_without_usage_makes_tpot_equal_mean_itl():
    r = rec(0, 0.0, [0.2, 0.3, 0.4, 0.5], 0.5)
    assert r.output_tokens == 4 and r.output_tokens_source == "chunks"
    assert r.tpot == pytest.approx(0.1)
    s = summarize([r], 0.0)
    assert s.itl.mean_ms == pytest.approx(s.tpot.mean_ms)
    assert s.mean_tokens_per_chunk is None


def test_pooled_percentiles_over_requests():
    recs = [rec(i, float(i), [i + 0.01 * (i + 1), i + 0.5], i + 0.5) for i in range(10)]
    s = summarize(recs, 0.0)
    ttfts = [10.0 * (i + 1) for i in range(10)]  # 10..100 ms
    assert s.ttft.mean_ms == pytest.approx(55.0)
    assert s.ttft.median_ms == pytest.approx(55.0)
    assert s.ttft.p90_ms == pytest.approx(91.0)  # numpy linear interpolation
    assert s.ttft.p99_ms == pytest.approx(99.1)
    assert s.ttft.min_ms == pytest.approx(min(ttfts)) and s.ttft.max_ms == pytest.approx(100.0)
    assert MetricStats.of_seconds([]) == MetricStats(0)


def test_requests_with_fewer_than_two_tokens_have_no_tpot():
    one = rec(0, 0.0, [0.05], 0.06, tokens=1)
    empty = rec(1, 0.0, [], 0.02, tokens=0)
    assert one.tpot is None and one.ttft == pytest.approx(0.05) and one.itls == []
    assert empty.ttft is None and empty.tpot is None and empty.e2e == pytest.approx(0.02)
    s = summarize([one, empty], 0.0)
    assert s.tpot.count == 0 and s.ttft.count == 1 and s.e2e.count == 2
    assert s.num_without_content == 1


def test_warmup_requests_are_excluded_from_every_statistic():
    warm = [rec(i, 0.1 * i, [0.1 * i + 1.0, 0.1 * i + 1.5], 0.1 * i + 1.5) for i in range(5)]
    failed_warm = RequestRecord(5, 0.2, 0.3, error_kind="timeout", error_message="slow")
    meas = [rec(10 + i, 2.0 + 0.1 * i, [2.0 + 0.1 * i + 0.01, 2.0 + 0.1 * i + 0.03],
                2.0 + 0.1 * i + 0.03, tokens=3) for i in range(4)]
    s = summarize(warm + [failed_warm] + meas, measure_start=2.0)
    assert s.num_sent == 10 and s.num_warmup == 6 and s.num_measured == 4
    assert s.num_ok == 4 and s.errors == {}
    assert s.ttft.count == 4 and s.ttft.max_ms == pytest.approx(10.0)  # warm-up TTFTs were 1 s
    assert s.num_output_tokens == 12
    assert s.window_s == pytest.approx(2.33 - 2.0)


def test_errors_counted_by_kind_and_left_out_of_latency():
    ok = rec(0, 0.0, [0.1, 0.2], 0.2)
    errs = [RequestRecord(1, 0.0, 0.01, error_kind="http_400", error_message="bad prompt"),
            RequestRecord(2, 0.0, 0.01, error_kind="http_400", error_message="bad prompt"),
            RequestRecord(3, 0.0, 0.05, (0.03,), 1, error_kind="connection",
                          error_message="reset")]
    s = summarize([ok, *errs], 0.0)
    assert s.errors == {"http_400": 2, "connection": 1}
    assert s.error_examples["http_400"] == ["bad prompt"]
    assert s.num_failed == 3 and s.ttft.count == 1 and s.itl.count == 1
    assert errs[2].ttft is None and errs[2].itls == []
    assert s.request_throughput == pytest.approx(1 / 0.2)


def test_goodput_counts_requests_meeting_both_slos():
    # TTFT 50 ms / TPOT 10 ms: meets both.  TTFT 150 ms: misses TTFT.  TPOT 30 ms: misses TPOT.
    good = rec(0, 0.0, [0.05, 0.06, 0.07], 0.07, tokens=3)
    slow_first = rec(1, 0.0, [0.15, 0.16, 0.17], 0.17, tokens=3)
    slow_decode = rec(2, 0.0, [0.05, 0.08, 0.11], 0.11, tokens=3)
    single = rec(3, 0.0, [0.04], 0.04, tokens=1)  # no TPOT: passes the TPOT SLO
    failed = RequestRecord(4, 0.0, 0.01, error_kind="http_500", error_message="x")
    recs = [good, slow_first, slow_decode, single, failed]
    s = summarize(recs, 0.0, slo_ttft_ms=100, slo_tpot_ms=20)
    g = s.goodput
    assert g.num_requests == 2 and g.num_output_tokens == 4
    assert g.attainment == pytest.approx(2 / 5)
    assert g.requests_per_s == pytest.approx(2 / 0.17)
    assert summarize(recs, 0.0, slo_ttft_ms=100).goodput.num_requests == 3  # TTFT only
    assert summarize(recs, 0.0, slo_tpot_ms=20).goodput.num_requests == 3  # TPOT only
    assert summarize(recs, 0.0).goodput is None
    assert not meets_slo(rec(5, 0.0, [], 0.01), 100, None)  # no content, no TTFT


def test_dispatch_lag_only_for_open_loop_records():
    r = rec(0, 1.004, [1.1], 1.1, scheduled_time=1.0)
    s = summarize([r], 0.0)
    assert s.dispatch_lag.max_ms == pytest.approx(4.0)
    assert summarize([rec(0, 1.0, [1.1], 1.1)], 0.0).dispatch_lag is None
