"""The plan of one engine step and what came of it: the small frozen dataclasses that cross
from the scheduler to the runner, the engine and telemetry (STYLE.md #4).

- `ScheduledRequest`: one request's tokens this step (input ids, start position, block table,
  whether it samples and whether it is a decode); `PENDING_TOKEN_ID` marks an input sampled by the
  step still in flight (aisp.engine.request).
- `SchedulerOutput`: the whole plan, with `SchedulerStats` for telemetry.
- `StepResult`: what `Scheduler.update_from_output` appended and finished.
"""

from __future__ import annotations

from dataclasses import dataclass

from aisp.engine.block_manager import slot_of
from aisp.engine.request import Request
from aisp.engine.sampling_params import SamplingParams

__all__ = ["ScheduledRequest", "SchedulerOutput", "SchedulerStats", "StepResult"]


@dataclass(frozen=True)
class ScheduledRequest:
    """What the runner needs for one request this step."""

    request_id: str
    token_ids: tuple[int, ...]     # input tokens: positions start_position .. start_position + n - 1
                                   # (PENDING_TOKEN_ID: sampled by the step in flight)
    start_position: int            # = num_computed_tokens before the step
    block_ids: tuple[int, ...]     # the request's block table, covering every input position
    sampling_params: SamplingParams
    samples: bool                  # the chunk reaches num_tokens: sample one token from its last logit
    is_decode: bool                # one token at the newest position of a request with output

    @property
    def num_scheduled_tokens(self) -> int:
        return len(self.token_ids)

    def slot_mapping(self, block_size: int) -> list[int]:
        """Flat KV slot of each input token (block_ids[p // bs] * bs + p % bs)."""
        start = self.start_position
        return [slot_of(self.block_ids, block_size, p) for p in range(start, start + len(self.token_ids))]


@dataclass(frozen=True)
class SchedulerStats:
    """One step's numbers for telemetry (token counts; kv usage in [0, 1])."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    num_preemptions: int          # preempted in this step
    num_prefill_tokens: int
    num_decode_tokens: int
    prefix_cache_queries: int     # tokens looked up in the prefix cache this step
    prefix_cache_hits: int        # of which found cached


@dataclass(frozen=True)
class SchedulerOutput:
    """The plan of one step: who runs with how many tokens, and what changed since the last."""

    scheduled_new_requests: tuple[ScheduledRequest, ...]      # admitted this step (incl. resumed)
    scheduled_running_requests: tuple[ScheduledRequest, ...]  # continuing from earlier steps
    total_num_scheduled_tokens: int
    preempted_request_ids: tuple[str, ...]   # the runner drops their per-request state
    finished_request_ids: tuple[str, ...]    # finished or aborted since the previous plan
    stats: SchedulerStats

    @property
    def scheduled_requests(self) -> tuple[ScheduledRequest, ...]:
        return self.scheduled_running_requests + self.scheduled_new_requests

    @property
    def num_scheduled_tokens(self) -> dict[str, int]:
        return {s.request_id: s.num_scheduled_tokens for s in self.scheduled_requests}

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass(frozen=True)
class StepResult:
    """What `update_from_output` did: tokens appended per request, and requests that finished."""

    new_token_ids: dict[str, tuple[int, ...]]
    finished_requests: tuple[Request, ...]
