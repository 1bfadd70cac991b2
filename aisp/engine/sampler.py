"""Choose the next token of every request in a step, in one batched pass over the logits.

Contract: `Sampler()(logits[num_reqs, vocab] float32, params, generators) -> LongTensor[num_reqs]`.

- Greedy rows (temperature 0) take the argmax of the raw logits.
- Other rows: divide by temperature, then keep the top-k, the top-p nucleus and tokens with
  probability >= min_p · p(max); sample from what is left.
- Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which equals a draw from
  p but lets each row take its noise from its *own* generator: a request with a seed gets the
  same tokens whatever else shares its batch, step after step.
- Filters are applied only when some row asks for them, so pure-greedy or plain-temperature
  batches never pay for a vocabulary sort.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from aisp.engine.host_io import to_device
from aisp.engine.sampling_params import SamplingParams


def _filter_sorted(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                   min_p: torch.Tensor) -> torch.Tensor:
    """Zero the probabilities outside each row's top-k / top-p / min-p set (then renormalise)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    vocab = probs.shape[-1]
    rank = torch.arange(vocab, device=probs.device).expand_as(sorted_p)
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))
    keep &= rank < k[:, None]
    # Nucleus: keep a token if the mass strictly before it is below top_p (so the first token
    # is always kept and the set is the smallest one reaching top_p).
    mass_before = sorted_p.cumsum(-1) - sorted_p
    keep &= mass_before < top_p[:, None]
    keep &= sorted_p >= (min_p * sorted_p[:, :1].squeeze(-1))[:, None]
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_p * keep)
    return filtered / filtered.sum(-1, keepdim=True)


class Sampler:
    def __call__(self, logits: torch.Tensor, params: Sequence[SamplingParams],
                 generators: Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
        n = logits.shape[0]
        if len(params) != n:
            raise ValueError(f"{len(params)} sampling params for {n} rows of logits")
        generators = list(generators) if generators is not None else [None] * n
        logits = logits.float()
        out = logits.argmax(dim=-1)
        rows = [i for i, p in enumerate(params) if not p.greedy]
        if not rows:
            return out
        dev = logits.device
        idx = to_device(rows, torch.int64, dev)
        sub = logits.index_select(0, idx)
        temps = to_device([params[i].temperature for i in rows], torch.float32, dev)
        probs = torch.softmax(sub / temps[:, None], dim=-1)
        if any(params[i].top_k or params[i].top_p < 1 or params[i].min_p > 0 for i in rows):
            probs = _filter_sorted(
                probs,
                to_device([params[i].top_k for i in rows], torch.int64, dev),
                to_device([params[i].top_p for i in rows], torch.float32, dev),
                to_device([params[i].min_p for i in rows], torch.float32, dev))
        noise = torch.empty_like(probs).exponential_()  # unseeded rows: one draw for all
        for j, i in enumerate(rows):
            if generators[i] is not None:  # seeded rows: their own stream, batch-independent
                noise[j].exponential_(generator=generators[i])
        choice = (probs / noise).argmax(dim=-1)
        out[idx] = choice
        return out


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A request's own generator when it asked for a seed; None uses the global one."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)
