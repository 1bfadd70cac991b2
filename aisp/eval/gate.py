"""`PerplexityGate`: the harness's accuracy gate (aisp.harness.benchmark) from perplexity math.

A gated pair's config carries one gate; the runner calls `evidence(model)` on each side's model
right after setup (each window's float64 log-probabilities at the scored positions, on the host:
scored tokens × vocab × 8 bytes, so keep `token_ids` to a few hundred tokens at a real vocab)
and `judge(baseline, optimized)` once both sides ran. The row fails, like a wrong output, when

    |ΔPPL| = |PPL_opt − PPL_base| / PPL_base > max_delta_ppl       (always checked)
    KL(base || opt) per token, mean          > max_kl              (when set)
    top-1 agreement                          < min_top1            (when set)

|ΔPPL| is bounded both ways: a side that computes another function can land lower by chance.
The windows are the gate's own (`method`, `max_length`, `stride`), the same for both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisp.eval.perplexity import DISJOINT, AgreementSums, make_windows, window_logprobs
from aisp.harness.verify import Comparison


@dataclass(frozen=True)
class GateEvidence:
    logprobs: list[torch.Tensor]      # per window, float64 [scored, vocab], host
    targets: list[torch.Tensor]       # per window, [scored]


@dataclass(frozen=True)
class PerplexityGate:
    token_ids: tuple[int, ...]
    max_delta_ppl: float = 0.01
    max_kl: float | None = None
    min_top1: float | None = None
    max_length: int = 128
    method: str = DISJOINT
    stride: int | None = None
    prefix_token_id: int | None = 0

    def __post_init__(self) -> None:
        if self.max_delta_ppl < 0 or (self.max_kl is not None and self.max_kl < 0):
            raise ValueError(f"gate bounds must be >= 0: {self}")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 1:
            raise ValueError(f"min_top1 must be in [0, 1], got {self.min_top1}")
        # the windows are built now, so a bad window setting fails at config time
        make_windows(self.token_ids, self.method, self.max_length, self.stride or self.max_length,
                     self.prefix_token_id)

    def evidence(self, model) -> GateEvidence:  # noqa: ANN001 - any engine-style model
        windows = make_windows(self.token_ids, self.method, self.max_length,
                               self.stride or self.max_length, self.prefix_token_id)
        lps, tgs = [], []
        for w in windows:
            lp, tg = window_logprobs(model, w)
            lps.append(lp.cpu())
            tgs.append(tg.cpu())
        return GateEvidence(lps, tgs)

    def judge(self, baseline: GateEvidence, optimized: GateEvidence) -> Comparison:
        sums = AgreementSums()
        for b, o, t in zip(baseline.logprobs, optimized.logprobs, baseline.targets):
            sums.add(b, o, t)
        a = sums.result(self.method, self.max_length, self.stride or self.max_length)
        failed = []
        if abs(a.delta_ppl) > self.max_delta_ppl:
            failed.append(f"|ΔPPL| {abs(a.delta_ppl):.3e} > {self.max_delta_ppl:.3e}")
        if self.max_kl is not None and a.kl_mean > self.max_kl:
            failed.append(f"KL mean {a.kl_mean:.3e} > {self.max_kl:.3e}")
        if self.min_top1 is not None and a.top1_agreement < self.min_top1:
            failed.append(f"top-1 {a.top1_agreement:.4f} < {self.min_top1:.4f}")
        numbers = (f"PPL {a.reference_perplexity:.4f} -> {a.candidate_perplexity:.4f} "
                   f"(ΔPPL {a.delta_ppl:+.3e}), KL mean {a.kl_mean:.3e}, top-1 "
                   f"{a.top1_agreement:.4f} over {a.num_scored_tokens} tokens")
        message = (f"accuracy gate exceeded: {'; '.join(failed)} ({numbers})" if failed
                   else numbers)
        return Comparison(not failed, abs(a.delta_ppl), self.max_delta_ppl, "accuracy gate",
                          message)
