"""`Scheduler`: continuous batching in token counts, with chunked prefill and recompute preemption.

Contract:
- Every request has `num_computed_tokens` (KV exists) and a target `num_tokens` (prompt + output);
  a step hands out token counts under `max_num_batched_tokens`. "Prefill"/"decode" are only labels
  (`ScheduledRequest.is_decode`); chunked prefill and mixed batches fall out of the arithmetic.
- `schedule()`: running requests first, in admission order (a decode takes 1 token, an unfinished
  prefill min(remaining, long_prefill_token_threshold, budget)); then, only if nothing was
  preempted this step, waiting requests in policy order while budget, `max_num_seqs` and blocks
  (with headroom) allow. A prompt longer than the budget left is chunked, or, without chunked
  prefill, waits (and nothing behind it jumps ahead).
- Admission headroom (no admit-then-preempt thrash): admit only if the free blocks left cover all
  admitted requests' KV through a short lookahead, plus `watermark_blocks` (`kv_cache_watermark`
  of the cache, rounded up). A request that would run alone is admitted whenever its chunk fits
  (add_request proved its KV fits the cache), so the watermark never starves it.
- Recompute preemption: when a running request cannot get blocks for its next tokens, the policy's
  victim (FCFS: newest arrival; priority: least urgent, then newest) loses its blocks and
  num_computed_tokens, KEEPS its output tokens and goes back to the front of the waiting queue; on
  resume prompt + output are prefilled again, so nothing is lost or sampled twice. If the victim
  is the request itself, it waits; a victim already planned this step gives its tokens back.
- Planning a chunk advances the request's num_computed_tokens at once, and a chunk that ends the
  sequence (`samples`) leaves one pending token (aisp.engine.request's ruler). So the next plan
  can be made before this one's tokens are back (async scheduling, one step in flight): a decode
  of a pending token carries `PENDING_TOKEN_ID` as its input, which the runner takes from the
  previous step's sampled ids on the device; a request whose last token (max_tokens) is pending
  is not scheduled again. A stop token is only seen when it arrives, so such a request may have
  run one step too many: that step's token is dropped, never shown.
- `update_from_output(output, sampled_token_ids)` appends exactly one token per request whose
  chunk reached its end (`samples`) and applies the stop conditions. Requests finished or aborted
  since the plan was made are skipped; a request preempted since then keeps its token (it was
  computed from the right context) and recomputes it with the rest on resume.
- Admission (`add_request`) rejects with a ValueError naming the numbers and the fix: a prompt of
  >= max_model_len tokens; prompt + max_tokens > max_model_len (an exact limit rather than a silent
  truncation; the server clamps max_tokens when a client leaves it unset); a request whose KV
  could never fit in the whole cache (it would preempt everything and still starve).
- Stops: an eos id (`eos_token_ids`, unless ignore_eos) or a stop_token_id ends a request
  FINISHED_STOPPED once it has >= min_tokens outputs (the stop token stays in the output);
  max_tokens ends it FINISHED_LENGTH. Stop STRINGS need detokenized text: the front end checks
  them and the engine calls `finish_request(id, FINISHED_STOPPED, stop_reason=string)`.
- `abort(ids)` and `finish_request` free blocks at once, between steps (schedule -> run -> update
  -> aborts/stop strings). Unknown or finished ids are skipped: a client may disconnect just as
  its request finishes.
- Every `SchedulerOutput` carries `SchedulerStats`; telemetry reads those, never the internals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from aisp.engine.block_manager import BlockManager, PrefixHit
from aisp.engine.plan import ScheduledRequest, SchedulerOutput, SchedulerStats, StepResult
from aisp.engine.queues import POLICIES, make_queue
from aisp.engine.request import PENDING_TOKEN_ID, Request, RequestStatus

__all__ = ["ScheduledRequest", "Scheduler", "SchedulerConfig", "SchedulerOutput", "SchedulerStats", "StepResult"]


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one scheduling step; validated at construction."""

    max_num_batched_tokens: int = 2048   # token budget per step (all requests together)
    max_num_seqs: int = 64               # requests running at once
    max_model_len: int = 2048            # prompt + output tokens of one request, at most
    max_model_len_reason: str | None = None  # what set max_model_len, quoted by admission errors
    policy: Literal["fcfs", "priority"] = "fcfs"
    enable_chunked_prefill: bool = True  # split prompts longer than the step's remaining budget
    long_prefill_token_threshold: int = 0  # cap on one prefill chunk per step; 0 = no cap
    kv_cache_watermark: float = 0.01     # fraction of KV blocks kept free at admission (rounded up)

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} is {value!r}; it must be a positive integer")
        if self.policy not in POLICIES:
            raise ValueError(f"SchedulerConfig.policy is {self.policy!r}; valid policies are {sorted(POLICIES)}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens:,}) < max_model_len "
                f"({self.max_model_len:,}) without chunked prefill: a long prompt could never be "
                f"scheduled; raise max_num_batched_tokens or set enable_chunked_prefill=True"
            )
        w = self.kv_cache_watermark
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < 1:
            raise ValueError(f"kv_cache_watermark is {w!r}; it must be a fraction in [0, 1) of the KV "
                             f"blocks kept free when admitting a request (0.01 = 1%, as vLLM; 0 = off)")
        t = self.long_prefill_token_threshold
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise ValueError(f"long_prefill_token_threshold is {t!r}; it must be an integer >= 0 (0 = no cap)")
        if t and not self.enable_chunked_prefill:
            raise ValueError(
                f"long_prefill_token_threshold={t} splits prompts into chunks, which needs "
                f"enable_chunked_prefill=True; enable it or set the threshold to 0"
            )


class Scheduler:
    """Waiting queue (policy) + running list + a BlockManager (mechanism)."""

    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        eos_token_ids: Iterable[int] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.block_manager = block_manager
        self.eos_token_ids = frozenset(eos_token_ids)
        self.clock = clock
        self.waiting = make_queue(config.policy)
        self.running: list[Request] = []            # admission order
        self.requests: dict[str, Request] = {}      # every unfinished request, by id
        self._finished_ids: list[str] = []          # since the last schedule()
        # Blocks left free at admission; rounded up, so any watermark > 0 keeps at least one block.
        self.watermark_blocks = math.ceil(config.kv_cache_watermark * block_manager.num_blocks)

    # -- admission -------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue a new request, or raise ValueError when it can never be served (see module doc)."""
        rid, n, m = request.request_id, request.num_prompt_tokens, request.max_tokens
        limit = self.config.max_model_len
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in use by an unfinished request; use a unique id")
        if request.status != RequestStatus.WAITING or request.output_token_ids:
            raise ValueError(f"request {rid!r} has already been served ({request.status.value}); submit a new Request")
        why = self.config.max_model_len_reason
        if n >= limit:
            context = (f"max_model_len is {limit:,} tokens ({why})" if why else
                       f"the model's context is {limit:,} (max_model_len)")
            raise ValueError(
                f"request {rid!r}: prompt has {n:,} tokens; {context}, which leaves no room to "
                f"generate; shorten the prompt"
            )
        if n + m > limit:
            context = (f"max_model_len of {limit:,} tokens ({why})" if why else
                       f"the model's context of {limit:,} tokens")
            raise ValueError(
                f"request {rid!r}: prompt ({n:,} tokens) + max_tokens ({m:,}) = {n + m:,} exceeds "
                f"the {context}; lower max_tokens to at most {limit - n:,}"
            )
        bm = self.block_manager
        need = bm.num_blocks_for(n + m - 1)  # the last sampled token never needs KV
        if need > bm.num_blocks:
            raise ValueError(
                f"request {rid!r}: prompt + max_tokens needs {need:,} KV blocks of {bm.block_size} "
                f"tokens but the whole cache has {bm.num_blocks:,}; lower max_tokens or give the "
                f"KV cache more memory"
            )
        self.requests[rid] = request
        self.waiting.add(request)

    # -- one step --------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Plan one step: hand out token counts under the budget (see module docstring)."""
        bm = self.block_manager
        queries_before, hits_before = bm.prefix_cache_queries, bm.prefix_cache_hits
        num_scheduled: dict[str, int] = {}   # request id -> tokens this step
        preempted: list[Request] = []
        budget = self._schedule_running(num_scheduled, preempted)
        num_continuing = len(self.running)
        if not preempted:  # the pool just proved too small for the running ones: admitting would thrash
            self._schedule_waiting(num_scheduled, budget)

        running_part = [self._plan(r, num_scheduled[r.request_id])
                        for r in self.running[:num_continuing] if r.request_id in num_scheduled]
        new_part = [self._plan(r, num_scheduled[r.request_id]) for r in self.running[num_continuing:]]
        for plan in running_part + new_part:  # the plan is final: its KV is as good as written
            request = self.requests[plan.request_id]
            request.num_computed_tokens += plan.num_scheduled_tokens
            request.num_pending_tokens += plan.samples
        num_decode = sum(p.num_scheduled_tokens for p in running_part + new_part if p.is_decode)
        total = sum(num_scheduled.values())
        assert total <= self.config.max_num_batched_tokens and len(self.running) <= self.config.max_num_seqs
        stats = SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_cache_usage=bm.usage,
            num_free_blocks=bm.num_free_blocks,
            num_preemptions=len(preempted),
            num_prefill_tokens=total - num_decode,
            num_decode_tokens=num_decode,
            prefix_cache_queries=bm.prefix_cache_queries - queries_before,
            prefix_cache_hits=bm.prefix_cache_hits - hits_before,
        )
        finished_ids, self._finished_ids = tuple(self._finished_ids), []
        return SchedulerOutput(
            scheduled_new_requests=tuple(new_part),
            scheduled_running_requests=tuple(running_part),
            total_num_scheduled_tokens=total,
            preempted_request_ids=tuple(r.request_id for r in preempted),
            finished_request_ids=finished_ids,
            stats=stats,
        )

    def _schedule_running(self, num_scheduled: dict[str, int], preempted: list[Request]) -> int:
        """Give running requests their next tokens, preempting when blocks run out; returns budget left."""
        budget = self.config.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            if request.num_output_tokens + request.num_pending_tokens >= request.max_tokens:
                i += 1  # its last token is in flight: nothing more to compute
                continue
            num_new = self._num_new_tokens(request, budget)
            while not self.block_manager.allocate_slots(request, num_new):
                victim = self.waiting.victim(self.running)
                victim_index = self.running.index(victim)
                self._preempt(victim)
                preempted.append(victim)
                budget += num_scheduled.pop(victim.request_id, 0)  # already planned: give it back
                if victim_index < i:
                    i -= 1  # keep i on `request`, which moved one place left
                if victim is request:
                    break
            else:
                num_scheduled[request.request_id] = num_new
                budget -= num_new
                i += 1
        return budget

    def _schedule_waiting(self, num_scheduled: dict[str, int], budget: int) -> None:
        """Admit waiting requests in policy order while budget, max_num_seqs and blocks allow."""
        cfg, bm = self.config, self.block_manager
        now = self.clock()
        while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            request = self.waiting.peek()
            assert request.num_pending_tokens == 0, "a pending token arrives before the next plan"
            hit = bm.get_computed_blocks(request)
            num_new = request.num_tokens - hit.num_tokens
            if cfg.long_prefill_token_threshold:
                num_new = min(num_new, cfg.long_prefill_token_threshold)
            if num_new > budget:
                if not cfg.enable_chunked_prefill:
                    break  # strict order: a later, shorter prompt does not jump the queue
                num_new = budget
            if self.running and not self._admission_keeps_headroom(request, num_new, hit, num_scheduled):
                break  # strict order here too: the head waits for room, nothing jumps ahead
            if not bm.allocate_slots(request, num_new, hit):
                break
            self.waiting.pop()
            request.num_computed_tokens = hit.num_tokens
            request.status = RequestStatus.RUNNING
            if request.first_scheduled_time is None:
                request.first_scheduled_time = now
                request.num_cached_tokens = hit.num_tokens
            self.running.append(request)
            num_scheduled[request.request_id] = num_new
            budget -= num_new

    def _admission_keeps_headroom(
        self, request: Request, num_new: int, hit: PrefixHit, num_scheduled: Mapping[str, int]
    ) -> bool:
        """Whether admitting `request` (first chunk `num_new`) leaves what every admitted request
        needs through the lookahead window, plus `watermark_blocks`.

        Why a lookahead, not only a watermark: the thrash ch16/scheduler.py showed is a long
        prompt admitted with its first chunk into the last free blocks; next step its second
        chunk finds none and FCFS preempts the newest, itself, before it sampled; it is admitted
        again at once, over and over. 1% of a small cache is one block, less than a chunk, so a
        watermark alone cannot stop that; counting what admitted requests will need does. The
        window lasts until every prefill in progress has sampled (later chunks estimated at this
        step's size, which a prefill's share of the budget never falls below) plus one step: no
        request is preempted before its first token, nor in the step after its admission. Counts
        include pending tokens, so with a step in flight (async scheduling) a decode's need is
        counted from the token being sampled, two ahead of the host's view. Growth beyond the
        window is what the watermark, and failing that recompute preemption, is for.
        """
        bm = self.block_manager
        # (request, tokens it computes KV toward, KV computed after this step, this step's chunk)
        admitted = [(r, r.num_tokens, r.num_computed_tokens + num_scheduled[r.request_id],
                     num_scheduled[r.request_id])
                    for r in self.running if r.request_id in num_scheduled]  # unscheduled: last token in flight
        admitted.append((request, request.num_tokens, hit.num_tokens + num_new, num_new))
        steps_left = [-(-(n - computed) // chunk) for _, n, computed, chunk in admitted]  # of each prefill
        window = 1 + max(steps_left)
        need = 0
        for (r, n, _, _), steps in zip(admitted, steps_left):
            # KV positions after `window` more steps: the prefill's rest, then one decode a step;
            # the last sampled token never needs KV.
            through = min(n + window - steps, r.num_prompt_tokens + r.max_tokens - 1)
            if r is request:
                need += bm.num_blocks_to_allocate(request, through - hit.num_tokens, hit)
            else:
                need += max(0, bm.num_blocks_for(through) - len(r.block_ids))
        return bm.num_free_blocks - need >= self.watermark_blocks

    def update_from_output(
        self, scheduler_output: SchedulerOutput, sampled_token_ids: Mapping[str, Sequence[int]]
    ) -> StepResult:
        """Append sampled tokens, finish requests that hit a stop (counts advanced at planning)."""
        planned = scheduler_output.scheduled_requests
        unplanned = set(sampled_token_ids) - {p.request_id for p in planned}
        if unplanned:
            raise ValueError(f"sampled tokens for requests not scheduled this step: {sorted(unplanned)}")
        for plan in planned:  # validate everything before changing anything
            n, expected = len(sampled_token_ids.get(plan.request_id, ())), int(plan.samples)
            if n != expected:
                raise ValueError(
                    f"request {plan.request_id!r}: the runner returned {n} sampled tokens for a "
                    f"{'chunk that ends the sequence' if plan.samples else 'partial prefill chunk'}; "
                    f"expected {expected}"
                )
        now = self.clock()
        new_token_ids: dict[str, tuple[int, ...]] = {}
        finished: list[Request] = []
        for plan in planned:
            tokens = sampled_token_ids.get(plan.request_id, ())
            request = self.requests.get(plan.request_id)
            if request is None or not tokens:
                continue  # finished or aborted since the plan (blocks gone), or a partial chunk
            request.append_output_token(tokens[0], now)
            new_token_ids[request.request_id] = (tokens[0],)
            stop = self._check_stop(request, tokens[0])
            if stop is not None:
                self._finish(request, *stop)
                finished.append(request)
        return StepResult(new_token_ids, tuple(finished))

    # -- finishing from outside ------------------------------------------------------------------
    def finish_request(
        self, request_id: str, status: RequestStatus = RequestStatus.FINISHED_STOPPED,
        stop_reason: int | str | None = None,
    ) -> Request | None:
        """Finish a request now (stop string found, abort); frees its blocks. None if not live."""
        if not status.is_finished:
            raise ValueError(f"finish_request needs a FINISHED_* status; got {status}")
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._finish(request, status, stop_reason)
        return request

    def abort(self, request_ids: Iterable[str]) -> list[Request]:
        """Abort requests (waiting or running) and free their blocks at once; returns those aborted."""
        aborted = [self.finish_request(rid, RequestStatus.FINISHED_ABORTED) for rid in request_ids]
        return [r for r in aborted if r is not None]

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_request(self, request_id: str) -> Request | None:
        return self.requests.get(request_id)

    # -- internals -------------------------------------------------------------------------------
    def _num_new_tokens(self, request: Request, budget: int) -> int:
        """Tokens a running request takes this step: its remaining count, capped and chunked."""
        num_new = request.num_tokens - request.num_computed_tokens
        assert num_new >= 1, f"{request} has nothing to compute"
        if self.config.long_prefill_token_threshold:
            num_new = min(num_new, self.config.long_prefill_token_threshold)
        assert self.config.enable_chunked_prefill or num_new == 1, "unchunked prefills finish in one step"
        return min(num_new, budget)

    def _plan(self, request: Request, num_new: int) -> ScheduledRequest:
        start, end = request.num_computed_tokens, request.num_computed_tokens + num_new
        assert 0 < num_new and end <= request.num_tokens
        assert len(request.block_ids) * self.block_manager.block_size >= end
        token_ids = request.all_token_ids[start:end]
        if end > len(request.all_token_ids):  # a decode of the token the step in flight samples
            assert num_new == 1 and request.num_pending_tokens == 1
            token_ids = [PENDING_TOKEN_ID]
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=tuple(token_ids),
            start_position=start,
            block_ids=tuple(request.block_ids),
            sampling_params=request.sampling_params,
            samples=end == request.num_tokens,
            is_decode=num_new == 1 and end == request.num_tokens
            and request.num_output_tokens + request.num_pending_tokens > 0,
        )

    def _preempt(self, request: Request) -> None:
        """Recompute preemption: free the KV, keep the tokens, requeue at the front."""
        self.running.remove(request)
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.waiting.prepend(request)

    def _check_stop(self, request: Request, token_id: int) -> tuple[RequestStatus, int | None] | None:
        """Stop status for the token just appended, or None to keep going."""
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token_id in self.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED, None
            if token_id in params.stop_token_ids:
                return RequestStatus.FINISHED_STOPPED, token_id
        if request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH, None
        assert request.num_tokens < self.config.max_model_len, "admission guarantees room for max_tokens"
        return None

    def _finish(self, request: Request, status: RequestStatus, stop_reason: int | str | None = None) -> None:
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.block_manager.free(request)
        request.status = status
        request.stop_reason = stop_reason
        request.finished_time = self.clock()
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)
