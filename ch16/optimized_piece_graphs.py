"""Optimized piece_graphs: the dense pieces of every step replayed from CUDA graphs.

Everything between two attention calls (embedding, norms, projections, RoPE, MLP) is captured
once per token-count bucket; attention runs eagerly between the pieces on the step's real
metadata (aisp.engine.piecewise_graphs). Same workload as the baseline
(aisp.workloads.engine_step), with `cuda_graphs="piecewise"`; on a CPU the same padded pieces
run eagerly (nothing can be captured there). Run it standalone to compare with the baseline:
`python ch16/optimized_piece_graphs.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisp.workloads.engine_step import benchmarks  # noqa: E402


def get_benchmark():
    return benchmarks("optimized_piece_graphs", cuda_graphs="piecewise")


if __name__ == "__main__":
    from aisp.cli import run_pair_main

    run_pair_main(__file__, sys.argv[1:])
