"""ch16/scheduler.py: the visible demonstration runs, shows chunking, mixing and preemption (none of
it admit-then-preempt thrash), and ends with every KV block free, under both policies."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_demo_shows_the_scheduler_at_work(policy):
    r = subprocess.run([sys.executable, "ch16/scheduler.py", "--policy", policy, "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="160"))
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"(\d+) steps; (\d+) mixed prefill\+decode steps; (\d+) preemptions \(recompute\), "
                  r"(\d+) of them thrash", r.stdout)
    assert m and int(m.group(2)) > 0 and int(m.group(3)) > 0
    assert int(m.group(4)) == 0  # no request admitted only to be preempted again at once
    assert "admission keeps 1 of 20 blocks free (watermark 1% of the blocks" in r.stdout
    assert "nothing leaked" in r.stdout
    assert len(re.findall(r"^R\d: \d+ tokens \(length\)", r.stdout, re.M)) == 6
    assert re.search(r"\bP\d+\b", r.stdout)  # prefill chunks are shown


def test_demo_rejects_a_cache_too_small_for_any_request():
    r = subprocess.run([sys.executable, "ch16/scheduler.py", "--num-kv-blocks", "2",
                        "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2
    assert "error: request 'R0': prompt has 40 tokens" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
