"""Bad input never hurts anyone else: each bad request gets its 4xx in OpenAI's error shape, with a
message naming the value and the limit, while a concurrent streaming request completes exactly;
the server stays up. The server here requires an API key."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from aisp.serve.app import MAX_BODY_BYTES
from aisp.serve.server import start_server
from tests.serve.client import TIMEOUT, events, fold_chunks, run, stream
from tests.serve.conftest import engine_config

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
C, CHAT = "/v1/completions", "/v1/chat/completions"
OK_MSG = [{"role": "user", "content": "hi"}]

# (id, method, path, body (dict, or raw bytes), headers, status, param, words in the message)
CASES = [
    ("malformed-json", "POST", C, b'{"prompt": "x",', AUTH, 400, None, "not valid JSON"),
    ("nan", "POST", C, b'{"prompt": "x", "temperature": NaN}', AUTH, 400, None, "NaN"),
    ("body-not-object", "POST", C, b"[1, 2]", AUTH, 400, None, "JSON object"),
    ("missing-prompt", "POST", C, {"max_tokens": 3}, AUTH, 400, "prompt", "prompt is missing"),
    ("missing-messages", "POST", CHAT, {"max_tokens": 3}, AUTH, 400, "messages", "messages"),
    ("prompt-wrong-type", "POST", C, {"prompt": 5}, AUTH, 400, "prompt", "5"),
    ("prompt-batch", "POST", C, {"prompt": ["a", "b"]}, AUTH, 400, "prompt", "batch of 2"),
    ("max-tokens-string", "POST", C, {"prompt": "x", "max_tokens": "ten"}, AUTH, 400,
     "max_tokens", "'ten'"),
    ("max-tokens-negative", "POST", C, {"prompt": "x", "max_tokens": -5}, AUTH, 400,
     "max_tokens", "-5"),
    ("max-tokens-absurd", "POST", C, {"prompt": "x", "max_tokens": 10**9}, AUTH, 400, None,
     "1,000,000,000"),
    ("temperature-string", "POST", C, {"prompt": "x", "temperature": "hot"}, AUTH, 400,
     "temperature", "'hot'"),
    ("top-p-range", "POST", C, {"prompt": "x", "top_p": 1.5}, AUTH, 400, "top_p", "1.5"),
    ("min-tokens-over-max", "POST", C, {"prompt": "x", "max_tokens": 2, "min_tokens": 5}, AUTH,
     400, "min_tokens", "max_tokens=2"),
    ("stream-not-bool", "POST", C, {"prompt": "x", "stream": "yes"}, AUTH, 400, "stream", "'yes'"),
    ("stop-wrong-type", "POST", C, {"prompt": "x", "stop": 5}, AUTH, 400, "stop", "5"),
    ("prompt-too-long", "POST", C, {"prompt": "x" * 600}, AUTH, 400, "prompt", "512"),
    ("chat-too-long", "POST", CHAT, {"messages": [{"role": "user", "content": "y" * 600}]},
     AUTH, 400, "messages", "512"),
    ("token-out-of-vocab", "POST", C, {"prompt": [1, 99999]}, AUTH, 400, None, "99999"),
    ("unknown-model", "POST", C, {"prompt": "x", "model": "gpt-9"}, AUTH, 404, "model", "gpt-9"),
    ("no-api-key", "POST", C, {"prompt": "x"}, {}, 401, None, "Authorization"),
    ("wrong-api-key", "POST", C, {"prompt": "x"}, {"Authorization": "Bearer nope"}, 401, None,
     "wrong"),
    ("models-needs-key", "GET", "/v1/models", None, {}, 401, None, "API key"),
    ("oversized-body", "POST", C, json.dumps({"prompt": "x" * (MAX_BODY_BYTES + 10)}).encode(),
     AUTH, 413, None, f"{MAX_BODY_BYTES:,}"),
    ("n-2", "POST", C, {"prompt": "x", "n": 2}, AUTH, 400, "n", "n=2"),
    ("logprobs-5", "POST", C, {"prompt": "x", "logprobs": 5}, AUTH, 400, "logprobs", "5"),
    ("echo-true", "POST", C, {"prompt": "x", "echo": True}, AUTH, 400, "echo", "echo"),
    ("best-of-3", "POST", C, {"prompt": "x", "best_of": 3}, AUTH, 400, "best_of", "3"),
    ("presence-penalty", "POST", C, {"prompt": "x", "presence_penalty": 0.5}, AUTH, 400,
     "presence_penalty", "0.5"),
    ("unknown-field", "POST", C, {"prompt": "x", "foo": 1}, AUTH, 400, "foo", "foo"),
    ("chat-bad-role", "POST", CHAT, {"messages": [{"role": "robot", "content": "x"}]}, AUTH,
     400, "messages[0].role", "robot"),
    ("chat-image-part", "POST", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, AUTH, 400, "messages[0].content",
     "image_url"),
    ("chat-tools", "POST", CHAT, {"messages": OK_MSG, "tools": [{"type": "function"}]}, AUTH,
     400, "tools", "tools"),
    ("max-tokens-disagree", "POST", CHAT, {"messages": OK_MSG, "max_tokens": 3,
                                           "max_completion_tokens": 4}, AUTH, 400,
     "max_completion_tokens", "disagree"),
    # Lone UTF-16 surrogates are valid JSON but not text: a 400 naming the field, never a 500.
    ("surrogate-prompt", "POST", C, {"prompt": "\ud800abc"}, AUTH, 400, "prompt", "surrogate"),
    ("surrogate-prompt-list", "POST", C, {"prompt": ["ab\udc00"]}, AUTH, 400, "prompt[0]",
     "character 2"),
    ("surrogate-chat", "POST", CHAT, {"messages": [OK_MSG[0], {"role": "user",
                                                               "content": "\ud800abc"}]},
     AUTH, 400, "messages[1].content", "surrogate"),
    ("surrogate-chat-part", "POST", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "fine"}, {"type": "text", "text": "x\ud800"}]}]}, AUTH, 400,
     "messages[0].content[1].text", "surrogate"),
    ("surrogate-name", "POST", CHAT, {"messages": [{"role": "user", "content": "x",
                                                    "name": "\udfff"}]}, AUTH, 400,
     "messages[0].name", "surrogate"),
    ("surrogate-stop", "POST", C, {"prompt": "x", "stop": ["ok", "\ud800"]}, AUTH, 400,
     "stop[1]", "surrogate"),
    ("continuous-usage-without-usage", "POST", C, {"prompt": "x", "stream": True,
                                                   "stream_options": {
                                                       "continuous_usage_stats": True}},
     AUTH, 400, "stream_options", "include_usage"),
    ("stream-option-unknown", "POST", C, {"prompt": "x", "stream": True, "stream_options": {
        "include_usage": True, "per_token": True}}, AUTH, 400, "stream_options", "per_token"),
    ("wrong-method", "GET", C, None, AUTH, 405, None, "GET /v1/completions"),
    ("no-route", "GET", "/v2/whatever", None, AUTH, 404, None, "/v2/whatever"),
]


@pytest.fixture(scope="module")
def keyed_server(byte_model):
    srv = start_server(engine_config(byte_model), api_key=KEY)
    yield srv
    srv.stop(drain=False, timeout=5)


async def _send(s: aiohttp.ClientSession, url: str, method: str, body, headers):
    kwargs = {} if body is None else {"data": body} if isinstance(body, bytes) else {"json": body}
    async with s.request(method, url, headers=headers, **kwargs) as r:
        return r.status, await r.json(content_type=None)


def test_bad_requests_get_4xx_while_a_concurrent_stream_completes(keyed_server):
    url = keyed_server.url
    good = {"prompt": "steady", "max_tokens": 120, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            alone = fold_chunks(events((await stream(s, url + C, good, AUTH))[2]), chat=False)
            results = await asyncio.gather(
                stream(s, url + C, good, AUTH),
                *(_send(s, url + path, method, body, headers)
                  for _, method, path, body, headers, *_ in CASES))
            async with s.get(url + "/health") as r:
                healthy = r.status
            return alone, results, healthy

    alone, (concurrent, *replies), healthy = run(go(), timeout=60)
    for (name, _, _, _, _, status, param, words), (got_status, body) in zip(CASES, replies):
        assert got_status == status, (name, body)
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, (name, err)
        assert err["param"] == param, (name, err)
        assert words in err["message"], (name, err["message"])
    assert concurrent[0] == 200
    folded = fold_chunks(events(concurrent[2]), chat=False)
    assert folded == alone and folded["finish_reason"] == "length"
    assert folded["usage"]["completion_tokens"] == 120
    assert healthy == 200
    assert keyed_server.client.num_inflight == 0


def test_common_noop_fields_are_accepted(keyed_server):
    body = {"prompt": "x", "max_tokens": 3, "user": "u", "logit_bias": None, "n": 1,
            "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": None, "echo": False,
            "best_of": 1, "stop": None, "ignore_eos": True, "min_tokens": 3, "suffix": None,
            "seed": 7, "top_k": -1, "min_p": 0.0, "top_p": 0.9,
            "stream_options": {"include_usage": True}}
    chat = {"messages": OK_MSG, "max_completion_tokens": 3, "logprobs": False,
            "top_logprobs": None, "tools": None, "tool_choice": "none",
            "response_format": {"type": "text"}, "parallel_tool_calls": True, "ignore_eos": True}

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            return [await _send(s, keyed_server.url + C, "POST", body, AUTH),
                    await _send(s, keyed_server.url + CHAT, "POST", chat, AUTH)]

    for status, reply in run(go()):
        assert status == 200, reply
        assert reply["usage"]["completion_tokens"] == 3


# The bodies that common benchmark clients send (field for field, values as they send them).
GUIDELLM_STREAM = {"stream": True, "stream_options": {"include_usage": True,
                                                      "continuous_usage_stats": True},
                   "stop": None, "ignore_eos": True}
BENCH_BODIES = [
    ("guidellm-completions", C, {"prompt": "one two three", "max_tokens": 6, **GUIDELLM_STREAM}),
    ("guidellm-chat", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "one two three"}]}], "max_completion_tokens": 6,
        **GUIDELLM_STREAM}),
    ("vllm-completions", C, {"prompt": "one two three", "repetition_penalty": 1.0,
                             "max_tokens": 6, "logprobs": None, "stream": True,
                             "stream_options": {"include_usage": True}, "ignore_eos": True}),
    ("vllm-chat", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "one two three"}]}], "max_completion_tokens": 6,
        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}),
    ("sglang-completions", C, {"prompt": "one two three", "temperature": 0.0, "best_of": 1,
                               "max_tokens": 6, "stream": True, "ignore_eos": True}),
    ("sglang-chat", CHAT, {"messages": [{"role": "user", "content": "one two three"}],
                           "temperature": 0.0, "max_tokens": 6, "stream": True,
                           "ignore_eos": True}),
]


@pytest.mark.parametrize("name,path,body", BENCH_BODIES, ids=[b[0] for b in BENCH_BODIES])
def test_benchmark_clients_request_bodies_are_served(keyed_server, name, path, body):
    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            return await stream(s, keyed_server.url + path, {"model": None, **body}, AUTH)

    status, _, lines = run(go())
    assert status == 200, lines[:2]
    chunks = events(lines)
    token_chunks = [c for c in chunks if c["choices"]]
    assert len(token_chunks) == 6 and token_chunks[-1]["choices"][0]["finish_reason"] == "length"
    options = body.get("stream_options", {})
    if options.get("continuous_usage_stats"):
        # vLLM's meaning: every chunk carries the usage so far, then the usage-only chunk.
        n_prompt = chunks[-1]["usage"]["prompt_tokens"]
        assert n_prompt > 0
        assert [c["usage"] for c in token_chunks] == [
            {"prompt_tokens": n_prompt, "completion_tokens": k, "total_tokens": n_prompt + k}
            for k in range(1, 7)]
    else:
        assert all("usage" not in c for c in token_chunks)
    if options.get("include_usage"):
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    else:
        assert len(chunks) == 6
