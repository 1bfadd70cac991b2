"""What the client observed for one request: the raw timeline every statistic is computed from.

Contract: times are `time.perf_counter()` seconds on the client (one clock for the whole run);
`chunk_times` holds the arrival time of every streamed chunk that carried non-empty content
(text for completions, delta.content for chat), in order, the first being the first token. A
chunk may carry several tokens (servers batch detokenized text), so chunk gaps are not always
per-token gaps; `output_tokens` says how many tokens the request produced and
`output_tokens_source` where that number came from ("usage": the server's
usage.completion_tokens; "chunks": the number of content chunks, when no usage came).

A failed request has `error_kind` set ("http_400", "timeout", "connection", "malformed_stream",
"stream_error", "unfinished") and is left out of every latency statistic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestRecord:
    index: int
    send_time: float
    end_time: float
    chunk_times: tuple[float, ...] = ()
    output_tokens: int = 0
    output_tokens_source: str = "chunks"  # "usage" or "chunks"
    prompt_tokens: int | None = None
    prompt_tokens_source: str | None = None  # "usage", "workload" or None (unknown)
    requested_output_tokens: int | None = None
    scheduled_time: float | None = None  # open loop: when the arrival process asked to send
    error_kind: str | None = None
    error_message: str | None = None
    group: int | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def first_token_time(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def ttft(self) -> float | None:
        """First content chunk - send (seconds); None for failures and empty outputs."""
        if not self.ok or not self.chunk_times:
            return None
        return self.chunk_times[0] - self.send_time

    @property
    def e2e(self) -> float | None:
        return self.end_time - self.send_time if self.ok else None

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1): vLLM's per-request time per output token."""
        ttft, e2e = self.ttft, self.e2e
        if ttft is None or e2e is None or self.output_tokens < 2:
            return None
        return (e2e - ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Every gap between consecutive content chunks (seconds)."""
        if not self.ok:
            return []
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]
