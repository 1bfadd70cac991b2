"""Randomized stress: arrivals, lengths, shared prefixes, priorities, eos, stop strings and aborts.

Invariants are asserted after every schedule() and every update (engine_fakes.check_all): ref
counts match block tables, no block is both free and used, usage in [0, 1], request rulers hold,
and the fake runner checks every chunk's context KV (so preemption and prefix hits lose nothing).
At the end every request is finished, its streamed tokens equal its output, and no block leaked.
With `in_flight=True` the driver keeps one step in flight, as the engine's async scheduling
does: each plan is made before the previous plan's tokens are fed back.
"""

from __future__ import annotations

import random

import pytest

from aisp.engine.request import Request, RequestStatus
from aisp.engine.sampling_params import SamplingParams

from tests.engine.engine_fakes import FakeRunner, check_all, make_scheduler

EOS = 2
STOP_ID = 3


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("prefix_caching", [False, True])
@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("in_flight", [False, True], ids=["sync", "async"])
def test_random_workload_keeps_invariants_and_leaks_nothing(policy, prefix_caching, chunked, in_flight):
    seed = {"fcfs": 1, "priority": 2}[policy] * 100 + prefix_caching * 10 + chunked + 1000 * in_flight
    rng = random.Random(seed)
    max_model_len = 48
    sched, bm = make_scheduler(
        num_blocks=20, block_size=4, prefix_caching=prefix_caching, eos_token_ids=[EOS],
        policy=policy, enable_chunked_prefill=chunked, max_model_len=max_model_len,
        max_num_batched_tokens=rng.choice([16, 24]) if chunked else 48, max_num_seqs=6,
    )
    runner = FakeRunner(sched, rng=random.Random(seed + 1), vocab=(2, 40))  # eos and stop id included
    shared_prefixes = [[rng.randint(100, 200) for _ in range(rng.randint(4, 12))] for _ in range(3)]
    all_requests: list[Request] = []
    streamed: dict[str, list[int]] = {}
    totals = {"preemptions": 0, "hits": 0, "aborts": 0, "stop_strings": 0}
    launched = None  # (plan, sampled) whose tokens are not fed back yet

    for step_index in range(400):
        if step_index < 300 and rng.random() < 0.35:
            prompt = list(rng.choice(shared_prefixes)) if rng.random() < 0.5 else []
            prompt += [rng.randint(100, 200) for _ in range(rng.randint(1, 20))]
            max_tokens = rng.randint(1, min(16, max_model_len - len(prompt)))
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=rng.random() < 0.3,
                                    min_tokens=rng.randint(0, max_tokens), stop_token_ids=(STOP_ID,))
            request = Request(f"r{len(all_requests)}", tuple(prompt), params,
                              arrival_time=float(step_index), priority=rng.randint(0, 3))
            sched.add_request(request)
            all_requests.append(request)
            streamed[request.request_id] = []
        if sched.requests and rng.random() < 0.04:
            victim = rng.choice(sorted(sched.requests))
            totals["aborts"] += len(sched.abort([victim]))
            check_all(sched)

        out = sched.schedule()
        check_all(sched)
        assert out.total_num_scheduled_tokens <= sched.config.max_num_batched_tokens
        assert 0.0 <= out.stats.kv_cache_usage <= 1.0
        assert out.stats.num_prefill_tokens + out.stats.num_decode_tokens == out.total_num_scheduled_tokens
        if sched.requests and not out.preempted_request_ids:
            # Progress: with nothing preempted, something runs whenever anything is live and
            # still needs a token computed (not merely its last one in flight).
            assert out.total_num_scheduled_tokens > 0 or not sched.running or all(
                r.num_output_tokens + r.num_pending_tokens >= r.max_tokens for r in sched.running)
        totals["preemptions"] += out.stats.num_preemptions
        totals["hits"] += out.stats.prefix_cache_hits

        sampled = runner.execute(out)
        if in_flight and not out.is_empty:
            (out, sampled), launched = launched or (out, None), (out, sampled)
            if sampled is None:  # nothing was in flight yet
                continue
        elif launched is not None:  # an empty plan: feed the step in flight back first
            result = sched.update_from_output(*launched)
            for rid, tokens in result.new_token_ids.items():
                streamed[rid].extend(tokens)
            launched = None
        result = sched.update_from_output(out, sampled)
        check_all(sched)
        for rid, tokens in result.new_token_ids.items():
            streamed[rid].extend(tokens)
        # The engine's stop-string hook, as if detokenized text matched for a few requests.
        for rid in list(result.new_token_ids):
            if rid in sched.requests and rng.random() < 0.01:
                sched.finish_request(rid, RequestStatus.FINISHED_STOPPED, stop_reason="</s>")
                totals["stop_strings"] += 1
                check_all(sched)
        if step_index >= 300 and not sched.has_unfinished_requests() and launched is None:
            break
    assert not sched.has_unfinished_requests(), "the workload did not drain in 400 steps"

    assert bm.num_free_blocks == bm.num_blocks and bm.usage == 0.0
    bm.check_invariants([])
    for request in all_requests:
        assert request.is_finished and request.block_ids == []
        assert streamed[request.request_id] == request.output_token_ids, "a token was lost or repeated"
        params = request.sampling_params
        if request.status == RequestStatus.FINISHED_LENGTH:
            assert request.num_output_tokens == params.max_tokens
        elif request.status == RequestStatus.FINISHED_STOPPED and request.stop_reason != "</s>":
            last = request.output_token_ids[-1]
            assert last == STOP_ID or (last == EOS and not params.ignore_eos)
            assert request.num_output_tokens >= params.min_tokens
        # Every output token but the last was checked for stops and passed.
        for i, token in enumerate(request.output_token_ids[:-1]):
            if i + 1 >= params.min_tokens:
                assert token != STOP_ID and (token != EOS or params.ignore_eos)
    # The workload is meant to exercise the interesting paths, not just pass vacuously.
    assert totals["aborts"] > 0 and totals["preemptions"] > 0 and len(all_requests) > 80
    if prefix_caching:
        assert totals["hits"] > 0
