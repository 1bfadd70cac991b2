"""How one request wants its tokens chosen and when it wants to stop.

Contract:
- `SamplingParams` is frozen and validated at construction: a bad value raises ValueError naming
  the field, the value, the allowed range and the fix. Derive a changed copy with
  `dataclasses.replace` (which validates again), never mutate.
- Sequences (`stop_token_ids`, `stop`) are stored as tuples so a params object is hashable and
  can be shared between requests; a single stop string is accepted and wrapped.
- `temperature == 0` means greedy (argmax); top_k/top_p/min_p are then irrelevant but still
  validated, so a typo never hides behind greedy decoding.
- `top_k` 0 disables it; -1 (vLLM's and many clients' spelling of "off") is accepted and stored
  as 0, so there is one internal spelling.
- Stop *token ids* are checked by the scheduler; stop *strings* depend on detokenization and are
  checked by the front end (aisp.engine.output_processor), which then tells the core
  (`LLMEngine.stop_requests` -> `Scheduler.finish_request`); the core never sees them.
- `priority` is a property of the Request (it orders queues), not of sampling.
- `SamplingParams.from_dict` is for JSON bodies: unknown keys are errors listing valid names, and
  `None` values (load testers send `"stop": null`) mean "use the default".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling and stopping settings (vLLM's names and meanings)."""

    max_tokens: int = 16            # output tokens at most; reaching it finishes with "length"
    temperature: float = 1.0        # 0 = greedy
    top_k: int = 0                  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0              # nucleus mass in (0, 1]; 1 = off
    min_p: float = 0.0              # drop tokens below min_p * p(max); 0 = off
    seed: int | None = None         # per-request generator seed; None = engine's generator
    stop_token_ids: tuple[int, ...] = ()   # extra token ids that stop (kept in the output)
    stop: tuple[str, ...] = ()      # stop strings, checked by the front end after detokenization
    ignore_eos: bool = False        # keep going past the model's eos (benchmarks, load tests)
    min_tokens: int = 0             # eos / stop ids do not stop before this many output tokens

    def __post_init__(self) -> None:
        # Normalization first (frozen: object.__setattr__ is the sanctioned escape hatch here).
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if _is_int(self.top_k) and self.top_k == -1:
            object.__setattr__(self, "top_k", 0)

        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(
                f"max_tokens is {self.max_tokens!r}; it must be an integer >= 1 "
                f"(the number of tokens to generate)"
            )
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"temperature is {self.temperature!r}; it must be a finite number >= 0 "
                f"(0 selects greedy decoding)"
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k is {self.top_k!r}; it must be an integer >= 1, or 0 / -1 to disable it")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p is {self.top_p!r}; it must lie in (0, 1] (1 disables it)")
        if not _is_real(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p is {self.min_p!r}; it must lie in [0, 1] (0 disables it)")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed is {self.seed!r}; it must be an integer or None")
        bad_ids = [t for t in self.stop_token_ids if not _is_int(t) or t < 0]
        if bad_ids:
            raise ValueError(f"stop_token_ids contains {bad_ids!r}; token ids are integers >= 0")
        bad_stops = [s for s in self.stop if not isinstance(s, str) or s == ""]
        if bad_stops:
            raise ValueError(f"stop contains {bad_stops!r}; stop strings must be non-empty str")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos is {self.ignore_eos!r}; it must be true or false")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens is {self.min_tokens!r} with max_tokens={self.max_tokens}; it must be an "
                f"integer in [0, max_tokens]; lower min_tokens or raise max_tokens"
            )

    @property
    def greedy(self) -> bool:
        """True when the sampler should take the argmax (temperature 0)."""
        return self.temperature == 0.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplingParams:
        """Build from a JSON-like dict; unknown keys are errors, None means the default."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown sampling parameter(s) {unknown}; valid names are {names}")
        return cls(**{k: v for k, v in values.items() if v is not None})


def _is_int(x: object) -> bool:
    # bool is an int subclass; `max_tokens=True` is a bug, not 1.
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)

