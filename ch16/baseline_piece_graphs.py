"""Baseline for piece_graphs: every engine step launched eagerly, kernel by kernel, from Python.

The workload (a decode-only step and a mixed prefill + decode step of one engine, run through
the engine's runner; launches per step from a profiler trace) lives in
aisp.workloads.engine_step; this side runs it with `cuda_graphs="none"`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.workloads.engine_step import benchmarks  # noqa: E402


def get_benchmark():
    return benchmarks("baseline_piece_graphs", cuda_graphs="none")


if __name__ == "__main__":
    from aisp.cli import run_pair_main

    run_pair_main(__file__, sys.argv[1:])
