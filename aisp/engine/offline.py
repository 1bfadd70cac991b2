"""Offline generation helpers behind `aisp generate`: synthetic prompts and a run summary.

The summary uses the engine's own per-request timestamps (TTFT = first token - arrival; TPOT =
(E2E - TTFT) / (output tokens - 1), vLLM's definitions), so offline numbers and the load test's
numbers mean the same thing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from aisp.engine.engine import RequestOutput


def random_prompts(num_prompts: int, input_len: int, vocab_size: int, seed: int = 0,
                   avoid: Sequence[int] = ()) -> list[list[int]]:
    """Seeded random token ids (never the ids in `avoid`, e.g. eos), `input_len` each."""
    if num_prompts < 1 or input_len < 1:
        raise ValueError(f"num_prompts ({num_prompts}) and input_len ({input_len}) must be >= 1")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (num_prompts, input_len), generator=g)
    for bad in avoid:
        ids[ids == bad] = (bad + 1) % vocab_size
    return ids.tolist()


@dataclass(frozen=True)
class GenerateSummary:
    num_requests: int
    input_tokens: int
    output_tokens: int
    wall_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    ttft_median_ms: float | None
    tpot_median_ms: float | None
    e2e_median_ms: float | None
    num_preempted_requests: int

    def to_dict(self) -> dict:
        return asdict(self)


def _median_ms(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) * 1e3 if vals else None


def summarize(outputs: Sequence[RequestOutput], wall_s: float) -> GenerateSummary:
    n_in = sum(len(o.prompt_token_ids) for o in outputs)
    n_out = sum(len(o.output_token_ids) for o in outputs)
    return GenerateSummary(
        num_requests=len(outputs), input_tokens=n_in, output_tokens=n_out, wall_s=wall_s,
        input_tokens_per_s=n_in / wall_s if wall_s > 0 else 0.0,
        output_tokens_per_s=n_out / wall_s if wall_s > 0 else 0.0,
        ttft_median_ms=_median_ms([o.metrics.ttft for o in outputs]),
        tpot_median_ms=_median_ms([o.metrics.tpot for o in outputs]),
        e2e_median_ms=_median_ms([o.metrics.e2e for o in outputs]),
        num_preempted_requests=sum(1 for o in outputs if o.metrics.num_preemptions))
