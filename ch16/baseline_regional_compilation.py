"""Baseline for regional_compilation: `torch.compile` of the whole model forward.

One graph holds all the layers (attention an opaque op inside it), so the compile work grows
with the layer count. The workload (a decode and a mixed engine step with paged attention,
float64 reference, cold/warm start measured in child processes) lives in
aisp.workloads.regional_compilation.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.workloads.regional_compilation import regional_compilation_benchmarks  # noqa: E402


def get_benchmark():
    return regional_compilation_benchmarks("full", "baseline_regional_compilation")


if __name__ == "__main__":
    from aisp.cli import run_pair_main

    run_pair_main(__file__, sys.argv[1:])
