"""The streaming client: one OpenAI-compatible request, timed chunk by chunk.

Contract: `send_request` POSTs one streaming request (completions or chat, as vLLM serves them)
and returns a `RequestRecord`; it never raises for a server-side or network failure, it records
it by kind instead:

  http_<status>     the server answered 4xx/5xx; the message is its {"error": {"message"}}
  timeout           the whole request took longer than the per-request timeout
  connection        refused, reset, or the body was cut off mid-stream
  malformed_stream  not an event stream, a `data:` line that is not JSON, or no `data: [DONE]`
  stream_error      an {"error": ...} object inside the stream

Timing: `time.perf_counter()` right before the POST (send time) and right after each read of the
response body; every SSE line that read completes gets that time (its bytes arrived together).
Which chunks are token chunks follows vLLM's benchmark client: on /v1/completions every
chunk with a choice carries a token, even when its text is empty (a server may hold back a
partial UTF-8 character or the possible start of a stop string, and a random-weight model can
emit ids that decode to nothing), except a final chunk that only carries a finish_reason; on
chat, only a non-empty `delta.content` counts (the role-only first chunk carries no token).
Cancellation (the runner's drain timeout) propagates.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from aisp.loadtest.records import RequestRecord
from aisp.loadtest.workloads import RequestSpec

_MAX_MESSAGE = 300
_MAX_LINE = 16 << 20  # a longer line is no event stream; without a cap it would fill memory
_decode_json = json.JSONDecoder().decode  # on str: json.loads(bytes) detects the encoding first


def endpoint_path(endpoint: str) -> str:
    return "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"


def request_body(endpoint: str, model: str, spec: RequestSpec, temperature: float,
                 ignore_eos: bool) -> dict[str, Any]:
    """The JSON body; `ignore_eos` (a vLLM extension) is sent only when on."""
    body: dict[str, Any] = {"model": model, "max_tokens": spec.max_tokens, "stream": True,
                            "stream_options": {"include_usage": True},
                            "temperature": temperature}
    if endpoint == "chat":
        if not isinstance(spec.prompt, str):
            raise ValueError("chat requests take text prompts, not token ids")
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def error_message(body: str) -> str:
    """The message of an OpenAI error body, or the start of whatever the server sent."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.strip()[:_MAX_MESSAGE] or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or json.dumps(err)
            return str(msg)[:_MAX_MESSAGE]
        return str(err)[:_MAX_MESSAGE]
    return body.strip()[:_MAX_MESSAGE]


def _is_token_chunk(choice: Any, endpoint: str) -> bool:
    """See the module docstring: which streamed chunks carry a token."""
    if not isinstance(choice, dict):
        raise ValueError("choice is not an object")
    if endpoint == "chat":
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    else:
        text = choice.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"content is {type(text).__name__}, not a string")
    if endpoint == "chat":
        return bool(text)
    return bool(text) or choice.get("finish_reason") is None


class _Failure(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


async def send_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                       endpoint: str, spec: RequestSpec, index: int, timeout_s: float,
                       scheduled_time: float | None = None) -> RequestRecord:
    """POST `body` to `url` (the full endpoint URL) and time its stream."""
    chunks: list[float] = []
    usage: dict[str, Any] | None = None
    send = time.perf_counter()
    end = send

    def record(**kw: Any) -> RequestRecord:
        n_out = usage.get("completion_tokens") if usage else None
        n_in = usage.get("prompt_tokens") if usage else None
        in_src = "usage" if isinstance(n_in, int) else (
            "workload" if spec.num_prompt_tokens is not None else None)
        return RequestRecord(
            index=index, send_time=send, end_time=end, chunk_times=tuple(chunks),
            output_tokens=n_out if isinstance(n_out, int) else len(chunks),
            output_tokens_source="usage" if isinstance(n_out, int) else "chunks",
            prompt_tokens=n_in if isinstance(n_in, int) else spec.num_prompt_tokens,
            prompt_tokens_source=in_src, requested_output_tokens=spec.max_tokens,
            scheduled_time=scheduled_time, group=spec.group, **kw)

    try:
        async with session.post(url, json=body,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status >= 400:
                text = await resp.text(errors="replace")
                raise _Failure(f"http_{resp.status}", error_message(text))
            ctype = resp.headers.get("Content-Type", "")
            if "event-stream" not in ctype:
                raise _Failure("malformed_stream", f"expected text/event-stream, got "
                                                   f"'{ctype or 'no content type'}'")
            done = False
            content, pending = resp.content, b""
            while not done:
                # One read takes whatever has arrived (often one event, sometimes several);
                # every line it completes is timed by it. Reading line by line instead costs
                # two aiohttp reads per event and stamps each later line with the time spent
                # parsing the ones before it.
                piece = await content.readany()
                now = time.perf_counter()
                if piece:
                    lines = (pending + piece if pending else piece).split(b"\n")
                    pending = lines.pop()
                    if len(pending) > _MAX_LINE:
                        raise _Failure("malformed_stream", f"an event line longer than "
                                                           f"{_MAX_LINE:,} bytes")
                elif pending:  # the end of the stream ends its last line
                    lines, pending = [pending], b""
                else:
                    break
                for raw in lines:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank separators, ': keep-alive' comments, event:/id: fields
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        end, done = now, True
                        break
                    try:
                        obj = _decode_json(data.decode())
                        if not isinstance(obj, dict):
                            raise ValueError("event is not a JSON object")
                        if obj.get("error") is not None:
                            raise _Failure("stream_error",
                                           error_message(data.decode(errors="replace")))
                        if isinstance(u := obj.get("usage"), dict):
                            usage = u
                        choices = obj.get("choices")
                        if choices and _is_token_chunk(choices[0], endpoint):
                            chunks.append(now)
                    except ValueError as e:
                        raise _Failure("malformed_stream",
                                       f"bad event {data[:80]!r}: {e}") from None
            if not done:
                raise _Failure("malformed_stream", "stream ended without 'data: [DONE]'")
        return record()
    except _Failure as f:
        end = time.perf_counter()
        return record(error_kind=f.kind, error_message=f.message)
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        end = time.perf_counter()
        return record(error_kind="timeout", error_message=f"no complete response within "
                                                           f"{timeout_s:g} s")
    except (aiohttp.ClientError, OSError) as e:
        end = time.perf_counter()
        return record(error_kind="connection",
                      error_message=f"{type(e).__name__}: {e}"[:_MAX_MESSAGE])
    except ValueError as e:  # raised by aiohttp's readers (e.g. a malformed chunked body)
        end = time.perf_counter()
        return record(error_kind="malformed_stream", error_message=str(e)[:_MAX_MESSAGE])
