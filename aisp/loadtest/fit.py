"""Fitting a workload's defaults to what the server says about its model.

Contract: `fit_workload(cfg, card) -> Fit` returns the workload to send and one line per change
(or per problem seen), saying what changed and why. Only settings the user left at their
defaults (`cfg.defaulted`) are changed; an explicit setting is never overridden, but one that
cannot fit the server is reported, so the refusals that follow are no surprise.

- Lengths (token-id workloads: random, shared-prefix): with the card's `max_model_len` L (vLLM
  and aisp put it on each model card), a request needs prompt + max_tokens <= L. When the
  longest request (prefix_len + input_len.high + output_len.high) exceeds L, the defaulted
  lengths are scaled down by one factor, keeping their proportions, until it fits; explicit
  lengths keep their values and take their share of L first.
- Token ids: with the card's `vocab_size` (aisp's card carries it; vLLM's does not), a
  defaulted vocabulary becomes the model's, so random ids are ones the model takes.
- A card without these fields (or no card: GET /v1/models failed) changes nothing.

File workloads are never fitted: their prompts and lengths come from the dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from aisp.loadtest.config import LengthSpec, WorkloadConfig
from aisp.loadtest.probe import ModelCard

__all__ = ["Fit", "fit_workload"]


@dataclass(frozen=True)
class Fit:
    workload: WorkloadConfig
    notes: tuple[str, ...] = ()   # what was changed and why, or what will not fit


def _scale(spec: LengthSpec, factor: float) -> LengthSpec:
    low = max(1, math.floor(spec.low * factor))
    return LengthSpec(low, max(low, math.floor(spec.high * factor)))


def _fit_lengths(cfg: WorkloadConfig, limit: int) -> tuple[WorkloadConfig, list[str]]:
    assert cfg.input_len is not None and cfg.output_len is not None
    parts: dict[str, LengthSpec] = {"input_len": cfg.input_len, "output_len": cfg.output_len}
    if cfg.kind == "shared-prefix":
        parts = {"prefix_len": LengthSpec.fixed(cfg.prefix_len), **parts}
    longest = sum(p.high for p in parts.values())
    if longest <= limit:
        return cfg, []
    what = " + ".join(f"{name} {spec}" for name, spec in parts.items())
    free = [n for n in parts if n in cfg.defaulted]
    fixed = sum(p.high for n, p in parts.items() if n not in free)
    budget = limit - fixed
    if not free or budget < len(free):
        flags = "/".join(f"--{n.replace('_', '-')}" for n in parts if n not in free)
        return cfg, [f"{what} = {longest:,} tokens exceed the server's max_model_len of "
                     f"{limit:,}: the server will refuse these requests; lower {flags}"]
    factor = budget / sum(parts[n].high for n in free)
    new = {n: _scale(parts[n], factor) for n in free}
    changes: dict[str, object] = {n: (new[n].high if n == "prefix_len" else new[n]) for n in new}
    fitted = replace(cfg, **changes)  # type: ignore[arg-type]
    after = " + ".join(f"{n} {new.get(n, parts[n])}" for n in parts)
    return fitted, [f"lengths fitted to the server's max_model_len of {limit:,} tokens: the "
                    f"defaults {what} = {longest:,} tokens would be refused; sending {after} "
                    f"(scaled by {factor:.2f}; set --input-len/--output-len to choose)"]


def fit_workload(cfg: WorkloadConfig, card: ModelCard | None) -> Fit:
    """The workload to send against a server whose model card is `card` (see the module doc)."""
    if card is None or not cfg.token_prompts:
        return Fit(cfg)
    notes: list[str] = []
    if card.max_model_len is not None:
        cfg, more = _fit_lengths(cfg, card.max_model_len)
        notes += more
    if card.vocab_size is not None:
        if "vocab_size" in cfg.defaulted and cfg.vocab_size != card.vocab_size:
            if cfg.token_id_min < card.vocab_size:
                notes.append(f"token ids drawn from [{cfg.token_id_min}, {card.vocab_size:,}), "
                             f"the model's vocabulary (the server's vocab_size), not the default "
                             f"[{cfg.token_id_min}, {cfg.vocab_size:,}); set --vocab-size to "
                             f"choose")
                cfg = replace(cfg, vocab_size=card.vocab_size)
        elif cfg.vocab_size > card.vocab_size:
            notes.append(f"--vocab-size {cfg.vocab_size:,} exceeds the server's vocab_size of "
                         f"{card.vocab_size:,}: prompts with larger ids will be refused; lower "
                         f"it or drop it")
    return Fit(cfg, tuple(notes))
