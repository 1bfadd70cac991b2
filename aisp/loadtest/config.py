"""Load-test configuration: frozen dataclasses, validated when they are built.

Contract: a `LoadTestConfig` that exists is runnable as far as the client can tell without the
network (the server may still refuse it). Every error is a `ConfigError` (a ValueError) that names
the value, the limit and the fix. Nothing here does I/O except checking that a dataset file
exists; derived values are properties, never mutations.

Units: durations in seconds (`*_s`), SLOs in milliseconds (`*_ms`), rates in requests per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

ENDPOINTS = ("completions", "chat")
WORKLOADS = ("random", "file", "shared-prefix")
ARRIVALS = ("poisson", "constant")
FITTABLE = ("input_len", "output_len", "prefix_len", "vocab_size")  # see WorkloadConfig
# Open-loop runs may have many requests in flight; without a cap the client would open a socket
# per request. Excess requests wait in aiohttp's connector queue (their send time is still the
# moment the client asked to send, so the wait shows up in TTFT, as it would for a real client).
DEFAULT_OPEN_LOOP_CONNECTIONS = 1024


class ConfigError(ValueError):
    """A load-test setting that cannot work; the message says what to change."""


@dataclass(frozen=True)
class LengthSpec:
    """A token count, fixed (`low == high`) or drawn uniformly from [low, high] per request."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low < 1:
            raise ConfigError(f"length {self.low} is below the minimum of 1 token; use a length "
                              f">= 1")
        if self.high < self.low:
            raise ConfigError(f"length range {self.low}:{self.high} is empty (high < low); "
                              f"write it as LOW:HIGH with LOW <= HIGH")

    @classmethod
    def fixed(cls, n: int) -> "LengthSpec":
        return cls(n, n)

    @classmethod
    def around(cls, mean: int, range_ratio: float) -> "LengthSpec":
        """vLLM's --random-range-ratio: uniform in [mean * (1 - r), mean * (1 + r)]."""
        if not 0.0 <= range_ratio < 1.0:
            raise ConfigError(f"range ratio {range_ratio} is outside [0, 1); use e.g. 0.25 for "
                              f"lengths within +-25% of the mean")
        low = max(1, math.floor(mean * (1 - range_ratio)))
        return cls(low, max(low, math.ceil(mean * (1 + range_ratio))))

    @classmethod
    def parse(cls, text: str, range_ratio: float = 0.0) -> "LengthSpec":
        """'512' (fixed, or +-range_ratio around 512) or '256:1024' (uniform range)."""
        try:
            if ":" in text:
                lo, hi = (int(p) for p in text.split(":", 1))
                if range_ratio:
                    raise ConfigError(f"length '{text}' is already a range; drop --range-ratio "
                                      f"({range_ratio}) or give a single mean length")
                return cls(lo, hi)
            n = int(text)
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"length '{text}' is not N or LOW:HIGH (integers); e.g. 512 or "
                              f"256:1024") from None
        return cls.around(n, range_ratio) if range_ratio else cls.fixed(n)

    @property
    def is_fixed(self) -> bool:
        return self.low == self.high

    def __str__(self) -> str:
        return str(self.low) if self.is_fixed else f"{self.low}:{self.high}"


@dataclass(frozen=True)
class WorkloadConfig:
    """What to send. See workloads.py for how each kind builds its prompts.

    random: token-id prompts of `input_len` tokens, `output_len` max_tokens.
    file: prompts from `dataset_path` (JSON list or JSONL; ShareGPT conversations or
      {"prompt", "output_len"} objects); `output_len` fixes max_tokens, else the reply's length.
    shared-prefix: `num_prefixes` groups; each prompt = the group's `prefix_len`-token prefix +
      a unique `input_len`-token suffix.
    `defaulted` names the settings the user left at their defaults ("input_len", "output_len",
    "prefix_len", "vocab_size"): the runner may fit those to the server's model (fit.py).
    Salt (unless `salt=False`): a per-run nonce (fresh from the OS unless `salt_nonce` is given)
    overwrites the first tokens of every token prompt, or is prepended to every text prompt, so
    a prefix cache warmed by an earlier run cannot flatter this one.
    """

    kind: Literal["random", "file", "shared-prefix"] = "random"
    input_len: LengthSpec | None = None
    output_len: LengthSpec | None = None
    dataset_path: str | None = None
    num_prefixes: int = 10
    prefix_len: int = 256
    vocab_size: int = 32000
    token_id_min: int = 0
    salt: bool = True
    salt_nonce: int | None = None
    defaulted: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaulted", frozenset(self.defaulted))
        if unknown := sorted(self.defaulted - set(FITTABLE)):
            raise ConfigError(f"defaulted names {unknown}, which are not fittable settings; "
                              f"use some of {list(FITTABLE)}")
        if self.kind not in WORKLOADS:
            raise ConfigError(f"workload '{self.kind}' is unknown; use one of "
                              f"{', '.join(WORKLOADS)}")
        if self.kind in ("random", "shared-prefix"):
            for name in ("input_len", "output_len"):
                if getattr(self, name) is None:
                    raise ConfigError(f"workload '{self.kind}' needs {name} (e.g. "
                                      f"--{name.replace('_', '-')} 128)")
            if self.dataset_path is not None:
                raise ConfigError(f"dataset_path '{self.dataset_path}' is only read by the 'file'"
                                  f" workload, not '{self.kind}'; drop --dataset or use "
                                  f"--workload file")
        else:
            if self.dataset_path is None:
                raise ConfigError("workload 'file' needs a dataset (--dataset PATH to a JSON or "
                                  "JSONL file)")
            if not Path(self.dataset_path).is_file():
                raise ConfigError(f"dataset '{self.dataset_path}' is not a file; pass the path of "
                                  f"a JSON or JSONL file")
            if self.input_len is not None:
                raise ConfigError(f"input_len {self.input_len} does not apply to the 'file' "
                                  f"workload (its prompts come from the dataset); drop "
                                  f"--input-len")
        if self.kind == "shared-prefix":
            if self.num_prefixes < 1:
                raise ConfigError(f"num_prefixes {self.num_prefixes} is below 1; use >= 1")
            if self.prefix_len < 1:
                raise ConfigError(f"prefix_len {self.prefix_len} is below 1; use >= 1")
        if not 0 <= self.token_id_min < self.vocab_size:
            raise ConfigError(f"token id range [{self.token_id_min}, {self.vocab_size}) is empty "
                              f"or negative; use 0 <= --token-id-min < --vocab-size")
        if self.salt_nonce is not None and not self.salt:
            raise ConfigError(f"salt_nonce {self.salt_nonce} is given but salting is off; drop "
                              f"one of --salt-nonce / --no-salt")
        if self.salt_nonce is not None and self.salt_nonce < 0:
            raise ConfigError(f"salt_nonce {self.salt_nonce} is negative; use an integer >= 0")

    @property
    def token_prompts(self) -> bool:
        """Whether prompts are token-id lists (text prompts come only from files)."""
        return self.kind in ("random", "shared-prefix")


@dataclass(frozen=True)
class LoadTestConfig:
    """One load test: a server, a workload, an arrival process, a duration, SLOs.

    Exactly one of `concurrency` (closed loop: N workers, each sends its next request when the
    previous one finishes) or `rate` (open loop, requests/s; `arrival` poisson with gamma
    `burstiness`, or constant) must be set. Requests SENT in the first `warmup_s` seconds are
    sent but excluded from every statistic. Sending stops at `duration_s`; in-flight requests
    then get `drain_timeout_s` to finish before they are cancelled and counted as unfinished.
    """

    url: str = "http://127.0.0.1:8000"
    model: str | None = None  # None: the first id that GET /v1/models lists
    endpoint: Literal["completions", "chat"] = "completions"
    api_key: str | None = None
    workload: WorkloadConfig = field(default_factory=lambda: WorkloadConfig(
        input_len=LengthSpec.fixed(1024), output_len=LengthSpec.fixed(128)))
    concurrency: int | None = None
    rate: float | None = None
    arrival: Literal["poisson", "constant"] = "poisson"
    burstiness: float = 1.0
    duration_s: float = 60.0
    warmup_s: float = 0.0
    drain_timeout_s: float = 60.0
    request_timeout_s: float = 300.0
    max_connections: int | None = None  # None: concurrency (closed) or 1024 (open loop)
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    stability_band: float = 0.25
    num_slices: int = 4
    min_slice_requests: int = 5
    seed: int = 0
    temperature: float = 0.0
    ignore_eos: bool = True

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url '{self.url}' has no http:// or https:// scheme; e.g. "
                              f"http://127.0.0.1:8000")
        if self.endpoint not in ENDPOINTS:
            raise ConfigError(f"endpoint '{self.endpoint}' is unknown; use one of "
                              f"{', '.join(ENDPOINTS)}")
        if self.endpoint == "chat" and self.workload.token_prompts:
            raise ConfigError(f"workload '{self.workload.kind}' sends token-id prompts, which "
                              f"/v1/chat/completions cannot take; use --endpoint completions, "
                              f"or --workload file with text prompts")
        if (self.concurrency is None) == (self.rate is None):
            which = "both" if self.concurrency is not None else "neither"
            raise ConfigError(f"{which} of concurrency and rate given; pass exactly one: "
                              f"--concurrency N (closed loop) or --rate R (open loop, req/s)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency {self.concurrency} is below 1; use >= 1")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(f"rate {self.rate} req/s is not a positive finite number; use "
                              f"e.g. --rate 4")
        if self.arrival not in ARRIVALS:
            raise ConfigError(f"arrival '{self.arrival}' is unknown; use one of "
                              f"{', '.join(ARRIVALS)}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise ConfigError(f"burstiness {self.burstiness} is not positive; use 1 for Poisson, "
                              f"< 1 for burstier, > 1 for smoother arrivals")
        if self.rate is None and (self.burstiness != 1.0 or self.arrival != "poisson"):
            raise ConfigError(f"arrival '{self.arrival}' / burstiness {self.burstiness} shape an "
                              f"open-loop rate, but the run is closed loop (--concurrency); "
                              f"drop them or use --rate")
        if self.arrival == "constant" and self.burstiness != 1.0:
            raise ConfigError(f"burstiness {self.burstiness} applies to poisson/gamma arrivals, "
                              f"not constant ones; drop --burstiness or use --arrival poisson")
        for name in ("duration_s", "drain_timeout_s", "request_timeout_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"{name} {v} is not a positive number of seconds")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ConfigError(f"warm-up {self.warmup_s} s must be >= 0 and shorter than the "
                              f"duration {self.duration_s} s, or nothing would be measured; "
                              f"lower --warmup or raise --duration")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError(f"max_connections {self.max_connections} is below 1; use >= 1")
        if (self.concurrency is not None and self.max_connections is not None
                and self.max_connections < self.concurrency):
            raise ConfigError(f"max_connections {self.max_connections} is below concurrency "
                              f"{self.concurrency}: workers would queue in the client; raise "
                              f"it or drop it")
        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} {v} is not a positive number of milliseconds")
        if not 0 < self.stability_band < 10:
            raise ConfigError(f"stability band {self.stability_band} is outside (0, 10); it is "
                              f"a fraction, e.g. 0.25 for +-25%")
        if self.num_slices < 2:
            raise ConfigError(f"num_slices {self.num_slices} is below 2; stability compares "
                              f"slices, use >= 2 (default 4)")
        if self.min_slice_requests < 1:
            raise ConfigError(f"min_slice_requests {self.min_slice_requests} is below 1")
        if self.temperature < 0:
            raise ConfigError(f"temperature {self.temperature} is negative; use >= 0")

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None

    @property
    def connection_limit(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        return self.concurrency if self.concurrency is not None else DEFAULT_OPEN_LOOP_CONNECTIONS

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    def to_dict(self) -> dict:
        """JSON-ready, with the API key masked."""
        out: dict = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "api_key":
                v = None if v is None else "***"
            elif f.name == "workload":
                v = {wf.name: _plain(getattr(v, wf.name)) for wf in fields(v)}
            out[f.name] = v
        return out


def _plain(value: object) -> object:
    if isinstance(value, LengthSpec):
        return str(value)
    if isinstance(value, frozenset):
        return sorted(value)
    return value


@dataclass(frozen=True)
class SweepConfig:
    """Open-loop rate sweep: either explicit `rates`, or a bisection search in [low, high].

    A rate meets the SLOs when at least `slo_attainment` of its measured requests succeeded and
    met every given SLO (requests that failed count as missing them). The search assumes that
    attainment falls as the rate rises; it runs `low`, `high`, then `search_steps` midpoints.
    """

    rates: tuple[float, ...] = ()
    search_low: float | None = None
    search_high: float | None = None
    search_steps: int = 4
    slo_attainment: float = 0.9

    def __post_init__(self) -> None:
        search = self.search_low is not None or self.search_high is not None
        if bool(self.rates) == search:
            raise ConfigError("give either explicit sweep rates (--sweep-rates 1,2,4) or search "
                              "bounds (--sweep-search LOW:HIGH), not both or neither")
        for r in self.rates:
            if not (r > 0 and math.isfinite(r)):
                raise ConfigError(f"sweep rate {r} is not a positive finite req/s")
        if search:
            lo, hi = self.search_low, self.search_high
            if lo is None or hi is None or not 0 < lo < hi or not math.isfinite(hi):
                raise ConfigError(f"sweep search bounds {lo}:{hi} must satisfy 0 < LOW < HIGH")
            if not 1 <= self.search_steps <= 20:
                raise ConfigError(f"search_steps {self.search_steps} is outside [1, 20]")
        if not 0 < self.slo_attainment <= 1:
            raise ConfigError(f"slo_attainment {self.slo_attainment} is outside (0, 1]; e.g. 0.9")

    @classmethod
    def parse_rates(cls, text: str, **kw) -> "SweepConfig":
        try:
            rates = tuple(float(p) for p in text.split(",") if p.strip())
        except ValueError:
            raise ConfigError(f"sweep rates '{text}' are not comma-separated numbers; e.g. "
                              f"1,2,4,8") from None
        return cls(rates=rates, **kw)

    @classmethod
    def parse_search(cls, text: str, **kw) -> "SweepConfig":
        try:
            lo, hi = (float(p) for p in text.split(":", 1))
        except ValueError:
            raise ConfigError(f"sweep search '{text}' is not LOW:HIGH; e.g. 1:32") from None
        return cls(search_low=lo, search_high=hi, **kw)


def check_sweepable(config: LoadTestConfig) -> None:
    """A sweep varies the open-loop rate and judges it by SLOs: both must make sense."""
    if config.slo_ttft_ms is None and config.slo_tpot_ms is None:
        raise ConfigError("a rate sweep judges each rate by its SLOs; give --slo-ttft-ms and/or "
                          "--slo-tpot-ms")
