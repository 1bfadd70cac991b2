"""ch16/inference_server_load_test.py end to end: the in-process server on the embedded default
model, a short real load against it over 127.0.0.1, the report with its stability verdict, and
the artifacts."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_run_reports_stability_and_writes_artifacts(tmp_path):
    r = subprocess.run(
        [sys.executable, "ch16/inference_server_load_test.py", "--duration", "6", "--warmup", "1",
         "--concurrency", "2", "--no-progress", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "200",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "starting the server: tiny on cpu, engine core in its own process" in r.stdout
    verdict = json.loads((tmp_path / "results.json").read_text())["stability"]["ttft"]["text"]
    assert verdict.split(":")[0] in r.stdout  # the printed report carries the verdict
    results = json.loads((tmp_path / "results.json").read_text())
    s = results["summary"]
    assert s["num_ok"] > 0 and s["num_failed"] == 0
    for metric in ("ttft", "tpot"):
        assert results["stability"][metric]["text"].startswith(metric.upper())
    # One chunk per token from our server: ITL measures token gaps.
    assert 0.95 <= s["mean_tokens_per_chunk"] <= 1.05
    assert (tmp_path / "requests.csv").read_text().count("\n") > s["num_ok"]
    assert sorted(p.suffix for p in tmp_path.iterdir()).count(".png") == 3
