"""Results JSON, per-request CSV, PNG plots and the printed report, from a hand-built result."""

import csv
import json

import pytest
from rich.console import Console

from aisp.loadtest.artifacts import CSV_COLUMNS, write_results, write_sweep_results
from aisp.loadtest.config import LoadTestConfig, SweepConfig
from aisp.loadtest.records import RequestRecord
from aisp.loadtest.report import print_report, print_sweep_report
from aisp.loadtest.runner import LoadTestResult, PrefixCacheResult
from aisp.loadtest.stability import assess_stability
from aisp.loadtest.stats import summarize
from aisp.loadtest.sweep import SweepPoint, SweepResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_result(n=40, duration=8.0, warmup=2.0) -> LoadTestResult:
    cfg = LoadTestConfig(rate=5.0, duration_s=duration, warmup_s=warmup, slo_ttft_ms=80,
                         slo_tpot_ms=30, api_key="secret")
    t0 = 1000.0
    recs = []
    for i in range(n):
        send = t0 + duration * i / n
        if i % 10 == 7:
            recs.append(RequestRecord(i, send, send + 0.01, scheduled_time=send,
                                      error_kind="http_400", error_message="prompt too long"))
            continue
        ttft = 0.05 + 0.002 * (i % 5)
        chunks = tuple(send + ttft + 0.02 * k for k in range(8))
        recs.append(RequestRecord(i, send, chunks[-1], chunks, 16, "usage", 128, "usage", 16,
                                  scheduled_time=send - 0.001))
    summary = summarize(recs, t0 + warmup, cfg.slo_ttft_ms, cfg.slo_tpot_ms)
    stab = assess_stability(recs, t0, t0 + warmup, t0 + duration, 4, 0.25, 5)
    return LoadTestResult(cfg, "m", "2026-01-01T00:00:00Z", "/health",
                          {"kind": "random", "description": "random test", "salt_nonce": 7,
                           "num_entries": None, "num_skipped": 2,
                           "skipped_reasons": {"no human turn": 2}},
                          t0, t0 + warmup, t0 + duration, t0 + duration + 0.3, tuple(recs),
                          summary, stab, PrefixCacheResult(30.0, 120.0, 0.25, "vllm:x"), 3,
                          environment={"date": "2026-01-01T00:00:00Z", "command": "aisp loadtest",
                           "url": cfg.base_url, "model": "m"})


def test_json_csv_and_pngs_exist_and_parse(tmp_path):
    res = fake_result()
    paths = write_results(res, tmp_path / "run")
    assert set(paths) == {"results", "requests", "latency_cdf", "ttft_tpot_over_time",
                          "throughput_over_time"}
    data = json.loads(paths["results"].read_text())
    assert data["config"]["api_key"] == "***" and data["config"]["rate"] == 5.0
    assert data["config"]["workload"]["input_len"] == "1024"
    assert data["summary"]["ttft"]["count"] == res.summary.ttft.count
    assert data["summary"]["errors"] == {"http_400": 3}
    assert data["summary"]["goodput"]["slo_ttft_ms"] == 80
    assert len(data["stability"]["slices"]) == 4
    assert data["stability"]["stable"] is True and "+-25%" in data["stability"]["text"]
    assert data["prefix_cache"]["hit_rate"] == 0.25
    assert data["environment"]["command"] == "aisp loadtest"
    assert data["workload"]["salt_nonce"] == 7
    with open(paths["requests"]) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 40
    ok = rows[0]
    assert ok["measured"] == "0" and float(ok["ttft_ms"]) == pytest.approx(50.0)
    assert float(ok["tpot_ms"]) == pytest.approx(0.14 / 15 * 1e3, abs=1e-3)  # us precision
    assert ok["output_tokens_source"] == "usage" and ok["error_kind"] == ""
    bad = rows[7]
    assert bad["error_kind"] == "http_400" and bad["ttft_ms"] == ""
    assert bad["error_message"] == "prompt too long"
    for name in ("latency_cdf", "ttft_tpot_over_time", "throughput_over_time"):
        head = paths[name].read_bytes()[:8]
        assert head == PNG_MAGIC and paths[name].stat().st_size > 10_000


def test_printed_report_has_every_section():
    console = Console(record=True, width=140)
    print_report(fake_result(), console)
    text = console.export_text()
    for needle in ("latency (ms", "TTFT", "TPOT", "ITL (per chunk)", "E2E", "throughput",
                   "goodput", "TTFT <= 80 ms and TPOT <= 30 ms", "errors", "http_400",
                   "prompt too long", "stability: K=4", "TTFT stable", "hit rate 25.0%",
                   "skipped 2 malformed"):
        assert needle in text, needle


def test_sweep_outputs(tmp_path):
    a, b = fake_result(), fake_result()
    sweep = SweepResult(SweepConfig(rates=(2.0, 8.0)),
                        (SweepPoint(2.0, 0.95, True, a), SweepPoint(8.0, 0.5, False, b)))
    paths = write_sweep_results(sweep, tmp_path / "sw", plots=False)
    data = json.loads(paths["sweep"].read_text())
    assert data["best_rate"] == 2.0 and [p["met"] for p in data["points"]] == [True, False]
    assert (tmp_path / "sw" / data["points"][1]["dir"] / "results.json").is_file()
    console = Console(record=True, width=140)
    print_sweep_report(sweep, console)
    assert "highest rate meeting the SLOs" in console.export_text()
