"""The server end to end over real HTTP: completions, chat, SSE framing, the streamed fold equal
to the non-streaming response, greedy tokens equal to offline generation, stop strings,
/metrics, /health, and disconnects that free the KV blocks."""

from __future__ import annotations

import asyncio
import shutil

import aiohttp
import pytest

from aisp.engine.engine import LLMEngine
from aisp.engine.sampling_params import SamplingParams
from aisp.model.tokenizer import byte_tokenizer
from aisp.serve.server import start_server
from tests.serve.client import (TIMEOUT, events, fold_chunks, metric_value, post, response_text,
                                run, stream, wait_until)
from tests.serve.conftest import NUM_KV_BLOCKS, engine_config

GREEDY = {"temperature": 0, "ignore_eos": True, "return_token_ids": True}


def test_models_and_health(server):
    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            async with s.get(server.url + "/v1/models") as r:
                assert r.status == 200
                data = (await r.json())["data"]
            async with s.get(server.url + "/health") as r:
                assert r.status == 200
        return data

    data = run(go())
    assert [m["id"] for m in data] == ["byte-tiny"]
    assert data[0]["max_model_len"] == 512 and data[0]["object"] == "model"
    assert data[0]["vocab_size"] == 259   # the byte model: token-id prompts take ids < 259


def test_completion_string_and_token_prompts(server):
    tok = byte_tokenizer()

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            body = {"model": "byte-tiny", "prompt": "hello", "max_tokens": 7, **GREEDY}
            a = await post(s, server.url + "/v1/completions", body)
            ids = tok.encode("hello")
            b = await post(s, server.url + "/v1/completions", {**body, "prompt": ids})
            c = await post(s, server.url + "/v1/completions", {**body, "prompt": [ids]})
            return a, b, c

    (sa, a), (sb, b), (sc, c) = run(go())
    assert sa == sb == sc == 200
    assert a["object"] == "text_completion" and a["model"] == "byte-tiny"
    choice = a["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["token_ids"]) == 7
    assert choice["prompt_token_ids"] == tok.encode("hello")
    assert choice["text"] == tok.decode(choice["token_ids"])
    assert a["usage"] == {"prompt_tokens": 6, "completion_tokens": 7, "total_tokens": 13}
    for other in (b, c):   # the same prompt as ids: the same greedy tokens and text
        assert other["choices"][0]["token_ids"] == choice["token_ids"]
        assert other["choices"][0]["text"] == choice["text"]


def test_chat_completion_uses_the_template(server):
    tok = byte_tokenizer()
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "},
                                             {"type": "text", "text": "there"}]}]

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            return await post(s, server.url + "/v1/chat/completions",
                              {"messages": messages, "max_completion_tokens": 5, **GREEDY})

    status, body = run(go())
    assert status == 200 and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    # The documented default template, encoded without adding special tokens again.
    expected = "<|bos|>system: be brief\nuser: hi there\nassistant:"
    assert choice["prompt_token_ids"] == tok.encode(expected, add_special_tokens=False)
    assert body["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_stream_format_and_fold_equals_non_streaming(server, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"max_tokens": 40, **GREEDY}
    body.update({"messages": [{"role": "user", "content": "héllo 日本"}]} if chat
                else {"prompt": "héllo 日本"})

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            plain = await post(s, server.url + path, body)
            streamed = await stream(s, server.url + path,
                                    {**body, "stream": True,
                                     "stream_options": {"include_usage": True}})
            no_usage = await stream(s, server.url + path, {**body, "stream": True})
            return plain, streamed, no_usage

    (status, plain), (sstatus, ctype, lines), (_, _, lines2) = run(go())
    assert status == sstatus == 200 and ctype.startswith("text/event-stream")
    chunks = events(lines)
    kind = "chat.completion.chunk" if chat else "text_completion"
    assert all(c["object"] == kind for c in chunks)
    content = [c for c in chunks if c["choices"]]
    assert len(content) == 40, "one chunk per engine delta (one token each)"
    assert all(len(c["choices"][0]["token_ids"]) == 1 for c in content)
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 40
    if chat:
        assert content[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all("role" not in c["choices"][0]["delta"] for c in content[1:])
    folded = fold_chunks(chunks, chat)
    assert folded["text"] == response_text(plain)
    assert folded["token_ids"] == plain["choices"][0]["token_ids"]
    assert folded["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert folded["usage"] == plain["usage"]
    without = events(lines2)
    assert all(c["choices"] for c in without), "no usage chunk unless include_usage"
    assert fold_chunks(without, chat)["text"] == folded["text"]


def test_concurrent_greedy_requests_match_offline_generate(server, byte_model):
    prompts = ["The quick brown fox", "héllo wörld", "1 2 3 4", "日本語のテキスト", "a", "zzz"]
    lengths = [30, 12, 25, 18, 40, 7]
    offline = LLMEngine(engine_config(byte_model)).generate(
        prompts, [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths])

    async def one(s, i):
        body = {"prompt": prompts[i], "max_tokens": lengths[i], **GREEDY}
        if i % 2:
            status, ctype, lines = await stream(s, server.url + "/v1/completions",
                                                {**body, "stream": True})
            return fold_chunks(events(lines), chat=False)
        status, reply = await post(s, server.url + "/v1/completions", body)
        return {"text": response_text(reply), "token_ids": reply["choices"][0]["token_ids"]}

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            return await asyncio.gather(*(one(s, i) for i in range(len(prompts))))

    for got, want in zip(run(go()), offline):
        assert got["token_ids"] == list(want.output_token_ids)
        assert got["text"] == want.text


def test_stop_string_truncates_and_streams_the_same(server, byte_model):
    base = {"prompt": "hello", "max_tokens": 40, "temperature": 0}
    offline = LLMEngine(engine_config(byte_model)).generate(
        ["hello"], SamplingParams(max_tokens=40, temperature=0))[0].text
    # A stop string the greedy output really contains, after some text that must be sent.
    stop = next(offline[i:i + 3] for i in range(4, len(offline))
                if "\ufffd" not in offline[i:i + 3])

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            plain = await post(s, server.url + "/v1/completions", {**base, "stop": [stop, "\x00\x01"]})
            streamed = await stream(s, server.url + "/v1/completions",
                                    {**base, "stop": stop, "stream": True})
            return plain, streamed

    (status, plain), (_, _, lines) = run(go())
    choice = plain["choices"][0]
    assert status == 200 and choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["text"] == offline[:offline.index(stop)]
    chunks = events(lines)
    assert fold_chunks(chunks, chat=False)["text"] == choice["text"]
    streamed_so_far = ""
    for c in chunks[:-1]:
        streamed_so_far += c["choices"][0]["text"]
        assert stop not in streamed_so_far


def test_metrics_rise_as_requests_complete(server):
    async def go():
        # Quiet first: a stop string ends a request in the front end while the core, a step or
        # two behind, still generates (and counts) its next token or two.
        await wait_until(lambda: _all_blocks_free(server), 10, "the engine to be idle")
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            async with s.get(server.url + "/metrics") as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            before_ok = await metric_value(s, server.url, "aisp:request_success")
            before_gen = await metric_value(s, server.url, "aisp:generation_tokens")
            for _ in range(2):
                await post(s, server.url + "/v1/completions",
                           {"prompt": "count me", "max_tokens": 6, **GREEDY})
            after_ok = await metric_value(s, server.url, "aisp:request_success")
            after_gen = await metric_value(s, server.url, "aisp:generation_tokens")
            return after_ok - before_ok, after_gen - before_gen

    assert run(go()) == (2, 12)


def _all_blocks_free(server) -> bool:
    """The core's own numbers, sent with its every message: across the process boundary."""
    client = server.client
    return (client.kv_free_blocks == NUM_KV_BLOCKS and client.num_unfinished == 0
            and client.num_inflight == 0)


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            aborted = await metric_value(s, server.url, "aisp:request_success",
                                         finished_reason="abort")
            body = {"prompt": "a long one", "max_tokens": 490, "stream": True, **GREEDY}
            async with aiohttp.ClientSession(timeout=TIMEOUT) as leaver:
                resp = await leaver.post(server.url + "/v1/completions", json=body)
                assert resp.status == 200
                got = 0
                async for line in resp.content:
                    got += line.startswith(b"data: ")
                    if got == 2:
                        break
                assert server.client.kv_free_blocks < NUM_KV_BLOCKS
                resp.close()   # drop the connection mid-stream
            await wait_until(lambda: _all_blocks_free(server), 10, "the KV blocks to be freed")
            assert await metric_value(s, server.url, "aisp:request_success",
                                      finished_reason="abort") == aborted + 1

            # A non-streaming client that gives up: aiohttp cancels its handler, which aborts.
            with pytest.raises(asyncio.TimeoutError):
                await s.post(server.url + "/v1/completions",
                             json={**body, "stream": False},
                             timeout=aiohttp.ClientTimeout(total=0.05))
            await wait_until(lambda: _all_blocks_free(server), 10, "the KV blocks to be freed")
            assert await metric_value(s, server.url, "aisp:request_success",
                                      finished_reason="abort") == aborted + 2

    run(go())


def test_a_weights_only_model_serves_token_id_prompts(byte_model, tmp_path):
    folder = tmp_path / "weights-only"
    shutil.copytree(byte_model, folder)
    (folder / "tokenizer.json").unlink()

    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            ids = await post(s, url + "/v1/completions",
                             {"prompt": [256, 104, 105], "max_tokens": 4, **GREEDY})
            text = await post(s, url + "/v1/completions", {"prompt": "hi", "max_tokens": 4})
            chat = await post(s, url + "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "hi"}]})
            return ids, text, chat

    with start_server(engine_config(folder)) as srv:
        (status, body), (text_status, text_err), (chat_status, chat_err) = run(go(srv.url))
    assert status == 200 and body["choices"][0]["text"] == ""
    assert len(body["choices"][0]["token_ids"]) == 4 and body["usage"]["completion_tokens"] == 4
    assert text_status == chat_status == 400
    assert "no tokenizer.json" in text_err["error"]["message"]
    assert chat_err["error"]["param"] == "messages"


def test_a_killed_engine_core_gives_error_events_503s_and_an_unhealthy_health(byte_model):
    """The engine-core process dies mid-stream: the stream ends with an error event (its
    headers are gone), /health turns 503 within a second, new requests get 503 in OpenAI's
    shape, and nothing hangs."""
    import os
    import signal
    import time

    srv = start_server(engine_config(byte_model), served_model_name="byte-tiny")
    try:
        async def go():
            async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
                body = {"prompt": "doomed", "max_tokens": 480, "stream": True, **GREEDY}
                async with s.post(srv.url + "/v1/completions", json=body) as resp:
                    assert resp.status == 200
                    raw = [await resp.content.readline()]
                    os.kill(srv.client.core_pid, signal.SIGKILL)
                    killed = time.monotonic()
                    raw += [line async for line in resp.content]
                chunks = events(b"".join(raw).decode().split("\n"))
                assert chunks[-1]["error"]["code"] == "engine_error", chunks[-1]
                assert "killed by SIGKILL" in chunks[-1]["error"]["message"]
                while True:
                    async with s.get(srv.url + "/health") as r:
                        if r.status == 503:
                            health = await r.json()
                            break
                    assert time.monotonic() - killed < 1.0, "/health still ok after 1 s"
                    await asyncio.sleep(0.02)
                assert health["error"]["code"] == "engine_unhealthy"
                async with s.post(srv.url + "/v1/completions",
                                  json={"prompt": "late", "max_tokens": 2}) as r:
                    assert r.status == 503
                    error = (await r.json())["error"]
                assert error["type"] == "service_unavailable_error"
                assert "restart" in error["message"]

        run(go())
    finally:
        srv.stop(drain=False, timeout=5)
