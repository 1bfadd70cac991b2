"""The client's reading of an event stream whose events do not line up with its reads.

send_request reads whatever has arrived and splits it into lines itself (client.py): an event
cut across two writes must wait for its second half and take that arrival's time, several
events in one write share its time, and the stream's end ends an unterminated last line.
"""

import asyncio
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from aisp.loadtest.client import send_request
from aisp.loadtest.workloads import RequestSpec

PAUSE_S = 0.1
EVENT = b'data: {"choices":[{"index":0,"text":" tok","finish_reason":null}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":4}}\n\n'


async def _handler(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(EVENT + EVENT[:20])            # one whole event and the start of another
    await asyncio.sleep(PAUSE_S)
    await resp.write(EVENT[20:] + b": keep-alive\n\n" + EVENT)   # its end, a comment, a third
    await asyncio.sleep(PAUSE_S)
    await resp.write(EVENT + USAGE + b"data: [DONE]")   # no newline after [DONE]: EOF ends it
    await resp.write_eof()
    return resp


async def _send() -> tuple[float, object]:
    app = web.Application()
    app.router.add_post("/v1/completions", _handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        spec = RequestSpec(prompt=[1, 2], max_tokens=4, num_prompt_tokens=2)
        started = time.perf_counter()
        rec = await send_request(session, str(server.make_url("/v1/completions")), {},
                                 "completions", spec, 0, 10.0)
    return started, rec


def test_events_split_across_reads_are_timed_by_the_read_that_completes_them():
    started, rec = asyncio.run(_send())
    assert rec.ok, rec.error_message
    assert len(rec.chunk_times) == 4 and rec.output_tokens == 4
    t = [x - started for x in rec.chunk_times]
    assert t[0] < PAUSE_S                               # the first whole event, at once
    assert PAUSE_S <= t[1] == t[2] < 2 * PAUSE_S        # the split one and the third: one read
    assert 2 * PAUSE_S <= t[3] <= rec.end_time - started  # the last one, with [DONE] at EOF
