"""The load generator's capacity benchmark (aisp/loadtest/capacity.py) on the CPU: a few seconds
of the real `run_load` against the null server (aisp/loadtest/null_server.py) in a child process.

Floors, not targets: the H200 target (3x the rates of `aisp serve`) is the benchmark's output
(`python -m aisp.loadtest.capacity`), not a timed unit test. Here: every request comes back
whole (exact chunk counts; the server's counts equal the client's), the generator sustains a
floor of chunks per second, and its timings match the server's own view of the same requests.
The checks can fail: a generator that loses a chunk per request is caught.
"""

import asyncio
import json
from dataclasses import replace

import pytest

from aisp.loadtest import runner
from aisp.loadtest.capacity import (CapacityConfig, CapacityResult, PointResult, check_records,
                                    measure_point)
from aisp.loadtest.config import ConfigError, LengthSpec, LoadTestConfig, WorkloadConfig
from aisp.loadtest.null_server import NullServerConfig, NullServerProcess
from aisp.loadtest.records import RequestRecord
from aisp.loadtest.stats import MetricStats

STEP_S = 0.005
CONCURRENCY = 32
OUTPUT_LEN = 40
# A closed loop of 32 streams, one chunk each per 5 ms step: 6,400 chunks/s if the generator
# keeps up. The floor is well below that (a loaded 2-core CI machine) and far above what a
# generator that stalls per chunk or per request would reach.
IDEAL_CHUNKS_S = CONCURRENCY / STEP_S
FLOOR_CHUNKS_S = 0.4 * IDEAL_CHUNKS_S
SETTINGS = dict(concurrencies=(CONCURRENCY,), token_delays_s=(STEP_S,), ceiling_concurrency=None,
                duration_s=3.0, warmup_s=1.0, input_len=LengthSpec.fixed(16),
                output_len=LengthSpec.fixed(OUTPUT_LEN), drain_timeout_s=10.0)


@pytest.fixture(scope="module")
def server():
    with NullServerProcess(NullServerConfig(token_delay_s=STEP_S)) as srv:
        yield srv


def test_the_generator_sustains_a_floor_with_whole_records_and_true_timings(server):
    assert server.shared_clock   # Linux: perf_counter is CLOCK_MONOTONIC, one clock for both
    p = measure_point(CapacityConfig(**SETTINGS), server, CONCURRENCY, None, progress=False)
    assert p.clean, (p.problems, p.errors)
    assert p.num_ok == p.num_sent > CONCURRENCY
    assert p.chunks_per_s >= FLOOR_CHUNKS_S, p
    assert p.requests_per_s >= FLOOR_CHUNKS_S / OUTPUT_LEN, p
    assert p.generator_cpu is not None and 0 < p.generator_cpu <= 1.05   # one event loop
    # The server really paced its writes, and the client saw the same gaps and first chunks.
    assert p.server_itl.median_ms == pytest.approx(STEP_S * 1e3, rel=0.2)
    assert abs(p.client_itl.median_ms - p.server_itl.median_ms) < STEP_S * 1e3 / 2
    assert 0 < p.client_ttft.median_ms - p.server_ttft.median_ms < 25


def test_a_generator_that_loses_a_chunk_per_request_is_caught(server, monkeypatch):
    send = runner.send_request

    async def lossy(*args, **kwargs):
        rec = await send(*args, **kwargs)
        return replace(rec, chunk_times=rec.chunk_times[:-1])

    monkeypatch.setattr(runner, "send_request", lossy)
    cfg = CapacityConfig(**{**SETTINGS, "duration_s": 1.0, "warmup_s": 0.2})
    p = measure_point(cfg, server, 8, None, progress=False)
    assert not p.clean and not p.errors
    assert f"{OUTPUT_LEN - 1} token chunks and {OUTPUT_LEN} output tokens" in p.problems[0]
    assert any(x.startswith("the server counts") and x.endswith("chunks, the client's records "
                                                                f"{p.num_ok * (OUTPUT_LEN - 1):,}")
               for x in p.problems), p.problems


def _record(index, n, requested=None, **kw):
    times = tuple(1.0 + 0.01 * i for i in range(n))
    return RequestRecord(index, 0.5, 2.0, chunk_times=times, output_tokens=requested or n,
                         output_tokens_source="usage", requested_output_tokens=requested or n,
                         **kw)


def test_check_records_names_every_kind_of_mismatch():
    whole = (_record(0, 3), _record(1, 5))
    assert check_records(whole, {"requests": 2, "completed": 2, "chunks": 8}) == []
    # The server served a request the client has no record of.
    assert check_records(whole, {"requests": 3, "completed": 3, "chunks": 8}) == [
        "the server counts 3 requests, the client's records 2",
        "the server counts 3 completed, the client's records 2"]
    short = (_record(0, 2, requested=3),)
    assert check_records(short, {"requests": 1, "completed": 1, "chunks": 2}) == [
        "request 0: 2 token chunks and 3 output tokens (from usage) for max_tokens 3"]
    backwards = (replace(_record(0, 3), chunk_times=(1.2, 1.1, 1.3)),)
    assert "out of order" in check_records(backwards, {"requests": 1, "completed": 1,
                                                       "chunks": 3})[0]
    # With failures the totals are not compared (the server may have written unread chunks).
    failed = (_record(0, 3), _record(1, 1, error_kind="connection"))
    assert check_records(failed, {"requests": 2, "completed": 1, "chunks": 9}) == []


def _point(req_s, chunks_s, client_ttft_ms=10.0, server_ttft_ms=8.0, problems=()):
    def m(median):
        return MetricStats(100, median, median, median, median, median, median)
    return PointResult(
        load="concurrency 1", concurrency=1, rate=None, token_delay_s=0.01, window_s=10.0,
        num_sent=10, num_ok=10, errors={}, requests_per_s=req_s, chunks_per_s=chunks_s,
        reported_requests_per_s=None, reported_output_tokens_per_s=None, generator_cpu=0.5,
        server_cpu=0.2, client_ttft=m(client_ttft_ms), client_itl=m(10.0),
        server_ttft=m(server_ttft_ms), server_itl=m(10.2), dispatch_lag=None,
        problems=problems)


def test_the_verdict_counts_only_whole_points_with_true_timings():
    c = CapacityConfig(against_req_s=10.0, against_chunks_s=1000.0)
    fast_but_late = _point(100.0, 10000.0, client_ttft_ms=40.0)      # TTFT off by 32 ms
    fast_but_lossy = _point(90.0, 9000.0, problems=("request 3: ...",))
    good = _point(35.0, 3100.0)
    r = CapacityResult(c, (fast_but_late, fast_but_lossy, good))
    assert r.best is good and r.keeps_up
    assert "reaches 3x" in r.verdict and "35.0 req/s (3.5x 10)" in r.verdict
    assert fast_but_late.timing_errors(c)[0].startswith("TTFT median 40.00 ms at the client")
    # Both rates must reach the target at one point.
    assert not CapacityResult(c, (_point(35.0, 2900.0),)).keeps_up
    assert CapacityResult(c, (fast_but_late,)).best is None
    json.dumps(r.to_dict())   # plain data


@pytest.mark.parametrize("kw, words", [
    (dict(concurrencies=(), rates=()), "no load to run"),
    (dict(warmup_s=30.0), "shorter than the duration"),
    (dict(token_delays_s=(-1.0,)), "token delays must be >= 0"),
])
def test_bad_settings_say_what_to_change(kw, words):
    with pytest.raises(ConfigError, match=words):
        CapacityConfig(**kw)


def test_the_null_server_streams_chat_too(server, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"hello number {i}", "output_len": 3 + i})
                            + "\n" for i in range(4)))
    cfg = LoadTestConfig(url=server.url, endpoint="chat", concurrency=4, duration_s=0.5,
                         drain_timeout_s=5.0, workload=WorkloadConfig(kind="file",
                                                                      dataset_path=str(data)))
    res = asyncio.run(asyncio.wait_for(runner.run_load(cfg, progress=False), timeout=30))
    assert res.model == "null-model" and res.summary.errors == {}
    assert res.records and all(len(r.chunk_times) == r.requested_output_tokens == r.output_tokens
                               for r in res.records)
    assert {r.prompt_tokens_source for r in res.records} == {"usage"}


def test_the_benchmark_command_runs_and_writes_its_json(tmp_path, capsys):
    from aisp.loadtest.capacity import main

    out = tmp_path / "capacity.json"
    result = main(["--concurrency", "4", "--token-delay-ms", "5", "--ceiling-concurrency", "2",
                   "--duration", "1", "--warmup", "0.2", "--input-len", "8", "--output-len",
                   "10", "--no-progress", "--json", str(out)])
    assert [(p.load, p.token_delay_s) for p in result.points] == [
        ("concurrency 2", 0.0), ("concurrency 4", STEP_S)]
    assert all(p.clean for p in result.points), [p.problems for p in result.points]
    data = json.loads(out.read_text())
    assert data["verdict"] == result.verdict and len(data["points"]) == 2
    assert data["config"]["output_len"] == "10" and data["environment"]["aisp_git_sha"]
    printed = " ".join(capsys.readouterr().out.split())
    assert "back to back (ceiling)" in printed and result.verdict in printed
