"""Async scheduling (one step in flight) against synchronous steps on the tiny preset (CPU).

The scheduling mode may change when outputs arrive, never what they are: stop tokens, stop
strings, max_tokens, seeded sampling and aborts must give the synchronous engine's results, the
token a request sampled after its stop must never be shown, and every block must be free at the
end.
"""

from __future__ import annotations

import pytest

from aisp.engine.config import EngineConfig
from aisp.engine.engine import LLMEngine
from aisp.engine.offline import random_prompts
from aisp.engine.sampling_params import SamplingParams


def engine(scheduling: str, **kw) -> LLMEngine:
    kw.setdefault("num_kv_blocks", 128)  # a small cache builds in milliseconds
    return LLMEngine(EngineConfig(model="tiny", device="cpu", async_scheduling=scheduling, **kw))


def run(scheduling: str, prompts, params, **kw):
    eng = engine(scheduling, **kw)
    outs = eng.generate(prompts, params)
    assert eng.block_manager.num_used_blocks == 0 and not eng.has_unfinished_requests()
    return outs


PROMPTS = random_prompts(5, 7, 256, seed=3) + random_prompts(2, 19, 256, seed=4)


def test_config_resolves_on_for_gpus_only():
    assert engine("auto").async_scheduling is False  # CPU: nothing to overlap
    assert engine("on").async_scheduling is True
    with pytest.raises(ValueError, match="async_scheduling 'maybe' unknown"):
        EngineConfig(async_scheduling="maybe")


def test_outputs_arrive_one_step_later():
    eng = engine("on")
    eng.add_request(PROMPTS[0], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert eng.step() == []          # step 1 launched, nothing read back yet
    (first,) = eng.step()            # step 2 launched on top of step 1's pending token
    assert len(first.new_token_ids) == 1 and not first.finished
    outs = []
    while eng.has_unfinished_requests():
        outs += eng.step()
    assert [o.finished for o in outs] == [False, True]
    assert len(outs[-1].output_token_ids) == 3


def test_greedy_stop_tokens_and_lengths_match_sync():
    greedy = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    ref = run("off", PROMPTS, greedy)
    # Stop each request on a token it produces midway: under async the step after the stop
    # token has already been launched, and its token must be dropped.
    params = [SamplingParams(max_tokens=10, temperature=0, ignore_eos=True,
                             stop_token_ids=(o.output_token_ids[i % 6 + 1],))
              for i, o in enumerate(ref)]
    want = run("off", PROMPTS, params)
    got = run("on", PROMPTS, params)
    assert [o.output_token_ids for o in got] == [o.output_token_ids for o in want]
    assert [o.finish_reason for o in got] == [o.finish_reason for o in want]
    assert any(o.finish_reason == "stop" and len(o.output_token_ids) < 10 for o in got)
    for o in got:
        assert len(o.metrics.token_times) == len(o.output_token_ids)


def test_stop_strings_match_sync():
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    ref = run("off", PROMPTS[:3], greedy)
    eng = engine("off")
    texts = [eng.tokenizer.decode(o.output_token_ids[3:5]) for o in ref]
    params = [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop=(t,))
              for t in texts if t]
    prompts = [p for p, t in zip(PROMPTS[:3], texts) if t]
    want = run("off", prompts, params)
    got = run("on", prompts, params)
    assert [(o.output_token_ids, o.text, o.stop_reason) for o in got] == \
        [(o.output_token_ids, o.text, o.stop_reason) for o in want]
    assert all(o.finish_reason == "stop" for o in got)


def test_seeded_sampling_matches_sync():
    params = [SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, seed=i, ignore_eos=True)
              for i in range(len(PROMPTS))]
    want = run("off", PROMPTS, params)
    got = run("on", PROMPTS, params)
    assert [o.output_token_ids for o in got] == [o.output_token_ids for o in want]


def test_abort_with_a_step_in_flight():
    greedy = SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)
    want = run("off", PROMPTS[:3], greedy)
    eng = engine("on")
    ids = [eng.add_request(p, greedy) for p in PROMPTS[:3]]
    finished = {}
    for _ in range(4):
        for out in eng.step():
            assert not out.finished
    assert eng.abort([ids[1]]) == [ids[1]]   # its next step is already launched
    while eng.has_unfinished_requests():
        for out in eng.step():
            assert out.request_id != ids[1], "an aborted request's in-flight token was shown"
            if out.finished:
                finished[out.request_id] = out
    assert sorted(finished) == [ids[0], ids[2]]
    assert finished[ids[0]].output_token_ids == want[0].output_token_ids
    assert finished[ids[2]].output_token_ids == want[2].output_token_ids
    assert eng.block_manager.num_used_blocks == 0


def test_preemption_under_a_tight_cache_matches_sync():
    greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    kw = dict(block_size=4, num_kv_blocks=14, max_model_len=40)
    want = run("off", PROMPTS, greedy, **kw)
    eng = engine("on", **kw)
    preemptions = []
    eng.step_listeners.append(lambda s: preemptions.append(s.scheduler.num_preemptions))
    got = eng.generate(PROMPTS, greedy)
    assert sum(preemptions) > 0
    assert [o.output_token_ids for o in got] == [o.output_token_ids for o in want]
    assert eng.block_manager.num_used_blocks == 0
