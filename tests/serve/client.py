"""A small real HTTP client for the server tests (aiohttp.ClientSession) and SSE helpers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = aiohttp.ClientTimeout(total=30)


def run(coro: Coroutine, timeout: float = 30.0) -> Any:
    """Run one coroutine on a fresh loop with a hard bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def post(session: aiohttp.ClientSession, url: str, body: Any,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST a JSON body (or raw bytes); returns status and the decoded JSON reply."""
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with session.post(url, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
    """POST with stream=true; returns status, content type and the raw SSE lines."""
    async with session.post(url, json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, resp.headers.get("Content-Type", ""), text.split("\n")


def events(lines: list[str]) -> list[Any]:
    """Check the SSE framing (every non-empty line is `data: ...`, blank lines between events,
    [DONE] last) and return the decoded JSON chunks."""
    nonempty = [line for line in lines if line]
    assert nonempty and all(line.startswith("data: ") for line in nonempty), lines[:4]
    assert nonempty[-1] == "data: [DONE]" and lines[-2:] == ["", ""]
    assert all(lines[i] == "" for i in range(1, len(lines), 2)), "one blank line per event"
    return [json.loads(line[len("data: "):]) for line in nonempty[:-1]]


def fold_chunks(chunks: list[dict[str, Any]], chat: bool) -> dict[str, Any]:
    """What a client reconstructs from a stream: text, finish reason, token ids, usage."""
    text, ids, finish, usage = "", [], None, None
    for c in chunks:
        if c.get("usage"):
            usage = c["usage"]
        for choice in c["choices"]:
            text += choice["delta"]["content"] if chat else choice["text"]
            ids += choice.get("token_ids", [])
            finish = choice["finish_reason"]
    return {"text": text, "token_ids": ids, "finish_reason": finish, "usage": usage}


def response_text(body: dict[str, Any]) -> str:
    choice = body["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


async def metric_value(session: aiohttp.ClientSession, base: str, family: str,
                       **labels: str) -> float:
    """Sum of a family's samples (matching `labels`) from /metrics, parsed by prometheus_client."""
    async with session.get(base + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name != family:
            continue
        for sample in fam.samples:
            if sample.name.endswith("_total") and all(sample.labels.get(k) == v
                                                      for k, v in labels.items()):
                total += sample.value
    return total


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def process_running(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
