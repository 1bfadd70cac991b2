"""Load testing any OpenAI-compatible streaming endpoint (ours, vLLM, SGLang).

Modules, each with its own contract: config (frozen, validated settings), datasets + workloads
(what to send, salted per run), arrivals (open-loop gaps), client (one timed streaming request),
probe (health, model name, prefix-cache counters), records + stats + stability (vLLM's TTFT,
TPOT, ITL, E2E, goodput, drift verdict), runner (`run_load`), sweep (`run_sweep`), report
(rich tables), artifacts + plots (JSON, CSV, PNG), cli (`register(app)` adds `aisp loadtest`),
null_server (a trivially fast streaming server) + capacity (`python -m aisp.loadtest.capacity`:
is the generator itself the limit?).

In-process use (e.g. a script that starts a server and then loads it):

    from aisp.loadtest import LoadTestConfig, run_load, print_report, write_results
    result = await run_load(LoadTestConfig(url=..., concurrency=8, duration_s=30))
    print_report(result)
    write_results(result, "artifacts/my_run")

Names are imported on first use, so `import aisp.loadtest` (and `aisp --help`) stays cheap:
aiohttp, numpy and matplotlib load only when a run, a report or a plot needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "config", "LengthSpec": "config", "LoadTestConfig": "config",
    "SweepConfig": "config", "WorkloadConfig": "config",
    "ServerUnavailable": "probe", "RequestRecord": "records",
    "LoadTestResult": "runner", "PrefixCacheResult": "runner", "run_load": "runner",
    "StabilityVerdict": "stability", "Summary": "stats",
    "SweepResult": "sweep", "run_sweep": "sweep",
    "print_report": "report", "print_sweep_report": "report",
    "write_results": "artifacts", "write_sweep_results": "artifacts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aisp.loadtest' has no attribute '{name}'")
    return getattr(importlib.import_module(f"aisp.loadtest.{module}"), name)
