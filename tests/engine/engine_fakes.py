"""Test doubles for the engine core: a fake runner that checks every plan against a simulated KV
cache, a manual clock, and small builders.

The fake runner is the oracle for "nothing lost": it keeps, per flat KV slot, a fingerprint of
(position, all tokens up to that position) - what real KV at that slot would depend on. Before a
chunk runs it asserts that every earlier position of the request is present in the slots its
block table maps to, and that the plan's input tokens are the request's own tokens. A wrong slot
mapping, a block freed while still in use, a prefix hit on the wrong content or a preemption that
drops tokens all fail here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from aisp.engine.block_manager import BlockManager
from aisp.engine.request import PENDING_TOKEN_ID, Request
from aisp.engine.sampling_params import SamplingParams
from aisp.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput, StepResult


class ManualClock:
    """A clock that advances by 1.0 on every read, so timestamps are distinct and predictable."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class FakeRunner:
    """Executes a SchedulerOutput against a simulated KV cache and fabricates sampled tokens."""

    def __init__(self, scheduler: Scheduler, script: dict[str, Sequence[int]] | None = None,
                 rng: random.Random | None = None, vocab: tuple[int, int] = (10, 60),
                 from_context: bool = False) -> None:
        self.scheduler = scheduler
        self.block_size = scheduler.block_manager.block_size
        self.script = dict(script or {})  # request id -> tokens to emit, in order
        self.rng = rng
        self.vocab = vocab
        self.from_context = from_context  # sample a hash of the whole context, in `vocab`
        self.kv: dict[int, int] = {}       # flat slot -> fingerprint of (position, tokens[:position+1])
        self.num_tokens_run = 0
        self.last_sampled: dict[str, list[int]] = {}

    @staticmethod
    def _fingerprint(tokens: Sequence[int], position: int) -> int:
        return hash((position, tuple(tokens[: position + 1])))

    def next_token(self, request: Request, context: Sequence[int] = ()) -> int:
        if self.from_context:  # a function of what the model would see: equal runs, equal outputs
            lo, hi = self.vocab
            return lo + hash(tuple(context)) % (hi - lo + 1)
        scripted = self.script.get(request.request_id)
        if scripted is not None and request.num_output_tokens < len(scripted):
            return scripted[request.num_output_tokens]
        if self.rng is not None:
            return self.rng.randint(*self.vocab)
        return 1000 + len(request.all_token_ids)  # deterministic, never an eos id used by the tests

    def execute(self, output: SchedulerOutput) -> dict[str, list[int]]:
        """Run a plan now. Under async scheduling the previous plan's tokens may not have been
        fed back yet: a PENDING_TOKEN_ID input must then be the token this runner sampled for
        that request in its previous call, which the runner substitutes (as the real one does
        on the device)."""
        sampled: dict[str, list[int]] = {}
        previous, self.last_sampled = self.last_sampled, sampled
        for plan in output.scheduled_requests:
            request = self.scheduler.get_request(plan.request_id)
            assert request is not None, f"{plan.request_id} was scheduled but is not live"
            tokens = request.all_token_ids
            start, end = plan.start_position, plan.start_position + plan.num_scheduled_tokens
            if end > len(tokens):  # its input was sampled by the step still in flight
                assert plan.token_ids == (PENDING_TOKEN_ID,) and plan.is_decode
                assert request.num_pending_tokens == 2
                tokens = tokens + previous[plan.request_id]
            else:
                assert plan.token_ids == tuple(tokens[start:end]), "plan feeds the wrong tokens"
            assert len(plan.block_ids) * self.block_size >= end, "block table too short"
            slots = plan.slot_mapping(self.block_size)
            assert len(set(slots)) == len(slots)
            for p in range(start):  # the context this chunk attends to must be intact
                slot = plan.block_ids[p // self.block_size] * self.block_size + p % self.block_size
                assert self.kv.get(slot) == self._fingerprint(tokens, p), (
                    f"{plan.request_id}: KV of position {p} (slot {slot}) is missing or wrong")
            for p, slot in zip(range(start, end), slots):
                self.kv[slot] = self._fingerprint(tokens, p)
            self.num_tokens_run += plan.num_scheduled_tokens
            if plan.samples:
                sampled[plan.request_id] = [self.next_token(request, tokens[:end])]
        return sampled


def make_request(request_id: str, prompt: Sequence[int] | int, max_tokens: int = 4, *,
                 arrival_time: float | None = None, priority: int = 0, **params) -> Request:
    """A request whose prompt is given, or `prompt` distinct tokens derived from its id."""
    if isinstance(prompt, int):
        base = 100 * (sum(map(ord, request_id)) % 97 + 1)
        prompt = list(range(base, base + prompt))
    kwargs = {} if arrival_time is None else {"arrival_time": arrival_time}
    return Request(request_id, tuple(prompt), SamplingParams(max_tokens=max_tokens, **params),
                   priority=priority, **kwargs)


def make_scheduler(num_blocks: int = 8, block_size: int = 4, *, prefix_caching: bool = False,
                   eos_token_ids: Sequence[int] = (), **config) -> tuple[Scheduler, BlockManager]:
    config.setdefault("max_model_len", 64)
    config.setdefault("max_num_batched_tokens", 64)
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching=prefix_caching)
    return Scheduler(SchedulerConfig(**config), bm, eos_token_ids=eos_token_ids, clock=ManualClock()), bm


def step(scheduler: Scheduler, runner: FakeRunner) -> tuple[SchedulerOutput, StepResult]:
    """One engine step: plan, run, feed back (STYLE #1), with invariants checked after each part."""
    out = scheduler.schedule()
    check_all(scheduler)
    result = scheduler.update_from_output(out, runner.execute(out))
    check_all(scheduler)
    return out, result


def scheduled(out: SchedulerOutput) -> dict[str, int]:
    return out.num_scheduled_tokens


def check_all(scheduler: Scheduler) -> None:
    bm = scheduler.block_manager
    live = list(scheduler.requests.values())
    bm.check_invariants(live)
    for request in live:
        request.check_invariants(bm.block_size)
    waiting, running = set(map(id, scheduler.waiting)), set(map(id, scheduler.running))
    assert not waiting & running and len(waiting) + len(running) == len(live)
    assert len(scheduler.running) <= scheduler.config.max_num_seqs
