"""A prompt over the server's context gets a 400 that names what set the limit: with a KV cache
of one block, the server's max_model_len is 16 tokens though the model's is 512, and the message
says so (--num-kv-blocks), rather than calling 16 the model's context."""

from __future__ import annotations

import aiohttp

from aisp.serve.server import start_server
from tests.serve.client import TIMEOUT, post, run
from tests.serve.conftest import engine_config


def test_a_kv_cache_cap_is_named_in_the_400(byte_model):
    srv = start_server(engine_config(byte_model, num_kv_blocks=1, block_size=16))
    try:
        async def go():
            async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
                return await post(s, srv.url + "/v1/completions", {"prompt": "x" * 40})

        status, body = run(go())
    finally:
        srv.stop(drain=False, timeout=5)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert "max_model_len is 16 tokens (capped by the KV cache: --num-kv-blocks 1 x --block-size " \
           "16; raise --num-kv-blocks, the model's context is 512)" in body["error"]["message"], body
