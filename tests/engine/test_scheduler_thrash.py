"""Admission under a tight KV cache: no admit-then-preempt thrash, and nothing lost.

A *thrash cycle* is an admission of request R at step a followed by R's preemption at step p
where p <= a + 1 (preempted in the step it was admitted or the next) or R sampled no token in
steps a..p-1 (preempted before producing anything since it was admitted: the recompute bought
nothing). Preemptions after progress stay allowed: with long outputs on a small pool, decode
growth must preempt someone, and the workloads are chosen so that some do. Each run is compared
with the same workload on a pool too big to preempt: the fake runner samples a hash of the
whole context, so equal outputs mean that no token was lost, repeated or computed from a wrong
context (the runner also checks every chunk's context KV).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from aisp.engine.scheduler import SchedulerConfig

from tests.engine.engine_fakes import FakeRunner, check_all, make_request, make_scheduler

# (arrival step, prompt tokens, max_tokens): long outputs, prompts of 1-7 blocks of 4 tokens.
WORKLOAD = [(0, 26, 20), (0, 9, 30), (0, 18, 24), (1, 5, 28), (2, 22, 16), (3, 13, 26),
            (6, 7, 30), (9, 28, 12), (12, 11, 22), (15, 3, 30)]


def drive(sched, workload, *, in_flight: bool, max_steps: int = 600):
    """Run `workload` to the end; returns (outputs by id, number of preemptions, thrash cycles).

    With `in_flight`, one step stays in flight as under the engine's async scheduling: each plan
    is made before the previous plan's tokens are fed back.
    """
    runner = FakeRunner(sched, from_context=True)
    pending = list(workload)  # in arrival order
    streamed: dict[str, list[int]] = defaultdict(list)
    admitted_at: dict[str, int] = {}
    sampled_since_admission: dict[str, bool] = {}
    num_preemptions, thrash = 0, []
    launched = None  # (plan, sampled) whose tokens are not fed back yet

    def feed(out, sampled):
        result = sched.update_from_output(out, sampled)
        check_all(sched)
        for rid, tokens in result.new_token_ids.items():
            streamed[rid].extend(tokens)

    for t in range(max_steps):
        while pending and pending[0][0] <= t:
            _, n, m = pending.pop(0)
            i = len(streamed)
            sched.add_request(make_request(f"r{i}", [7 * i + j for j in range(n)], max_tokens=m,
                                           arrival_time=float(t), priority=i % 3, ignore_eos=True))
            streamed[f"r{i}"] = []
        if not pending and not sched.has_unfinished_requests() and launched is None:
            break
        out = sched.schedule()
        check_all(sched)
        for rid in out.preempted_request_ids:  # decided before this step's plans
            num_preemptions += 1
            if t <= admitted_at[rid] + 1 or not sampled_since_admission[rid]:
                thrash.append((rid, admitted_at[rid], t))
        for plan in out.scheduled_new_requests:
            admitted_at[plan.request_id], sampled_since_admission[plan.request_id] = t, False
        for plan in out.scheduled_requests:
            sampled_since_admission[plan.request_id] |= plan.samples

        sampled = runner.execute(out)
        if in_flight and not out.is_empty:
            (out, sampled), launched = launched or (out, None), (out, sampled)
            if sampled is None:  # nothing was in flight yet
                continue
        elif launched is not None:  # an empty plan: feed the step in flight back first
            feed(*launched)
            launched = None
        feed(out, sampled)
    assert not pending and not sched.has_unfinished_requests(), f"not drained in {max_steps} steps"
    bm = sched.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    bm.check_invariants([])
    return dict(streamed), num_preemptions, thrash


def reference(workload, in_flight):
    sched, _ = make_scheduler(num_blocks=1024, max_model_len=64, max_num_batched_tokens=16,
                              max_num_seqs=8)
    outputs, num_preemptions, _ = drive(sched, workload, in_flight=in_flight)
    assert num_preemptions == 0
    return outputs


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("in_flight", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("num_blocks", [12, 16])
def test_tight_cache_never_admits_a_request_only_to_preempt_it(policy, in_flight, num_blocks):
    sched, _ = make_scheduler(num_blocks=num_blocks, max_model_len=64, max_num_batched_tokens=16,
                              max_num_seqs=8, policy=policy)
    assert sched.watermark_blocks == 1  # the default 1% of 12-16 blocks, rounded up
    outputs, num_preemptions, thrash = drive(sched, WORKLOAD, in_flight=in_flight)
    assert thrash == [], f"admitted, then preempted without progress: (request, admitted, preempted) {thrash}"
    assert num_preemptions > 0  # the pool is tight enough that decode growth does preempt
    assert outputs == reference(WORKLOAD, in_flight)
    assert [len(outputs[f"r{i}"]) for i in range(len(WORKLOAD))] == [m for _, _, m in WORKLOAD]


@pytest.mark.parametrize("in_flight", [False, True], ids=["sync", "async"])
def test_a_request_needing_the_whole_cache_still_runs_alone(in_flight):
    # 8 blocks, watermark 1: "big" needs all 8 (28 + 5 - 1 = 32 positions of KV), more than the
    # watermark ever leaves. It waits for the running request, then runs alone (nobody can
    # preempt it and its whole KV fits); "small2", behind it in FCFS order, does not jump ahead.
    sched, bm = make_scheduler(num_blocks=8, max_model_len=64, max_num_batched_tokens=32)
    assert sched.watermark_blocks == 1
    order = []
    workload = [(0, 6, 6), (1, 28, 5), (1, 2, 3)]  # small, big, small2
    orig_schedule = sched.schedule

    def schedule():
        out = orig_schedule()
        order.extend(p.request_id for p in out.scheduled_new_requests)
        return out

    sched.schedule = schedule
    outputs, num_preemptions, thrash = drive(sched, workload, in_flight=in_flight)
    assert order == ["r0", "r1", "r2"] and num_preemptions == 0 and thrash == []
    assert {rid: len(t) for rid, t in outputs.items()} == {"r0": 6, "r1": 5, "r2": 3}
    assert outputs == reference(workload, in_flight)


def test_watermark_keeps_blocks_free_at_admission():
    # A and B: 12-token prompts (3 blocks each) of an 8-block cache. Admitting B leaves exactly
    # the 2 blocks that A's and B's next tokens need (position 12 opens a 4th block for each),
    # so B is admitted only without a watermark.
    for watermark, admitted in ((0, {"A": 12, "B": 12}), (0.01, {"A": 12})):
        sched, bm = make_scheduler(kv_cache_watermark=watermark)
        for rid in "AB":
            sched.add_request(make_request(rid, 12, max_tokens=12))
        out = sched.schedule()
        assert out.num_scheduled_tokens == admitted
        assert bm.num_free_blocks == 8 - 3 * len(admitted)
    # vLLM's default of 1%, rounded up so that any watermark keeps at least one block.
    assert [make_scheduler(num_blocks=n)[0].watermark_blocks for n in (8, 100, 101, 1000)] == [1, 1, 2, 10]
    assert make_scheduler(kv_cache_watermark=0)[0].watermark_blocks == 0
    with pytest.raises(ValueError, match=r"kv_cache_watermark is -0.1; it must be a fraction in \[0, 1\)"):
        SchedulerConfig(kv_cache_watermark=-0.1)


def test_engine_config_carries_the_watermark_to_the_scheduler():
    from aisp.engine.config import EngineConfig
    from aisp.engine.engine import LLMEngine

    assert EngineConfig().kv_cache_watermark == 0.01
    for bad in (1.0, -0.5, True, "1%"):
        with pytest.raises(ValueError, match="kv_cache_watermark is .* fraction in \\[0, 1\\)"):
            EngineConfig(kv_cache_watermark=bad)
    engine = LLMEngine(EngineConfig.from_dict(
        {"model": "tiny", "device": "cpu", "num_kv_blocks": 128, "kv_cache_watermark": 0.05}))
    assert engine.scheduler.config.kv_cache_watermark == 0.05
    assert engine.scheduler.watermark_blocks == 7  # 5% of 128 = 6.4, rounded up
