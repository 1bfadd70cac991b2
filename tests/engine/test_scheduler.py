"""Scheduler behaviour on tiny caches (8 blocks of 4 tokens), asserting exact plans (STYLE #7)."""

from __future__ import annotations

import pytest

from aisp.engine.request import Request, RequestStatus
from aisp.engine.sampling_params import SamplingParams
from aisp.engine.scheduler import SchedulerConfig

from tests.engine.engine_fakes import FakeRunner, make_request, make_scheduler, scheduled, step


def ids(plans) -> list[str]:
    return [p.request_id for p in plans]


def test_lifecycle_prefill_decode_length_and_timestamps():
    sched, bm = make_scheduler()
    runner = FakeRunner(sched)
    a = make_request("A", 6, max_tokens=3, arrival_time=0.0)
    sched.add_request(a)

    out, res = step(sched, runner)
    (plan,) = out.scheduled_new_requests
    assert (plan.request_id, plan.start_position, plan.num_scheduled_tokens) == ("A", 0, 6)
    assert plan.samples and not plan.is_decode and plan.block_ids == (0, 1)
    assert plan.token_ids == a.prompt_token_ids
    assert (out.stats.num_prefill_tokens, out.stats.num_decode_tokens) == (6, 0)
    assert out.stats.kv_cache_usage == 2 / 8 and out.stats.num_free_blocks == 6
    assert a.num_computed_tokens == 6 and a.num_output_tokens == 1 and res.new_token_ids == {"A": (1006,)}

    out, _ = step(sched, runner)
    (plan,) = out.scheduled_running_requests
    assert (plan.start_position, plan.num_scheduled_tokens, plan.is_decode) == (6, 1, True)
    assert plan.token_ids == (1006,) and out.stats.num_decode_tokens == 1

    out, res = step(sched, runner)
    assert res.finished_requests == (a,)
    assert a.status == RequestStatus.FINISHED_LENGTH and a.finish_reason == "length"
    assert a.output_token_ids == [1006, 1007, 1008] and a.block_ids == []
    assert bm.num_free_blocks == 8 and not sched.has_unfinished_requests()

    out = sched.schedule()
    assert out.finished_request_ids == ("A",) and out.is_empty
    times = [a.arrival_time, a.first_scheduled_time, a.first_token_time, *a.token_times[1:], a.finished_time]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert a.first_token_time == a.token_times[0]


def test_recompute_preemption_fcfs_exact_and_nothing_lost():
    # A and B: 12-token prompts (3 blocks each), 12 output tokens; 8 blocks cannot hold both to the end.
    # No watermark: the two fill the cache to its last block on purpose (the default keeps 1 of
    # the 8 blocks free at admission, so B would wait for A; test_scheduler_thrash covers that).
    sched, bm = make_scheduler(kv_cache_watermark=0)
    runner = FakeRunner(sched)
    a = make_request("A", 12, max_tokens=12, arrival_time=0.0)
    b = make_request("B", 12, max_tokens=12, arrival_time=1.0)
    sched.add_request(a)
    sched.add_request(b)
    streamed: dict[str, list[int]] = {"A": [], "B": []}

    def run_step():
        out, res = step(sched, runner)
        for rid, toks in res.new_token_ids.items():
            streamed[rid].extend(toks)
        return out, res

    out, _ = run_step()
    assert scheduled(out) == {"A": 12, "B": 12}
    assert a.block_ids == [0, 1, 2] and b.block_ids == [3, 4, 5]
    out, _ = run_step()  # position 12 opens a 4th block for each
    assert scheduled(out) == {"A": 1, "B": 1}
    assert a.block_ids == [0, 1, 2, 6] and b.block_ids == [3, 4, 5, 7] and bm.num_free_blocks == 0
    for _ in range(3):  # positions 13..15 fit in the 4th block
        out, _ = run_step()
        assert scheduled(out) == {"A": 1, "B": 1} and out.preempted_request_ids == ()
    b_outputs_before = list(b.output_token_ids)
    assert len(b_outputs_before) == 5

    # Position 16 needs a 5th block and none is free: FCFS preempts the newest, B.
    out, _ = run_step()
    assert out.preempted_request_ids == ("B",) and scheduled(out) == {"A": 1}
    assert out.stats.num_preemptions == 1
    assert a.block_ids == [0, 1, 2, 6, 7]  # B's blocks freed tail first: 7 is reused at once
    assert b.block_ids == [] and b.num_computed_tokens == 0 and b.status == RequestStatus.PREEMPTED
    assert b.output_token_ids == b_outputs_before and b.num_preemptions == 1
    assert list(sched.waiting) == [b] and bm.num_free_blocks == 3

    # B needs 5 blocks to recompute 17 tokens; only A runs until it finishes.
    for n in range(7, 13):
        out, res = run_step()
        assert scheduled(out) == {"A": 1}
        if n == 10:
            assert a.block_ids == [0, 1, 2, 6, 7, 5]
    assert res.finished_requests == (a,) and a.num_output_tokens == 12

    # B resumes: prompt + its 5 outputs are prefilled again, and the 6th token is sampled.
    out, res = run_step()
    (plan,) = out.scheduled_new_requests
    assert (plan.request_id, plan.start_position, plan.num_scheduled_tokens) == ("B", 0, 17)
    assert plan.token_ids == (*b.prompt_token_ids, *b_outputs_before) and plan.samples
    assert out.finished_request_ids == ("A",)
    assert b.num_output_tokens == 6 and b.first_scheduled_time < a.finished_time
    while sched.has_unfinished_requests():
        run_step()
    assert b.status == RequestStatus.FINISHED_LENGTH and b.num_output_tokens == 12
    assert b.output_token_ids[:5] == b_outputs_before
    assert streamed == {"A": a.output_token_ids, "B": b.output_token_ids}  # no token twice, none lost
    assert len(b.token_times) == 12 and bm.num_free_blocks == 8


@pytest.mark.parametrize(
    "policy, victim, expected",
    [("fcfs", "C", {"A": 1, "B": 1}),       # FCFS: the newest arrival (C itself) waits
     ("priority", "B", {"A": 1, "C": 1})],  # priority: B (value 5) loses, though already scheduled
)
def test_preemption_victim_by_policy(policy, victim, expected):
    # 6-token prompts: 2 blocks each, a 3rd from position 8. (This test used to admit C into the
    # last 2 blocks, so that it was preempted in the very next step: the admission thrash that
    # the admission headroom now prevents. C is admitted with room for everyone's next token and
    # is preempted by decode growth, after it has produced tokens.)
    sched, bm = make_scheduler(policy=policy)
    runner = FakeRunner(sched)
    a = make_request("A", 6, max_tokens=10, arrival_time=0.0, priority=0)
    b = make_request("B", 6, max_tokens=10, arrival_time=1.0, priority=5)
    c = make_request("C", 6, max_tokens=10, arrival_time=2.0, priority=1)
    sched.add_request(a)
    sched.add_request(b)
    step(sched, runner)              # A [0,1], B [2,3]
    sched.add_request(c)
    out, _ = step(sched, runner)     # C admitted with [4,5]
    assert scheduled(out) == {"A": 1, "B": 1, "C": 6} and bm.num_free_blocks == 2
    step(sched, runner)
    out, _ = step(sched, runner)     # A, B open a 3rd block at position 8
    assert (a.block_ids, b.block_ids, bm.num_free_blocks) == ([0, 1, 6], [2, 3, 7], 0)
    out, _ = step(sched, runner)     # C needs a 3rd block at position 8
    assert out.preempted_request_ids == (victim,) and scheduled(out) == expected
    assert out.total_num_scheduled_tokens == 2
    assert sched.get_request(victim).num_output_tokens == {"C": 3, "B": 4}[victim]  # progress first
    assert sched.get_request(victim).block_ids == []
    if policy == "priority":
        assert c.block_ids == [4, 5, 7]  # B's tail block, freed first, went to C
    while sched.has_unfinished_requests():
        step(sched, runner)
    assert all(r.num_output_tokens == 10 for r in (a, b, c)) and bm.num_free_blocks == 8


def test_chunked_prefill_gives_mixed_batches():
    sched, _ = make_scheduler(max_num_batched_tokens=8, max_model_len=32)
    runner = FakeRunner(sched)
    a = make_request("A", 4, max_tokens=6)
    sched.add_request(a)
    out, _ = step(sched, runner)
    assert scheduled(out) == {"A": 4}
    b = make_request("B", 14, max_tokens=2)
    sched.add_request(b)

    out, _ = step(sched, runner)  # a decode and the first chunk of B fill the budget of 8
    assert ids(out.scheduled_running_requests) == ["A"] and ids(out.scheduled_new_requests) == ["B"]
    chunk = out.scheduled_new_requests[0]
    assert (chunk.start_position, chunk.num_scheduled_tokens, chunk.samples) == (0, 7, False)
    assert (out.stats.num_decode_tokens, out.stats.num_prefill_tokens) == (1, 7)
    assert b.num_computed_tokens == 7 and b.num_output_tokens == 0 and b.first_token_time is None
    assert b.block_ids == [2, 3]

    out, res = step(sched, runner)  # B's last 7 prompt tokens: the chunk reaches the end and samples
    assert scheduled(out) == {"A": 1, "B": 7}
    chunk = out.scheduled_running_requests[1]
    assert (chunk.start_position, chunk.samples, chunk.is_decode) == (7, True, False)
    assert b.block_ids == [2, 3, 4, 5] and set(res.new_token_ids) == {"A", "B"}

    out, _ = step(sched, runner)
    assert scheduled(out) == {"A": 1, "B": 1} and out.stats.num_decode_tokens == 2


def test_long_prefill_token_threshold_caps_each_chunk():
    sched, _ = make_scheduler(max_num_batched_tokens=16, long_prefill_token_threshold=4)
    runner = FakeRunner(sched)
    sched.add_request(make_request("A", 10, max_tokens=1))
    sched.add_request(make_request("B", 6, max_tokens=1))
    assert scheduled(step(sched, runner)[0]) == {"A": 4, "B": 4}
    assert scheduled(step(sched, runner)[0]) == {"A": 4, "B": 2}
    out, res = step(sched, runner)
    assert scheduled(out) == {"A": 2} and [r.request_id for r in res.finished_requests] == ["A"]


def test_without_chunked_prefill_a_long_prompt_waits_in_order():
    sched, _ = make_scheduler(num_blocks=16, max_num_batched_tokens=16, max_model_len=16,
                              enable_chunked_prefill=False)
    runner = FakeRunner(sched)
    sched.add_request(make_request("A", 2, max_tokens=8))
    sched.add_request(make_request("B", 2, max_tokens=8))
    assert scheduled(step(sched, runner)[0]) == {"A": 2, "B": 2}
    sched.add_request(make_request("C", 15, max_tokens=1))
    sched.add_request(make_request("D", 2, max_tokens=1))
    for _ in range(7):  # 14 tokens left per step < 15: C waits, and D may not jump ahead of it
        assert scheduled(step(sched, runner)[0]) == {"A": 1, "B": 1}
    assert scheduled(step(sched, runner)[0]) == {"C": 15}  # D needs 2 more than the budget left
    assert scheduled(step(sched, runner)[0]) == {"D": 2}


def test_config_validation_messages():
    with pytest.raises(ValueError, match="enable_chunked_prefill=True"):
        SchedulerConfig(max_num_batched_tokens=512, max_model_len=4096, enable_chunked_prefill=False)
    with pytest.raises(ValueError, match=r"valid policies are \['fcfs', 'priority'\]"):
        SchedulerConfig(policy="lifo")
    with pytest.raises(ValueError, match="max_num_seqs is 0"):
        SchedulerConfig(max_num_seqs=0)
    with pytest.raises(ValueError, match=r"kv_cache_watermark is 1.0; it must be a fraction in \[0, 1\)"):
        SchedulerConfig(kv_cache_watermark=1.0)
    with pytest.raises(ValueError, match="needs enable_chunked_prefill"):
        SchedulerConfig(max_num_batched_tokens=4096, max_model_len=4096, enable_chunked_prefill=False,
                        long_prefill_token_threshold=256)


def test_admission_rejections_name_value_limit_and_fix():
    sched, _ = make_scheduler(num_blocks=1024, block_size=16, max_model_len=8192)
    with pytest.raises(ValueError, match="prompt has 9,000 tokens; the model's context is 8,192"):
        sched.add_request(make_request("long", 9000))
    with pytest.raises(ValueError, match="prompt has 8,192 tokens"):
        sched.add_request(make_request("exact", 8192))  # no room for even one output token
    with pytest.raises(ValueError, match=r"= 8,292 exceeds .* lower max_tokens to at most 92"):
        sched.add_request(make_request("greedy", 8100, max_tokens=192))
    sched.add_request(make_request("ok", 8100, max_tokens=92))
    with pytest.raises(ValueError, match="already in use"):
        sched.add_request(make_request("ok", 10))

    small, _ = make_scheduler(max_model_len=64)  # 8 blocks x 4 = 32 tokens of KV in all
    with pytest.raises(ValueError, match="needs 10 KV blocks of 4 tokens but the whole cache has 8"):
        small.add_request(make_request("big", 30, max_tokens=10))
    small.add_request(make_request("fits", 30, max_tokens=3))  # 32 positions of KV at most
    assert not small.block_manager.num_used_blocks


def test_abort_frees_blocks_at_once():
    sched, bm = make_scheduler(max_num_seqs=1)
    runner = FakeRunner(sched)
    a, b = make_request("A", 10, max_tokens=5), make_request("B", 4)
    sched.add_request(a)
    sched.add_request(b)
    step(sched, runner)
    assert bm.num_free_blocks == 5 and b.status == RequestStatus.WAITING
    aborted = sched.abort(["A", "B", "never-existed"])
    assert aborted == [a, b] and bm.num_free_blocks == 8 and a.block_ids == []
    assert a.status == b.status == RequestStatus.FINISHED_ABORTED and a.finish_reason == "abort"
    assert not sched.has_unfinished_requests() and sched.abort(["A"]) == []
    assert sched.schedule().finished_request_ids == ("A", "B")


def test_abort_between_schedule_and_update_is_skipped():
    sched, bm = make_scheduler()
    runner = FakeRunner(sched)
    sched.add_request(make_request("A", 5))
    sched.add_request(make_request("B", 5))
    out = sched.schedule()
    sampled = runner.execute(out)
    sched.abort(["A"])
    res = sched.update_from_output(out, sampled)
    assert set(res.new_token_ids) == {"B"} and bm.num_used_blocks == 2


@pytest.mark.parametrize(
    "script, params, status, output, reason",
    [([5, 2, 7], {}, RequestStatus.FINISHED_STOPPED, [5, 2], None),                     # eos
     ([5, 2, 7], {"ignore_eos": True}, RequestStatus.FINISHED_LENGTH, [5, 2, 7], None),
     ([2, 2, 2, 2], {"min_tokens": 3}, RequestStatus.FINISHED_STOPPED, [2, 2, 2], None),
     ([5, 9, 7], {"stop_token_ids": (9,)}, RequestStatus.FINISHED_STOPPED, [5, 9], 9),
     ([5, 9, 7], {"stop_token_ids": (9,), "ignore_eos": True}, RequestStatus.FINISHED_STOPPED, [5, 9], 9)],
)
def test_stop_conditions(script, params, status, output, reason):
    sched, bm = make_scheduler(eos_token_ids=[2])
    runner = FakeRunner(sched, script={"A": script})
    a = make_request("A", 3, max_tokens=3, **params)
    sched.add_request(a)
    while sched.has_unfinished_requests():
        step(sched, runner)
    assert (a.status, a.output_token_ids, a.stop_reason) == (status, output, reason)
    assert bm.num_free_blocks == 8


def test_stop_string_hook_finishes_and_frees():
    sched, bm = make_scheduler()
    runner = FakeRunner(sched)
    a = make_request("A", 5, max_tokens=10, stop=["###"])
    sched.add_request(a)
    step(sched, runner)
    # The engine detokenizes, finds "###" in the text and tells the scheduler:
    assert sched.finish_request("A", RequestStatus.FINISHED_STOPPED, stop_reason="###") is a
    assert (a.status, a.finish_reason, a.stop_reason) == (RequestStatus.FINISHED_STOPPED, "stop", "###")
    assert bm.num_free_blocks == 8 and sched.finish_request("A") is None
    with pytest.raises(ValueError, match="FINISHED_"):
        sched.finish_request("A", RequestStatus.RUNNING)


def test_runner_contract_violations_are_errors():
    sched, _ = make_scheduler(max_num_batched_tokens=4)
    sched.add_request(make_request("A", 6))
    out = sched.schedule()  # a partial chunk of 4 out of 6: no token may come back
    with pytest.raises(ValueError, match="partial prefill chunk; expected 0"):
        sched.update_from_output(out, {"A": [7]})
    with pytest.raises(ValueError, match="not scheduled this step: \\['Z'\\]"):
        sched.update_from_output(out, {"Z": [7]})
    sched.update_from_output(out, {})
    out = sched.schedule()
    with pytest.raises(ValueError, match="returned 0 sampled tokens .* expected 1"):
        sched.update_from_output(out, {})


def test_priority_policy_admits_most_urgent_first_and_fcfs_keeps_arrival_order():
    for policy, first in (("priority", "urgent"), ("fcfs", "lazy")):
        sched, _ = make_scheduler(policy=policy, max_num_seqs=1)
        sched.add_request(make_request("lazy", 4, arrival_time=0.0, priority=3))
        sched.add_request(make_request("urgent", 4, arrival_time=1.0, priority=0))
        out = sched.schedule()
        assert ids(out.scheduled_new_requests) == [first]
        assert out.stats.num_running == 1 and out.stats.num_waiting == 1


def test_max_num_seqs_limits_admission():
    sched, _ = make_scheduler(max_num_seqs=2)
    for rid in "ABC":
        sched.add_request(make_request(rid, 2))
    assert scheduled(sched.schedule()) == {"A": 2, "B": 2}


def test_request_reuse_is_rejected():
    sched, _ = make_scheduler()
    runner = FakeRunner(sched)
    a = make_request("A", 3, max_tokens=1)
    sched.add_request(a)
    step(sched, runner)
    with pytest.raises(ValueError, match="already been served"):
        sched.add_request(a)
    assert isinstance(Request("x", (1,), SamplingParams()).arrival_time, float)


def test_preempting_an_already_scheduled_victim_drops_it_from_the_plan():
    # Priority policy; running order A, B, C, D. C's next block forces B (least urgent) out after
    # B was already scheduled this step: B leaves the plan, its token goes back to the budget, and
    # its blocks, tail first, go to C and to D, which is behind C in the running list. (This test
    # used to admit D into the last free block with 18 prompt tokens to go; admission now keeps
    # room for a prefill to finish, so the preemption here comes from decode growth.)
    sched, bm = make_scheduler(num_blocks=6, policy="priority", max_num_batched_tokens=8)
    runner = FakeRunner(sched)
    a = make_request("A", 2, max_tokens=10, arrival_time=0.0, priority=0)
    b = make_request("B", 2, max_tokens=10, arrival_time=1.0, priority=5)
    c = make_request("C", 2, max_tokens=10, arrival_time=2.0, priority=1)
    d = make_request("D", 2, max_tokens=10, arrival_time=3.0, priority=1)
    sched.add_request(a)
    sched.add_request(b)
    assert scheduled(step(sched, runner)[0]) == {"A": 2, "B": 2}
    sched.add_request(c)
    sched.add_request(d)
    assert scheduled(step(sched, runner)[0]) == {"A": 1, "B": 1, "C": 2, "D": 2}
    step(sched, runner)
    step(sched, runner)             # A and B reach position 4: a 2nd block each, none left
    assert (a.block_ids, b.block_ids, c.block_ids, d.block_ids) == ([0, 4], [1, 5], [2], [3])
    assert bm.num_free_blocks == 0

    out, _ = step(sched, runner)    # C and D reach position 4
    assert out.preempted_request_ids == ("B",)
    assert scheduled(out) == {"A": 1, "C": 1, "D": 1} and out.total_num_scheduled_tokens == 3
    assert c.block_ids == [2, 5] and d.block_ids == [3, 1] and b.block_ids == []
    while sched.has_unfinished_requests():
        step(sched, runner)
    assert [r.num_output_tokens for r in (a, b, c, d)] == [10] * 4 and bm.num_free_blocks == 6
