"""Optimized regional_compilation: `torch.compile` of each decoder layer's two halves.

The halves around attention (aisp.model.compile, mode `regional`) are compiled once and reused
by every layer, so the compile work does not grow with the layer count; attention runs eagerly
between them. Run it standalone to compare with the baseline:
`python ch16/optimized_regional_compilation.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.workloads.regional_compilation import regional_compilation_benchmarks  # noqa: E402


def get_benchmark():
    return regional_compilation_benchmarks("regional", "optimized_regional_compilation")


if __name__ == "__main__":
    from aisp.cli import run_pair_main

    run_pair_main(__file__, sys.argv[1:])
