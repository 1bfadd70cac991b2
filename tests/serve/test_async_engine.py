"""`AsyncLLMEngine` without HTTP: deltas equal offline generation, admission errors before the
first output, early exit aborts and frees, a failing step fails requests instead of hanging
them, an idle thread does not spin, and shutdown with and without drain."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from aisp.engine.async_engine import (AsyncLLMEngine, EngineDeadError, EngineShuttingDownError,
                                      EngineStepError)
from aisp.engine.engine import LLMEngine
from aisp.engine.sampling_params import SamplingParams
from tests.serve.client import run, wait_until
from tests.serve.conftest import NUM_KV_BLOCKS, engine_config

GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)


@pytest.fixture(params=["off", "on"], ids=["sync", "async"])
def llm(byte_model, request) -> LLMEngine:
    return LLMEngine(engine_config(byte_model, async_scheduling=request.param))


async def _collect(engine: AsyncLLMEngine, prompt, params=GREEDY):
    return [out async for out in engine.generate(prompt, params)]


def test_deltas_match_offline_generate(llm, byte_model):
    prompts = ["one", "two two", "three three three"]
    offline = LLMEngine(engine_config(byte_model)).generate(prompts, GREEDY)
    engine = AsyncLLMEngine(llm)

    async def go():
        results = await asyncio.gather(*(_collect(engine, p) for p in prompts))
        await engine.shutdown()
        return results

    for outs, want in zip(run(go()), offline):
        assert all(len(o.new_token_ids) == 1 for o in outs)
        assert [o.finished for o in outs] == [False] * 19 + [True]
        assert tuple(t for o in outs for t in o.new_token_ids) == want.output_token_ids
        assert outs[-1].text == want.text and outs[-1].finish_reason == "length"
    assert not engine.is_healthy   # the thread has stopped


def test_admission_error_is_raised_before_the_first_output(llm):
    engine = AsyncLLMEngine(llm)

    async def go():
        gen = engine.generate([1] * 600, GREEDY)
        with pytest.raises(ValueError, match="max_model_len is 512 tokens"):
            await gen.__anext__()
        with pytest.raises(ValueError, match="max_tokens"):
            await engine.add_request("x", SamplingParams(max_tokens=10_000))
        assert engine.num_inflight == 0 and engine.is_accepting
        await engine.shutdown()

    run(go())


def test_leaving_early_aborts_and_frees_blocks(llm):
    engine = AsyncLLMEngine(llm)
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def go():
        async with aclosing(engine.generate("a long prompt", long)) as gen:
            async for out in gen:
                assert not out.finished
                break
        await wait_until(lambda: llm.block_manager.num_free_blocks == NUM_KV_BLOCKS
                         and engine.num_inflight == 0, 10, "blocks to be freed")
        # Cancelling a consumer task has the same effect.
        task = asyncio.create_task(_collect(engine, "another", long))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: llm.block_manager.num_free_blocks == NUM_KV_BLOCKS
                         and engine.num_inflight == 0, 10, "blocks to be freed")
        await engine.shutdown()

    run(go())


def test_a_failing_step_fails_in_flight_requests_and_the_engine_recovers(llm):
    real_step = llm.step
    calls = {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected fault")
        return real_step()

    llm.step = flaky_step
    engine = AsyncLLMEngine(llm)

    async def go():
        with pytest.raises(EngineStepError, match="injected fault"):
            await _collect(engine, "doomed")
        assert engine.is_healthy and engine.num_inflight == 0
        assert llm.block_manager.num_free_blocks == NUM_KV_BLOCKS
        outs = await _collect(engine, "fine")   # the thread survived
        assert outs[-1].finished
        await engine.shutdown()

    run(go())


def test_an_unrecoverable_engine_is_marked_dead(llm):
    def broken_step():
        raise RuntimeError("step broke")

    def broken_abort(ids):
        raise RuntimeError("abort broke too")

    llm.step, llm.abort = broken_step, broken_abort
    engine = AsyncLLMEngine(llm)

    async def go():
        with pytest.raises(EngineStepError):
            await _collect(engine, "doomed")
        assert not engine.is_healthy
        with pytest.raises(EngineDeadError, match="abort broke too"):
            await engine.add_request("x", GREEDY)
        await engine.shutdown()

    run(go())


def test_the_idle_thread_blocks_instead_of_spinning(llm):
    real = llm.has_unfinished_requests
    calls = {"n": 0}

    def counted():
        calls["n"] += 1
        return real()

    llm.has_unfinished_requests = counted
    engine = AsyncLLMEngine(llm)

    async def go():
        await _collect(engine, "hello")
        await asyncio.sleep(0.05)
        before = calls["n"]
        await asyncio.sleep(0.3)
        assert calls["n"] == before, "the engine thread polled while idle"
        await engine.shutdown()

    run(go())


def test_shutdown_with_drain_finishes_in_flight_and_refuses_new(llm):
    engine = AsyncLLMEngine(llm)
    long = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)

    async def go():
        stream = await engine.add_request("drain me", long)
        shutdown = asyncio.create_task(engine.shutdown(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(EngineShuttingDownError, match="shutting down"):
            await engine.add_request("late", GREEDY)
        outs = [o async for o in stream]
        await asyncio.wait_for(shutdown, 10)
        return outs

    outs = run(go())
    assert len(outs) == 300 and outs[-1].finish_reason == "length"
    assert not engine.is_healthy


def test_shutdown_without_drain_fails_in_flight(llm):
    engine = AsyncLLMEngine(llm)
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def go():
        stream = await engine.add_request("cut me", long)
        await stream.__anext__()
        await engine.shutdown(drain=False)
        with pytest.raises(EngineShuttingDownError):
            async for _ in stream:
                pass

    run(go())
