"""The front end's side of every request: core deltas in, the user's outputs out.

The engine core deals in token ids (STYLE.md #18, DESIGN.md: the engine-client API); what a
user sees is built here, once, in the process that talks to the user: text (incremental
detokenization), stop strings, the whole output on finish, and the request's metrics.

Contract:
- `OutputProcessor(tokenizer)`; `add(request_id, prompt_token_ids, params, arrival_time)` starts
  tracking a request with the user's params (stop strings included); `process(out)` takes one
  core `RequestOutput` delta and returns the user's delta, or None for a request that is not
  tracked (finished or dropped: a late token after a stop string, an abort's echo).
- A user delta carries `text_delta` (safe to send: no half character, no start of a stop
  string); the finished one also the final `text`, `prompt_token_ids`, `output_token_ids` and
  `metrics`. Token ids are always the output; text is None without a tokenizer.
- Stop strings: when one completes, the request finishes here at once (finish_reason "stop",
  stop_reason the string), the tokens after the completing one are dropped, and (request id,
  stop string) lands in `to_stop`, which the caller drains and sends to the core
  (`LLMEngine.stop_requests`: the core is still generating for it, a step or more behind).
- Metrics are built from the deltas alone (each carries the time of its tokens, and the core's
  first-schedule time, prefix-cache hit and preemption count), so a request finished here and
  one finished by the core are measured alike; for the latter they equal the core's own.
- `abort(request_id, now)` finishes a tracked request as 'abort' (its consumer left, or it
  failed) and returns that finished output, for the finished listeners; None if not tracked.
Not thread-safe: one thread (the one that receives the core's outputs) calls process and drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aisp.engine.detokenize import IncrementalDetokenizer
from aisp.engine.engine import RequestMetrics, RequestOutput
from aisp.engine.sampling_params import SamplingParams
from aisp.model.tokenizer import Tokenizer

__all__ = ["OutputProcessor"]


@dataclass
class _RequestState:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    arrival_time: float
    detokenizer: IncrementalDetokenizer | None
    output_token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    first_scheduled_time: float | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0

    def metrics(self, finished_time: float | None) -> RequestMetrics:
        return RequestMetrics(self.arrival_time, self.first_scheduled_time,
                              self.token_times[0] if self.token_times else None,
                              tuple(self.token_times), finished_time, self.num_cached_tokens,
                              self.num_preemptions)


class OutputProcessor:
    """Per-request text, stop strings and metrics of one front end; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        self._requests: dict[str, _RequestState] = {}
        self.to_stop: list[tuple[str, str]] = []   # finished here by a stop string: tell the core

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

    def add(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams,
            arrival_time: float) -> None:
        if params.stop and self.tokenizer is None:
            raise ValueError("this model has no tokenizer.json, so stop strings cannot be used; "
                             "use stop_token_ids")
        detok = IncrementalDetokenizer(self.tokenizer, params.stop) if self.tokenizer else None
        self._requests[request_id] = _RequestState(request_id, tuple(prompt_token_ids),
                                                   arrival_time, detok)

    def abort(self, request_id: str, now: float) -> RequestOutput | None:
        state = self._requests.pop(request_id, None)
        if state is None:
            return None
        text = state.detokenizer.final_text if state.detokenizer is not None else None
        return RequestOutput(request_id, (), True, "abort", None, state.prompt_token_ids,
                             tuple(state.output_token_ids), text, state.metrics(now),
                             token_time=now)

    def process(self, out: RequestOutput) -> RequestOutput | None:
        state = self._requests.get(out.request_id)
        if state is None:
            return None
        ids, delta, stop = out.new_token_ids, "", None
        if state.detokenizer is not None:
            delta, used = state.detokenizer.add(ids)
            stop = state.detokenizer.stopped
            ids = ids[:used]
        if out.first_scheduled_time is not None:
            state.first_scheduled_time = out.first_scheduled_time
            state.num_cached_tokens = out.num_cached_tokens
        state.num_preemptions = max(state.num_preemptions, out.num_preemptions)
        state.output_token_ids.extend(ids)
        state.token_times.extend([out.token_time] * len(ids))
        if stop is None and not out.finished:
            return RequestOutput(out.request_id, ids, False, token_time=out.token_time,
                                 text_delta=delta)
        del self._requests[out.request_id]
        if stop is not None and not out.finished:
            self.to_stop.append((out.request_id, stop))
        reason, stop_reason = ("stop", stop) if stop is not None else (out.finish_reason,
                                                                       out.stop_reason)
        text = None
        if state.detokenizer is not None:
            delta += state.detokenizer.finish()
            text = state.detokenizer.final_text
        return RequestOutput(
            out.request_id, ids, True, reason, stop_reason, state.prompt_token_ids,
            tuple(state.output_token_ids), text, state.metrics(out.token_time),
            token_time=out.token_time, text_delta=delta)
