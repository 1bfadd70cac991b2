"""The engine-client API without HTTP, over an in-process core (sync and async scheduling) and
a core in its own process: deltas and text equal offline generation, admission errors before
the first output, early exit aborts and frees the core's blocks, a failing step fails requests
instead of hanging them, a killed core process fails streams at once and refuses new requests,
an idle core does not spin, and shutdown with and without drain leaves no process behind."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

import os
import signal
import time

from aisp.engine.client import (EngineClient, EngineDeadError, EngineShuttingDownError,
                                EngineStepError)
from aisp.engine.engine import LLMEngine
from aisp.engine.sampling_params import SamplingParams
from tests.serve.client import process_running, run, wait_until
from tests.serve.conftest import NUM_KV_BLOCKS, engine_config

GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)


@pytest.fixture(params=["off", "on"], ids=["sync", "async"])
def llm(byte_model, request) -> LLMEngine:
    return LLMEngine(engine_config(byte_model, async_scheduling=request.param))


@pytest.fixture(params=["thread", "process"])
def client(byte_model, request) -> EngineClient:
    """A client over each kind of core (async scheduling on: the GPU default)."""
    config = engine_config(byte_model, async_scheduling="on")
    c = (EngineClient.in_process(config) if request.param == "thread"
         else EngineClient.start(config))
    yield c
    if c.is_healthy:
        run(c.shutdown(drain=False))


async def _collect(engine: EngineClient, prompt, params=GREEDY):
    return [out async for out in engine.generate(prompt, params)]


def _blocks_free(client: EngineClient) -> bool:
    return (client.kv_free_blocks == NUM_KV_BLOCKS and client.num_unfinished == 0
            and client.num_inflight == 0)


def test_deltas_and_text_match_offline_generate(client, byte_model):
    prompts = ["one", "two two", "three three three"]
    offline = LLMEngine(engine_config(byte_model)).generate(prompts, GREEDY)
    engine = client

    async def go():
        results = await asyncio.gather(*(_collect(engine, p) for p in prompts))
        await engine.shutdown()
        return results

    for outs, want in zip(run(go()), offline):
        assert all(len(o.new_token_ids) == 1 for o in outs)
        assert [o.finished for o in outs] == [False] * 19 + [True]
        assert tuple(t for o in outs for t in o.new_token_ids) == want.output_token_ids
        assert outs[-1].text == want.text and outs[-1].finish_reason == "length"
        assert "".join(o.text_delta for o in outs) == want.text
        assert outs[-1].metrics.ttft > 0 and len(outs[-1].metrics.token_times) == 20
    assert not engine.is_healthy   # the core has stopped


def test_stop_strings_end_the_stream_as_offline_generate_does(client, byte_model):
    """Stop strings live in the front end: the text is cut before the string, the stream
    ends on the token that completed it, and the core frees the request."""
    offline = LLMEngine(engine_config(byte_model)).generate(["abc"], GREEDY)[0].text
    stop = offline[5:8]
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=[stop])
    want = LLMEngine(engine_config(byte_model)).generate(["abc"], params)[0]
    assert want.finish_reason == "stop" and want.stop_reason == stop
    assert stop not in want.text and len(want.output_token_ids) < 20

    async def go():
        outs = await _collect(client, "abc", params)
        await wait_until(lambda: _blocks_free(client), 10, "the core to free the request")
        return outs

    outs = run(go())
    assert (outs[-1].output_token_ids, outs[-1].text, outs[-1].stop_reason) == \
        (want.output_token_ids, want.text, stop)
    assert "".join(o.text_delta for o in outs) == want.text
    # HF's decode of the same tokens, cut before the stop string, is the same text.
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(byte_model / "tokenizer.json"))
    full = hf.decode(list(want.output_token_ids), skip_special_tokens=True)
    assert full.endswith(stop) and full[:-len(stop)] == want.text


def test_admission_error_is_raised_before_the_first_output(client):
    engine = client

    async def go():
        gen = engine.generate([1] * 600, GREEDY)
        with pytest.raises(ValueError, match="max_model_len is 512 tokens"):
            await gen.__anext__()
        with pytest.raises(ValueError, match="max_tokens"):
            await engine.add_request("x", SamplingParams(max_tokens=10_000))
        assert engine.num_inflight == 0 and engine.is_accepting
        await engine.shutdown()

    run(go())


def test_leaving_early_aborts_and_frees_blocks(client):
    engine = client
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def go():
        async with aclosing(engine.generate("a long prompt", long)) as gen:
            async for out in gen:
                assert not out.finished
                break
        await wait_until(lambda: _blocks_free(engine), 10, "blocks to be freed")
        # Cancelling a consumer task has the same effect.
        task = asyncio.create_task(_collect(engine, "another", long))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: _blocks_free(engine), 10, "blocks to be freed")
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
    engine = EngineClient.in_process(llm)

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
    engine = EngineClient.in_process(llm)

    async def go():
        with pytest.raises(EngineStepError):
            await _collect(engine, "doomed")
        await wait_until(lambda: not engine.is_healthy, 5, "the engine to be marked dead")
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
    engine = EngineClient.in_process(llm)

    async def go():
        await _collect(engine, "hello")
        await asyncio.sleep(0.05)
        before = calls["n"]
        await asyncio.sleep(0.3)
        assert calls["n"] == before, "the engine thread polled while idle"
        await engine.shutdown()

    run(go())


def test_shutdown_with_drain_finishes_in_flight_and_refuses_new(client):
    engine = client
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


def test_shutdown_without_drain_fails_in_flight(client):
    engine = client
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def go():
        stream = await engine.add_request("cut me", long)
        await stream.__anext__()
        await engine.shutdown(drain=False)
        with pytest.raises(EngineShuttingDownError):
            async for _ in stream:
                pass

    run(go())
    pid = engine.core_pid
    if pid is not None:
        assert not process_running(pid), "the engine core process outlived shutdown"


def test_a_killed_core_process_fails_streams_and_refuses_new_requests(byte_model):
    client = EngineClient.start(engine_config(byte_model))
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def go():
        stream = await client.add_request("doomed", long)
        await stream.__anext__()
        os.kill(client.core_pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(EngineDeadError, match="killed by SIGKILL"):
            async for _ in stream:
                pass
        await wait_until(lambda: not client.is_healthy, 1.0, "the client to see the death")
        assert time.monotonic() - killed < 1.0
        with pytest.raises(EngineDeadError, match="restart the server"):
            await client.add_request("late", GREEDY)
        await asyncio.wait_for(client.shutdown(), 10)   # nothing left to wait for: no hang

    run(go())
