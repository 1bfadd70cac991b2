"""Real short runs of the client against the fake SSE server (tests/loadtest/fake_server.py).

The server is a test double of the protocol with injected delays and faults; the thing under
test is the client: its timestamps, its counting, its concurrency control, its run control.
Each run lasts about a second; every wait is bounded.
"""

import asyncio
import json

import pytest

from aisp.loadtest.arrivals import send_offsets
from aisp.loadtest.config import LengthSpec, LoadTestConfig, SweepConfig, WorkloadConfig
from aisp.loadtest.probe import ServerUnavailable
from aisp.loadtest import runner
from aisp.loadtest.runner import run_load
from aisp.loadtest.sweep import run_sweep

from .fake_server import FakeServer, FakeServerConfig, unused_port

FIRST_S, TOKEN_S = 0.05, 0.02


@pytest.fixture(scope="module")
def server():
    with FakeServer() as srv:
        yield srv


def random_workload(input_len=16, output_len=5, **kw):
    return WorkloadConfig(input_len=LengthSpec.fixed(input_len),
                          output_len=LengthSpec.fixed(output_len), vocab_size=1000, **kw)


def config(server, **kw):
    base = dict(url=server.url, workload=random_workload(), duration_s=1.2, drain_timeout_s=5.0,
                request_timeout_s=10.0)
    return LoadTestConfig(**{**base, **kw})


def run(cfg):
    return asyncio.run(asyncio.wait_for(run_load(cfg, progress=False), timeout=30))


def test_closed_loop_timing_concurrency_and_protocol(server):
    server.reset(FakeServerConfig(first_token_delay_s=FIRST_S, token_delay_s=TOKEN_S))
    res = run(config(server, concurrency=3, api_key="k123", slo_ttft_ms=500))
    s = res.summary
    st = server.stats
    assert s.errors == {} and s.num_ok == s.num_measured == st.requests == st.completed
    # Closed loop: N workers, never more than N in flight (seen by the server and the client).
    assert st.max_in_flight == 3 and res.max_in_flight == 3
    # One request takes ~ 50 + 4 * 20 = 130 ms, so 3 workers send ~ 3 * 1.2 / 0.13 ~ 27.
    assert 15 <= s.num_measured <= 30
    # Measured latencies are at least the injected delays and close to them.
    assert s.ttft.min_ms >= FIRST_S * 1e3
    assert s.ttft.median_ms < FIRST_S * 1e3 + 30
    assert TOKEN_S * 1e3 * 0.9 <= s.itl.median_ms < TOKEN_S * 1e3 + 15
    assert TOKEN_S * 1e3 * 0.9 <= s.tpot.median_ms < TOKEN_S * 1e3 + 15
    assert s.e2e.min_ms >= (FIRST_S + 4 * TOKEN_S) * 1e3 * 0.95
    assert s.output_tokens_source == {"usage": s.num_ok} and s.num_output_tokens == 5 * s.num_ok
    assert s.num_input_tokens == 16 * s.num_ok
    assert s.goodput.num_requests == s.num_ok
    # What went over the wire.
    body = st.bodies[0]
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True
    assert body["max_tokens"] == 5 and len(body["prompt"]) == 16
    assert set(st.auth_headers) == {"Bearer k123"}
    # Prefix-cache counters scraped before/after: the fake server hits half of every prompt.
    assert res.prefix_cache.hit_rate == pytest.approx(0.5)
    assert res.prefix_cache.source == "aisp:prefix_cache_hits_total"
    assert res.health_path == "/health"


def test_injected_errors_are_counted_by_kind(server):
    # Request n: 400 when n % 4 == 0, else a garbled event when n % 7 == 0, else an error event
    # when n % 9 == 0, else the connection dropped after two chunks when n % 5 == 0.
    server.reset(FakeServerConfig(first_token_delay_s=0.01, token_delay_s=0.01, fail_every=4,
                                  drop_every=5, garbage_every=7, stream_error_every=9))
    res = run(config(server, concurrency=4, duration_s=1.0))
    s, st = res.summary, server.stats
    assert min(st.failed, st.dropped, st.garbled, st.stream_errors) > 0
    assert s.errors == {"http_400": st.failed, "connection": st.dropped,
                        "malformed_stream": st.garbled, "stream_error": st.stream_errors}
    assert any("injected failure" in m for m in s.error_examples["http_400"])
    assert s.error_examples["stream_error"] == ["injected engine error"]
    assert "this is not json" in s.error_examples["malformed_stream"][0]
    assert s.num_ok == st.completed
    assert s.num_failed == st.failed + st.dropped + st.garbled + st.stream_errors
    failed = [r for r in res.records if r.error_kind == "connection"]
    assert all(r.ttft is None and r.itls == [] for r in failed)  # partial streams don't count


def test_open_loop_sends_on_the_seeded_schedule_with_warmup_excluded(server):
    server.reset(FakeServerConfig(first_token_delay_s=0.01, token_delay_s=0.02,
                                  tokens_per_chunk=2))
    cfg = config(server, rate=25.0, seed=5, duration_s=1.2, warmup_s=0.4,
                 workload=random_workload(output_len=6))
    res = run(cfg)
    expected = send_offsets(25.0, "poisson", 1.0, 5, 1.2)
    assert len(res.records) == len(expected) == server.stats.requests
    offsets = [r.scheduled_time - res.run_start for r in res.records]
    assert offsets == pytest.approx(expected, abs=1e-9)
    assert res.summary.dispatch_lag.p99_ms < 100  # the client kept to the schedule
    s = res.summary
    assert s.num_warmup == sum(1 for t in expected if t < 0.4) > 0
    assert all(r.send_time >= res.measure_start
               for r in res.records[s.num_warmup:])
    # Chunks of 2 tokens: usage says 6 tokens over 3 chunks, TPOT is about half the ITL.
    assert s.mean_tokens_per_chunk == pytest.approx(2.0)
    assert s.tpot.median_ms == pytest.approx(s.itl.median_ms * 2 / 5, rel=0.35)


def test_chat_file_workload_without_usage_and_health_fallback(server, tmp_path):
    server.reset(FakeServerConfig(first_token_delay_s=FIRST_S, token_delay_s=0.01,
                                  include_usage=False, health=False))
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "tell me about paging"},
                           {"from": "gpt", "value": "pages hold kv blocks"}]},
        {"conversations": [{"from": "gpt", "value": "malformed: no human turn"}]}]))
    cfg = config(server, endpoint="chat", concurrency=2, duration_s=0.6,
                 workload=WorkloadConfig(kind="file", dataset_path=str(data)))
    res = run(cfg)
    s = res.summary
    assert res.health_path == "/v1/models" and res.model == "fake-model"
    assert res.workload["num_skipped"] == 1
    assert s.errors == {} and s.num_ok > 0
    # No usage: tokens are counted from content chunks (4 words -> max_tokens 4 -> 4 chunks).
    assert s.output_tokens_source == {"chunks": s.num_ok} and s.num_output_tokens == 4 * s.num_ok
    # The role-only first chunk arrives at once; the first CONTENT chunk sets TTFT.
    assert s.ttft.min_ms >= FIRST_S * 1e3
    msg = server.stats.bodies[0]["messages"][0]
    assert msg["role"] == "user" and msg["content"].endswith("tell me about paging")
    assert msg["content"].startswith("[run ")  # salted text
    assert s.num_input_tokens_unknown == s.num_ok  # no usage, text prompt: unknown length


def test_timeouts_and_unfinished_requests(server):
    server.reset(FakeServerConfig(first_token_delay_s=0.5, token_delay_s=0.01))
    res = run(config(server, concurrency=2, duration_s=0.3, request_timeout_s=0.15))
    assert res.summary.errors.get("timeout", 0) >= 2
    assert "0.15 s" in res.summary.error_examples["timeout"][0]
    server.reset(FakeServerConfig(first_token_delay_s=0.01, token_delay_s=0.05))
    res = run(config(server, concurrency=2, duration_s=0.2, drain_timeout_s=0.2,
                     workload=random_workload(output_len=40)))
    assert res.summary.errors == {"unfinished": 2}
    assert res.finished - res.send_end < 1.0


def test_a_run_whose_every_connection_fails_stops_early(server, monkeypatch):
    monkeypatch.setattr(runner, "ABORT_AFTER_CONNECTION_ERRORS", 10)
    server.reset(FakeServerConfig(first_token_delay_s=0.01, token_delay_s=0.01, drop_every=1))
    res = run(config(server, concurrency=2, duration_s=20.0))
    assert "10 connection errors in a row" in res.stopped_early
    assert res.finished - res.run_start < 5.0
    assert res.summary.errors == {"connection": server.stats.dropped}


def test_no_server_is_a_clear_error(server):
    server.reset(FakeServerConfig(health=False, models=False))
    with pytest.raises(ServerUnavailable, match="not ready.*GET /v1/models -> 404"):
        run(config(server, concurrency=1))
    assert server.stats.requests == 0
    with pytest.raises(ServerUnavailable, match="no server answers.*--url"):
        run(LoadTestConfig(url=f"http://127.0.0.1:{unused_port()}", concurrency=1,
                           duration_s=1))


def test_rate_sweep_finds_the_highest_rate_meeting_the_slo(server):
    # One request at a time, ~ 50 + 2 * 10 = 70 ms each: 4 req/s keeps up, 20 req/s queues.
    server.reset(FakeServerConfig(first_token_delay_s=0.05, token_delay_s=0.01, capacity=1))
    cfg = config(server, rate=4.0, arrival="constant", duration_s=1.0, slo_ttft_ms=100,
                 workload=random_workload(output_len=3))
    sweep = asyncio.run(asyncio.wait_for(
        run_sweep(cfg, SweepConfig(rates=(4.0, 20.0)), progress=False), timeout=30))
    [low, high] = sweep.points
    assert low.rate == 4.0 and low.met and low.attainment == 1.0
    assert high.rate == 20.0 and not high.met and high.attainment < 0.9
    assert sweep.best_rate == 4.0 and "4 req/s" in sweep.text
    assert low.result.workload["salt_nonce"] != high.result.workload["salt_nonce"]
