"""Workloads: the endless, seeded stream of requests a load test sends.

Contract: `build_workload(cfg, seed)` returns a `Workload` whose `requests()` yields
`RequestSpec`s forever (the runner stops taking them when the duration ends). The same
(cfg, seed, salt nonce) gives the same stream; a different nonce changes only the salt.

- random: token-id prompts of exactly `input_len` tokens (ids uniform in
  [token_id_min, vocab_size)), `max_tokens` exactly `output_len`; either may be a range drawn
  uniformly per request.
- shared-prefix: `num_prefixes` random prefixes of `prefix_len` tokens; request i belongs to a
  group drawn uniformly and is that group's prefix + a unique random suffix of `input_len`
  tokens. The prompt is exactly prefix_len + input_len tokens.
- file: prompts from a dataset (datasets.py), shuffled by the seed, cycled when exhausted (so a
  long run repeats prompts, as a real service would see repeats).

Salt: the run's nonce (48 random bits from the OS unless given) is written at the START of every
prompt, so a prefix cache warmed by an earlier run cannot serve any of this run's blocks. For
token prompts the salt OVERWRITES the first `SALT_TOKENS` ids (lengths stay exact); for
shared-prefix each group gets its own salt tokens derived from (nonce, group), placed before the
shared prefix, so prompts of one group still share their whole prefix within the run. Text
prompts get a short text marker prepended (their token count grows by a few tokens).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from aisp.loadtest.config import LengthSpec, WorkloadConfig
from aisp.loadtest.datasets import DatasetEntry, load_dataset

SALT_TOKENS = 4


@dataclass(frozen=True)
class RequestSpec:
    """One request to send. `prompt` is text or a list of token ids."""

    prompt: str | list[int]
    max_tokens: int
    num_prompt_tokens: int | None = None  # known for token prompts; text prompts: server says
    group: int | None = None  # shared-prefix group


@dataclass
class Workload:
    """A described request stream plus what loading it skipped."""

    kind: str
    description: str
    salt_nonce: int | None
    _stream: Iterator[RequestSpec]
    num_entries: int | None = None  # file workloads: usable entries
    num_skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    def requests(self) -> Iterator[RequestSpec]:
        return self._stream

    def info(self) -> dict:
        return {"kind": self.kind, "description": self.description,
                "salt_nonce": self.salt_nonce, "num_entries": self.num_entries,
                "num_skipped": self.num_skipped, "skipped_reasons": dict(self.skipped_reasons)}


def new_salt_nonce() -> int:
    return secrets.randbits(48)


def salt_tokens(nonce: int, cfg: WorkloadConfig, group: int = 0) -> list[int]:
    rng = np.random.default_rng([nonce, group])
    return rng.integers(cfg.token_id_min, cfg.vocab_size, SALT_TOKENS).tolist()


def salt_text(nonce: int) -> str:
    return f"[run {nonce:012x}] "


def _draw(rng: np.random.Generator, spec: LengthSpec) -> int:
    return spec.low if spec.is_fixed else int(rng.integers(spec.low, spec.high + 1))


def _tokens(rng: np.random.Generator, cfg: WorkloadConfig, n: int) -> list[int]:
    return rng.integers(cfg.token_id_min, cfg.vocab_size, n).tolist()


def _apply_token_salt(ids: list[int], salt: list[int] | None) -> list[int]:
    if salt:
        k = min(len(salt), len(ids))
        ids[:k] = salt[:k]
    return ids


def _random_stream(cfg: WorkloadConfig, seed: int, nonce: int | None) -> Iterator[RequestSpec]:
    assert cfg.input_len is not None and cfg.output_len is not None
    rng = np.random.default_rng(seed)
    salt = salt_tokens(nonce, cfg) if nonce is not None else None
    while True:
        n_in, n_out = _draw(rng, cfg.input_len), _draw(rng, cfg.output_len)
        ids = _apply_token_salt(_tokens(rng, cfg, n_in), salt)
        yield RequestSpec(prompt=ids, max_tokens=n_out, num_prompt_tokens=n_in)


def shared_prefixes(cfg: WorkloadConfig, seed: int, nonce: int | None) -> list[list[int]]:
    """The groups' prefixes, salted per (nonce, group) at their start."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for g in range(cfg.num_prefixes):
        salt = salt_tokens(nonce, cfg, g) if nonce is not None else None
        out.append(_apply_token_salt(_tokens(rng, cfg, cfg.prefix_len), salt))
    return out


def _shared_prefix_stream(cfg: WorkloadConfig, seed: int,
                          nonce: int | None) -> Iterator[RequestSpec]:
    assert cfg.input_len is not None and cfg.output_len is not None
    prefixes = shared_prefixes(cfg, seed, nonce)
    rng = np.random.default_rng([seed, 2])
    while True:
        g = int(rng.integers(0, cfg.num_prefixes))
        n_suffix, n_out = _draw(rng, cfg.input_len), _draw(rng, cfg.output_len)
        ids = prefixes[g] + _tokens(rng, cfg, n_suffix)
        yield RequestSpec(prompt=ids, max_tokens=n_out, num_prompt_tokens=len(ids), group=g)


def _file_stream(entries: list[DatasetEntry], cfg: WorkloadConfig, seed: int,
                 nonce: int | None) -> Iterator[RequestSpec]:
    rng = np.random.default_rng(seed)
    out_rng = np.random.default_rng([seed, 3])
    while True:
        for i in rng.permutation(len(entries)):
            e = entries[int(i)]
            n_out = _draw(out_rng, cfg.output_len) if cfg.output_len else e.output_len
            assert n_out is not None  # load_dataset drops entries without a length
            if isinstance(e.prompt, str):
                prompt: str | list[int] = (salt_text(nonce) if nonce is not None else "") + e.prompt
                n_in = None
            else:
                prompt = _apply_token_salt(list(e.prompt),
                                           salt_tokens(nonce, cfg) if nonce is not None else None)
                n_in = len(prompt)
            yield RequestSpec(prompt=prompt, max_tokens=n_out, num_prompt_tokens=n_in)


def build_workload(cfg: WorkloadConfig, seed: int, text_only: bool = False) -> Workload:
    """Build the request stream. `text_only` (chat endpoint) skips token-id dataset prompts.

    Raises ConfigError when a dataset has no usable entry.
    """
    nonce = (cfg.salt_nonce if cfg.salt_nonce is not None else new_salt_nonce()) \
        if cfg.salt else None
    salted = "unsalted" if nonce is None else f"salt nonce {nonce:012x}"
    if cfg.kind == "random":
        return Workload("random", f"random token ids in [{cfg.token_id_min}, {cfg.vocab_size}), "
                                  f"input {cfg.input_len} tokens, output {cfg.output_len} tokens, "
                                  f"{salted}", nonce, _random_stream(cfg, seed, nonce))
    if cfg.kind == "shared-prefix":
        return Workload("shared-prefix",
                        f"{cfg.num_prefixes} groups sharing a {cfg.prefix_len}-token prefix + "
                        f"unique {cfg.input_len}-token suffixes, output {cfg.output_len} tokens, "
                        f"{salted} (per group, before the prefix)", nonce,
                        _shared_prefix_stream(cfg, seed, nonce))
    assert cfg.dataset_path is not None
    ds = load_dataset(cfg.dataset_path, need_output_len=cfg.output_len is None,
                      text_only=text_only)
    out = f"output {cfg.output_len} tokens" if cfg.output_len else "output lengths from the file"
    return Workload("file", f"{len(ds.entries)} prompts from {cfg.dataset_path} ({ds.format}), "
                            f"{out}, {salted}", nonce,
                    _file_stream(ds.entries, cfg, seed, nonce), num_entries=len(ds.entries),
                    num_skipped=ds.num_skipped, skipped_reasons=ds.skipped_reasons)
