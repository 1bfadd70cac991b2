"""`Request`: one generation request and everything the engine tracks about it.

Contract:
- A Request is the one noun for "a prompt being served" from admission to finish; the scheduler
  owns its mutable state (status, num_computed_tokens, block_ids), the engine appends nothing
  except through the scheduler.
- Counts are in tokens. The ruler below is the invariant that the scheduler and block manager
  rely on; `check_invariants()` asserts it.

      position  0                      num_prompt_tokens                        num_tokens
                |-------- prompt ---------------|------- output --------|pending|
                |==== KV computed ====|-- scheduled now --|-- not yet ----------|
                0              num_computed_tokens                          num_tokens

      0 <= num_computed_tokens <= num_tokens, and while RUNNING between steps
      num_computed_tokens <= num_tokens - 1: the newest token (the last prompt token before the
      first step, the last sampled token afterwards) never has KV yet, because its KV is written by
      the same forward pass that produces the next token's logits.
      block_ids covers at least num_computed_tokens slots: len(block_ids) * block_size >= that.

- `num_computed_tokens` advances when a chunk is *scheduled* (its KV is as good as written: every
  later step runs after it on the same device stream). A chunk that ends the sequence leaves one
  *pending* token: sampled on the device, not yet seen by the host. `num_tokens` counts it; the
  token ids (`all_token_ids`, `output_token_ids`) do not until it is appended. With synchronous
  steps a pending token lives only between `schedule()` and `update_from_output()`; with async
  scheduling (one step in flight) the next step may already be planned on top of it, its input
  id filled in on the device (`PENDING_TOKEN_ID` in the plan).

- Recompute preemption resets num_computed_tokens to 0 and clears block_ids but keeps
  output_token_ids: on resume, prompt + output so far are prefilled again and generation
  continues where it stopped. Nothing the client has seen is lost or sampled twice.
- Timestamps use one monotonic clock (the scheduler's, `time.monotonic` unless injected), so TTFT,
  TPOT, ITL and E2E are differences of values taken from the same clock. `token_times[i]` is when
  output token i was appended; recomputed tokens after a preemption get no new timestamps.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from aisp.engine.sampling_params import SamplingParams

__all__ = ["PENDING_TOKEN_ID", "Request", "RequestStatus"]

# Stands in a plan for a token that was sampled by the step in flight and is not known yet.
PENDING_TOKEN_ID = -1


class RequestStatus(enum.Enum):
    """Where a request is in its life; everything from FINISHED_STOPPED on is terminal."""

    WAITING = "waiting"                    # in the waiting queue, never scheduled
    RUNNING = "running"                    # holds KV blocks and is scheduled step after step
    PREEMPTED = "preempted"                # blocks freed; back in the waiting queue to recompute
    FINISHED_STOPPED = "finished_stopped"  # eos, a stop token id or a stop string
    FINISHED_LENGTH = "finished_length"    # max_tokens reached
    FINISHED_ABORTED = "finished_aborted"  # client went away or the engine aborted it

    @property
    def is_finished(self) -> bool:
        # Compared by name prefix, not a dict lookup: this runs for every request every step.
        return self._value_.startswith("finished")

    @property
    def finish_reason(self) -> str | None:
        """OpenAI's finish_reason ("stop", "length", "abort"), None while unfinished."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(eq=False)  # identity semantics: two requests with equal prompts are still two requests
class Request:
    """A prompt, its sampling settings, its output so far and its place in the engine."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling_params: SamplingParams = field(default_factory=SamplingParams)
    arrival_time: float = field(default_factory=time.monotonic)
    priority: int = 0  # lower value is served first under the "priority" policy

    # Mutable state, owned by the scheduler.
    status: RequestStatus = field(default=RequestStatus.WAITING, init=False)
    output_token_ids: list[int] = field(default_factory=list, init=False)
    all_token_ids: list[int] = field(init=False)  # prompt + output, the tokens positions refer to
    num_computed_tokens: int = field(default=0, init=False)  # tokens whose KV is in the cache
    # Sampled, not yet appended: 1 per planned step that ends the sequence (2 at most, briefly,
    # with a step in flight: between planning the next step and reading this one's tokens).
    num_pending_tokens: int = field(default=0, init=False)
    block_ids: list[int] = field(default_factory=list, init=False)  # KV block table, in order
    stop_reason: int | str | None = field(default=None, init=False)  # the stop token id or string
    num_cached_tokens: int = field(default=0, init=False)  # prefix-cache hit at first admission
    num_preemptions: int = field(default=0, init=False)

    # Timestamps on the scheduler's clock.
    first_scheduled_time: float | None = field(default=None, init=False)
    first_token_time: float | None = field(default=None, init=False)
    token_times: list[float] = field(default_factory=list, init=False)
    finished_time: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"request_id is {self.request_id!r}; it must be a non-empty string")
        self.prompt_token_ids = tuple(self.prompt_token_ids)
        if not self.prompt_token_ids:
            raise ValueError(
                f"request {self.request_id!r} has an empty prompt; at least one token is needed "
                f"to produce logits (send the tokenizer's BOS token)"
            )
        bad = [t for t in self.prompt_token_ids if not isinstance(t, int) or isinstance(t, bool) or t < 0]
        if bad:
            raise ValueError(
                f"request {self.request_id!r} has invalid prompt token ids {bad[:5]!r}; "
                f"token ids are integers >= 0"
            )
        if not isinstance(self.sampling_params, SamplingParams):
            raise ValueError(
                f"request {self.request_id!r}: sampling_params is {type(self.sampling_params).__name__}; "
                f"pass a SamplingParams"
            )
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ValueError(f"request {self.request_id!r}: priority is {self.priority!r}; it must be an int")
        self.all_token_ids = list(self.prompt_token_ids)

    # -- counts (tokens) -------------------------------------------------------------------------
    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt + output + pending: the target the scheduler computes KV toward (minus the
        newest token)."""
        return len(self.all_token_ids) + self.num_pending_tokens

    @property
    def max_tokens(self) -> int:
        return self.sampling_params.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.finish_reason

    # -- mutation (called by the scheduler) ------------------------------------------------------
    def append_output_token(self, token_id: int, now: float) -> None:
        """Record one sampled token (the pending one) and its time; the first one sets
        first_token_time (TTFT)."""
        assert self.num_pending_tokens > 0, f"{self.request_id}: a token arrived that no step sampled"
        self.num_pending_tokens -= 1
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        self.token_times.append(now)
        if self.first_token_time is None:
            self.first_token_time = now

    def check_invariants(self, block_size: int) -> None:
        """Assert the ruler in the module docstring (tests and debug runs call this)."""
        assert self.all_token_ids == [*self.prompt_token_ids, *self.output_token_ids]
        assert 0 <= self.num_computed_tokens <= self.num_tokens
        assert len(self.block_ids) * block_size >= self.num_computed_tokens
        assert len(self.token_times) == self.num_output_tokens
        assert 0 <= self.num_pending_tokens <= 2
        if self.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            assert self.num_computed_tokens == 0 and not self.block_ids
        if self.is_finished:
            assert not self.block_ids
        if self.status == RequestStatus.RUNNING:
            assert self.num_computed_tokens <= self.num_tokens - 1

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.value}, prompt={self.num_prompt_tokens}, "
            f"output={self.num_output_tokens}, pending={self.num_pending_tokens}, "
            f"computed={self.num_computed_tokens}, "
            f"blocks={self.block_ids})"
        )
